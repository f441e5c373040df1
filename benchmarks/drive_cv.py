"""5-fold cross-validation of the DRIVE recipe (issue 22): each of the 20 training images validated once.

Not a test. For each fold k of 5 (``monai_unetzoo.data.folds``, the cut ``--fold k`` of ``train.json`` uses; fold 0
is the bundle's fixed 16 / 4 split) it trains ``bundles/drive/train.json`` on the other 16 images with
``benchmarks/drive.py --budget_minutes M --epochs E --override fold=k`` (the README's 5-minute schedule at the
defaults; ``--override`` passes recipe changes through), then predicts fold k's 4 photographs with ``unetzoo
predict`` and the final weights (``model_last.pt``: no selection on the validation images), once plain and once
with ``--tta`` (mirroring over the bundle's ``mirror_axes``), saving the vessel probabilities. Scored by one code,
:func:`monai_unetzoo.metrics.compute_roi_metrics` (vessel Dice inside DRIVE's FOV masks, the bundle's validation
metric) from the probabilities:

* Dice at the bundle's threshold 0.5, per image, per fold, and over the 20 images (mean, and the standard deviation
  of the 5 fold means);
* the same with TTA, and the prediction time per image of both;
* a threshold chosen without looking at the fold it is scored on (nested): for fold k the threshold in
  ``THRESHOLDS`` with the highest mean Dice on the other 16 images, applied to fold k's 4.

Usage (from the repository root; about 6 minutes per fold on 2 cores)::

    python benchmarks/drive_cv.py --json benchmarks/drive_cv_5min.json
    python benchmarks/drive_cv.py --name "green + CLAHE" --override "load_transforms#2=$CL" \
        --infer-override "preprocessing#transforms#3=$CL"   # a preprocessing lever ($CL: bundles/drive/README.md)
    python benchmarks/drive_cv.py --name wide --override "network_def#features=[32,64,128,256,512]" \
        --infer-override "network_def#features=[32,64,128,256,512]"   # a lever the predictor must see too
    python benchmarks/drive_cv.py --folds 0 --minutes 1 --epochs 4                          # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))
import _peers  # noqa: E402  (run helpers and the machine line shared with the peer benchmarks)

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("UNETZOO_DATA_DIR", REPO.parent / "shared" / "data")) / "DRIVE"
#: Candidate probability thresholds for the nested choice.
THRESHOLDS = np.round(np.arange(0.30, 0.701, 0.02), 2)
#: Index of the bundle's threshold 0.5 in ``THRESHOLDS``.
AT_HALF = int(np.argmin(np.abs(THRESHOLDS - 0.5)))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=5.0, help="training budget per fold (wall clock)")
    p.add_argument("--epochs", type=int, default=36, help="cosine schedule length (36 = the 5-minute schedule)")
    p.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE", help="passed to drive.py")
    p.add_argument("--infer-override", action="append", default=[], metavar="KEY=VALUE",
                   help="applied to a copy of bundles/drive (its inference.json) that predicts: for levers that "
                   "change the network or the preprocessing")
    p.add_argument("--name", default="bundle default", help="recipe label in the table and the JSON")
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/unetzoo_drive_cv"))
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def _run(cmd: list, log: Path) -> float:
    """``_peers.timed_run`` with this checkout on ``PYTHONPATH``; its wall time in seconds."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    return _peers.timed_run(cmd, env, log)["seconds"]


def fold_validation(fold: int) -> list[dict]:
    """The 4 validation images of ``fold`` (the split ``train.json --fold k`` trains without)."""
    from monai_unetzoo.data.drive import drive_datalists

    return drive_datalists(DATA, fold=fold)["validation"]


def train_fold(args, fold: int, folder: Path) -> dict:
    cmd = [sys.executable, REPO / "benchmarks" / "drive.py", "--budget_minutes", args.minutes, "--epochs",
           args.epochs, "--val_interval", args.epochs, "--cores", args.cores, "--dataset_dir", DATA,
           "--output_dir", folder, "--override", f"fold={fold}"]
    for o in args.override:
        cmd += ["--override", o]
    seconds = _run(cmd, folder.parent / f"{folder.name}_train.log")
    result = json.loads((folder / "benchmark.json").read_text())
    return {"train_s": round(seconds, 1), "iterations": result["iterations"]}


def prediction_bundle(args) -> Path:
    """``bundles/drive``, or with ``--infer-override`` a copy of it under the workdir with those keys of its
    ``inference.json`` replaced (``#``-paths as on MONAI's command line; values parsed as ``drive.py`` parses
    ``--override``)."""
    if not args.infer_override:
        return REPO / "bundles" / "drive"
    import shutil

    from drive import _parse_override
    from monai.bundle import ConfigParser

    target = args.workdir / "bundle"
    shutil.copytree(REPO / "bundles" / "drive", target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("models"))
    parser = ConfigParser()
    parser.read_config(str(target / "inference.json"))
    for text in args.infer_override:
        key, value = _parse_override(text)
        parser[key] = value
    config = parser.get()
    if config.get("_meta_") == {}:  # added by read_config; the bundle keeps its metadata in metadata.json
        del config["_meta_"]
    (target / "inference.json").write_text(json.dumps(config, indent=4) + "\n")
    return target


def predict(args, checkpoint: Path, images: Path, out: Path, tta: bool) -> float:
    cmd = [sys.executable, "-m", "unetzoo_cli", "predict", "--bundle", prediction_bundle(args), "--checkpoint",
           checkpoint, "--input", images, "--output", out, "--threads", args.cores, "--save-probabilities",
           "--no-preview", "--quiet", "--overwrite", "--tta" if tta else "--no-tta"]
    return _run(cmd, out.parent / f"{out.name}.log")


def fov_dice(prob: np.ndarray, label_path: str, fov_path: str, thresholds) -> np.ndarray:
    """Vessel Dice inside the FOV of ``prob > t`` for each t (compute_roi_metrics, the bundle's metric)."""
    import torch
    from PIL import Image

    from monai_unetzoo.metrics import compute_roi_metrics

    ref = torch.from_numpy(np.asarray(Image.open(label_path).convert("L")) > 127)[None, None].float()
    fov = torch.from_numpy(np.asarray(Image.open(fov_path).convert("L")) > 127)[None, None].float()
    preds = torch.from_numpy(np.stack([prob > t for t in thresholds]))[:, None].float()
    return compute_roi_metrics(preds, ref.expand_as(preds), fov.expand_as(preds))["dice"][:, 0].numpy()


def read_probability(folder: Path, case_id: str) -> np.ndarray:
    """The vessel probability map ``unetzoo predict --save-probabilities`` wrote for ``case_id`` (H, W)."""
    import tifffile

    found = sorted(folder.rglob(f"{case_id}_prob.tif"))  # <input stem>_prob<input suffix>
    if len(found) != 1:
        raise FileNotFoundError(f"{folder}: expected one probability map for {case_id}, found {found}")
    prob = np.asarray(tifffile.imread(found[0]), dtype=np.float32)
    return prob[0] if prob.ndim == 3 else prob


def run_fold(args, fold: int) -> dict:
    folder = args.workdir / f"fold{fold}"
    row = {"fold": fold, **train_fold(args, fold, folder)}
    val = fold_validation(fold)
    images = _peers.link_inputs(val, args.workdir / f"fold{fold}_images", ".tif")
    for tta in (False, True):
        out = args.workdir / f"fold{fold}_pred{'_tta' if tta else ''}"
        seconds = predict(args, folder / "model_last.pt", images, out, tta)
        curves = [fov_dice(read_probability(out, d["case_id"]), d["label"], d["roi"], THRESHOLDS) for d in val]
        key = "tta" if tta else "plain"
        row[f"{key}_curves"] = [c.round(5).tolist() for c in curves]
        row[f"{key}_s_per_image"] = round(seconds / len(val), 2)
    row["case_ids"] = [d["case_id"] for d in val]
    return row


def fold_dice_at_half(row: dict) -> dict:
    """One fold's mean Dice at threshold 0.5, plain and TTA (printed as each fold ends: a long CV reads as it runs)."""
    return {f"{key}_dice": round(float(np.asarray(row[f"{key}_curves"])[:, AT_HALF].mean()), 4)
            for key in ("plain", "tta")}


def summarise(rows: list[dict]) -> dict:
    """Dice at 0.5 (plain, TTA) per fold and overall, and the nested threshold choice (see the module doc)."""
    out = {}
    for key in ("plain", "tta"):
        curves = {r["fold"]: np.asarray(r[f"{key}_curves"]) for r in rows}  # fold -> (4 images, T)
        fold_means = [float(c[:, AT_HALF].mean()) for c in curves.values()]
        nested, chosen = [], []
        for fold, c in curves.items():
            others = [curves[f] for f in curves if f != fold]
            best = int(np.argmax(np.concatenate(others).mean(axis=0))) if others else AT_HALF
            chosen.append(float(THRESHOLDS[best]))
            nested.append(float(c[:, best].mean()))
        out[key] = {"fold_dice": [round(v, 4) for v in fold_means], "mean": round(float(np.mean(fold_means)), 4),
                    "sd_of_folds": round(float(np.std(fold_means, ddof=1)) if len(fold_means) > 1 else 0.0, 4),
                    "nested_threshold": chosen, "nested_fold_dice": [round(v, 4) for v in nested],
                    "nested_mean": round(float(np.mean(nested)), 4),
                    "s_per_image": round(float(np.mean([r[f"{key}_s_per_image"] for r in rows])), 2)}
    return out


def main(argv=None) -> dict:
    args = parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    machine = _peers.machine_line()
    print(machine, flush=True)
    rows = []
    for fold in args.folds:
        rows.append(run_fold(args, fold))
        print(json.dumps({k: v for k, v in rows[-1].items() if not k.endswith("curves")} | fold_dice_at_half(rows[-1])),
              flush=True)
    summary = summarise(rows)
    print(f"\n{machine}\nDRIVE 5-fold CV, recipe: {args.name} ({args.minutes:g} min, {args.epochs} epochs per fold); "
          "vessel Dice inside the FOV masks, final weights")
    print(f"{'':6s} {'fold Dice @0.5':>36s} {'mean':>7s} {'sd':>6s} {'nested t':>8s} {'s/image':>8s}")
    for key, s in summary.items():
        print(f"{key:6s} {' '.join(f'{v:.4f}' for v in s['fold_dice']):>36s} {s['mean']:>7.4f} {s['sd_of_folds']:>6.4f} "
              f"{s['nested_mean']:>8.4f} {s['s_per_image']:>8.2f}")
    payload = {"recipe": args.name, "overrides": args.override, "infer_overrides": args.infer_override, "minutes": args.minutes, "epochs": args.epochs,
               "machine": machine, "python": platform.python_version(), "thresholds": THRESHOLDS.tolist(),
               "folds": rows, "summary": summary, "date": time.strftime("%Y-%m-%d %H:%M")}
    if args.json:
        Path(args.json).write_text(json.dumps(payload, indent=1) + "\n")
    return payload


if __name__ == "__main__":
    main()
