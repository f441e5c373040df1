"""Write a planned bundle: the hand-written ``bundles/hippocampus`` configs with the plan's values put in.

Why a template and not JSON generated from scratch: the issue asks that a planned bundle work with every command
the hand-written ones do -- training, evaluation, inference, torchrun, resume, the data check, ``unetzoo
predict`` -- through the same package code, "only the JSON differs". Starting from the hand-written hippocampus
configs (:data:`TEMPLATE_BUNDLE`, read from the checkout) keeps every handler, the checkpoint/resume wiring and the
``BundleCaseStep`` inference in step with them, including future fixes; the writer replaces only what the plan
decides: the data folder, classes, channels, spacing, patch, network, normalisation, flips, epochs, batch size,
for 2D images the loader (``PILReader`` without index reversal, as the DRIVE bundle) and the dropped
reorientation/resampling, and with ROI masks the DRIVE bundle's ROI handling (normalisation, loss and Dice inside the
ROI, the ROI estimated at inference). Output (flat layout, :mod:`monai_unetzoo.bundle_checks`)::

    <output>/metadata.json  train.json  evaluate.json  inference.json  multi_gpu_train.json  onnx_export.json
             logging.conf  LICENSE  README.md

``bundle_root`` is written as the output folder's absolute path (a planned bundle lives wherever the user put
it; ``--bundle_root`` overrides it after a move) and ``dataset_dir`` as the planned data set's.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path
from typing import Any

from .fingerprint import DatasetFingerprint
from .plan import VAL_FRACTION, BundlePlan
from .readme import planned_readme
from .rules import pool_counts

__all__ = ["TEMPLATE_BUNDLE", "PLANNED_VERSION", "planned_load_transforms", "planned_train_config",
           "planned_inference_config", "planned_evaluate_config", "planned_metadata", "write_planned_bundle"]

#: The hand-written bundle the planned configs start from.
TEMPLATE_BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "hippocampus"
PLANNED_VERSION = "0.1.0"
_COPIED = ("multi_gpu_train.json", "logging.conf", "LICENSE")
_LOADER_2D = {"reader": "PILReader", "reverse_indexing": False}
#: Data key of the region-of-interest mask (dataset.json ``"roi"``, the DRIVE bundle's key).
ROI_KEY = "roi"


def _template(name: str) -> dict[str, Any]:
    return json.loads((TEMPLATE_BUNDLE / name).read_text())


def _normalise_transform(plan: BundlePlan) -> dict[str, Any]:
    """CT: ``ScaleIntensityRanged`` mapping [lo, hi] onto [(lo - m) / s, (hi - m) / s] with clipping -- exactly
    ``(clip(x, lo, hi) - m) / s``; otherwise ``NormalizeIntensityd`` per channel, or with an ROI
    ``FovStandardizeIntensityd`` (statistics inside the ROI, 0 outside; the whole image where a case has none)."""
    norm = plan.normalisation
    if norm["scheme"] == "ct":
        (lo, hi), m, s = norm["clip"], norm["mean"], norm["std"]
        return {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": lo, "a_max": hi,
                "b_min": (lo - m) / s, "b_max": (hi - m) / s, "clip": True}
    if plan.roi:
        return {"_target_": "monai_unetzoo.transforms.FovStandardizeIntensityd", "keys": "image",
                "mask_key": ROI_KEY}
    return {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": False, "channel_wise": True}


def _with_roi(plan: BundlePlan, keys: list[str]) -> list[str]:
    """``keys`` plus the ROI key where the plan has one."""
    return [*keys, ROI_KEY] if plan.roi else list(keys)


def _roi_steps(plan: BundlePlan, training: bool) -> list[dict[str, Any]]:
    """Inference without a mask file: the planned ``EstimateFovMaskd`` (if any); then the mask binarised."""
    steps = []
    if not training and plan.roi.get("fov_threshold") is not None:
        steps.append({"_target_": "monai_unetzoo.transforms.EstimateFovMaskd", "keys": ROI_KEY, "image_key": "image",
                      "threshold": plan.roi["fov_threshold"]})
    return steps + [{"_target_": "Lambdad", "keys": ROI_KEY, "func": "$lambda x: (x > 0).float()",
                     "allow_missing_keys": not training}]


def planned_load_transforms(plan: BundlePlan, keys: list[str]) -> list[dict[str, Any]]:
    """Load, channel-first, float32, (3D: RAS + target spacing), normalisation -- for ``keys`` (image[, label]),
    and the ROI mask where the plan has one (required in training, optional -- estimated or absent -- otherwise)."""
    training = "label" in keys
    keys = _with_roi(plan, keys)
    load = {"_target_": "LoadImaged", "keys": keys, "image_only": True, "allow_missing_keys": not training}
    if plan.spatial_dims == 2:
        load.update(_LOADER_2D)
    steps = [load, {"_target_": "EnsureChannelFirstd", "keys": keys, "allow_missing_keys": not training},
             {"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"}]
    if plan.pixdim is not None:
        modes = ["bilinear", "nearest", "nearest"][: len(keys)]
        steps += [{"_target_": "Orientationd", "keys": keys, "axcodes": "RAS", "labels": None,
                   "allow_missing_keys": not training},
                  {"_target_": "Spacingd", "keys": keys, "pixdim": plan.pixdim,
                   "mode": modes if len(keys) > 1 else modes[0], "allow_missing_keys": not training}]
    if plan.roi:
        steps += _roi_steps(plan, training)
    return steps + [_normalise_transform(plan)]


def _random_transforms(plan: BundlePlan) -> list[dict[str, Any]]:
    """The hippocampus bundle's augmentation with one ``RandFlipd`` per planned mirror axis (the ROI moves with
    the label)."""
    keys, nd = _with_roi(plan, ["image", "label"]), plan.spatial_dims
    modes = ["bilinear", "nearest", "nearest"][: len(keys)]
    steps = [{"_target_": "RandSpatialCropd", "keys": keys, "roi_size": "@patch_size", "random_size": False},
             {"_target_": "RandAffined", "keys": keys, "prob": 0.3, "rotate_range": [0.26] * (3 if nd == 3 else 1),
              "scale_range": [0.15] * nd, "mode": modes, "padding_mode": "zeros"}]
    steps += [{"_target_": "RandFlipd", "keys": keys, "prob": 0.5, "spatial_axis": a} for a in plan.mirror_axes]
    return steps + [
        {"_target_": "RandScaleIntensityd", "keys": "image", "factors": 0.1, "prob": 0.5},
        {"_target_": "RandShiftIntensityd", "keys": "image", "offsets": 0.1, "prob": 0.5},
        {"_target_": "RandGaussianNoised", "keys": "image", "std": 0.05, "prob": 0.15},
        {"_target_": "EnsureTyped", "keys": keys, "track_meta": False}]


def _network_def(plan: BundlePlan) -> dict[str, Any]:
    target = {"resunet": "ResUNet", "unet": "ClassicUNet", "unetpp": "UNetPlusPlus"}[plan.network]
    return {"_target_": f"monai_unetzoo.networks.{target}", "spatial_dims": plan.spatial_dims,
            "in_channels": plan.in_channels, "out_channels": "@num_classes", "features": plan.features,
            "pool_sizes": plan.pool_sizes,
            "norm": ["instance", {"affine": True}], "upsample": "deconv"}


def _shared_values(plan: BundlePlan, output: Path) -> dict[str, Any]:
    """Top-level values train.json and inference.json share."""
    return {"bundle_root": str(output.resolve()), "dataset_dir": plan.dataset_dir, "num_classes": plan.num_classes,
            "class_names": plan.class_names, "pixdim": plan.pixdim, "patch_size": plan.patch_size,
            "network_def": _network_def(plan),
            "network_memory_format": "$torch.channels_last_3d" if plan.spatial_dims == 3 else "$torch.channels_last"}


def _replace_in_list(items: list[Any], old: str, new: str) -> list[Any]:
    return [x.replace(old, new) if isinstance(x, str) else x for x in items]


def _roi_training(cfg: dict[str, Any], plan: BundlePlan) -> None:
    """The DRIVE bundle's ROI handling in the template's train.json, in place: the label is the ignore value
    outside the ROI (``PrepareBatchWithROI``) and the loss skips it (``MaskedDiceCELoss``, the template's DiceCE
    arguments); validation counts Dice inside the ROI (:func:`_mask_outside_roi_step`)."""
    ignore = plan.roi["ignore_index"]
    loss = {k: v for k, v in cfg["loss"].items() if k != "_target_"}
    cfg["loss"] = {"_target_": "monai_unetzoo.losses.MaskedDiceCELoss", **loss, "ignore_index": ignore}
    cfg["train"]["prepare_batch"] = {"_target_": "monai_unetzoo.engines.PrepareBatchWithROI", "roi_key": ROI_KEY,
                                     "ignore_index": ignore}
    cfg["train"]["trainer"]["prepare_batch"] = "@train#prepare_batch"
    cfg["train"]["deterministic_transforms"][0]["keys"] = _with_roi(plan, ["image", "label"])
    cfg["validate"]["postprocessing"]["transforms"].append(_mask_outside_roi_step())
    cfg["data_check_options"]["require_roi"] = True


def _mask_outside_roi_step() -> dict[str, Any]:
    """After one-hot ``AsDiscreted``: prediction and label are 0 in every channel outside the ROI, so MONAI's Dice,
    HD95 and surface Dice without background count only the inside (what the ROI metrics of the DRIVE bundle do)."""
    return {"_target_": "MaskIntensityd", "keys": ["pred", "label"], "mask_key": ROI_KEY}


def planned_train_config(plan: BundlePlan, output: Path) -> dict[str, Any]:
    """train.json: the template's, with the plan's values (see the module docstring)."""
    cfg = _template("train.json")
    cfg.update(_shared_values(plan, output))
    for key in ("synthetic_dir", "is_synthetic"):
        cfg.pop(key)
    cfg["data_root"] = "$monai_unetzoo.data.msd.checked_msd_dataset_dir(@dataset_dir, exit_on_error=True)"
    cfg["val_fraction"] = VAL_FRACTION
    cfg["epochs"] = plan.epochs
    cfg["val_interval"] = max(1, plan.epochs // 10)
    cfg["batch_size"] = plan.batch_size
    checks = cfg["data_check_options"]
    checks["spatial_dims"] = plan.spatial_dims
    checks["name"] = f"$'{plan.name} training + validation datalist (' + @data_root + ')'"
    if plan.spatial_dims == 2:
        checks["loader_kwargs"] = dict(_LOADER_2D)
    cfg["load_transforms"] = planned_load_transforms(plan, ["image", "label"])
    cfg["train"]["random_transforms"] = _random_transforms(plan)
    if plan.roi:
        _roi_training(cfg, plan)
    return cfg


def planned_inference_config(plan: BundlePlan, output: Path) -> dict[str, Any]:
    """inference.json: the template's, reading ``<dataset>/imagesTs`` by default, mirroring over the planned axes."""
    cfg = _template("inference.json")
    cfg.update(_shared_values(plan, output))
    cfg.pop("synthetic_dir")
    cfg["input_dir"] = "$os.path.join(@dataset_dir, 'imagesTs')"
    cfg["mirror_axes"] = plan.mirror_axes
    cfg["preprocessing"]["transforms"] = planned_load_transforms(plan, ["image"])
    cfg["inferring"] = _replace_in_list(cfg["inferring"], "'hippocampus'", repr(plan.name))
    return cfg


def planned_evaluate_config(plan: BundlePlan) -> dict[str, Any]:
    """evaluate.json: the template's with test-time mirroring over the planned axes, one surface-Dice tolerance
    (1 mm, 2D: 1 pixel) per foreground class, and (3D only) the label maps saved."""
    cfg = _template("evaluate.json")
    cfg["tta_axes"] = plan.mirror_axes
    cfg["surface_dice_tolerance_mm"] = [1.0] * (plan.num_classes - 1)
    # 2D: no per-case label files (SaveImaged writes NIfTI, which a 2D channel-first prediction is not); the
    # DRIVE bundle's evaluation does the same. unetzoo predict writes PNG/TIFF segmentations.
    cfg["save_predictions"] = plan.spatial_dims == 3
    cfg["evaluating"] = _replace_in_list(cfg["evaluating"], "getLogger('hippocampus')",
                                         f"getLogger({plan.name!r})")
    if plan.roi:
        cfg["postprocessing_steps"].append(_mask_outside_roi_step())
    return cfg


def _onnx_config(plan: BundlePlan) -> dict[str, Any]:
    cfg = _template("onnx_export.json")
    axes = [0, *range(2, 2 + plan.spatial_dims)]
    cfg["converter_kwargs"]["dynamic_axes"] = {"image": axes, "pred": axes}
    return cfg


def _tensor_format(plan: BundlePlan, channels: int, channel_def: dict[str, str], kind: str) -> dict[str, Any]:
    # per axis 2**(its poolings + 1): 2**poolings would allow a 1-voxel bottleneck at n=1 (instance norm fails)
    steps = [2 ** (n + 1) for n in pool_counts(plan.pool_sizes)]
    return {"type": "image", "format": kind, "modality": "CT" if plan.modality == "ct" else
            ("MR" if plan.modality == "mr" else "light"), "num_channels": channels,
            "spatial_shape": [f"{step}*n" for step in steps], "dtype": "float32", "value_range": [],
            "is_patch_data": True, "channel_def": channel_def}


def _plan_json(plan: BundlePlan) -> dict[str, Any]:
    return {"network": plan.network, "device": plan.device, "budget_minutes": plan.budget_minutes,
            "seconds_per_iteration": plan.seconds_per_iteration,
            "rules": [{"name": r.name, "value": r.value, "reason": r.reason} for r in plan.rules]}


def planned_metadata(plan: BundlePlan, fp: DatasetFingerprint) -> dict[str, Any]:
    """metadata.json: the schema's keys (versions copied from the template), the plan and the fingerprint."""
    template = _template("metadata.json")
    labels = {str(i): n for i, n in enumerate(["background", *plan.class_names])}
    out = {k: template[k] for k in ("schema", "monai_version", "pytorch_version", "numpy_version",
                                    "required_packages_version", "supported_apps", "authors", "copyright",
                                    "intended_use")}
    shape = "x".join(str(p) for p in plan.patch_size)
    out.update({
        "version": PLANNED_VERSION,
        "changelog": {PLANNED_VERSION: f"planned by `unetzoo plan` from {fp.root} ({len(fp.cases)} cases)"},
        "name": f"{plan.name} (planned)", "task": f"Segmentation of {', '.join(plan.class_names)} ({fp.name})",
        "description": f"A {plan.spatial_dims}D {plan.network} planned from the data set's fingerprint: "
                       f"{shape} patches, features {plan.features}, {plan.normalisation['scheme']} normalisation, "
                       f"flips along axes {plan.mirror_axes}; see README.md for every rule and its reason.",
        "data_source": str(fp.root), "data_type": "png/tiff" if plan.spatial_dims == 2 else "nifti/nrrd/mha",
        "image_classes": f"{plan.in_channels} channel(s): {', '.join(plan.channel_names)}",
        "label_classes": "single channel: " + ", ".join(f"{k} = {v}" for k, v in labels.items()),
        "pred_classes": f"{plan.num_classes} channels (softmax logits): " + ", ".join(labels.values()),
        "eval_metrics": {},
        "references": [template["references"][-1]],
        "network_data_format": {
            "inputs": {"image": _tensor_format(plan, plan.in_channels, {str(i): n for i, n in
                                                                        enumerate(plan.channel_names)}, "magnitude")},
            "outputs": {"pred": _tensor_format(plan, plan.num_classes, labels, "segmentation")}},
        "plan": _plan_json(plan),
        "fingerprint": fp.to_json(),
    })
    return out


def _write_json(path: Path, content: dict[str, Any]) -> None:
    path.write_text(json.dumps(content, indent=4, allow_nan=False, default=float) + "\n")


def write_planned_bundle(plan: BundlePlan, fp: DatasetFingerprint, output: str | os.PathLike) -> Path:
    """Write the bundle folder ``output`` (created; existing config files are replaced, ``models/`` is kept)."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "metadata.json", _finite(planned_metadata(plan, fp)))
    _write_json(out / "train.json", planned_train_config(plan, out))
    _write_json(out / "evaluate.json", planned_evaluate_config(plan))
    _write_json(out / "inference.json", planned_inference_config(plan, out))
    _write_json(out / "onnx_export.json", _onnx_config(plan))
    for name in _COPIED:
        shutil.copyfile(TEMPLATE_BUNDLE / name, out / name)
    (out / "README.md").write_text(planned_readme(plan, fp, out))
    return out


def _finite(value: Any) -> Any:
    """``value`` with NaN floats (statistics of a case without foreground) replaced by None (valid JSON)."""
    if isinstance(value, float):
        return None if value != value else value
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return copy.copy(value)
