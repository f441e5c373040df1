"""Planned bundles against the hand-written ones (issue 20). Not a test; long runs, print a table.

``--task hippocampus`` (default): ``unetzoo plan`` on Task04_Hippocampus, then ``benchmarks/hippocampus.py`` trains
the planned bundle's ``train.json`` and the hand-written ``bundles/hippocampus/train.json`` with the same
wall-clock budget, threads and split (the fixed 42-case validation split, seed 0), final weights scored by each
bundle's own evaluator. Target: the planned mean Dice within 0.01 of the hand-written one.

``--task drive``: DRIVE as an MSD-style 2D folder with its FOV masks as each case's ``roi``
(:func:`monai_unetzoo.data.write_drive_msd_folder`), planned with ``--budget-minutes M`` and trained as a user would
(``python -m monai.bundle run training``, the planned epochs) on the DRIVE bundle's fixed split (16 / 4 images);
beside it the hand-written ``bundles/drive`` through ``benchmarks/peers/drive_budget.py``'s run (its M-minute
schedule). Both final weights (``model_last.pt``) predict the 4 validation photographs with ``unetzoo predict`` (FOV
estimated from the photograph, each bundle its own way) and are scored by one code, vessel Dice inside DRIVE's FOV
masks (``_peers.score_fov_files``). Target: the planned bundle within 0.02 of the hand-written one.

``--task isbi``: the ISBI 2012 EM training stack (30 slices of 512x512, ``train/image`` and ``train/label`` PNGs;
label 0 = membrane, 255 = cell) converted to a 2D MSD-style folder (label 1 = membrane), planned, trained for the
budget with ``python -m monai.bundle run training`` and predicted with ``unetzoo predict``.

Usage::

    python benchmarks/planned.py --minutes 15 --json runs/planned_hippocampus.json
    python benchmarks/planned.py --task drive --minutes 5 --json benchmarks/planned_drive_5min.json
    python benchmarks/planned.py --task isbi --minutes 10
    python benchmarks/planned.py --quick          # smoke run: 1 minute, 8 training and 4 validation cases
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _common import write_json  # benchmarks/ is on sys.path when a script here runs

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("UNETZOO_DATA_DIR", REPO.parent / "shared" / "data"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=("hippocampus", "drive", "isbi"), default="hippocampus")
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


def _peers_module():
    """benchmarks/peers/_peers.py (DRIVE scoring) and drive_budget.py (the hand-written bundle's run)."""
    sys.path.insert(0, str(REPO / "benchmarks" / "peers"))
    import _peers
    import drive_budget

    return _peers, drive_budget


def _datalist_expression(case_ids: list[str], keep: bool) -> str:
    """A config expression selecting the training cases whose id is (``keep``) or is not in ``case_ids``."""
    return f"$[d for d in @datalists['all_training'] if (d['case_id'] in {case_ids!r}) == {keep}]"


def drive(args: argparse.Namespace, work: Path) -> dict:
    from monai_unetzoo.data import write_drive_msd_folder

    _peers, drive_budget = _peers_module()
    data = write_drive_msd_folder(DATA / "DRIVE", work / "drive_msd")
    _, val = drive_budget.drive_split(DATA / "DRIVE")
    ids = [d["case_id"] for d in val]
    bundle, models = work / "planned_drive", work / "planned_drive_models"
    t0 = time.perf_counter()
    plan(data, bundle, args.minutes)
    plan_s = time.perf_counter() - t0
    _run([sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(bundle / "train.json"),
          "--output_dir", str(models), "--num_threads", str(args.threads),
          "--train_datalist", _datalist_expression(ids, False), "--val_datalist", _datalist_expression(ids, True)]
         + (["--epochs", "1"] if args.quick else []))
    train_s = time.perf_counter() - t0 - plan_s
    images = _peers.link_inputs(val, work / "drive_val_images", ".tif")
    pred = work / "planned_drive_pred"
    _run([sys.executable, "-m", "unetzoo_cli", "predict", "--bundle", str(bundle), "--checkpoint",
          str(models / "model_last.pt"), "--input", str(images), "--output", str(pred), "--threads", str(args.threads),
          "--no-preview", "--quiet"])
    triples = [(_peers.predicted_file(pred, d["case_id"], ".tif"), Path(d["label"]), Path(d["roi"])) for d in val]
    planned = {"dice": _peers.score_fov_files(triples),
               "plan_s": round(plan_s, 1), "train_s": round(train_s, 1),
               "epochs": json.loads((bundle / "train.json").read_text())["epochs"]}
    peer_args = argparse.Namespace(workdir=work / "handwritten_drive", dataset_dir=DATA / "DRIVE", cores=args.threads)
    peer_args.workdir.mkdir(parents=True, exist_ok=True)
    manual = drive_budget.run_ours(peer_args, args.minutes, val)
    gap = planned["dice"]["mean"] - manual["dice"]["mean"]
    print(f"\n{'bundle':14s} {'train s':>8s} {'FOV Dice':>9s}  per image")
    print(f"{'planned':14s} {planned['plan_s'] + planned['train_s']:>8.0f} {planned['dice']['mean']:>9.4f}  "
          f"{planned['dice']['per_image']}")
    print(f"{'hand-written':14s} {manual['train_process_s']:>8.0f} {manual['dice']['mean']:>9.4f}  "
          f"{manual['dice']['per_image']}")
    print(f"planned - hand-written FOV Dice: {gap:+.4f} (target: >= -0.02) -> {'PASS' if gap >= -0.02 else 'FAIL'}")
    return {"task": "drive", "minutes": args.minutes, "validation_ids": ids, "planned": planned,
            "handwritten": manual, "gap": gap}


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
    machine = _peers_module()[0].machine_line()
    print(machine, flush=True)
    result = {"hippocampus": hippocampus, "drive": drive, "isbi": isbi}[args.task](args, work)
    result["machine"] = machine
    print(machine)
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
