"""Planned bundles against the hand-written ones (issue 20). Not a test; long runs, print a table.

``--task hippocampus`` (default): ``unetzoo plan`` on Task04_Hippocampus, then ``benchmarks/hippocampus.py`` trains
the planned bundle's ``train.json`` and the hand-written ``bundles/hippocampus/train.json`` with the same
wall-clock budget, threads and split (the fixed 42-case validation split, seed 0), final weights scored by each
bundle's own evaluator. Target: the planned mean Dice within 0.01 of the hand-written one.

``--task isbi``: the ISBI 2012 EM training stack (30 slices of 512x512, ``train/image`` and ``train/label`` PNGs;
label 0 = membrane, 255 = cell) converted to a 2D MSD-style folder (label 1 = membrane), planned, trained for the
budget with ``python -m monai.bundle run training`` and predicted with ``unetzoo predict``.

Usage::

    python benchmarks/planned.py --minutes 15 --json runs/planned_hippocampus.json
    python benchmarks/planned.py --task isbi --minutes 10
    python benchmarks/planned.py --quick          # smoke run: 1 minute, 8 training and 4 validation cases
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from _common import write_json  # benchmarks/ is on sys.path when a script here runs

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("UNETZOO_DATA_DIR", REPO.parent / "shared" / "data"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=("hippocampus", "isbi"), default="hippocampus")
    p.add_argument("--minutes", type=float, default=15.0, help="training budget per bundle")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work_dir", default=str(Path(os.environ.get("TMPDIR", "/tmp")) / "unetzoo_bench_planned"))
    p.add_argument("--quick", action="store_true", help="1 minute, few cases (smoke run)")
    p.add_argument("--json", default=None, help="write the result here too")
    return p.parse_args(argv)


def _run(cmd: list[str]) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=REPO, env=env, check=True)


def plan(dataset: Path, output: Path, minutes: float) -> None:
    """``unetzoo plan`` as a user runs it."""
    _run([sys.executable, "-m", "unetzoo_cli", "plan", "--dataset", str(dataset), "--output", str(output),
          "--budget-minutes", str(minutes)])


def _train_with_budget(bundle: Path, out: Path, args: argparse.Namespace) -> dict:
    """benchmarks/hippocampus.py on ``bundle``: the same budget, threads and split for both bundles."""
    result = out / "result.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "hippocampus.py"), "--bundle", str(bundle), "--minutes",
           str(args.minutes), "--threads", str(args.threads), "--output_dir", str(out), "--json", str(result),
           "--dataset_dir", str(DATA / "Task04_Hippocampus")]
    if args.quick:
        cmd += ["--num_train_cases", "8", "--num_val_cases", "4"]
    _run(cmd)
    return json.loads(result.read_text())


def hippocampus(args: argparse.Namespace, work: Path) -> dict:
    bundle = work / "planned_hippocampus"
    plan(DATA / "Task04_Hippocampus", bundle, args.minutes)
    planned = _train_with_budget(bundle, work / "run_planned", args)
    manual = _train_with_budget(REPO / "bundles" / "hippocampus", work / "run_handwritten", args)
    rows = {"planned": planned, "hand-written": manual}
    print(f"\n{'bundle':14s} {'iterations':>10s} {'anterior':>9s} {'posterior':>9s} {'mean Dice':>9s}")
    for name, r in rows.items():
        print(f"{name:14s} {r['iterations']:>10d} {r['dice_anterior']:>9.4f} {r['dice_posterior']:>9.4f} "
              f"{r['mean_dice']:>9.4f}")
    gap = planned["mean_dice"] - manual["mean_dice"]
    print(f"planned - hand-written mean Dice: {gap:+.4f} (target: >= -0.01) -> {'PASS' if gap >= -0.01 else 'FAIL'}")
    return {"task": "hippocampus", "minutes": args.minutes, "planned": planned, "handwritten": manual, "gap": gap}


def convert_isbi(source: Path, target: Path) -> Path:
    """ISBI 2012 train PNGs -> MSD-style 2D folder: images as they are, labels 1 = membrane (source value 0)."""
    import numpy as np
    from PIL import Image

    for sub in ("imagesTr", "labelsTr"):
        (target / sub).mkdir(parents=True, exist_ok=True)
    training = []
    for path in sorted((source / "train" / "image").glob("*.png"), key=lambda p: int(p.stem)):
        name = f"isbi_{int(path.stem):03d}.png"
        Image.open(path).convert("L").save(target / "imagesTr" / name)
        label = np.asarray(Image.open(source / "train" / "label" / path.name).convert("L"))
        Image.fromarray((label < 128).astype(np.uint8)).save(target / "labelsTr" / name)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    content = {"name": "ISBI2012_EM", "modality": {"0": "EM"}, "labels": {"0": "cell", "1": "membrane"},
               "licence": "see ../shared/data/SOURCES.md", "training": training}
    (target / "dataset.json").write_text(json.dumps(content, indent=2))
    return target


def isbi(args: argparse.Namespace, work: Path) -> dict:
    data = convert_isbi(DATA / "ISBI2012_EM", work / "isbi_msd")
    bundle = work / "planned_isbi"
    plan(data, bundle, args.minutes)
    _run([sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(bundle / "train.json"),
          "--num_threads", str(args.threads)] + (["--epochs", "1"] if args.quick else []))
    _run([sys.executable, "-m", "monai.bundle", "run", "evaluating", "--config_file",
          f"['{bundle / 'train.json'}','{bundle / 'evaluate.json'}']"])
    summary = json.loads((bundle / "models" / "eval" / "metrics_validation.json").read_text())
    inputs = sorted(str(p) for p in (data / "imagesTr").glob("*.png"))[: 3 if args.quick else None]
    _run([sys.executable, "-m", "unetzoo_cli", "predict", "--bundle", str(bundle), "--input", *inputs,
          "--output", str(work / "isbi_pred"), "--quiet"])
    print(f"\nISBI 2012 planned bundle: validation membrane Dice {summary['per_class_mean']['dice']}")
    return {"task": "isbi", "minutes": args.minutes, "validation": summary["per_class_mean"]}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.quick:
        args.minutes = min(args.minutes, 1.0)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    result = hippocampus(args, work) if args.task == "hippocampus" else isbi(args, work)
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
