"""Dictionary transforms that MONAI lacks, for images with a region of interest (e.g. a fundus field of view).

Everything else in our pipelines is MONAI's own (``LoadImaged``, ``RandCropByPosNegLabeld``, ``RandFlipd``, ...).

* :class:`FovStandardizeIntensityd` -- z-score each channel with the mean and standard deviation computed INSIDE a
  mask held under another key. MONAI's ``NormalizeIntensityd`` can only use the image's own non-zero voxels
  (``nonzero=True``), which for a fundus photograph includes the noisy black border and excludes dark vessels
  wherever they happen to be exactly 0.
* :class:`EstimateFovMaskd` -- when an item has no FOV mask (a clinician's folder of photographs), estimate the
  circular field of view from the image itself: threshold the brightest channel, keep the largest connected
  component, fill its holes (the approach of e.g. Soares et al., IEEE TMI 2006, who derive the FOV from the red
  channel). MONAI has no FOV estimation.
"""

from __future__ import annotations

from typing import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.utils import convert_to_tensor

__all__ = ["FovStandardizeIntensityd", "EstimateFovMaskd", "FovClaheEqualized"]


class FovStandardizeIntensityd(MapTransform):
    """Per-channel z-scoring with statistics taken inside a mask; values outside the mask are set to ``outside``.

    ``out[c] = (img[c] - mean(img[c][m])) / max(std(img[c][m]), eps)`` inside ``m = mask > 0`` and ``outside``
    elsewhere, with ``mask`` (1, spatial) or (spatial) under ``mask_key`` and ``img`` (C, spatial).
    ``channel_wise=False`` uses one mean/std over all channels. The output is float32 with the input's metadata.

    Args:
        keys: image keys to standardise.
        mask_key: key of the mask (e.g. the binarised FOV). Items without it are standardised over all voxels.
        channel_wise: statistics per channel (default) or over all channels together.
        outside: value written outside the mask (0 = the mean after standardisation).
        eps: lower bound of the standard deviation.
    """

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: str = "roi",
        channel_wise: bool = True,
        outside: float = 0.0,
        eps: float = 1e-6,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.mask_key = mask_key
        self.channel_wise = channel_wise
        self.outside = float(outside)
        self.eps = float(eps)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        mask = d.get(self.mask_key)
        for key in self.key_iterator(d):
            img = convert_to_tensor(d[key], track_meta=True, dtype=torch.float32)
            if mask is None:
                m = torch.ones(img.shape[1:], dtype=torch.bool, device=img.device)
            else:
                m = convert_to_tensor(mask, track_meta=False).to(img.device) > 0
                if m.ndim == img.ndim:
                    m = m[0]
                if m.shape != img.shape[1:]:
                    raise ValueError(
                        f"FovStandardizeIntensityd: mask {self.mask_key!r} has spatial shape {tuple(m.shape)} but "
                        f"{key!r} has {tuple(img.shape[1:])}."
                    )
            if not bool(m.any()):
                raise ValueError(f"FovStandardizeIntensityd: mask {self.mask_key!r} is empty for {key!r}.")
            plain = img.as_tensor() if isinstance(img, MetaTensor) else img
            # masked sums instead of boolean indexing: no (C, N) copy, one pass per statistic
            w = m.to(plain.dtype).unsqueeze(0)  # (1, spatial)
            dims = tuple(range(1, plain.ndim))
            if self.channel_wise:
                n = w.sum()
                mean = (plain * w).sum(dim=dims) / n
                var = (((plain - mean.view((-1,) + (1,) * (plain.ndim - 1))) ** 2) * w).sum(dim=dims) / n
            else:
                n = w.sum() * plain.shape[0]
                mean = ((plain * w).sum() / n).expand(plain.shape[0])
                var = ((((plain - mean[0]) ** 2) * w).sum() / n).expand(plain.shape[0])
            std = var.clamp_min(0).sqrt()
            view = (-1,) + (1,) * (img.ndim - 1)
            out = (plain - mean.view(view)) / std.clamp_min(self.eps).view(view)
            out = torch.where(m.unsqueeze(0), out, torch.full_like(out, self.outside))
            if isinstance(img, MetaTensor):
                out = MetaTensor(out, meta=img.meta, applied_operations=img.applied_operations)
            d[key] = out
        return d


class EstimateFovMaskd(MapTransform):
    """Add an estimated field-of-view mask under ``keys`` to items that do not have one.

    For each key in ``keys`` that is missing from the item (or always, with ``overwrite=True``), the mask is
    ``fill_holes(largest_component(max_c(image) > threshold))`` as float (1, spatial) with the image's metadata;
    items that already hold the key are left unchanged. ``threshold`` is in the image's intensity units (fundus
    photographs in 0..255 have a black surround of roughly 0..10, the FOV's dimmest rim is far above 20).
    Morphology by ``scipy.ndimage`` (connected components and hole filling), so that dark vessels, the fovea or a
    dark lesion inside the FOV never open holes in the mask.

    Args:
        keys: the FOV key(s) to fill in (e.g. ``"roi"``).
        image_key: the image (C, spatial) to estimate the FOV from.
        threshold: intensity threshold on the per-voxel channel maximum.
        overwrite: estimate even when the item holds a mask already.
    """

    def __init__(self, keys: KeysCollection, image_key: str = "image", threshold: float = 20.0,
                 overwrite: bool = False):
        super().__init__(keys, allow_missing_keys=True)
        self.image_key = image_key
        self.threshold = float(threshold)
        self.overwrite = overwrite

    def estimate(self, img: torch.Tensor | np.ndarray) -> np.ndarray:
        """Boolean (spatial) FOV of a (C, spatial) image."""
        from scipy import ndimage

        arr = np.asarray(convert_to_tensor(img, track_meta=False).detach().cpu().numpy())
        fg = arr.max(axis=0) > self.threshold
        labels, n = ndimage.label(fg)
        if n == 0:
            raise ValueError(
                f"EstimateFovMaskd: no voxel of {self.image_key!r} exceeds threshold {self.threshold}; cannot estimate "
                "a field of view (give FOV masks explicitly or lower the threshold)."
            )
        sizes = ndimage.sum_labels(fg, labels, index=np.arange(1, n + 1))
        largest = labels == (int(np.argmax(sizes)) + 1)
        return ndimage.binary_fill_holes(largest)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.keys:
            if key in d and not self.overwrite:
                continue
            img = d[self.image_key]
            fov = torch.from_numpy(self.estimate(img)[None].astype(np.float32))
            d[key] = MetaTensor(fov, meta=dict(img.meta)) if isinstance(img, MetaTensor) else fov
        return d


#: ITU-R BT.601 luma weights (R, G, B), as OpenCV's and PIL's RGB -> grey conversions use.
_LUMA_WEIGHTS = (0.299, 0.587, 0.114)


class FovClaheEqualized(MapTransform):
    """CLAHE of an RGB photograph inside a mask: (3, H, W) in 0..255 -> (1, H, W) float32, or (3, H, W) with ``"each"``.

    The equalised channel is the green channel (``"green"``: vessels have their highest contrast there, Staal et al.,
    IEEE TMI 2004, the DRIVE paper), the luminance (``"luminance"``, BT.601 weights), or every channel on its own
    (``"each"``, keeping the bundle's 3 input channels). A one-channel output can be fed to a 3-channel network with
    MONAI's ``RepeatChanneld``. Outside the mask each channel is first filled with its mean inside the mask, so that
    the black surround of the FOV does not decide the histograms of the tiles at the rim, and it is set to 0 after
    the equalisation. The equalisation is OpenCV's ``createCLAHE`` (Zuiderveld, Graphics Gems IV, 1994:
    ``clip_limit`` relative to a uniform histogram, ``tile_grid`` tiles per axis, bilinear between tiles) on the
    channel rounded to 8 bits. The output keeps the 0..255 range and the input's metadata;
    z-score it inside the FOV afterwards (:class:`FovStandardizeIntensityd`) as for the colour image.

    Args:
        keys: image keys, each (3, H, W) RGB.
        mask_key: key of the FOV mask (1, H, W) or (H, W); items without it are equalised over the whole image.
        channel: ``"green"``, ``"luminance"`` or ``"each"``.
        clip_limit: OpenCV's clip limit (2.0 is the value most DRIVE pipelines use).
        tile_grid: tiles per axis (8 x 8 as in OpenCV's and scikit-image's defaults).
    """

    def __init__(self, keys: KeysCollection, mask_key: str = "roi", channel: str = "green", clip_limit: float = 2.0,
                 tile_grid: int = 8, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        if channel not in ("green", "luminance", "each"):
            raise ValueError(f"FovClaheEqualized: channel must be 'green', 'luminance' or 'each', got {channel!r}.")
        self.mask_key = mask_key
        self.channel = channel
        self.clip_limit = float(clip_limit)
        self.tile_grid = int(tile_grid)

    def channels_to_equalize(self, rgb: np.ndarray) -> np.ndarray:
        """(K, H, W) float32 of a (3, H, W) image: its green channel or luminance (K = 1), or all three channels."""
        if rgb.ndim != 3 or rgb.shape[0] != 3:
            raise ValueError(f"FovClaheEqualized: expected a (3, H, W) RGB image, got shape {tuple(rgb.shape)}.")
        rgb = rgb.astype(np.float32)
        if self.channel == "green":
            return rgb[1:2]
        if self.channel == "luminance":
            # float64: the same 8-bit rounding on every CPU (float32 sums round differently per SIMD path)
            luma = np.tensordot(np.asarray(_LUMA_WEIGHTS, dtype=np.float64), rgb.astype(np.float64), axes=1)
            return luma.astype(np.float32)[None]
        return rgb

    def equalize(self, rgb: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        """(K, H, W) float32 in 0..255: CLAHE of each channel inside ``mask`` (bool (H, W)), 0 outside."""
        from monai.utils import optional_import

        cv2, has_cv2 = optional_import("cv2")
        if not has_cv2:
            raise ImportError(
                "FovClaheEqualized needs OpenCV: pip install opencv-python (the dicom extra brings it with rt-utils)"
            )
        channels = self.channels_to_equalize(rgb)
        inside = np.ones(channels.shape[1:], dtype=bool) if mask is None else mask
        if inside.shape != channels.shape[1:]:
            raise ValueError(
                f"FovClaheEqualized: mask {self.mask_key!r} has shape {inside.shape}, image {channels.shape[1:]}."
            )
        if not inside.any():
            raise ValueError(f"FovClaheEqualized: mask {self.mask_key!r} is empty.")
        clahe = cv2.createCLAHE(clipLimit=self.clip_limit, tileGridSize=(self.tile_grid, self.tile_grid))
        out = np.zeros(channels.shape, dtype=np.float32)
        for c, channel in enumerate(channels):
            filled = np.where(inside, channel, channel[inside].mean())
            equalized = clahe.apply(np.clip(np.rint(filled), 0, 255).astype(np.uint8))
            out[c] = np.where(inside, equalized, 0)
        return out

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        mask = d.get(self.mask_key)
        if mask is not None:
            mask = np.asarray(convert_to_tensor(mask, track_meta=False).detach().cpu().numpy()) > 0
            mask = mask[0] if mask.ndim == 3 else mask
        for key in self.key_iterator(d):
            img = d[key]
            rgb = np.asarray(convert_to_tensor(img, track_meta=False).detach().cpu().numpy())
            out = torch.from_numpy(self.equalize(rgb, mask))
            if isinstance(img, MetaTensor):  # keep the trace of earlier spatial transforms, as Invertd needs it
                out = MetaTensor(out, meta=dict(img.meta), applied_operations=img.applied_operations)
            d[key] = out
        return d
