"""The README of a planned bundle: the plan with every rule's reason, the fingerprint summary and the commands.

It has the sections the model-zoo's README template asks for (overview, data, training, performance, commands,
TorchScript and ONNX, references, data licence), as the hand-written bundles' READMEs do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .fingerprint import DatasetFingerprint
from .plan import BundlePlan

__all__ = ["planned_readme"]

VAL_SPLIT = "training/validation split: 20% of the cases for validation (seed 0), as the hand-written bundles."


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_fmt(v)}" for k, v in value.items())
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def _plan_table(plan: BundlePlan) -> str:
    rows = [f"| {r.name} | {_fmt(r.value)} | {r.reason} |" for r in plan.rules]
    return "| rule | value | why |\n|---|---|---|\n" + "\n".join(rows)


def _fingerprint_summary(fp: DatasetFingerprint) -> str:
    spacings, shapes = fp.spacings(), fp.shapes()
    lines = [
        f"- cases fingerprinted: {len(fp.cases)} of {fp.num_cases_total} ({fp.spatial_dims}D, {fp.channels} "
        f"channel(s), modality {fp.modality})",
        f"- shape: median {_fmt(fp.median_shape)}, min {_fmt(shapes.min(0).tolist())}, max "
        f"{_fmt(shapes.max(0).tolist())}",
        f"- spacing (mm): median {_fmt(fp.median_spacing)}, min {_fmt(spacings.min(0).tolist())}, max "
        f"{_fmt(spacings.max(0).tolist())}",
        f"- orientations: {sorted(set(c.orientation for c in fp.cases))}",
        f"- class frequencies (voxel fraction): {_fmt(fp.class_frequencies)}",
        f"- cases holding each class: {_fmt(fp.class_case_fraction)}",
    ]
    for ch, st in enumerate(fp.foreground_intensity):
        lines.append(f"- channel {ch} foreground intensity (pooled): {_fmt(st)}")
    volumes = {k: float(np.median([c.class_volume[k] for c in fp.cases])) for k in fp.labels}
    lines.append(f"- median class volume (mm^{fp.spatial_dims}): {_fmt(volumes)}")
    return "\n".join(lines)


def _commands(out: str) -> str:
    return f"""```bash
python -m monai.bundle run training --config_file {out}/train.json
python -m monai.bundle run evaluating --config_file "['{out}/train.json','{out}/evaluate.json']"
python -m monai.bundle run --config_file {out}/inference.json --input_dir /path/to/scans
unetzoo predict --bundle {out} --input /path/to/scans --output /path/to/out
torchrun --nproc_per_node=2 -m monai.bundle run training \\
    --config_file "['{out}/train.json','{out}/multi_gpu_train.json']"
```
Every command of the hand-written bundles works (`--resume true`, `--validate_data false`, `--fold k`,
`--dataset_dir`, `--epochs`, `--device`): the configs are `bundles/hippocampus`'s with the planned values."""


def _roi_layout(plan: BundlePlan) -> str:
    """The ROI masks' part of the data layout sentence (empty without them)."""
    if not plan.roi:
        return ""
    estimate = ("estimated from the image when a case comes without one" if plan.roi["fov_threshold"] is not None
                else "not estimated: cases without one are predicted over the whole image")
    return (", and a `roi` mask per case: loss, normalisation and validation Dice inside it, predictions background "
            f"outside it; at inference {estimate}, see the plan table")


def planned_readme(plan: BundlePlan, fp: DatasetFingerprint, output: Path) -> str:
    """Markdown text of ``<output>/README.md``."""
    out = str(output)
    return f"""# {plan.name} bundle (planned by `unetzoo plan`)

## Overview

A {plan.spatial_dims}D {plan.network} segmenting {", ".join(plan.class_names)} in {fp.name}, planned from the
data set's fingerprint by `unetzoo plan` (`monai_unetzoo.planning`). Research use only; not for clinical decisions.

## Commands

{_commands(out)}

## Data

Data set: `{fp.root}` (MSD layout: `dataset.json`, `imagesTr/`, `labelsTr/`{_roi_layout(plan)}); {VAL_SPLIT} The full fingerprint
(per case: shape, spacing, orientation, foreground intensity percentiles per channel, class volumes) is in
`metadata.json` under `fingerprint`.

{_fingerprint_summary(fp)}

## Training plan

{_plan_table(plan)}

Batch size {plan.batch_size}; Dice + cross-entropy, AdamW (lr 0.002) with polynomial decay, random crops,
affine, flips along the mirror axes and intensity augmentation, as `bundles/hippocampus`.

## Performance

Not measured yet: train with `{out}/train.json` and evaluate with `evaluate.json` (writes
`models/eval/metrics_validation.json`).

## TorchScript and ONNX

```bash
python -m monai.bundle ckpt_export network_def --filepath {out}/models/model.ts \\
    --ckpt_file {out}/models/model.pt --meta_file {out}/metadata.json --config_file {out}/inference.json
python -m monai.bundle onnx_export network_def --filepath {out}/models/model.onnx \\
    --ckpt_file {out}/models/model.pt --meta_file {out}/metadata.json \\
    --config_file "['{out}/inference.json','{out}/onnx_export.json']"
```

## References

- Isensee F, Jaeger PF, Kohl SAA, Petersen J, Maier-Hein KH. nnU-Net: a self-configuring method for deep
  learning-based biomedical image segmentation. Nature Methods 18:203-211, 2021 (the planning heuristics).

## Data licence

The data are not part of this bundle; their licence is that of `{fp.root}` (dataset.json: {fp.licence!r}).
"""

