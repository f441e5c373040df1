"""The planning rules: from a data set's fingerprint to the numbers a bundle needs, each with its reason.

Every rule is a small function returning its value together with the reason written into the planned bundle's
README. Where nnU-Net has a published heuristic it is followed and cited (Isensee et al. 2021, "nnU-Net: a
self-configuring method for deep learning-based biomedical image segmentation", Nat. Methods 18:203-211,
supplementary note 2, and the nnU-Net v2 ``ExperimentPlanner``); where our networks differ from nnU-Net's the
rule says so.

1. **Target spacing** (:func:`plan_target_spacing`): the median spacing per axis. nnU-Net: the median keeps most
   cases near their native resolution. If the data are anisotropic -- the coarsest median spacing more than
   :data:`ANISOTROPY_RATIO` times the finest *and* that axis has fewer than 1/3 of the voxels of the others -- the
   coarse axis takes the 10th percentile of its spacings instead (never finer than the other axes): it stays a
   low-resolution axis, not interpolated up to the in-plane resolution (which would invent slices), but the
   median would blur the many finer cases.
2. **Patch size and depth** (:func:`plan_patch_and_depth`): start from the median shape at the target spacing
   (nnU-Net: the patch should cover as much context as possible, ideally a whole median case) and shrink the axis
   whose physical extent is largest, one pooling step at a time, until the estimated training memory
   (:func:`estimate_training_bytes`) of a batch fits the device's budget (:data:`MEMORY_BUDGET_BYTES`). The pooling
   is nnU-Net v2's (:func:`pool_kernels`): per level a kernel of 2 on the axes whose feature map stays >=
   :data:`MIN_FEATURE_MAP` voxels and whose spacing is less than twice the finest (the coarse axis of anisotropic
   data is pooled only once the others have caught up), 1 on the others, at most :data:`MAX_DEPTH` levels; the
   networks take these kernels (``pool_sizes``) and each patch axis is rounded up to a multiple of 2**(its
   poolings).
3. **Features** (:func:`plan_features`): nnU-Net's 32 base filters doubling per level, capped at 320 (3D) / 512
   (2D); on CPU 16 base filters (as our hand-written CPU bundles) -- half the compute per voxel.
4. **Normalisation** (:func:`plan_normalisation`): CT is quantitative (Hounsfield units), so every case gets the
   same mapping: clip to the 0.5 and 99.5 percentiles of the foreground intensities pooled over the data set, then
   z-score with the pooled foreground mean and standard deviation (nnU-Net's CT scheme). Everything else (MR,
   microscopy, photographs) has no fixed unit: z-score per case and channel.
5. **Mirroring** (:func:`plan_mirror_axes`): nnU-Net mirrors along every axis. A flip swaps the sides of the
   anatomy, so a label whose name says left/right is never mirrored across axis 0 (the R-L axis of RAS) and one
   saying anterior/posterior never across axis 1 (A-P); 2D images: axis 0 is the width, axis 1 the height.
6. **Region of interest** (:func:`plan_roi`), only where ``dataset.json`` gives every case a ``"roi"`` mask (a
   fundus field of view, a scanner's reconstruction circle): handled as the DRIVE bundle handles its FOV -- the
   z-score statistics are taken inside it, the loss ignores everything outside it (nnU-Net v2's ``ignore`` label,
   its documentation/ignore_label.md), validation Dice is counted inside it and predictions are background outside
   it. A case predicted without a mask gets one estimated from the image (``EstimateFovMaskd``,
   the DRIVE bundle's estimate) with the threshold on the brightest channel that best recovers the training masks
   (highest mean Dice), if even its worst case reaches :data:`ROI_ESTIMATE_MIN_DICE`; otherwise none is estimated
   and such a case is normalised and predicted over the whole image (the README says which).
7. **Epochs** (:func:`plan_epochs`): from the CPU/GPU-minute budget and a timing run of a few training iterations
   of the planned network and patch on this machine (:mod:`.timing`); 80% of the budget is spent on training
   iterations, the rest on validation and data loading.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = [
    "ANISOTROPY_RATIO",
    "MIN_FEATURE_MAP",
    "MAX_DEPTH",
    "MEMORY_BUDGET_BYTES",
    "PlanningRule",
    "modality_kind",
    "plan_target_spacing",
    "pool_kernels",
    "pool_counts",
    "pools_per_axis",
    "estimate_training_bytes",
    "plan_features",
    "plan_patch_and_depth",
    "plan_normalisation",
    "plan_mirror_axes",
    "plan_epochs",
    "plan_roi",
    "ROI_IGNORE_INDEX",
    "ROI_ESTIMATE_MIN_DICE",
]

#: nnU-Net's anisotropy threshold (ExperimentPlanner.anisotropy_threshold = 3).
ANISOTROPY_RATIO = 3.0
#: Smallest feature map an axis is pooled down to (nnU-Net: 4).
MIN_FEATURE_MAP = 4
#: Deepest network planned (nnU-Net's 3D full-resolution plans use 5 poolings for 128^3 patches).
MAX_DEPTH = 5
#: Training-memory budget for one batch (activations + gradients + weights): nnU-Net targets 8 GB GPUs (about 6
#: GiB usable with cuDNN workspaces); on CPU the limit is time, not memory, so a smaller budget keeps an
#: iteration to about a second on a few cores.
MEMORY_BUDGET_BYTES = {"cuda": 6 * 2 ** 30, "cpu": 2 ** 30}
#: Label value outside the ROI during training (``PrepareBatchWithROI`` / ``MaskedDiceCELoss``, as the DRIVE bundle).
ROI_IGNORE_INDEX = 255
#: Worst-case Dice between the thresholded image and a training mask for the planned inference to estimate ROIs.
ROI_ESTIMATE_MIN_DICE = 0.95
#: Share of the budget spent on training iterations.
TRAINING_SHARE = 0.8

_MODALITIES = {
    "ct": ("ct",),
    "mr": ("mr", "mri", "t1", "t1w", "t1gd", "t1c", "t2", "t2w", "flair", "adc", "dwi", "pd", "bold"),
    "image2d": ("rgb", "fundus", "em", "microscopy", "photo", "photograph", "grey", "gray", "image"),
}


@dataclass
class PlanningRule:
    """A planned value and the reason for it (one line of the README's plan table)."""

    name: str
    value: object
    reason: str


def modality_kind(name: str) -> str | None:
    """``"ct"``, ``"mr"`` or ``"image2d"`` for a dataset.json modality name (``"MRI"``, ``"T2"``, ``"RGB"``); None if
    unknown (the planner refuses: the normalisation depends on it)."""
    key = re.sub(r"[^a-z0-9]", "", name.lower())
    for kind, names in _MODALITIES.items():
        if key in names:
            return kind
    return None


def plan_target_spacing(spacings: np.ndarray, shapes: np.ndarray) -> PlanningRule:
    """Rule 1 on (N, D) spacings and (N, D) shapes; value: list of D spacings (mm)."""
    spacings, shapes = np.asarray(spacings, dtype=np.float64), np.asarray(shapes, dtype=np.float64)
    target = np.median(spacings, axis=0)
    reason = "median spacing per axis (nnU-Net)"
    if target.size >= 2:
        coarse = int(np.argmax(target))
        others = [i for i in range(target.size) if i != coarse]
        size = np.median(shapes * spacings, axis=0) / target  # median shape at the target spacing
        aniso_spacing = target[coarse] > ANISOTROPY_RATIO * max(target[others])
        aniso_voxels = size[coarse] * ANISOTROPY_RATIO < min(size[others])
        if aniso_spacing and aniso_voxels:
            coarse_target = max(float(np.percentile(spacings[:, coarse], 10)), float(max(target[others])) + 1e-5)
            target[coarse] = coarse_target
            reason = (f"median spacing per axis; axis {coarse} is anisotropic (> {ANISOTROPY_RATIO:g}x the finest) "
                      "and keeps a coarse spacing: the 10th percentile of its spacings (nnU-Net), not resampled to "
                      "the in-plane resolution")
    return PlanningRule("target spacing (mm)", [round(float(v), 5) for v in target], reason)


def pool_kernels(patch: Sequence[int], spacing: Sequence[float]) -> list[list[int]]:
    """nnU-Net v2's pooling plan (``get_pool_and_conv_props``): one kernel per level, 2 or 1 per axis.

    Per level, pool the axes whose feature map is still >= 2 * MIN_FEATURE_MAP voxels and whose current spacing is
    less than twice the finest current spacing of those axes (so a coarse axis waits until the others have caught
    up); a level that would pool one axis alone needs it >= 3 * MIN_FEATURE_MAP. Pooled axes double their spacing
    and halve (ceil) their size. Stops when nothing can be pooled or after :data:`MAX_DEPTH` levels (nnU-Net has no
    level cap; ours keeps CPU networks shallow).
    """
    size, current = [float(p) for p in patch], [float(s) for s in spacing]
    kernels: list[list[int]] = []
    while len(kernels) < MAX_DEPTH:
        valid = [i for i in range(len(size)) if size[i] >= 2 * MIN_FEATURE_MAP]
        if not valid:
            break
        finest = min(current[i] for i in valid)
        valid = [i for i in valid if current[i] / finest < 2]
        if len(valid) == 1 and size[valid[0]] < 3 * MIN_FEATURE_MAP:
            break
        kernels.append([2 if i in valid else 1 for i in range(len(size))])
        for i in valid:
            current[i] *= 2
            size[i] = math.ceil(size[i] / 2)
    return kernels


def pool_counts(kernels: Sequence[Sequence[int]]) -> list[int]:
    """How often per-level ``kernels`` (from :func:`pool_kernels`) pool each axis."""
    return [sum(k[i] > 1 for k in kernels) for i in range(len(kernels[0]))] if kernels else []


def pools_per_axis(patch: Sequence[int], spacing: Sequence[float]) -> list[int]:
    """How often :func:`pool_kernels` pools each axis (0 per axis where it plans no level)."""
    return pool_counts(pool_kernels(patch, spacing)) or [0] * len(patch)


def estimate_training_bytes(patch: Sequence[int], features: Sequence[int], batch_size: int, in_channels: int) -> int:
    """Rough float32 training memory of a UNet on a batch of ``patch`` windows (bytes).

    Per level l (size patch / 2**l, f_l channels): encoder and decoder each keep about 6 activation maps of f_l
    channels for the backward pass (two convolutions, their norms and activations), the decoder one more for the
    concatenated skip; x2 for the gradients. A rule of thumb, not a measurement: it ranks patch sizes, and the
    timing run (rule 7) measures the real cost.
    """
    voxels = float(np.prod(patch))
    dims = len(patch)
    maps = sum(13 * f / 2 ** (dims * level) for level, f in enumerate(features))
    activations = 2 * 4 * batch_size * voxels * (maps + in_channels)
    weights = 4 * 4 * sum(27 * a * b for a, b in zip(features[:-1], features[1:]))  # weights, grads, 2 Adam moments
    return int(activations + weights)


def plan_features(depth: int, spatial_dims: int, device: str) -> PlanningRule:
    """Rule 3: channels per level, ``depth + 1`` levels."""
    base = 16 if device == "cpu" else 32
    cap = 320 if spatial_dims == 3 else 512
    feats = [min(base * 2 ** i, cap) for i in range(depth + 1)]
    why = "16 base filters on CPU (half the compute of nnU-Net's 32)" if device == "cpu" else "nnU-Net's 32 base"
    return PlanningRule("features", feats, f"{why}, doubling per level, capped at {cap} (nnU-Net)")


def _kernels_and_round(patch: Sequence[int], spacing: Sequence[float]) -> tuple[list[list[int]], list[int]]:
    """(per-level pooling kernels, patch rounded up per axis to a multiple of 2**(its poolings), nnU-Net's
    ``pad_shape``); at least one level (all axes pooled) for a patch too small for any."""
    kernels = pool_kernels(patch, spacing) or [[2] * len(patch)]
    return kernels, [int(math.ceil(p / 2 ** n) * 2 ** n) for p, n in zip(patch, pool_counts(kernels))]


def plan_patch_and_depth(median_shape: Sequence[float], spacing: Sequence[float], device: str, batch_size: int,
                         in_channels: int) -> tuple[PlanningRule, PlanningRule, PlanningRule]:
    """Rules 2 and 3: (patch size, pooling kernels per level -- the depth is their number --, features) for the
    median shape at ``spacing``."""
    patch = [max(MIN_FEATURE_MAP * 2, int(round(s))) for s in median_shape]
    budget = MEMORY_BUDGET_BYTES["cuda" if device.startswith("cuda") else "cpu"]
    while True:
        kernels, rounded = _kernels_and_round(patch, spacing)
        pools = pool_counts(kernels)
        features = plan_features(len(kernels), len(patch), device)
        need = estimate_training_bytes(rounded, features.value, batch_size, in_channels)
        extent = [p * s if p > 2 * MIN_FEATURE_MAP else -1.0 for p, s in zip(patch, spacing)]
        axis = int(np.argmax(extent))
        if need <= budget or extent[axis] < 0:  # fits, or every axis is already at its minimum
            break
        patch[axis] = max(2 * MIN_FEATURE_MAP, patch[axis] - max(2 ** pools[axis], 2))
    shrunk = [int(round(s)) for s in median_shape] != patch
    why = ("the median shape at the target spacing" + (", shrunk along the physically longest axis until a batch "
           "fits" if shrunk else ", which fits") + f" the {budget / 2 ** 30:g} GiB {device} budget "
           f"(estimated {need / 2 ** 30:.2f} GiB for batch {batch_size}), each axis rounded up to a multiple of "
           "2**(its poolings)")
    depth_rule = PlanningRule("pooling kernels per level", kernels,
                              f"nnU-Net v2's pooling plan: {len(kernels)} levels, per-axis poolings {pools} (an axis is "
                              f"pooled while >= {2 * MIN_FEATURE_MAP} voxels and less than 2x the finest spacing; at "
                              f"most {MAX_DEPTH} levels); convolutions stay 3 wide on every axis (nnU-Net uses 1 along "
                              "a coarse axis at the first levels)")
    return PlanningRule("patch size (voxels)", rounded, why), depth_rule, features


def plan_normalisation(modality: dict[str, str], foreground: Sequence[dict[str, float]]) -> PlanningRule:
    """Rule 4. value: ``{"scheme": "ct", "clip": [lo, hi], "mean": m, "std": s}`` or ``{"scheme": "zscore"}``."""
    kinds = [modality_kind(modality[k]) for k in sorted(modality, key=int)]
    if kinds == ["ct"]:
        st = foreground[0]
        value = {"scheme": "ct", "clip": [st["p0.5"], st["p99.5"]], "mean": st["mean"], "std": max(st["std"], 1e-8)}
        return PlanningRule("normalisation", value,
                            "CT (Hounsfield units, comparable across cases): clip to the 0.5/99.5 percentiles of the "
                            "foreground pooled over the data set, z-score with its mean/std (nnU-Net)")
    if "ct" in kinds:
        raise ValueError(f"modality {modality}: CT mixed with other channels is not planned (one normalisation "
                         "per image key); give single-channel CT or no CT channel")
    return PlanningRule("normalisation", {"scheme": "zscore"},
                        f"{'/'.join(sorted(set(kinds)))}: intensities have no fixed unit, so z-score per case and "
                        "channel (nnU-Net's non-CT scheme)")


_LATERAL = {0: re.compile(r"\b(left|right|l|r)\b|_(l|r)$|^(l|r)_", re.I),
            1: re.compile(r"\b(anterior|posterior|front|back)\b", re.I)}


def plan_mirror_axes(label_names: Sequence[str], spatial_dims: int) -> PlanningRule:
    """Rule 5: the axes random flips (and test-time mirroring) may use."""
    words = [re.sub(r"[-_]", " ", n) for n in label_names]
    kept, dropped = [], []
    for axis in range(spatial_dims):
        pattern = _LATERAL.get(axis)
        hit = [n for n, w in zip(label_names, words) if pattern is not None and pattern.search(w)]
        (dropped if hit else kept).append((axis, hit))
    reason = "every axis (nnU-Net)"
    if dropped:
        reason += "; not " + ", ".join(f"axis {a} (labels {h} name a side along it)" for a, h in dropped)
    return PlanningRule("mirror axes", [a for a, _ in kept], reason)


def plan_epochs(budget_minutes: float, seconds_per_iteration: float, iterations_per_epoch: int) -> PlanningRule:
    """Rule 7: epochs that fit ``TRAINING_SHARE`` of the budget at the measured speed (at least 1)."""
    iterations = TRAINING_SHARE * budget_minutes * 60.0 / max(seconds_per_iteration, 1e-6)
    epochs = max(1, int(iterations // max(iterations_per_epoch, 1)))
    return PlanningRule("epochs", epochs,
                        f"{TRAINING_SHARE:.0%} of {budget_minutes:g} min at {seconds_per_iteration:.3f} s per "
                        f"training iteration (timing run on this machine), {iterations_per_epoch} iterations per "
                        "epoch")


def plan_roi(threshold: dict[str, float] | None) -> PlanningRule:
    """Rule 6 from the fingerprint's :func:`~.fingerprint.best_roi_threshold` (None: the data set has no ROI masks).

    value: None, or ``{"key": "roi", "ignore_index": ROI_IGNORE_INDEX, "fov_threshold": t or None}``.
    """
    if threshold is None:
        return PlanningRule("region of interest", None, "no roi masks in dataset.json: the whole image is used")
    value = {"key": "roi", "ignore_index": ROI_IGNORE_INDEX, "fov_threshold": None}
    why = ("roi masks given for every case: z-score inside the ROI, loss and validation Dice inside it, predictions "
           "background outside it (the DRIVE bundle's FOV handling)")
    agreement = (f"Dice with the training cases' masks {threshold['mean_dice']:.4f} mean, "
                 f"{threshold['min_dice']:.4f} worst")
    if threshold["min_dice"] >= ROI_ESTIMATE_MIN_DICE:
        value["fov_threshold"] = round(threshold["threshold"], 4)
        why += (f"; a case without a mask gets one estimated from the image: brightest channel > "
                f"{value['fov_threshold']:g} ({agreement}), largest component, holes filled")
    else:
        why += (f"; no threshold recovers the masks (best: {agreement} < {ROI_ESTIMATE_MIN_DICE}), so a case "
                "predicted without a mask is normalised and predicted over the whole image")
    return PlanningRule("region of interest", value, why)
