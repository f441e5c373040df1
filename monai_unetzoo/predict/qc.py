"""QC flags of one predicted case: which results a person should look at first. Flags never change a segmentation.

Each flag is a code and a reason (the numbers compared), written to ``summary.csv`` (``qc``, ``qc_flags``,
``qc_reasons``) and the report. The reference is the bundle's ``label_stats.json`` (see
:mod:`monai_unetzoo.label_statistics`; looked up beside the checkpoint, then in ``<bundle>/models``):

``empty``
    a structure present in at least :data:`EXPECTED_PRESENCE` of the training labels (every structure of the bundle
    when there are no statistics) has no voxel.
``volume``
    a structure's volume is outside ``[q0.5 - m, q99.5 + m]`` of the training labels, ``m`` = :data:`VOLUME_MARGIN`
    times the width ``q99.5 - q0.5`` (times ``q0.5`` when that is larger: a narrow training range stays usable).
``confidence``
    the mean top-class probability inside the predicted structures is below the validation threshold, or the
    fraction of those voxels with top probability < 0.6 is above it (both from :func:`case_confidence`).
``pieces``
    a structure that is one piece in every training label comes out in several (:func:`count_pieces`).
``geometry``
    the sorted voxel spacings or field-of-view extents lie outside the training range widened by the factor
    :data:`GEOMETRY_FACTOR` (below ``min / f`` or above ``max * f``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..label_statistics import LABEL_STATS_FILE, case_confidence, count_pieces
from ..volume_io import ScanGrid

__all__ = ["QCFlag", "load_training_reference", "find_training_reference", "case_qc_flags", "qc_columns",
           "QC_COLUMNS", "VOLUME_MARGIN", "GEOMETRY_FACTOR", "EXPECTED_PRESENCE"]

VOLUME_MARGIN = 0.25
GEOMETRY_FACTOR = 1.5
EXPECTED_PRESENCE = 0.99
QC_COLUMNS = ["qc", "qc_flags", "qc_reasons", "mean_top_probability", "low_confidence_fraction"]


@dataclass(frozen=True)
class QCFlag:
    """One QC finding: ``code`` (``empty``, ``volume``, ``confidence``, ``pieces``, ``geometry``) and the reason."""

    code: str
    reason: str


def load_training_reference(path: Path) -> dict[str, Any]:
    """The parsed ``label_stats.json``; raises ``ValueError`` for a file of another format."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not str(data.get("format", "")).startswith("monai-unetzoo label statistics"):
        raise ValueError(f"{path}: not a monai-unetzoo label statistics file")
    return data


def find_training_reference(bundle_root: Path | None, checkpoint: Path | None) -> Path | None:
    """``label_stats.json`` beside the checkpoint, else in ``<bundle>/models``; None when neither exists."""
    places = [Path(checkpoint).parent] if checkpoint is not None else []
    places += [Path(bundle_root) / "models"] if bundle_root is not None else []
    return next((p / LABEL_STATS_FILE for p in places if (p / LABEL_STATS_FILE).is_file()), None)


def _volume_flags(volumes: dict[int, float], structures: dict[str, Any], names: dict[int, str]) -> list[QCFlag]:
    flags = []
    for value, vol in volumes.items():
        ref = (structures.get(str(value)) or {}).get("volume")
        if ref is None or vol == 0:
            continue
        margin = VOLUME_MARGIN * max(ref["q99.5"] - ref["q0.5"], ref["q0.5"])
        lo, hi = ref["q0.5"] - margin, ref["q99.5"] + margin
        if not lo <= vol <= hi:
            flags.append(QCFlag("volume", f"{names[value]} {vol:.4g} {ref['unit']} outside the training range "
                                          f"[{max(lo, 0.0):.4g}, {hi:.4g}] (q0.5..q99.5 {ref['q0.5']:.4g}..{ref['q99.5']:.4g})"))
    return flags


def _empty_flags(volumes: dict[int, float], structures: dict[str, Any] | None, names: dict[int, str]) -> list[QCFlag]:
    flags = []
    for value, vol in volumes.items():
        presence = 1.0 if structures is None else (structures.get(str(value)) or {}).get("present_fraction", 0.0)
        if vol == 0 and presence >= EXPECTED_PRESENCE:
            seen = "expected by the bundle" if structures is None else f"present in {presence:.0%} of the training labels"
            flags.append(QCFlag("empty", f"no {names[value]} predicted ({seen})"))
    return flags


def _piece_flags(labels: np.ndarray, structures: dict[str, Any], names: dict[int, str]) -> list[QCFlag]:
    flags = []
    for value, name in names.items():
        ref = structures.get(str(value)) or {}
        if ref.get("max_pieces") != 1:
            continue
        n = count_pieces(labels == value)
        if n > 1:
            flags.append(QCFlag("pieces", f"{name} in {n} pieces (one piece in every training label)"))
    return flags


def _confidence_flags(conf: dict[str, float], ref: dict[str, Any] | None) -> list[QCFlag]:
    if not ref or ref.get("mean_top_probability_min") is None or math.isnan(conf["mean_top_probability"]):
        return []
    flags = []
    if conf["mean_top_probability"] < ref["mean_top_probability_min"]:
        flags.append(QCFlag("confidence", f"mean top-class probability in the structures {conf['mean_top_probability']:.3f}"
                                          f" < {ref['mean_top_probability_min']:.3f} (validation minimum - margin)"))
    if conf["low_confidence_fraction"] > ref["low_confidence_fraction_max"]:
        flags.append(QCFlag("confidence", f"{conf['low_confidence_fraction']:.1%} of the structure voxels have top "
                                          f"probability < {ref['low_probability']} (validation maximum + margin "
                                          f"{ref['low_confidence_fraction_max']:.1%})"))
    return flags


def _geometry_flags(grid: ScanGrid, geometry: dict[str, Any]) -> list[QCFlag]:
    if not grid.physical:
        return []
    spacing = sorted(grid.spacing)
    extent = sorted(n * s for n, s in zip(grid.spatial_shape, grid.spacing))
    flags = []
    for what, values, key in (("spacing", spacing, "spacing_sorted"), ("extent", extent, "extent_mm_sorted")):
        lo, hi = geometry.get(f"{key}_min"), geometry.get(f"{key}_max")
        if lo is None or len(lo) != len(values):
            continue
        outside = [i for i, v in enumerate(values) if v < lo[i] / GEOMETRY_FACTOR or v > hi[i] * GEOMETRY_FACTOR]
        if outside:
            shown = " x ".join(f"{v:.3g}" for v in values)
            ranges = " x ".join(f"{a:.3g}-{b:.3g}" for a, b in zip(lo, hi))
            flags.append(QCFlag("geometry", f"{what} {shown} mm (sorted) far from the training range {ranges} mm"))
    return flags


def case_qc_flags(labels: np.ndarray, probs: np.ndarray | None, grid: ScanGrid, label_names: dict[int, str],
                  reference: dict[str, Any] | None) -> tuple[list[QCFlag], dict[str, float]]:
    """The flags of one case and its confidence numbers.

    Args:
        labels: (*spatial) the final label map on the input grid; probs: (C, *spatial) probabilities (None: no
            confidence flags); grid: the input's grid; label_names: foreground value -> name;
        reference: the parsed ``label_stats.json`` or None (then only ``empty`` is checked).
    """
    counts = np.bincount(np.asarray(labels).ravel().astype(np.int64), minlength=max(label_names) + 1)
    unit = grid.voxel_volume / (1000.0 if np.asarray(labels).ndim == 3 else 1.0)
    volumes = {v: float(counts[v]) * unit for v in label_names}
    conf = case_confidence(probs, labels) if probs is not None else {"mean_top_probability": float("nan"),
                                                                     "low_confidence_fraction": float("nan")}
    training = (reference or {}).get("training")
    flags = _empty_flags(volumes, training["structures"] if training else None, label_names)
    if training:
        if grid.physical:
            flags += _volume_flags(volumes, training["structures"], label_names)
        flags += _piece_flags(np.asarray(labels), training["structures"], label_names)
        flags += _geometry_flags(grid, training.get("geometry", {}))
    flags += _confidence_flags(conf, (reference or {}).get("validation_confidence"))
    return flags, conf


def qc_columns(flags: list[QCFlag], conf: dict[str, float]) -> dict[str, str]:
    """The summary columns of :data:`QC_COLUMNS` for one case."""
    fmt = (lambda v: "" if math.isnan(v) else f"{v:.4f}")
    return {
        "qc": "flagged" if flags else "ok",
        "qc_flags": ";".join(dict.fromkeys(f.code for f in flags)),
        "qc_reasons": "; ".join(f.reason for f in flags),
        "mean_top_probability": fmt(conf["mean_top_probability"]),
        "low_confidence_fraction": fmt(conf["low_confidence_fraction"]),
    }
