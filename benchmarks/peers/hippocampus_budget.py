"""Accuracy at equal CPU budget on MSD Task04: our hippocampus bundle beside nnU-Net v2's default ``3d_fullres``.

Not a test (``pip install -e ".[peers]"``, e.g. ``UNETZOO_VENV=.venv-peers UNETZOO_EXTRAS=peers bash
tools/setup_venv.sh``). One run of this script, on one machine, for each ``--minutes`` budget:

1. **nnU-Net v2**, through its own commands: the 208 open cases in its raw layout (links), ``nnUNetv2_plan_and_preprocess
   -d 4 -c 3d_fullres`` (timed once: it is part of nnU-Net's budget, as caching is part of ours), our fixed split as its
   ``splits_final.json`` fold 0, ``nnUNetv2_train 4 3d_fullres 0 -tr nnUNetTrainerWallClock -device cpu`` (through ``nnunet_cli.py``, which only
   changes how the trainer class is found) for the budget
   minus the preprocessing time (``nnunet_trainers/``: its default trainer with a wall-clock stop and a time-based poly
   LR), then ``nnUNetv2_predict`` on the 42 validation images with its defaults (mirroring on, step 0.5).
2. **Ours**: ``benchmarks/hippocampus.py --minutes M`` (the bundle's ``train.json``, caching inside the budget, the same
   time-based poly LR), then ``unetzoo predict`` on the same 42 images with the bundle's defaults (left-right TTA).
3. Both sets of label maps scored with one Dice code (:func:`_peers.score_label_files`) against ``labelsTr``.

Usage::

    python benchmarks/peers/hippocampus_budget.py --minutes 15 60 --json benchmarks/peers/hippocampus_budget.json
    python benchmarks/peers/hippocampus_budget.py --minutes 2 --only nnunet      # a smoke run of the peer side
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _peers  # noqa: E402
from _common import print_table, write_json  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, nargs="+", default=[15.0], help="training budgets, CPU wall minutes")
    p.add_argument("--dataset_dir", type=Path, default=_peers.SHARED_DATA / "Task04_Hippocampus")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/unetzoo_peers_hippocampus"))
    p.add_argument("--only", choices=("both", "nnunet", "ours"), default="both")
    p.add_argument("--threads", type=int, default=2, help="our torch threads (nnU-Net uses every CPU on -device cpu)")
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def nnunet_run(args) -> _peers.NnunetRun:
    return _peers.NnunetRun(args.workdir, _peers.HIPPOCAMPUS_ID, _peers.HIPPOCAMPUS_NAME, "3d_fullres")


def prepare_nnunet(args, train, val) -> dict:
    """Raw layout + plan_and_preprocess (timed) + our split as fold 0; reused when already done in ``workdir``."""
    _peers.write_nnunet_raw_hippocampus(args.dataset_dir, args.workdir)
    return nnunet_run(args).prepare(train, val)


def run_nnunet(args, minutes: float, val, preprocessing: dict) -> dict:
    images = _peers.link_inputs(val, args.workdir / "val_images_nnunet", "_0000.nii.gz")
    run = nnunet_run(args).train_and_predict(minutes, images, preprocessing)
    out, budget = run["predictions"], run["budget"]
    dice = _peers.score_label_files([(out / f"{d['case_id']}.nii.gz", Path(d["label"])) for d in val], 3)
    return {"tool": "nnU-Net v2 3d_fullres", "minutes": minutes, "iterations": budget["iterations"],
            "batch": budget["batch_size"], "preprocess_s": preprocessing["seconds"],
            "train_s": budget["train_seconds"], "train_process_s": run["train_s"], "dice": dice,
            "infer_s_per_case": round(run["predict_s"] / len(val), 2), "infer_total_s": run["predict_s"]}


def run_ours(args, minutes: float, val) -> dict:
    out = args.workdir / f"ours_{minutes:g}min"
    result_json = out / "result.json"
    train = _peers.timed_run([sys.executable, _peers.REPO / "benchmarks" / "hippocampus.py", "--minutes", str(minutes),
                              "--threads", str(args.threads), "--dataset_dir", args.dataset_dir, "--output_dir", out,
                              "--json", result_json], None, args.workdir / f"ours_train_{minutes:g}min.log")
    trained = json.loads(result_json.read_text())
    images = _peers.link_inputs(val, args.workdir / "val_images")
    pred_dir = args.workdir / f"ours_pred_{minutes:g}min"
    shutil.rmtree(pred_dir, ignore_errors=True)
    pred = _peers.timed_run([_peers.bin_path("unetzoo"), "predict", "--bundle", _peers.REPO / "bundles" / "hippocampus",
                             "--checkpoint", out / "model_benchmark.pt", "--input", images, "--output", pred_dir,
                             "--threads", str(args.threads), "--no-preview", "--quiet"], None,
                            args.workdir / f"ours_predict_{minutes:g}min.log")
    pairs = [(_peers.predicted_file(pred_dir, d["case_id"]), Path(d["label"])) for d in val]
    dice = _peers.score_label_files(pairs, 3)
    return {"tool": "monai-unetzoo hippocampus", "minutes": minutes, "iterations": trained["iterations"],
            "batch": _bundle_batch_size(), "preprocess_s": trained["caching_seconds"],
            "train_s": round(trained["train_minutes_incl_caching"] * 60, 1), "train_process_s": train["seconds"],
            "dice": dice, "bundle_evaluator_mean_dice_tta": trained["mean_dice_tta"],
            "infer_s_per_case": round(pred["seconds"] / len(val), 2), "infer_total_s": pred["seconds"]}


def _bundle_batch_size() -> int:
    return int(json.loads((_peers.REPO / "bundles" / "hippocampus" / "train.json").read_text())["batch_size"])


def main(argv=None) -> dict:
    args = parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    train, val = _peers.hippocampus_split(args.dataset_dir)
    machine = _peers.machine_line()
    print(machine, flush=True)
    rows: list[dict] = []
    preprocessing = prepare_nnunet(args, train, val) if args.only in ("both", "nnunet") else None
    for minutes in args.minutes:
        if args.only in ("both", "nnunet"):
            rows.append(run_nnunet(args, minutes, val, preprocessing))
            print(json.dumps(rows[-1]), flush=True)
        if args.only in ("both", "ours"):
            rows.append(run_ours(args, minutes, val))
            print(json.dumps(rows[-1]), flush=True)
    for r in rows:
        r["dice_anterior"], r["dice_posterior"] = r["dice"]["per_class"]
        r["mean_dice"] = r["dice"]["mean"]
    print(f"\n{machine}; {len(train)} training / {len(val)} validation cases (fold 0 of 5)")
    print_table(rows, [("tool", "tool", "<s"), ("minutes", "budget min", ">g"), ("iterations", "iterations", ">d"),
                       ("batch", "batch", ">d"), ("preprocess_s", "prep/cache s", ">.0f"),
                       ("dice_anterior", "Dice ant", ">.4f"), ("dice_posterior", "Dice post", ">.4f"),
                       ("mean_dice", "mean", ">.4f"), ("infer_s_per_case", "infer s/case", ">.2f")])
    payload = {"machine": machine, "preprocessing": preprocessing, "rows": rows, "date": time.strftime("%Y-%m-%d %H:%M")}
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
