"""Pre-processing presets for CT and MRI volumes, built from MONAI dictionary transforms.

Both presets return a :class:`monai.transforms.Compose` of MONAI's own transforms (nothing here re-implements a
transform); what this module adds is the choice and order of the steps and the CT window table, so that training,
evaluation, inference and the batch CLI prepare a modality the same way.

CT (``ct_preprocessing``): ``LoadImaged`` -> ``EnsureChannelFirstd`` -> ``Orientationd`` -> ``Spacingd`` (optional)
-> ``ScaleIntensityRanged``: Hounsfield units are clipped to a display window ``[level - width/2, level + width/2]``
and mapped linearly to ``[b_min, b_max]`` (default [0, 1]), the standard CT input normalisation of e.g. the MONAI
spleen/BTCV tutorials (``a_min=-175, a_max=250``, i.e. an abdominal window) and of most CT segmentation papers. The
window table follows the usual radiological reading windows (level L / width W in HU; Radiopaedia, "Windowing
(CT)"): brain L40 W80, abdomen (soft tissue) L50 W400, liver L60 W160,
mediastinum L50 W350, lung L-600 W1500, bone L400 W1800; ``"wide"`` (L100 W2200, -1000..1200 HU) keeps air, soft
tissue and most bone for multi-organ models.

MRI (``mri_preprocessing``): ``LoadImaged`` -> ``EnsureChannelFirstd`` -> ``Orientationd`` -> ``Spacingd``
(optional) -> ``NormalizeIntensityd`` (per-channel z-score; ``nonzero=True`` restricts the statistics to non-zero
voxels, as nnU-Net does for skull-stripped brain MRI). MRI intensities have no physical unit, so a z-score per
volume is the usual choice (Isensee et al. 2021, nnU-Net, "non-CT" normalisation).

Shapes: every preset maps file paths under ``keys`` to channel-first MetaTensors (C, X, Y, Z) in the requested
orientation and spacing; labels (``label_keys``) are resampled with nearest-neighbour interpolation and never
intensity-scaled.
"""

from __future__ import annotations

from typing import Any, Sequence

from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    NormalizeIntensityd,
    Orientationd,
    ScaleIntensityRanged,
    Spacingd,
)

__all__ = [
    "CT_WINDOWS",
    "ct_window_range",
    "ct_window_transform",
    "ct_preprocessing",
    "mri_preprocessing",
    "spatial_preprocessing",
]

#: Named CT display windows as (level, width) in Hounsfield units.
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "brain": (40.0, 80.0),
    "abdomen": (50.0, 400.0),
    "soft_tissue": (50.0, 400.0),
    "liver": (60.0, 160.0),
    "mediastinum": (50.0, 350.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "wide": (100.0, 2200.0),
}


def ct_window_range(window: str | Sequence[float]) -> tuple[float, float]:
    """``(a_min, a_max)`` in HU of a window given by name (:data:`CT_WINDOWS`) or as ``(level, width)``.

    ``a_min = level - width / 2``, ``a_max = level + width / 2``; e.g. ``"abdomen"`` -> (-150, 250).

    Raises:
        ValueError: unknown name, not two numbers, or a width <= 0.
    """
    if isinstance(window, str):
        key = window.lower().replace("-", "_").replace(" ", "_")
        if key not in CT_WINDOWS:
            raise ValueError(f"unknown CT window {window!r}; named windows: {sorted(CT_WINDOWS)} "
                             "(or give (level, width) in HU).")
        level, width = CT_WINDOWS[key]
    else:
        values = list(window)
        if len(values) != 2:
            raise ValueError(f"a CT window is (level, width) in HU, got {window!r}.")
        level, width = (float(v) for v in values)
    if width <= 0:
        raise ValueError(f"CT window width must be > 0 HU, got {width}.")
    return level - width / 2.0, level + width / 2.0


def ct_window_transform(
    keys: Sequence[str] | str = ("image",),
    window: str | Sequence[float] = "abdomen",
    b_min: float = 0.0,
    b_max: float = 1.0,
    clip: bool = True,
) -> ScaleIntensityRanged:
    """MONAI ``ScaleIntensityRanged`` mapping the HU window linearly onto ``[b_min, b_max]`` (clipped by default).

    ``out = b_min + (clip(hu, a_min, a_max) - a_min) / (a_max - a_min) * (b_max - b_min)`` with
    ``(a_min, a_max) = ct_window_range(window)``.
    """
    a_min, a_max = ct_window_range(window)
    return ScaleIntensityRanged(keys=keys, a_min=a_min, a_max=a_max, b_min=b_min, b_max=b_max, clip=clip)


def _as_keys(keys: Sequence[str] | str | None) -> list[str]:
    if keys is None:
        return []
    return [keys] if isinstance(keys, str) else list(keys)


def spatial_preprocessing(
    image_keys: Sequence[str] | str = ("image",),
    label_keys: Sequence[str] | str | None = None,
    axcodes: str | None = "RAS",
    pixdim: Sequence[float] | None = None,
    load: bool = True,
    reader: str | None = None,
    allow_missing_keys: bool = False,
) -> list[Any]:
    """The shared first steps: load, channel-first, reorient, resample (MONAI transforms, as a list).

    ``axcodes=None`` keeps the file's orientation, ``pixdim=None`` its spacing. Images are resampled with
    trilinear (bilinear) interpolation, labels with nearest neighbour. ``load=False`` starts from arrays already in
    the dictionary (then they must be channel-first MetaTensors carrying an affine).
    """
    images, labels = _as_keys(image_keys), _as_keys(label_keys)
    keys = images + labels
    if not images:
        raise ValueError("image_keys must name at least one key.")
    steps: list[Any] = []
    if load:
        steps.append(LoadImaged(keys=keys, reader=reader, image_only=True, allow_missing_keys=allow_missing_keys))
        steps.append(EnsureChannelFirstd(keys=keys, allow_missing_keys=allow_missing_keys))
    steps.append(EnsureTyped(keys=images, dtype="float32", allow_missing_keys=allow_missing_keys))
    if axcodes:
        # labels=None (MONAI's coming default, passed explicitly to silence its FutureWarning): axcodes are read in
        # the MetaTensor's own "space", so an LPS-space affine is handled right too; MONAI's readers load RAS.
        steps.append(Orientationd(keys=keys, axcodes=axcodes, labels=None, allow_missing_keys=allow_missing_keys))
    if pixdim is not None:
        modes = ["bilinear"] * len(images) + ["nearest"] * len(labels)
        steps.append(Spacingd(keys=keys, pixdim=tuple(float(p) for p in pixdim), mode=modes,
                              allow_missing_keys=allow_missing_keys))
    return steps


def ct_preprocessing(
    image_keys: Sequence[str] | str = ("image",),
    label_keys: Sequence[str] | str | None = None,
    window: str | Sequence[float] = "abdomen",
    b_min: float = 0.0,
    b_max: float = 1.0,
    clip: bool = True,
    axcodes: str | None = "RAS",
    pixdim: Sequence[float] | None = None,
    load: bool = True,
    reader: str | None = None,
    allow_missing_keys: bool = False,
) -> Compose:
    """CT preset: load, channel-first, orientation, optional resampling, HU window scaled to ``[b_min, b_max]``.

    Args:
        image_keys: keys of CT images (values in Hounsfield units).
        label_keys: keys of label maps (resampled with nearest neighbour, not scaled), or None.
        window: a name of :data:`CT_WINDOWS` or ``(level, width)`` in HU.
        b_min, b_max, clip: output range; with ``clip`` HU outside the window saturate at ``b_min`` / ``b_max``.
        axcodes: target orientation (``"RAS"``) or None to keep the file's.
        pixdim: target spacing in mm (e.g. ``(1.5, 1.5, 2.0)``) or None to keep the file's.
        load: start with ``LoadImaged`` + ``EnsureChannelFirstd`` (paths in the dictionary) or from arrays.
        reader: ``LoadImaged`` reader (None: MONAI picks by suffix, e.g. NibabelReader / ITKReader).
        allow_missing_keys: e.g. a label key absent at inference time.

    Returns:
        ``Compose`` mapping ``{"image": path, "label": path}`` to float32 (1, X, Y, Z) image in ``[b_min, b_max]``
        and the label on the same grid.
    """
    steps = spatial_preprocessing(image_keys, label_keys, axcodes=axcodes, pixdim=pixdim, load=load, reader=reader,
                                  allow_missing_keys=allow_missing_keys)
    a_min, a_max = ct_window_range(window)
    steps.append(ScaleIntensityRanged(keys=_as_keys(image_keys), a_min=a_min, a_max=a_max, b_min=b_min, b_max=b_max,
                                      clip=clip, allow_missing_keys=allow_missing_keys))
    return Compose(steps)


def mri_preprocessing(
    image_keys: Sequence[str] | str = ("image",),
    label_keys: Sequence[str] | str | None = None,
    nonzero: bool = False,
    channel_wise: bool = True,
    axcodes: str | None = "RAS",
    pixdim: Sequence[float] | None = (1.0, 1.0, 1.0),
    load: bool = True,
    reader: str | None = None,
    allow_missing_keys: bool = False,
) -> Compose:
    """MRI preset: load, channel-first, orientation, resampling (1 mm by default), per-channel z-score.

    Args:
        nonzero: compute mean/std over non-zero voxels only and leave zeros at 0 (skull-stripped / masked MRI).
        channel_wise: statistics per channel (multi-sequence input) or over all channels.
        others: as :func:`ct_preprocessing`.

    Returns:
        ``Compose`` giving float32 (C, X, Y, Z) images with mean 0 and standard deviation 1 per channel (over the
        voxels selected by ``nonzero``), labels on the same grid.
    """
    steps = spatial_preprocessing(image_keys, label_keys, axcodes=axcodes, pixdim=pixdim, load=load, reader=reader,
                                  allow_missing_keys=allow_missing_keys)
    steps.append(NormalizeIntensityd(keys=_as_keys(image_keys), nonzero=nonzero, channel_wise=channel_wise,
                                     allow_missing_keys=allow_missing_keys))
    return Compose(steps)
