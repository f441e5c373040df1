"""What "normal" looked like at training time, stored in the bundle (``models/label_stats.json``) for the QC flags
of ``unetzoo predict`` (:mod:`monai_unetzoo.predict.qc`).

From the **training labels** (each read on its own grid, as the user's scans will be): per structure the volume
quantiles (q0.5, q99.5, min, max; mL in 3D, mm^2 in 2D), the fraction of cases where it is present, and how many
pieces it has (:func:`count_pieces`: connected components of at least :data:`PIECE_MIN_FRACTION` of the structure,
full connectivity); the image geometry (sorted spacings and field-of-view extents, min and max). From the
**validation set**, predicted with the network at the end of training: per case the confidence numbers of
:func:`case_confidence` and the thresholds derived from them (worst validation value relaxed by
:data:`CONFIDENCE_MARGIN`).

Why the same functions on both sides: the QC compares a prediction with the training data only if both are measured
the same way; :func:`count_pieces` and :func:`case_confidence` are the one definition used here and in the QC.

Use: :class:`LabelStatisticsWriter`, an ignite handler attached to the trainer (writes at ``COMPLETED``), or
:func:`write_label_statistics` directly (e.g. for a checkpoint trained elsewhere).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

__all__ = ["LOW_CONFIDENCE_PROBABILITY", "PIECE_MIN_FRACTION", "CONFIDENCE_MARGIN", "count_pieces",
           "case_confidence", "training_label_statistics", "validation_confidence_statistics",
           "write_label_statistics", "LabelStatisticsWriter", "LABEL_STATS_FILE"]

LABEL_STATS_FILE = "label_stats.json"
LOW_CONFIDENCE_PROBABILITY = 0.6  # a voxel whose top-class probability is below this is "unsure"
PIECE_MIN_FRACTION = 0.05  # components smaller than this fraction of the structure are specks, not pieces
CONFIDENCE_MARGIN = 0.05  # thresholds = worst validation value relaxed by this (probability / fraction units)
_log = logging.getLogger(__name__)


def count_pieces(mask: np.ndarray, min_fraction: float = PIECE_MIN_FRACTION) -> int:
    """Connected components (full connectivity: 8 in 2D, 26 in 3D) of the boolean ``mask`` (*spatial) that hold
    at least ``min_fraction`` of its voxels; 0 for an empty mask."""
    from scipy import ndimage

    mask = np.asarray(mask, bool)
    if not mask.any():
        return 0
    components, n = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, bool))
    sizes = np.bincount(components.ravel())[1:]
    return int((sizes >= min_fraction * mask.sum()).sum()) if n else 0


def case_confidence(probs: np.ndarray, labels: np.ndarray, low: float = LOW_CONFIDENCE_PROBABILITY) -> dict[str, float]:
    """Confidence of one prediction inside the predicted structures (labels > 0).

    Args:
        probs: (C, *spatial) class probabilities (C == 1: a sigmoid foreground probability).
        labels: (*spatial) the label map made from them.
    Returns:
        ``mean_top_probability``: mean over the structure voxels of the winning class's probability;
        ``low_confidence_fraction``: fraction of them whose winning probability is below ``low``. Both NaN when
        nothing was predicted (the "empty" flag covers that case).
    """
    probs = np.asarray(probs, np.float32)
    inside = np.asarray(labels) > 0
    if not inside.any():
        return {"mean_top_probability": float("nan"), "low_confidence_fraction": float("nan")}
    top = probs[0][inside] if probs.shape[0] == 1 else probs[:, inside].max(axis=0)
    return {"mean_top_probability": float(top.mean(dtype=np.float64)),
            "low_confidence_fraction": float((top < low).mean(dtype=np.float64))}


def _read_label(path: str) -> tuple[np.ndarray, Any]:
    from .volume_io import load_scan

    image, grid = load_scan(path)
    return image[0].numpy().round().astype(np.int64), grid


def _geometry_entry(grid: Any) -> tuple[list[float], list[float]]:
    spacing = list(grid.spacing)
    extent = [n * s for n, s in zip(grid.spatial_shape, spacing)]
    return sorted(spacing), sorted(extent)


def training_label_statistics(label_files: Sequence[str], label_names: Mapping[int, str]) -> dict[str, Any]:
    """Per-structure volume quantiles, presence and pieces, and the geometry ranges, of ``label_files``."""
    volumes: dict[int, list[float]] = {v: [] for v in label_names}
    pieces: dict[int, list[int]] = {v: [] for v in label_names}
    spacings, extents, unit_name = [], [], "mL"
    for f in label_files:
        lab, grid = _read_label(f)
        unit_name = "mL" if lab.ndim == 3 else "mm2"
        unit = grid.voxel_volume / (1000.0 if lab.ndim == 3 else 1.0)
        counts = np.bincount(lab.ravel(), minlength=max(label_names) + 1)
        for v in label_names:
            volumes[v].append(float(counts[v]) * unit)
            pieces[v].append(count_pieces(lab == v))
        s, e = _geometry_entry(grid)
        spacings.append(s)
        extents.append(e)
    structures = {}
    for v, name in label_names.items():
        vol = np.asarray(volumes[v])
        present = vol > 0
        pcs = np.asarray(pieces[v])[present]
        structures[str(v)] = {
            "name": name,
            "present_fraction": float(present.mean()) if vol.size else 0.0,
            "volume": {"unit": unit_name,
                       **{k: float(q) for k, q in zip(("q0.5", "q99.5"), np.quantile(vol[present], [0.005, 0.995]))},
                       "min": float(vol[present].min()), "max": float(vol[present].max())} if present.any() else None,
            "max_pieces": int(pcs.max()) if pcs.size else 0,
            "one_piece_fraction": float((pcs == 1).mean()) if pcs.size else 0.0,
        }
    sp, ex = np.asarray(spacings), np.asarray(extents)
    return {
        "cases": len(label_files),
        "structures": structures,
        "geometry": {"spacing_sorted_min": sp.min(0).tolist(), "spacing_sorted_max": sp.max(0).tolist(),
                     "extent_mm_sorted_min": ex.min(0).tolist(), "extent_mm_sorted_max": ex.max(0).tolist()},
    }


def validation_confidence_statistics(
    cases: Sequence[Mapping[str, Any]],
    network: torch.nn.Module,
    preprocessing: Callable[[dict], dict],
    inferer: Callable[..., torch.Tensor],
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """:func:`case_confidence` of every validation case, and the QC thresholds from them.

    Each case (``{"image": path, ...}``) goes through ``preprocessing`` (the bundle's validation transforms) and
    ``inferer`` (returning probabilities (1, C, *spatial), as :class:`~monai_unetzoo.inference.SlidingWindowPredictor`
    does); the numbers are measured on the preprocessed grid (prediction measures them after inverting onto the
    input's grid; for linear resampling of probabilities the two agree closely).
    """
    values = []
    for case in cases:
        data = preprocessing(dict(case))
        x = data["image"]
        x = (x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x))[None].to(device)
        probs = inferer(x, network)[0].detach().float().cpu().numpy()
        labels = (probs[0] > 0.5) if probs.shape[0] == 1 else probs.argmax(0)
        values.append({"case": str(case.get("case_id", case["image"])), **case_confidence(probs, labels)})
    means = np.asarray([v["mean_top_probability"] for v in values], np.float64)
    lows = np.asarray([v["low_confidence_fraction"] for v in values], np.float64)
    ok = np.isfinite(means)
    return {
        "cases": len(values),
        "low_probability": LOW_CONFIDENCE_PROBABILITY,
        "margin": CONFIDENCE_MARGIN,
        "mean_top_probability_min": float(means[ok].min() - CONFIDENCE_MARGIN) if ok.any() else None,
        "low_confidence_fraction_max": float(lows[ok].max() + CONFIDENCE_MARGIN) if ok.any() else None,
        "per_case": values,
    }


def write_label_statistics(
    path: str | os.PathLike,
    train_datalist: Sequence[Mapping[str, Any]],
    label_names: Mapping[int, str] | Sequence[str],
    *,
    val_datalist: Sequence[Mapping[str, Any]] | None = None,
    network: torch.nn.Module | None = None,
    preprocessing: Callable[[dict], dict] | None = None,
    inferer: Callable[..., torch.Tensor] | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Compute and write (atomically) ``label_stats.json``; the confidence part needs the validation data, the
    network, its preprocessing and inferer (it is left out without them). ``label_names``: ``{1: "anterior", ...}``
    or the foreground names in label order."""
    from .volume_io import atomic_output_path

    names = dict(label_names) if isinstance(label_names, Mapping) else {i + 1: n for i, n in enumerate(label_names)}
    names = {int(k): str(v) for k, v in names.items()}
    stats = {
        "format": "monai-unetzoo label statistics 1",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "piece_min_fraction": PIECE_MIN_FRACTION,
        "training": training_label_statistics([c["label"] for c in train_datalist], names),
    }
    if val_datalist and network is not None and preprocessing is not None and inferer is not None:
        stats["validation_confidence"] = validation_confidence_statistics(val_datalist, network, preprocessing,
                                                                          inferer, device)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output_path(path) as tmp:
        tmp.write_text(json.dumps(stats, indent=1) + "\n", encoding="utf-8")
    _log.info("label statistics of %d training labels written to %s", len(train_datalist), path)
    return stats


class LabelStatisticsWriter:
    """Ignite handler: at the trainer's ``COMPLETED`` event, :func:`write_label_statistics` to ``path`` (the bundle's
    ``models/label_stats.json``), validation confidence with the network as training left it.

    Rank 0 only under DDP (other ranks do nothing). Arguments as :func:`write_label_statistics`.
    """

    def __init__(self, path: str, train_datalist: Sequence[Mapping[str, Any]], label_names: Any, *,
                 val_datalist: Sequence[Mapping[str, Any]] | None = None, network: torch.nn.Module | None = None,
                 preprocessing: Any = None, inferer: Any = None, device: Any = "cpu", enabled: bool = True):
        self.path, self.train_datalist, self.label_names = path, train_datalist, label_names
        self.val_datalist, self.network, self.preprocessing, self.inferer = val_datalist, network, preprocessing, inferer
        self.device, self.enabled = device, enabled

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Any = None) -> None:
        if not self.enabled or (torch.distributed.is_available() and torch.distributed.is_initialized()
                                and torch.distributed.get_rank() != 0):
            return
        write_label_statistics(self.path, self.train_datalist, self.label_names, val_datalist=self.val_datalist,
                               network=self.network, preprocessing=self.preprocessing, inferer=self.inferer,
                               device=self.device)
