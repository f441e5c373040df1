"""One case, one path: read -> check -> bundle preprocessing -> sliding-window probabilities -> invert onto the
input's grid -> label step -> post-processing -> write, and the measurements of the summary row.

:class:`CasePipeline` is used by ``unetzoo predict`` (through :mod:`.batch`) and by the bundles' own
``python -m monai.bundle run inferring`` (through :mod:`.bundle_step`), so both give byte-identical files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..inference import scores_to_labels
from ..volume_io import ScanGrid, load_scan, write_scan_like
from .bundle import PredictionBundle
from .discovery import PredictionCase
from .postprocess import parse_postprocess
from .progress import case_window_progress
from .settings import ResolvedSettings

__all__ = ["CaseError", "CaseResult", "LoadedCase", "CasePipeline", "label_columns", "binary_mask_scale"]


class CaseError(ValueError):
    """A per-case problem with a message fit for the summary (names the file and the problem)."""


@dataclass
class CaseResult:
    """A predicted case on the input's own grid: ``labels`` (*spatial) uint8/uint16, ``probs`` (C, *spatial)
    float32, and the loaded ``image`` (C_in, *spatial) for the intensity statistics of the summary."""

    grid: ScanGrid
    labels: np.ndarray
    probs: np.ndarray
    image: np.ndarray


@dataclass
class LoadedCase:
    """A case read, checked and preprocessed, ready for the windows (:meth:`CasePipeline.load`): the loaded ``image``
    (a MetaTensor, C_in x *spatial, on the input's grid), its ``grid``, a copy of its values (``raw``, for the
    summary's intensity statistics) and the bundle preprocessing's output dict ``data`` (``image``, maybe ``roi``).
    ``extra`` carries what a subclass of the pipeline read with it (the DICOM headers)."""

    image: Any
    grid: ScanGrid
    raw: np.ndarray
    data: dict[str, Any]
    extra: Any = None


def binary_mask_scale(bundle: PredictionBundle, grid: ScanGrid) -> int:
    """255 where a one-class 2D bundle writes a PNG/TIFF mask (0/255: visible in any viewer), else 1 (label values
    0..C-1, as NIfTI/NRRD label maps and multi-class masks keep them)."""
    return 255 if bundle.binary and bundle.spatial_dims == 2 and grid.family in ("raster", "tiff") else 1


def label_columns(bundle: PredictionBundle) -> list[tuple[int, str]]:
    """``(label value, column base name)`` per foreground label; names made CSV-safe and unique."""
    import re

    cols, used = [], set()
    for value, name in sorted(bundle.label_names.items()):
        base = re.sub(r"[^0-9A-Za-z]+", "_", name).strip("_") or f"label{value}"
        if base in used:
            base = f"{base}_{value}"
        used.add(base)
        cols.append((value, base))
    return cols


def _drop_singleton_axes(image: Any, spatial_dims: int) -> Any:
    """A 2D bundle on an ``(X, Y, 1)`` volume: drop the trailing singleton spatial axes (and their affine rows)."""
    from monai.data import MetaTensor

    keep = tuple(image.shape[1:])[:spatial_dims]
    affine = np.asarray(image.affine, dtype=np.float64)
    new_affine = np.eye(spatial_dims + 1)
    new_affine[:spatial_dims, :spatial_dims] = affine[:spatial_dims, :spatial_dims]
    new_affine[:spatial_dims, spatial_dims] = affine[:spatial_dims, -1]
    meta = dict(image.meta)
    meta["spatial_shape"] = np.asarray(keep)
    out = MetaTensor(image.as_tensor().reshape((image.shape[0],) + keep), meta=meta)
    out.affine = torch.as_tensor(new_affine)
    return out


def _mask_outside_roi(scores: torch.Tensor, roi: Any, source: Any) -> None:
    """Everything outside the preprocessing's ``roi`` (e.g. a fundus field of view) is background, in place."""
    inside = torch.as_tensor(roi).detach().cpu()
    if inside.ndim == scores.ndim:
        inside = inside.amax(0)
    if tuple(inside.shape) != tuple(scores.shape[1:]):
        raise CaseError(f"{source}: the bundle's 'roi' {tuple(inside.shape)} is not on the image grid {tuple(scores.shape[1:])}")
    outside = inside <= 0
    scores[:, outside] = 0.0
    if scores.shape[0] > 1:
        scores[0, outside] = 1.0  # background


#: Share of the machine's physical memory one case may plan to use.
MEMORY_BUDGET_FRACTION = 0.75


def _physical_memory_bytes() -> float:
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return float("inf")


def _target_spacing(preprocessing: Any) -> tuple[float, ...] | None:
    """The ``pixdim`` of the bundle's ``Spacingd`` (the grid the network sees), if it has one."""
    for t in getattr(preprocessing, "transforms", ()):
        spacing = getattr(t, "spacing_transform", None)
        pixdim = getattr(spacing, "pixdim", None)
        if pixdim is not None:
            return tuple(float(p) for p in np.atleast_1d(pixdim))
    return None


def describe_failure(exc: BaseException) -> str:
    """``"<Transform>: <innermost error>"`` for an exception raised inside a MONAI ``Compose`` (which wraps it as
    ``applying transform <... object at 0x...>``), object addresses replaced by class names."""
    import re

    names, inner = [], exc
    while True:
        m = re.search(r"applying transform <([\w.]+) object at 0x[0-9a-f]+>", str(inner))
        if m:
            names.append(m.group(1).rsplit(".", 1)[-1])
        nxt = inner.__cause__ or inner.__context__
        if nxt is None:
            break
        inner = nxt
    text = re.sub(r"<([\w.]+) object at 0x[0-9a-f]+>", lambda m: m.group(1).rsplit(".", 1)[-1], str(inner))
    where = f"{names[-1]}: " if names else ""
    return f"{where}{type(inner).__name__}: {text.strip().splitlines()[0] if text.strip() else ''}"


class CasePipeline:
    """Predict cases of one bundle with one set of resolved settings.

    ``pipeline.predict(case)`` -> :class:`CaseResult` (= ``pipeline.predict(case, pipeline.load(case))``: the
    read/check/preprocess step is separate so that the batch can run it for the next case on another thread while
    this one is in the windows, :mod:`.batch`); ``pipeline.write(case, result)`` writes the label map (and
    the probabilities) atomically; ``pipeline.measure(result)`` gives the summary columns. Subclasses writing other
    formats (:class:`~.dicom_output.DicomOutputPipeline`) add ``summary_columns``, ``measure_existing`` (columns of
    an output a previous run wrote; None: measure it as a scan) and ``provenance_extra``.
    """

    summary_columns: tuple[str, ...] = ()

    def measure_existing(self, case: PredictionCase) -> dict[str, Any] | None:
        return None

    def provenance_extra(self) -> dict[str, Any]:
        return {}

    def __init__(self, bundle: PredictionBundle, settings: ResolvedSettings):
        self.bundle, self.settings = bundle, settings
        self.device = torch.device(settings.device)
        self.predictor = settings.make_predictor()
        self.postprocess = parse_postprocess(settings.postprocess)
        self.window_progress = False  # a bar over the windows of each case (the batch turns it on unless --quiet)
        bundle.network.to(self.device)
        self.window_network = settings.make_window_network(bundle)  # eager: bundle.network itself

    def _load(self, case: PredictionCase) -> tuple[Any, ScanGrid]:
        b = self.bundle
        image, grid = load_scan(case.source, series_uid=case.series_uid, raster_reader=b.raster_reader)
        sd = b.spatial_dims
        if grid.spatial_dims != sd:
            if grid.spatial_dims > sd and all(s == 1 for s in grid.spatial_shape[sd:]):
                image = _drop_singleton_axes(image, sd)
            else:
                raise CaseError(
                    f"{case.source}: a {grid.spatial_dims}D image of shape {grid.spatial_shape}, but the bundle "
                    f"'{b.name}' segments {sd}D images"
                )
        if image.shape[0] != b.in_channels:
            raise CaseError(
                f"{case.source}: has {image.shape[0]} channel(s), but the bundle '{b.name}' expects {b.in_channels}"
                + (f" ({b.input_description})" if b.input_description else "")
            )
        return image, grid

    def _check_memory(self, case: PredictionCase, image: Any, grid: ScanGrid) -> None:
        """Refuse, with the numbers, a scan whose prediction would need more than :data:`MEMORY_BUDGET_FRACTION` of
        this machine's memory: input, its resampled copy in the bundle's spacing, the class accumulators there and
        the probabilities on the input grid (float32), instead of starting and being killed."""
        c_in, k = image.shape[0], max(2, self.bundle.out_channels)
        n = float(np.prod(image.shape[1:], dtype=np.float64))
        pixdim = _target_spacing(self.bundle.preprocessing)
        n_resampled = n
        if pixdim is not None and grid.physical:
            n_resampled = n * float(np.prod([s / p for s, p in zip(grid.spacing, pixdim) if p > 0]))
        need = 4 * ((c_in + k) * n + (c_in + 3 * k) * n_resampled)
        budget = MEMORY_BUDGET_FRACTION * _physical_memory_bytes()
        if need > budget:
            raise CaseError(
                f"{case.source}: {tuple(image.shape[1:])} voxels"
                + (f" ({n_resampled:.3g} at the bundle's spacing {list(pixdim)} mm)" if pixdim is not None else "")
                + f" would need about {need / 1e9:.1f} GB for prediction; this machine allows {budget / 1e9:.1f} GB"
                " (75% of its memory): not attempted"
            )

    def _probabilities(self, case: PredictionCase, loaded: LoadedCase) -> torch.Tensor:
        """Probabilities (C, *loaded spatial shape) on the loaded image's grid."""
        from monai.data import MetaTensor
        from monai.transforms import Invertd

        b, data, image = self.bundle, loaded.data, loaded.image
        x = data["image"]
        batch = (x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x))[None].to(self.device)
        with case_window_progress(self.window_network, self.predictor, batch, case.case_id, self.window_progress) as network:
            scores = self.predictor(batch, network)[0].detach().to("cpu", torch.float32)
        del batch
        if data.get("roi") is not None:
            _mask_outside_roi(scores, data["roi"], case.source)
        if not getattr(x, "applied_operations", None):
            return scores
        # spatial preprocessing ran: bring the probabilities (not the labels) back, linearly, as nnU-Net does
        data["pred"] = MetaTensor(scores)  # Invertd takes the transform trace from "image", only for MetaTensors
        inverted = Invertd(keys="pred", transform=b.preprocessing, orig_keys="image", nearest_interp=False)(data)["pred"]
        probs = inverted.as_tensor() if hasattr(inverted, "as_tensor") else torch.as_tensor(inverted)
        if tuple(probs.shape[1:]) != tuple(image.shape[1:]):
            raise CaseError(
                f"{case.source}: the bundle's preprocessing could not be inverted (prediction {tuple(probs.shape[1:])}"
                f" vs image {tuple(image.shape[1:])}); its spatial transforms must be invertible"
            )
        return probs

    def _labels(self, probs: torch.Tensor, grid: ScanGrid) -> np.ndarray:
        """The one label step (:func:`scores_to_labels`), then the declared post-processing."""
        s = self.settings
        if probs.shape[0] == 1:
            labels = scores_to_labels(probs[None], mode="threshold", threshold=s.threshold)[0, 0].numpy()
        else:
            labels = scores_to_labels(probs[None], mode="argmax")[0, 0].numpy()
        labels = labels.astype(np.uint8 if probs.shape[0] <= 256 else np.uint16, copy=False)
        return self.postprocess(labels, grid.voxel_volume if grid.physical else 1.0)

    def load(self, case: PredictionCase) -> LoadedCase:
        """Read, check and preprocess ``case`` (no network; safe on a worker thread); raises
        ``ScanReadError``/:class:`CaseError` with a message for the summary."""
        image, grid = self._load(case)
        self._check_memory(case, image, grid)
        raw = image.as_tensor().numpy().copy()  # some intensity transforms work in place (NormalizeIntensity)
        try:
            data = self.bundle.preprocessing({"image": image})
        except Exception as exc:
            raise CaseError(f"{case.source}: the bundle's preprocessing failed ({describe_failure(exc)})") from exc
        return LoadedCase(image, grid, raw, data)

    def predict(self, case: PredictionCase, loaded: LoadedCase | None = None) -> CaseResult:
        """Predict, invert and label ``case`` (read by :meth:`load` first unless ``loaded`` is given); raises
        ``ScanReadError``/:class:`CaseError` with a message for the summary."""
        loaded = self.load(case) if loaded is None else loaded
        torch.set_num_threads(self.settings.threads)
        probs = self._probabilities(case, loaded)
        return CaseResult(loaded.grid, self._labels(probs, loaded.grid), probs.numpy(), loaded.raw)

    def write(self, case: PredictionCase, result: CaseResult, save_probabilities: bool = False) -> None:
        """Write the label map (and the probabilities, first) of ``case`` on its grid, each atomically."""
        if case.output is None:
            raise ValueError(f"{case.source}: no output path")
        if save_probabilities and case.prob_output is not None:  # first, so that the label map marks the case done
            write_scan_like(np.clip(result.probs, 0.0, 1.0), result.grid, case.prob_output, kind="prob")
        scale = binary_mask_scale(self.bundle, result.grid)
        labels = result.labels if scale == 1 else result.labels * np.uint8(scale)
        write_scan_like(labels, result.grid, case.output, kind="label")

    def measure(self, result: CaseResult) -> dict[str, Any]:
        """Summary columns: shape, spacing, and per structure voxels, volume (mL; mm^2 in 2D) and the mean and
        standard deviation of the image intensity inside it (over all input channels)."""
        return measure_labels(self.bundle, result.labels, result.grid, result.image)


def measure_labels(bundle: PredictionBundle, labels: np.ndarray, grid: ScanGrid, image: np.ndarray | None) -> dict[str, Any]:
    """See :meth:`CasePipeline.measure`; ``image`` None (an existing output measured again) leaves the intensity
    columns empty."""
    labels = np.asarray(labels)
    counts = np.bincount(labels.ravel().astype(np.int64), minlength=max(bundle.label_names) + 1)
    row: dict[str, Any] = {
        "shape": " x ".join(str(s) for s in grid.spatial_shape),
        "spacing": " x ".join(f"{s:.6g}" for s in grid.spacing) if grid.physical else "",
    }
    # size of one voxel over the bundle's spatial axes: sqrt(det(A^T A)) of the affine's first columns, i.e.
    # |det A| in 3D and the in-plane pixel area for a 2D bundle (also on an (X, Y, 1) volume), oblique or not
    a = grid.affine[: grid.spatial_dims, : bundle.spatial_dims]
    voxel = float(np.sqrt(abs(np.linalg.det(a.T @ a))))
    unit, size_name, count_name = (1000.0, "mL", "voxels") if bundle.spatial_dims == 3 else (1.0, "mm2", "pixels")
    values = None if image is None else np.asarray(image).reshape(image.shape[0], -1)  # a view: no volume copy
    flat = labels.reshape(-1)
    for value, base in label_columns(bundle):
        n = int(counts[value]) if value < len(counts) else 0
        row[f"{base}_{count_name}"] = n
        row[f"{base}_{size_name}"] = f"{n * voxel / unit:.6g}" if grid.physical else ""
        inside = values[:, flat == value] if values is not None and n else None
        row[f"{base}_intensity_mean"] = f"{inside.mean(dtype=np.float64):.6g}" if inside is not None else ""
        row[f"{base}_intensity_std"] = f"{inside.std(dtype=np.float64):.6g}" if inside is not None else ""
    return row


def summary_label_columns(bundle: PredictionBundle) -> list[str]:
    """The per-structure column names :func:`measure_labels` fills, in order."""
    size_name, count_name = ("mL", "voxels") if bundle.spatial_dims == 3 else ("mm2", "pixels")
    suffixes = (count_name, size_name, "intensity_mean", "intensity_std")
    return [f"{base}_{s}" for _, base in label_columns(bundle) for s in suffixes]
