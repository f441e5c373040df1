"""The ``metrics_<split>.json`` summaries the bundles' ``evaluate.json`` writes after an evaluation.

Why here and not in the config: the summary needs per-case values reshaped per class, NaN-aware means and JSON
conversion; as one-line ``$`` expressions of 440-545 characters that was untestable and differed between the
bundles by accident. The config now only wires the evaluator's state to these functions::

    "$monai_unetzoo.summaries.write_summary_json(@summary_json, monai_unetzoo.summaries.drive_evaluation_summary(
        @split, @ckpt_path, @data_root, @eval_datalist, @evaluator.state))"

``state`` is an ignite engine state after ``SupervisedEvaluator.run()``: ``state.metrics`` maps a metric name to
its aggregate (a float, or a per-class tensor), ``state.metric_details`` a metric name to its per-case values
(``(N, C)`` or ``(N,)`` for N cases and C classes, as MONAI's metric handlers with ``save_details`` leave them).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["drive_evaluation_summary", "msd_evaluation_summary", "summary_header", "write_summary_json"]


def summary_header(split: str, checkpoint: str | os.PathLike, data_root: str | os.PathLike,
                   datalist: Sequence[Mapping[str, Any]], count_key: str) -> dict[str, Any]:
    """What every summary starts with: split, absolute checkpoint path, data root, case count and case ids.

    ``count_key`` names the count (``num_images`` for DRIVE, ``num_cases`` for volumes) as the bundles always did.
    """
    return {"split": split, "checkpoint": os.path.abspath(checkpoint), "data_root": str(data_root),
            count_key: len(datalist), "cases": [d["case_id"] for d in datalist]}


def _as_float(value: Any) -> float:
    """A metric aggregate (float or one-element tensor) as a plain float for JSON."""
    return float(value)


def drive_evaluation_summary(split: str, checkpoint: str | os.PathLike, data_root: str | os.PathLike,
                             datalist: Sequence[Mapping[str, Any]], state: Any) -> dict[str, Any]:
    """Summary of a 2D (DRIVE) evaluation: header, ``mean`` (each metric's aggregate) and ``per_image``.

    ``per_image[name]`` is the flattened per-image detail of that metric (one value per image for the single
    vessel class), in datalist order.
    """
    summary = summary_header(split, checkpoint, data_root, datalist, "num_images")
    summary["mean"] = {k: _as_float(v) for k, v in state.metrics.items()}
    summary["per_image"] = {k: [float(x) for x in torch.as_tensor(v).reshape(-1)]
                            for k, v in state.metric_details.items()}
    return summary


def msd_evaluation_summary(split: str, checkpoint: str | os.PathLike, data_root: str | os.PathLike,
                           datalist: Sequence[Mapping[str, Any]], class_names: Sequence[str],
                           state: Any) -> dict[str, Any]:
    """Summary of a multi-class volume evaluation: header, ``class_names``, ``per_class_mean`` and ``mean``.

    ``per_class_mean[name][c]`` is the mean over cases of class ``c`` of that metric's per-case details, ignoring
    NaN (MONAI's value for a class absent from both prediction and label), so one empty case does not turn the
    class mean into NaN; an all-NaN class stays NaN. ``mean`` holds MONAI's own aggregates.
    """
    summary = summary_header(split, checkpoint, data_root, datalist, "num_cases")
    summary["class_names"] = list(class_names)
    summary["per_class_mean"] = {k: _nan_class_means(v, len(datalist)) for k, v in state.metric_details.items()}
    summary["mean"] = {k: _as_float(v) for k, v in state.metrics.items()}
    return summary


def _nan_class_means(details: Any, num_cases: int) -> list[float]:
    """(N, C) per-case values (any tensor/array layout holding N x C numbers) -> C NaN-ignoring means."""
    per_case = np.asarray(torch.as_tensor(details).cpu(), dtype=float).reshape(num_cases, -1)
    return [float(np.nanmean(column)) if not np.isnan(column).all() else float("nan") for column in per_case.T]


def write_summary_json(path: str | os.PathLike, summary: Mapping[str, Any]) -> str:
    """Write ``summary`` as indented JSON to ``path`` (its folder must exist); return the path as a string."""
    Path(path).write_text(json.dumps(summary, indent=2))
    return str(path)
