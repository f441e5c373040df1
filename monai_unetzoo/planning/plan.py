"""The plan: the rules of :mod:`.rules` applied to one data set's fingerprint, as one object the writer turns into JSON.

``make_bundle_plan(fingerprint, network, device, budget_minutes)`` runs the rules in order (spacing, then the
patch at that spacing, then depth/features from the patch, normalisation, mirroring, and the epochs from a timing
run of the resulting network) and keeps every rule's reason for the README.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .fingerprint import DatasetFingerprint
from .rules import (
    PlanningRule,
    modality_kind,
    plan_epochs,
    plan_mirror_axes,
    plan_normalisation,
    plan_patch_and_depth,
    plan_roi,
    plan_target_spacing,
)
from .timing import time_training_iteration

__all__ = ["BundlePlan", "make_bundle_plan", "BATCH_SIZE", "VAL_FRACTION"]

#: Training batch per spatial dimensionality (nnU-Net uses 2 for 3D; 2D batches are larger as each sample is small).
BATCH_SIZE = {2: 4, 3: 2}
#: Validation share of the cases (the hand-written bundles' fixed split).
VAL_FRACTION = 0.2


@dataclass
class BundlePlan:
    """Everything the writer needs; ``pixdim`` is None for 2D images (kept on their pixel grid)."""

    name: str
    dataset_dir: str
    network: str
    device: str
    spatial_dims: int
    in_channels: int
    num_classes: int
    class_names: list[str]
    channel_names: list[str]
    modality: str
    pixdim: list[float] | None
    patch_size: list[int]
    depth: int
    features: list[int]
    pool_sizes: list[list[int]]
    normalisation: dict[str, Any]
    mirror_axes: list[int]
    epochs: int
    batch_size: int
    seconds_per_iteration: float
    budget_minutes: float
    roi: dict[str, Any] | None = None
    rules: list[PlanningRule] = field(default_factory=list)


def _iterations_per_epoch(num_cases: int, batch_size: int) -> int:
    """Training cases after the validation split (VAL_FRACTION, at least 1) over the batch (drop_last)."""
    val = max(1, int(math.floor(VAL_FRACTION * num_cases + 0.5)))
    return max(1, (num_cases - val) // batch_size)


def _spacing_rules(fp: DatasetFingerprint) -> tuple[list[float] | None, np.ndarray, PlanningRule]:
    """(pixdim or None for 2D, median shape at the target spacing, spacing rule)."""
    if fp.spatial_dims == 2:
        rule = PlanningRule("target spacing", "native pixel grid",
                            "2D images carry no physical spacing: trained and predicted on their pixel grid")
        return None, np.median(fp.shapes(), axis=0), rule
    rule = plan_target_spacing(fp.spacings(), fp.shapes())
    shape = np.median(fp.shapes() * fp.spacings() / np.asarray(rule.value), axis=0)
    return list(rule.value), shape, rule


def make_bundle_plan(
    fp: DatasetFingerprint, name: str, network: str = "resunet", device: str = "cpu", budget_minutes: float = 15.0,
    timer: Callable[..., float] = time_training_iteration,
) -> BundlePlan:
    """Apply the rules to ``fp``; ``timer`` measures seconds per training iteration (the timing run)."""
    pixdim, shape, spacing_rule = _spacing_rules(fp)
    spacing = pixdim or [1.0] * fp.spatial_dims
    batch = BATCH_SIZE[fp.spatial_dims]
    patch, kernels, features = plan_patch_and_depth(shape, spacing, device, batch, fp.channels)
    label_names = [fp.labels[k] for k in sorted(fp.labels, key=int)]
    num_classes = max(int(k) for k in fp.labels) + 1
    seconds = timer(network, fp.spatial_dims, fp.channels, num_classes, features.value, patch.value, batch, device,
                    pool_sizes=kernels.value)
    epochs = plan_epochs(budget_minutes, seconds, _iterations_per_epoch(fp.num_cases_total, batch))
    normalisation = plan_normalisation(fp.modality, fp.foreground_intensity)
    mirror = plan_mirror_axes(label_names[1:], fp.spatial_dims)
    roi = plan_roi(fp.roi_threshold if fp.has_roi else None)
    modality = sorted({modality_kind(v) for v in fp.modality.values()})
    return BundlePlan(
        name=name, dataset_dir=fp.root, network=network, device=device, spatial_dims=fp.spatial_dims,
        in_channels=fp.channels, num_classes=num_classes, class_names=label_names[1:],
        channel_names=[fp.modality.get(str(c), f"channel {c}") for c in range(fp.channels)],
        modality="+".join(m for m in modality if m), pixdim=pixdim, patch_size=patch.value, depth=len(kernels.value),
        pool_sizes=kernels.value,
        features=features.value, normalisation=normalisation.value, mirror_axes=mirror.value, epochs=epochs.value,
        batch_size=batch, seconds_per_iteration=seconds, budget_minutes=budget_minutes, roi=roi.value,
        rules=[spacing_rule, patch, kernels, features, normalisation, mirror, roi, epochs],
    )
