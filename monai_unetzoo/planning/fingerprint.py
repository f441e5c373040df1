"""The fingerprint of a labelled data set: what the planning rules need to know about the data, per case and overall.

The planner reads an MSD-style folder (``dataset.json`` + ``imagesTr/`` + ``labelsTr/``, see
:mod:`monai_unetzoo.data.msd`) through MONAI's own ``LoadImage`` -- the reader the bundle's ``LoadImaged`` uses, so
NIfTI, NRRD, MHA, PNG and TIFF are read exactly as in training -- and records per case (after reorientation to
RAS for 3D data, the frame the planned bundle trains in):

* ``shape`` (spatial, voxels), ``spacing`` (mm per axis), ``orientation`` (axis codes of the file, e.g. ``"LPS"``);
* per image channel the intensity inside the foreground (label > 0): 0.5 / 50 / 99.5 percentiles, mean, std;
* per class the voxel count and volume in mm^3 (2D: mm^2, or pixels where the file has no spacing);
* where ``dataset.json`` gives a ``"roi"`` mask per case (e.g. DRIVE's field-of-view masks): its path and share of
  the image; over the data set the threshold on the brightest channel that best recovers the masks
  (:func:`best_roi_threshold`), for the planned inference to estimate the ROI of a case that comes without one.

and over the data set: the median shape and spacing, the class frequencies (voxel fraction of each class over all
cases), the fraction of cases holding each class, and per channel the foreground intensity statistics of a pooled
sample of at most :data:`FOREGROUND_SAMPLES_PER_CASE` voxels per case -- nnU-Net's recipe for its CT
normalisation (Isensee et al. 2021, "nnU-Net", Nat. Methods 18:203, supplementary note 2: 10,000 foreground
voxels per training case). MONAI's ``DataAnalyzer`` computes similar statistics, but not on the RAS grid, not per
channel inside the foreground pooled across cases, and it needs the Auto3DSeg datalist format; ours is about 100
lines of numpy and is tested against numpy directly.

Refused (one :class:`DatasetFingerprintError` listing every problem with the files it concerns): fewer than
:data:`MIN_TRAINING_CASES` cases, a modality :mod:`.rules` does not know, image and label of different shape or
geometry, label values that ``dataset.json`` does not declare, cases with differing channel counts or
dimensionality. Missing files are reported by :func:`monai_unetzoo.data.msd.build_msd_datalist` (an
``MSDDatasetError`` naming each missing file).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = [
    "FOREGROUND_SAMPLES_PER_CASE",
    "MIN_TRAINING_CASES",
    "TWO_D_SUFFIXES",
    "DatasetFingerprintError",
    "CaseFingerprint",
    "DatasetFingerprint",
    "foreground_intensity_stats",
    "class_voxel_counts",
    "roi_intensity_samples",
    "roi_threshold_dice",
    "best_roi_threshold",
    "spacing_from_affine",
    "fingerprint_case_arrays",
    "pooled_intensity_stats",
    "fingerprint_dataset",
]

#: Foreground voxels sampled per case for the data-set intensity statistics (nnU-Net's number).
FOREGROUND_SAMPLES_PER_CASE = 10000
#: A train/validation split needs at least two labelled cases.
MIN_TRAINING_CASES = 2
#: Files read as 2D images (PIL, no spacing; the DRIVE bundle's reader settings).
TWO_D_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".gif", ".bmp")
#: Intensity percentiles recorded per case and channel.
PERCENTILES = (0.5, 50.0, 99.5)


class DatasetFingerprintError(ValueError):
    """The data set cannot be planned; ``problems`` lists ``(file, reason)`` pairs, one per line in the message."""

    def __init__(self, root: str | os.PathLike, problems: Sequence[tuple[str, str]]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  {f}: {p}" for f, p in self.problems)
        super().__init__(f"cannot plan a bundle for {root}: {len(self.problems)} problem(s):\n{lines}")


@dataclass
class CaseFingerprint:
    """One training case. ``shape``/``spacing`` are spatial (X, Y[, Z]) in the training frame (RAS for 3D)."""

    case_id: str
    image: str
    label: str
    shape: list[int]
    spacing: list[float]
    orientation: str
    channels: int
    intensity: list[dict[str, float]]
    class_voxels: dict[str, int]
    class_volume: dict[str, float]
    roi: str | None = None
    roi_fraction: float | None = None


@dataclass
class DatasetFingerprint:
    """The whole data set: the cases, the dataset.json facts and the pooled statistics (JSON-serialisable)."""

    root: str
    name: str
    modality: dict[str, str]
    labels: dict[str, str]
    spatial_dims: int
    channels: int
    cases: list[CaseFingerprint]
    num_cases_total: int
    licence: str = "not stated"
    median_shape: list[float] = field(default_factory=list)
    median_spacing: list[float] = field(default_factory=list)
    class_frequencies: dict[str, float] = field(default_factory=dict)
    class_case_fraction: dict[str, float] = field(default_factory=dict)
    foreground_intensity: list[dict[str, float]] = field(default_factory=list)
    roi_threshold: dict[str, float] | None = None

    @property
    def has_roi(self) -> bool:
        """Every case comes with a region-of-interest mask (dataset.json ``"roi"``; all or none is enforced)."""
        return bool(self.cases) and all(c.roi is not None for c in self.cases)

    def spacings(self) -> np.ndarray:
        """(N, D) spacings of the cases."""
        return np.asarray([c.spacing for c in self.cases], dtype=np.float64)

    def shapes(self) -> np.ndarray:
        """(N, D) spatial shapes of the cases."""
        return np.asarray([c.shape for c in self.cases], dtype=np.float64)

    def to_json(self) -> dict[str, Any]:
        """Plain dict (what metadata.json stores under ``fingerprint``)."""
        return asdict(self)


def foreground_intensity_stats(image: np.ndarray, label: np.ndarray) -> list[dict[str, float]]:
    """Per channel of ``image`` (C, *S) the statistics of the voxels where ``label`` (*S) > 0.

    Returns one dict per channel: ``p0.5``, ``p50``, ``p99.5`` (``numpy.percentile``, linear), ``mean``, ``std``
    (population), ``min``, ``max``; all NaN for a case without foreground.
    """
    mask = np.asarray(label) > 0
    stats = []
    for channel in np.asarray(image):
        values = np.asarray(channel, dtype=np.float64)[mask]
        if values.size == 0:
            stats.append({k: float("nan") for k in ("p0.5", "p50", "p99.5", "mean", "std", "min", "max")})
            continue
        p = np.percentile(values, PERCENTILES)
        stats.append({"p0.5": float(p[0]), "p50": float(p[1]), "p99.5": float(p[2]), "mean": float(values.mean()),
                      "std": float(values.std()), "min": float(values.min()), "max": float(values.max())})
    return stats


def roi_intensity_samples(image: np.ndarray, roi: np.ndarray, rng: np.random.Generator) -> dict[str, Any]:
    """The brightest channel of ``image`` (C, *S) sampled inside and outside the ROI (*S): at most
    FOREGROUND_SAMPLES_PER_CASE values each, with the full counts (what :func:`roi_threshold_dice` weighs by)."""
    brightest = np.asarray(image, dtype=np.float64).max(axis=0).ravel()
    inside = np.asarray(roi).ravel() > 0
    out: dict[str, Any] = {}
    for name, values in (("inside", brightest[inside]), ("outside", brightest[~inside])):
        if values.size > FOREGROUND_SAMPLES_PER_CASE:
            values = rng.choice(values, FOREGROUND_SAMPLES_PER_CASE, replace=False)
        out[name], out[f"n_{name}"] = values, int(inside.sum() if name == "inside" else (~inside).sum())
    return out


def roi_threshold_dice(samples: Sequence[dict[str, Any]], thresholds: Sequence[float]) -> np.ndarray:
    """(N cases, T thresholds) Dice between ``brightest channel > t`` and the ROI, from :func:`roi_intensity_samples`
    (exact where the samples are every voxel): tp = n_inside * P(inside > t), fp = n_outside * P(outside > t)."""
    t = np.asarray(thresholds, dtype=np.float64)[None, :]
    dice = []
    for s in samples:
        tp = s["n_inside"] * (np.asarray(s["inside"])[:, None] > t).mean(axis=0)
        fp = s["n_outside"] * ((np.asarray(s["outside"])[:, None] > t).mean(axis=0) if s["n_outside"] else 0.0)
        dice.append(2 * tp / np.maximum(tp + fp + s["n_inside"], 1e-12))
    return np.asarray(dice)


def best_roi_threshold(samples: Sequence[dict[str, Any]], candidates: int = 64) -> dict[str, float]:
    """The threshold on the brightest channel that best recovers the ROIs: the highest mean
    :func:`roi_threshold_dice` over the cases among ``candidates`` quantiles of the pooled samples and as many
    evenly spaced values between their extremes; ``{"threshold", "mean_dice", "min_dice"}`` (what the planned
    inference's ``EstimateFovMaskd`` uses; its largest-component and hole filling only add to the agreement)."""
    pooled = np.concatenate([np.concatenate([s["inside"], s["outside"]]) for s in samples])
    inner = np.linspace(0.0, 1.0, candidates + 2)[1:-1]
    thresholds = np.unique(np.concatenate([np.quantile(pooled, inner), pooled.min() + inner * np.ptp(pooled)]))
    dice = roi_threshold_dice(samples, thresholds)
    best = int(np.argmax(dice.mean(axis=0)))
    return {"threshold": float(thresholds[best]), "mean_dice": float(dice[:, best].mean()),
            "min_dice": float(dice[:, best].min())}


def class_voxel_counts(label: np.ndarray, num_classes: int) -> dict[str, int]:
    """``{"0": n0, "1": n1, ...}``: voxels of each class value 0..num_classes-1 in ``label`` (*S)."""
    counts = np.bincount(np.asarray(label, dtype=np.int64).ravel(), minlength=num_classes)
    return {str(k): int(counts[k]) for k in range(num_classes)}


def spacing_from_affine(affine: np.ndarray, spatial_dims: int) -> list[float]:
    """Voxel size per axis: the lengths of the first ``spatial_dims`` columns of the affine (mm)."""
    a = np.asarray(affine, dtype=np.float64)[:spatial_dims, :spatial_dims]
    return [float(v) for v in np.sqrt((a ** 2).sum(axis=0))]


def _orientation_codes(affine: np.ndarray, spatial_dims: int) -> str:
    """Axis codes of an affine (``"RAS"``, ``"LPS"``, ...) from nibabel; 2D images: ``"image"``."""
    if spatial_dims != 3:
        return "image"
    import nibabel as nib

    return "".join(nib.orientations.aff2axcodes(np.asarray(affine, dtype=np.float64)))


def fingerprint_case_arrays(
    case_id: str, image_path: str, label_path: str, image: np.ndarray, label: np.ndarray, spacing: Sequence[float],
    orientation: str, num_classes: int,
) -> CaseFingerprint:
    """The fingerprint of one case from its arrays: ``image`` (C, *S), ``label`` (*S) integer classes."""
    voxel = float(np.prod(spacing))
    counts = class_voxel_counts(label, num_classes)
    return CaseFingerprint(
        case_id=case_id, image=image_path, label=label_path, shape=[int(s) for s in label.shape],
        spacing=[float(s) for s in spacing], orientation=orientation, channels=int(image.shape[0]),
        intensity=foreground_intensity_stats(image, label), class_voxels=counts,
        class_volume={k: n * voxel for k, n in counts.items()},
    )


def _loaders() -> dict[str, Any]:
    """MONAI ``LoadImage`` as the planned bundle loads files: ``"2d"`` PIL without index reversal (the DRIVE
    bundle's reader settings), ``"volume"`` MONAI's choice by suffix (NIfTI, NRRD, MHA)."""
    from monai.transforms import LoadImage

    return {"2d": LoadImage(image_only=True, ensure_channel_first=True, reader="PILReader", reverse_indexing=False),
            "volume": LoadImage(image_only=True, ensure_channel_first=True)}


def _load_pair(image_path: str, label_path: str, loaders: dict[str, Any]) -> tuple[Any, Any, np.ndarray]:
    """Image and label as channel-first MetaTensors, reoriented to RAS when 3D (the bundle's Orientationd), and
    the image file's own affine."""
    from monai.transforms import Orientation

    def kind(path: str) -> str:
        return "2d" if path.lower().endswith(TWO_D_SUFFIXES) else "volume"

    image, label = loaders[kind(image_path)](image_path), loaders[kind(label_path)](label_path)
    file_affine = np.asarray(image.affine, dtype=np.float64)
    if image.ndim == 4 and label.ndim == 4:
        to_ras = Orientation(axcodes="RAS", labels=None)
        image, label = to_ras(image), to_ras(label)
    return image, label, file_affine


def _load_roi(item: dict[str, str], image: Any, loaders: dict[str, Any]) -> tuple[np.ndarray | None, list]:
    """The case's ROI mask (*S) on the image grid (reoriented as the image), or None; problems if it does not fit."""
    if "roi" not in item:
        return None, []
    from monai.transforms import Orientation

    kind = "2d" if item["roi"].lower().endswith(TWO_D_SUFFIXES) else "volume"
    roi = loaders[kind](item["roi"])
    if roi.ndim == 4:
        roi = Orientation(axcodes="RAS", labels=None)(roi)
    if tuple(roi.shape[1:]) != tuple(image.shape[1:]) or roi.shape[0] != 1:
        return None, [(item["roi"], f"roi mask shape {tuple(roi.shape)} is not one channel on its image's grid "
                                    f"{tuple(image.shape[1:])} ({item['image']})")]
    mask = np.asarray(roi[0]) > 0
    if not mask.any():
        return None, [(item["roi"], "roi mask is empty (no voxel > 0)")]
    return mask, []


def _pair_problems(image_path: str, label_path: str, image: Any, label: Any, declared: set[int]) -> list[tuple[str, str]]:
    """Geometry and label-value problems of one loaded pair."""
    if tuple(image.shape[1:]) != tuple(label.shape[1:]):
        return [(label_path, f"label shape {tuple(label.shape[1:])} differs from its image's "
                             f"{tuple(image.shape[1:])} ({image_path})")]
    problems = []
    if not np.allclose(np.asarray(image.affine), np.asarray(label.affine), atol=1e-3):
        problems.append((label_path, f"label geometry (affine) differs from its image's ({image_path})"))
    if label.shape[0] != 1:
        problems.append((label_path, f"label has {label.shape[0]} channels; expected one channel of class values"))
    values = np.unique(np.asarray(label))
    if not np.all(values == np.round(values)) or not set(int(v) for v in values) <= declared:
        problems.append((label_path, f"label values {sorted(float(v) for v in values)[:10]} are not all among "
                                     f"the classes dataset.json declares {sorted(declared)}"))
    return problems


def _sample_foreground(image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """At most FOREGROUND_SAMPLES_PER_CASE foreground values per channel (the same voxels in every channel)."""
    index = np.flatnonzero(np.asarray(label).ravel() > 0)
    if index.size > FOREGROUND_SAMPLES_PER_CASE:
        index = rng.choice(index, FOREGROUND_SAMPLES_PER_CASE, replace=False)
    return [np.asarray(c, dtype=np.float64).ravel()[index] for c in image]


def pooled_intensity_stats(samples: Sequence[np.ndarray]) -> dict[str, float]:
    """mean/std/percentiles of the pooled foreground samples of one channel (nnU-Net's CT statistics)."""
    values = np.concatenate(list(samples)) if samples else np.zeros(0)
    if values.size == 0:
        return {}
    p = np.percentile(values, PERCENTILES)
    return {"p0.5": float(p[0]), "p50": float(p[1]), "p99.5": float(p[2]), "mean": float(values.mean()),
            "std": float(values.std()), "min": float(values.min()), "max": float(values.max())}


def _dataset_json_problems(root: Path, content: dict[str, Any], n: int) -> list[tuple[str, str]]:
    """Modality, label and case-count problems of dataset.json itself."""
    from .rules import modality_kind

    where = str(root / "dataset.json")
    problems = []
    modality = content.get("modality")
    if not isinstance(modality, dict) or not modality:
        problems.append((where, 'no "modality" map (e.g. {"0": "MRI"} or {"0": "CT"}): the normalisation cannot be '
                                "chosen"))
    else:
        for channel, name in modality.items():
            if modality_kind(str(name)) is None:
                problems.append((where, f"unknown modality {name!r} of channel {channel}; known: CT, MR/MRI (T1, "
                                        "T2, FLAIR, ADC, ...), and 2D images (RGB, fundus, EM, microscopy, photo)"))
    labels = content.get("labels")
    if not isinstance(labels, dict) or len(labels) < 2 or str(0) not in {str(k) for k in labels}:
        problems.append((where, f'"labels" must map 0 (background) and at least one class to names, got {labels!r}'))
    if n < MIN_TRAINING_CASES:
        problems.append((where, f"{n} training case(s); planning needs at least {MIN_TRAINING_CASES} (one to train, "
                                "one to validate)"))
    return problems


def _check_consistency(cases: Sequence[CaseFingerprint], dims: Sequence[int]) -> list[tuple[str, str]]:
    """Every case must have the first case's channel count and dimensionality."""
    problems = []
    for case, d in zip(cases, dims):
        if case.channels != cases[0].channels or d != dims[0]:
            problems.append((case.image, f"{case.channels} channel(s), {d}D; the first case ({cases[0].image}) has "
                                         f"{cases[0].channels} channel(s), {dims[0]}D"))
    return problems


def _select_cases(datalist: list[dict[str, str]], max_cases: int | None, seed: int) -> list[dict[str, str]]:
    """All cases, or ``max_cases`` of them drawn without replacement (seeded), in case-id order."""
    if max_cases is None or max_cases >= len(datalist):
        return datalist
    keep = sorted(np.random.default_rng(seed).choice(len(datalist), int(max_cases), replace=False))
    return [datalist[i] for i in keep]


def fingerprint_dataset(root: str | os.PathLike, max_cases: int | None = None, seed: int = 0) -> DatasetFingerprint:
    """Read every (or ``max_cases`` randomly chosen) training case of the MSD folder ``root``; see the module doc.

    Raises:
        MSDDatasetError: dataset.json missing or malformed, listed files missing (each named).
        DatasetFingerprintError: everything else that makes the data unplannable, every problem with its file.
    """
    from ..data.msd import build_msd_datalist, read_msd_dataset_json

    root = Path(root).expanduser().resolve()
    content = read_msd_dataset_json(root)
    problems = _dataset_json_problems(root, content, len(content["training"]))
    if problems:
        raise DatasetFingerprintError(root, problems)
    datalist = build_msd_datalist(root, "training", validate=True)
    declared = {int(k) for k in content["labels"]}
    num_classes = max(declared) + 1
    rng, loaders = np.random.default_rng(seed), _loaders()
    cases, dims, samples, roi_samples = [], [], [], []
    for item in _select_cases(datalist, max_cases, seed):
        image, label, file_affine = _load_pair(item["image"], item["label"], loaders)
        pair = _pair_problems(item["image"], item["label"], image, label, declared)
        if pair:
            problems.extend(pair)
            continue
        roi, roi_problems = _load_roi(item, image, loaders)
        if roi_problems:
            problems.extend(roi_problems)
            continue
        sd = image.ndim - 1
        img, lab = np.asarray(image), np.asarray(label[0]).astype(np.int64)
        spacing = spacing_from_affine(image.affine, sd) if sd == 3 else [1.0] * sd
        case = fingerprint_case_arrays(item["case_id"], item["image"], item["label"], img, lab, spacing,
                                       _orientation_codes(file_affine, sd), num_classes)
        if roi is not None:
            case.roi, case.roi_fraction = item["roi"], float(roi.mean())
            roi_samples.append(roi_intensity_samples(img, roi, rng))
        cases.append(case)
        dims.append(sd)
        samples.append(_sample_foreground(img, lab, rng))
    problems.extend(_check_consistency(cases, dims) if cases else [])
    if problems:
        raise DatasetFingerprintError(root, problems)
    fp = _summarise(root, content, cases, dims[0], samples, len(datalist))
    fp.roi_threshold = best_roi_threshold(roi_samples) if fp.has_roi else None
    return fp


def _summarise(root: Path, content: dict[str, Any], cases: list[CaseFingerprint], spatial_dims: int,
               samples: list[list[np.ndarray]], total: int) -> DatasetFingerprint:
    """The data-set level numbers from the per-case fingerprints and foreground samples."""
    fp = DatasetFingerprint(
        root=str(root), name=str(content.get("name", root.name)),
        modality={str(k): str(v) for k, v in content["modality"].items()},
        labels={str(k): str(v) for k, v in sorted(content["labels"].items(), key=lambda kv: int(kv[0]))},
        spatial_dims=spatial_dims, channels=cases[0].channels, cases=cases, num_cases_total=total,
        licence=str(content.get("licence", content.get("license", "not stated"))),
    )
    fp.median_shape = [float(v) for v in np.median(fp.shapes(), axis=0)]
    fp.median_spacing = [float(v) for v in np.median(fp.spacings(), axis=0)]
    keys = list(cases[0].class_voxels)
    totals = np.asarray([[c.class_voxels[k] for k in keys] for c in cases], dtype=np.float64)
    fp.class_frequencies = {k: float(v) for k, v in zip(keys, totals.sum(0) / totals.sum())}
    fp.class_case_fraction = {k: float(v) for k, v in zip(keys, (totals > 0).mean(0))}
    fp.foreground_intensity = [pooled_intensity_stats([s[ch] for s in samples]) for ch in range(fp.channels)]
    return fp

