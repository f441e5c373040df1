"""ROI-masked segmentation metrics: confusion matrix inside a region of interest, ROC AUC, per-case tables.

Why: MONAI's ``ConfusionMatrixMetric`` / ``DiceMetric`` score every pixel of the image, so pixels outside the
field of view count as true negatives and inflate accuracy and specificity (a third of each DRIVE image lies
outside the FOV). The DRIVE literature (e.g. Staal et al., IEEE TMI 2004; Fraz et al., CMPB 2012 review) reports
Acc, Se, Sp, AUC and F1 computed inside the FOV only. Here the confusion matrix [tp, fp, tn, fn] (MONAI's order)
is counted on ROI pixels, and the ratios are MONAI's own ``compute_confusion_matrix_metric``.

Conventions:

- ``y_pred`` and ``y``: binarised one-hot (B, C, *spatial) (e.g. after ``AsDiscrete(argmax=True, to_onehot=C)``,
  or ``AsDiscrete(threshold=0.5)`` for one sigmoid channel); ``roi``: (B, 1, *spatial), inside where ``> 0.5``;
  ``None`` = the whole image. 2D and 3D alike.
- Undefined values: a ratio whose denominator is 0 is NaN (MONAI's rule), never 0 or 1. E.g. an image without
  foreground inside the ROI has NaN sensitivity; its Dice is NaN too if nothing was predicted, and 0 if something
  was (false positives are a real error). Aggregates skip NaN (``nanmean``) and can report how many values were
  not NaN; a class that is NaN for every image stays NaN.
- Aggregation over images: ``"mean"`` = mean of the per-image values; ``"global"`` = the ratio of the confusion
  matrix summed over all images (all ROI pixels pooled).
- AUC: rank-based (Mann-Whitney U with mid-ranks for ties), equal to the area under the empirical ROC curve;
  NaN when the ROI holds only one class.

Engine glue (handlers reading the ROI from the batch) lives in :mod:`monai_unetzoo.engines`.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.metrics import CumulativeIterationMetric
from monai.metrics.confusion_matrix import check_confusion_matrix_metric_name, compute_confusion_matrix_metric
from monai.utils import convert_to_tensor

__all__ = [
    "ROI_METRIC_NAMES",
    "roi_confusion_matrix",
    "roi_metrics_from_confusion",
    "compute_roi_metrics",
    "aggregate_roi_metrics",
    "compute_roi_auc",
    "compute_pooled_roi_auc",
    "rank_auc",
    "ROIConfusionMetric",
    "ROIAUCMetric",
    "case_metrics_table",
    "write_case_table",
]

#: our short names -> MONAI confusion-matrix metric names
ROI_METRIC_NAMES: dict[str, str] = {
    "dice": "f1 score",
    "iou": "threat score",
    "sensitivity": "sensitivity",
    "specificity": "specificity",
    "precision": "precision",
    "accuracy": "accuracy",
}


def _monai_metric_name(name: str) -> str:
    key = name.lower()
    if key in ROI_METRIC_NAMES:
        return ROI_METRIC_NAMES[key]
    check_confusion_matrix_metric_name(key)  # raises NotImplementedError for unknown names
    return key


def _roi_bool(roi: torch.Tensor | None, ref: torch.Tensor, what: str = "roi") -> torch.Tensor | None:
    """ROI as bool (B, 1, *spatial) checked against ``ref`` (B, C, *spatial)."""
    if roi is None:
        return None
    if isinstance(roi, (list, tuple)):  # decollated channel-first items
        roi = torch.stack([convert_to_tensor(r, track_meta=False) for r in roi])
    roi = convert_to_tensor(roi, track_meta=False)
    if roi.dim() != ref.dim() or roi.shape[1] != 1 or roi.shape[0] != ref.shape[0] or roi.shape[2:] != ref.shape[2:]:
        raise ValueError(
            f"{what} must have shape (B, 1, *spatial) = {(ref.shape[0], 1, *ref.shape[2:])}, got {tuple(roi.shape)}."
        )
    return roi.to(ref.device).float() > 0.5


def _check_binary(t: torch.Tensor, name: str) -> None:
    if not torch.all((t == 0) | (t == 1)):
        raise ValueError(
            f"{name} must be binarised (0/1) one-hot; got values {torch.unique(t)[:8].tolist()}... "
            "(use AsDiscrete(argmax=True, to_onehot=C) or AsDiscrete(threshold=0.5) first)."
        )


def roi_confusion_matrix(
    y_pred: torch.Tensor, y: torch.Tensor, roi: torch.Tensor | None = None, include_background: bool = True
) -> torch.Tensor:
    """Confusion matrix inside the ROI, per image and class.

    Args:
        y_pred: binarised prediction (B, C, *spatial).
        y: binarised one-hot ground truth (B, C, *spatial).
        roi: (B, 1, *spatial), inside where ``> 0.5``; None = whole image.
        include_background: keep channel 0 (ignored when C == 1).

    Returns:
        float tensor (B, C', 4) with [tp, fp, tn, fn] in MONAI's order, counted on ROI pixels only.
    """
    y_pred = convert_to_tensor(y_pred, track_meta=False)
    y = convert_to_tensor(y, track_meta=False).to(y_pred.device)
    if y_pred.shape != y.shape:
        raise ValueError(
            f"y_pred {tuple(y_pred.shape)} and y {tuple(y.shape)} must have the same (B, C, *spatial) shape."
        )
    if y_pred.dim() < 3:
        raise ValueError(f"expected (B, C, *spatial) tensors, got shape {tuple(y_pred.shape)}.")
    _check_binary(y_pred, "y_pred")
    _check_binary(y, "y")
    region = _roi_bool(roi, y_pred)
    if not include_background and y_pred.shape[1] > 1:
        y_pred, y = y_pred[:, 1:], y[:, 1:]
    p = y_pred.bool()
    t = y.bool()
    if region is None:
        region = torch.ones((p.shape[0], 1, *p.shape[2:]), dtype=torch.bool, device=p.device)
    dims = tuple(range(2, p.dim()))
    tp = (p & t & region).sum(dim=dims)
    fp = (p & ~t & region).sum(dim=dims)
    tn = (~p & ~t & region).sum(dim=dims)
    fn = (~p & t & region).sum(dim=dims)
    return torch.stack([tp, fp, tn, fn], dim=-1).to(torch.float64)


def roi_metrics_from_confusion(
    confusion: torch.Tensor, names: Sequence[str] = tuple(ROI_METRIC_NAMES)
) -> dict[str, torch.Tensor]:
    """Metrics from a confusion matrix (..., 4) [tp, fp, tn, fn]; NaN where the denominator is 0.

    ``names`` are ours (``dice``, ``iou``, ``sensitivity``, ``specificity``, ``precision``, ``accuracy``) or any
    name MONAI's ``compute_confusion_matrix_metric`` knows (e.g. ``"balanced accuracy"``, ``"mcc"``).
    """
    return {n: compute_confusion_matrix_metric(_monai_metric_name(n), confusion) for n in names}


def compute_roi_metrics(
    y_pred: torch.Tensor, y: torch.Tensor, roi: torch.Tensor | None = None, include_background: bool = True
) -> dict[str, torch.Tensor]:
    """Dice (F1), IoU, sensitivity, specificity, precision and accuracy inside the ROI, per image and class.

    Args:
        y_pred: binarised one-hot prediction (B, C, *spatial).
        y: binarised one-hot ground truth (B, C, *spatial).
        roi: (B, 1, *spatial), inside where ``> 0.5``; None = whole image.
        include_background: keep channel 0 (ignored when C == 1).

    Returns:
        dict with keys ``dice``, ``iou``, ``sensitivity``, ``specificity``, ``precision``, ``accuracy``; each a
        float64 tensor (B, C') (C' = C - 1 without background), NaN where undefined.
    """
    return roi_metrics_from_confusion(roi_confusion_matrix(y_pred, y, roi, include_background))


def aggregate_roi_metrics(
    confusion: torch.Tensor, mode: str = "mean", names: Sequence[str] = tuple(ROI_METRIC_NAMES)
) -> dict[str, torch.Tensor]:
    """Aggregate per-image confusion matrices (N, C, 4) over images.

    Args:
        mode: ``"mean"``: nan-mean of the per-image values (images where a metric is undefined are skipped);
            ``"global"``: metric of the summed confusion matrix (all ROI pixels of all images pooled).

    Returns:
        dict name -> (C,) tensor; take ``torch.nanmean(v)`` for the mean over classes.
    """
    if confusion.dim() != 3 or confusion.shape[-1] != 4:
        raise ValueError(f"expected per-image confusion matrices (N, C, 4), got {tuple(confusion.shape)}.")
    if mode == "mean":
        return {k: torch.nanmean(v, dim=0) for k, v in roi_metrics_from_confusion(confusion, names).items()}
    if mode == "global":
        return roi_metrics_from_confusion(confusion.sum(dim=0), names)
    raise ValueError(f"aggregation mode must be 'mean' or 'global', got {mode!r}.")


def rank_auc(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """ROC AUC of 1-D ``scores`` against binary 1-D ``labels`` by the Mann-Whitney U statistic.

    ``AUC = (R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg)`` with ``R_pos`` the sum of the (mid-)ranks of the
    positives (Hanley & McNeil, Radiology 1982). Vectorised: MONAI's ``compute_roc_auc`` loops in Python over every
    sample, too slow for pixel-level AUC on 10^5..10^7 pixels. Returns a float64 scalar, NaN if a class is absent.
    """
    scores = scores.reshape(-1)
    pos = labels.reshape(-1).bool()
    if scores.numel() != pos.numel():
        raise ValueError(f"scores ({scores.numel()}) and labels ({pos.numel()}) differ in length.")
    if torch.isnan(scores).any():
        raise ValueError("probabilities contain NaN.")
    n_pos = int(pos.sum())
    n_neg = pos.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        return torch.tensor(float("nan"), dtype=torch.float64)
    _, inverse, counts = torch.unique(scores, sorted=True, return_inverse=True, return_counts=True)
    counts = counts.to(torch.float64)
    first_rank = torch.cumsum(counts, 0) - counts + 1  # 1-based rank of the first element of each tie group
    mid_rank = first_rank + (counts - 1) / 2
    r_pos = mid_rank[inverse][pos].sum()
    return (r_pos - n_pos * (n_pos + 1) / 2) / (float(n_pos) * float(n_neg))


def _fg_prob_and_label(y_prob: torch.Tensor, y: torch.Tensor, channel: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Reduce (B, C, ...) probabilities / labels to the foreground channel (B, 1, ...)."""
    y_prob = convert_to_tensor(y_prob, track_meta=False)
    y = convert_to_tensor(y, track_meta=False).to(y_prob.device)
    if y_prob.dim() < 3:
        raise ValueError(f"expected (B, C, *spatial) probabilities, got shape {tuple(y_prob.shape)}.")
    if y_prob.shape[1] > 1:
        ch = 1 if channel is None else channel
        if y.shape[1] == y_prob.shape[1]:
            y = y[:, ch : ch + 1]
        elif y.shape[1] == 1:
            y = (y == ch).to(y_prob.dtype)
        else:
            raise ValueError(f"y has {y.shape[1]} channels, y_prob has {y_prob.shape[1]}.")
        y_prob = y_prob[:, ch : ch + 1]
    elif y.shape[1] == 2:  # foreground probability against a 2-channel one-hot label
        y = y[:, 1:2]
    elif y.shape[1] != 1:
        raise ValueError(f"y_prob has one channel but y has {y.shape[1]} (expected 1, or 2 = one-hot bg/fg).")
    if y.shape != y_prob.shape:
        raise ValueError(f"y_prob {tuple(y_prob.shape)} and y {tuple(y.shape)} differ in shape.")
    _check_binary(y, "y")
    return y_prob, y


def compute_roi_auc(
    y_prob: torch.Tensor, y: torch.Tensor, roi: torch.Tensor | None = None, channel: int | None = None
) -> torch.Tensor:
    """ROC AUC of the foreground probability inside the ROI, per image.

    Args:
        y_prob: foreground probability (B, 1, *spatial) (or (B, C, ...) softmax output, then ``channel``, default 1,
            is scored).
        y: binary label (B, 1, *spatial) (or one-hot (B, C, ...)).
        roi: (B, 1, *spatial), inside where ``> 0.5``; None = whole image.

    Returns:
        float64 tensor (B,); NaN for an image whose ROI holds only one class.
    """
    y_prob, y = _fg_prob_and_label(y_prob, y, channel)
    region = _roi_bool(roi, y_prob)
    out = []
    for b in range(y_prob.shape[0]):
        s, t = y_prob[b, 0], y[b, 0]
        if region is not None:
            s, t = s[region[b, 0]], t[region[b, 0]]
        out.append(rank_auc(s, t))
    return torch.stack(out)


def compute_pooled_roi_auc(
    y_prob: torch.Tensor, y: torch.Tensor, roi: torch.Tensor | None = None, channel: int | None = None
) -> torch.Tensor:
    """ROC AUC over the ROI pixels of all images pooled (the "global" AUC of the DRIVE literature); scalar."""
    y_prob, y = _fg_prob_and_label(y_prob, y, channel)
    region = _roi_bool(roi, y_prob)
    if region is None:
        return rank_auc(y_prob, y)
    return rank_auc(y_prob[region], y[region])


def _split_roi(roi: Any, n: int) -> list:
    if roi is None:
        return [None] * n
    if isinstance(roi, (list, tuple)):
        if len(roi) != n:
            raise ValueError(f"got {len(roi)} ROI items for {n} predictions.")
        return list(roi)
    return list(torch.as_tensor(roi))


class _ROIListMixin:
    """Pass a per-item ``roi`` through MONAI's list-of-channel-first path (``IterationMetric._compute_list`` would
    hand the whole list to every item)."""

    def _compute_list(self, y_pred, y=None, roi=None, **kwargs):  # type: ignore[no-untyped-def]
        rois = _split_roi(roi, len(y_pred))
        ys = list(y) if y is not None else [None] * len(y_pred)
        ret = [
            self._compute_tensor(  # type: ignore[attr-defined]
                p.detach().unsqueeze(0),
                None if t is None else torch.as_tensor(t).detach().unsqueeze(0),
                roi=None if r is None else torch.as_tensor(r).unsqueeze(0),
                **kwargs,
            )
            for p, t, r in zip(y_pred, ys, rois)
        ]
        return torch.cat(ret, dim=0)


class ROIConfusionMetric(_ROIListMixin, CumulativeIterationMetric):
    """ROI-masked confusion-matrix metric (Dice, IoU, sensitivity, specificity, precision, accuracy, ...).

    A MONAI ``CumulativeIterationMetric``: call ``metric(y_pred, y, roi=roi)`` per batch (batch-first tensors or
    lists of channel-first tensors, as MONAI metrics), then ``aggregate()``. The buffer holds the per-image ROI
    confusion matrices (N, C, 4), so both aggregations are exact and distributed gathering works as in MONAI.

    Args:
        metric_name: ``dice``, ``iou``, ``sensitivity``, ``specificity``, ``precision``, ``accuracy`` or any name
            of MONAI's ``compute_confusion_matrix_metric``.
        include_background: keep channel 0 (ignored for one-channel inputs).
        aggregation: ``"mean"`` over images (NaN images skipped) or ``"global"`` over all ROI pixels.
        reduction: over classes, ``"mean"`` (macro average: nan-mean of the per-class aggregates, classes that are
            undefined for every image skipped) or ``"none"`` (a (C,) vector).
        get_not_nans: ``aggregate()`` also returns how many values were averaged: the number of defined classes
            (``reduction="mean"``), or per class the number of images where it is defined (``"none"``, mean
            aggregation) / 0 or 1 (``"none"``, global aggregation).

    ``per_case()`` gives the per-image values (N, C) (what the handlers export per case).
    """

    def __init__(
        self,
        metric_name: str = "dice",
        include_background: bool = True,
        aggregation: str = "mean",
        reduction: str = "mean",
        get_not_nans: bool = False,
    ) -> None:
        super().__init__()
        self.metric_name = metric_name
        _monai_metric_name(metric_name)
        if aggregation not in ("mean", "global"):
            raise ValueError(f"aggregation must be 'mean' or 'global', got {aggregation!r}.")
        if reduction not in ("mean", "none"):
            raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}.")
        self.include_background = include_background
        self.aggregation = aggregation
        self.reduction = reduction
        self.get_not_nans = get_not_nans

    def _compute_tensor(  # type: ignore[override]
        self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any
    ) -> torch.Tensor:
        if y is None:
            raise ValueError(f"{type(self).__name__} needs ground truth y.")
        return roi_confusion_matrix(y_pred, y, kwargs.get("roi"), self.include_background)

    def per_case(self) -> torch.Tensor:
        """Per-image metric values (N, C) of everything seen since ``reset()`` (NaN where undefined)."""
        confusion = self.get_buffer()
        if confusion is None:
            raise ValueError(f"{type(self).__name__}: no data; call it on predictions before asking for values.")
        return roi_metrics_from_confusion(confusion, (self.metric_name,))[self.metric_name]

    def aggregate(self) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        confusion = self.get_buffer()
        if confusion is None:
            raise ValueError(f"{type(self).__name__}: no data to aggregate.")
        per_class = aggregate_roi_metrics(confusion, self.aggregation, (self.metric_name,))[self.metric_name]
        if self.reduction == "mean":
            # macro average: nan-mean over the classes whose aggregate is defined; not_nans = how many
            value, not_nans = torch.nanmean(per_class), (~torch.isnan(per_class)).sum()
        elif self.aggregation == "mean":
            # per class, not_nans = number of images where the class's value is defined
            value, not_nans = per_class, (~torch.isnan(self.per_case())).sum(0)
        else:
            value, not_nans = per_class, (~torch.isnan(per_class)).long()
        return (value, not_nans) if self.get_not_nans else value


class ROIAUCMetric(_ROIListMixin, CumulativeIterationMetric):
    """ROI-masked ROC AUC of the foreground probability (a MONAI ``CumulativeIterationMetric``).

    Call ``metric(y_prob, y, roi=roi)`` per batch (``y_prob`` (B, 1, ...) probability or (B, C, ...) softmax with
    ``channel`` scored; ``y`` binary (B, 1, ...) or one-hot), then ``aggregate()``.

    Args:
        aggregation: ``"mean"``: mean over images of the per-image AUC (images with one class only are skipped);
            ``"global"``: one AUC over the ROI pixels of all images pooled (keeps those pixels on the CPU until
            ``reset()``: 4 bytes + 1 byte per pixel; single-process only).
        channel: channel of multi-channel probabilities to score (default 1).

    The buffer (used for per-case export) holds the per-image AUC (N, 1).
    """

    def __init__(self, aggregation: str = "mean", channel: int | None = None) -> None:
        super().__init__()
        if aggregation not in ("mean", "global"):
            raise ValueError(f"aggregation must be 'mean' or 'global', got {aggregation!r}.")
        self.aggregation = aggregation
        self.channel = channel
        self._pooled: list[tuple[torch.Tensor, torch.Tensor]] = []

    def reset(self) -> None:
        super().reset()
        self._pooled = []

    def _compute_tensor(  # type: ignore[override]
        self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any
    ) -> torch.Tensor:
        if y is None:
            raise ValueError(f"{type(self).__name__} needs ground truth y.")
        roi = kwargs.get("roi")
        if self.aggregation == "global":
            prob, lab = _fg_prob_and_label(y_pred, y, self.channel)
            region = _roi_bool(roi, prob)
            if region is None:
                region = torch.ones_like(prob, dtype=torch.bool)
            self._pooled.append((prob[region].float().cpu(), lab[region].bool().cpu()))
        return compute_roi_auc(y_pred, y, roi, self.channel).unsqueeze(1)

    def per_case(self) -> torch.Tensor:
        """Per-image AUC (N, 1) since ``reset()``."""
        buf = self.get_buffer()
        if buf is None:
            raise ValueError(f"{type(self).__name__}: no data; call it on predictions before asking for values.")
        return buf

    def aggregate(self) -> torch.Tensor:  # type: ignore[override]
        if self.aggregation == "mean":
            return torch.nanmean(self.per_case())
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            raise NotImplementedError("ROIAUCMetric(aggregation='global') is single-process; use 'mean' in DDP.")
        if not self._pooled:
            raise ValueError(f"{type(self).__name__}: no data to aggregate.")
        scores = torch.cat([s for s, _ in self._pooled])
        labels = torch.cat([t for _, t in self._pooled])
        return rank_auc(scores, labels)


def case_metrics_table(
    y_pred: torch.Tensor,
    y: torch.Tensor,
    roi: torch.Tensor | None = None,
    y_prob: torch.Tensor | None = None,
    include_background: bool = True,
    metric_names: Sequence[str] = tuple(ROI_METRIC_NAMES),
    hd95: bool = False,
    surface_dice_thresholds: Sequence[float] | None = None,
    spacing: Sequence[float] | float | None = None,
    auc_channel: int | None = None,
) -> dict[str, torch.Tensor]:
    """Per-case metric table: ROI confusion metrics, AUC and (from MONAI) HD95 and surface Dice.

    Args:
        y_pred, y, roi, include_background: as :func:`compute_roi_metrics`.
        y_prob: foreground probability for the AUC column (see :func:`compute_roi_auc`); None = no AUC column.
        hd95: add ``hd95`` from ``monai.metrics.compute_hausdorff_distance(percentile=95)``.
        surface_dice_thresholds: per-class tolerances (in spacing units) to add ``surface_dice`` from
            ``monai.metrics.compute_surface_dice``.
        spacing: voxel spacing for the distance metrics (MONAI semantics).
        auc_channel: channel of a multi-channel ``y_prob`` to score (default 1).

    The distance metrics are MONAI's, computed on prediction and label with everything outside the ROI set to
    background (the ROI border then cuts both alike). MONAI returns NaN/inf for empty classes and we keep that.

    Returns:
        dict column -> (B, C') tensor (AUC: (B, 1)), ready for :func:`write_case_table`.
    """
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    cm = roi_confusion_matrix(y_pred, y, roi, include_background)
    table = roi_metrics_from_confusion(cm, metric_names)
    if y_prob is not None:
        table["auc"] = compute_roi_auc(y_prob, y, roi, channel=auc_channel).unsqueeze(1)
    if hd95 or surface_dice_thresholds is not None:
        region = _roi_bool(roi, y_pred)
        p, t = torch.as_tensor(y_pred).float(), torch.as_tensor(y).float()
        if region is not None:
            p, t = p * region, t * region
        if hd95:
            table["hd95"] = compute_hausdorff_distance(
                p, t, include_background=include_background, percentile=95, spacing=spacing
            ).double()
        if surface_dice_thresholds is not None:
            table["surface_dice"] = compute_surface_dice(
                p, t, class_thresholds=list(surface_dice_thresholds), include_background=include_background,
                spacing=spacing,
            ).double()
    return table


def write_case_table(
    table: Mapping[str, Any],
    path: str | os.PathLike,
    case_names: Sequence[str] | None = None,
    class_labels: Sequence[str] | None = None,
    delimiter: str = ",",
) -> str:
    """Write a per-case table (column -> (N, C) values) to CSV, one row per case.

    Columns: ``case`` then ``<metric>`` for one-column metrics or ``<metric>_<class label>`` per class
    (labels ``class0``, ``class1``, ... unless ``class_labels`` is given) and ``<metric>_mean`` (nan-mean over
    classes). NaN is written as ``nan`` (undefined, see module docstring). Returns the path written.
    """
    cols: list[str] = []
    data: list[np.ndarray] = []
    n_cases: int | None = None
    for name, values in table.items():
        v = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
        v = v.astype(np.float64).reshape(v.shape[0], -1) if v.ndim else v.reshape(1, 1).astype(np.float64)
        if n_cases is None:
            n_cases = v.shape[0]
        elif v.shape[0] != n_cases:
            raise ValueError(f"column {name!r} has {v.shape[0]} cases, earlier columns have {n_cases}.")
        if v.shape[1] == 1:
            cols.append(name)
            data.append(v)
            continue
        labels = list(class_labels) if class_labels is not None else [f"class{i}" for i in range(v.shape[1])]
        if len(labels) != v.shape[1]:
            raise ValueError(f"column {name!r} has {v.shape[1]} classes but {len(labels)} class labels were given.")
        cols += [f"{name}_{lab}" for lab in labels] + [f"{name}_mean"]
        with np.errstate(all="ignore"):
            mean = np.array([np.nanmean(r) if np.any(~np.isnan(r)) else np.nan for r in v])[:, None]
        data += [v, mean]
    if n_cases is None:
        raise ValueError("empty metric table: nothing to write.")
    names = list(case_names) if case_names is not None else [str(i) for i in range(n_cases)]
    if len(names) != n_cases:
        raise ValueError(f"{len(names)} case names for {n_cases} cases.")
    rows = np.concatenate(data, axis=1)
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(["case", *cols])
        for name, row in zip(names, rows):
            w.writerow([name, *(repr(float(x)) for x in row)])
    return path
