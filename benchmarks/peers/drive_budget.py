"""Accuracy at equal CPU budget on DRIVE (2D): our drive bundle beside nnU-Net v2's default ``2d`` configuration.

Not a test (``pip install -e ".[peers]"``). The 2D counterpart of ``hippocampus_budget.py``, one run of this script
on one machine for each ``--minutes`` budget:

1. **nnU-Net v2**: DRIVE's 20 training images converted to its raw 2D layout (:func:`_peers.write_nnunet_raw_drive`:
   RGB PNG, vessel labels, outside the field of view = its ``ignore`` label), ``nnUNetv2_plan_and_preprocess -d 501
   -c 2d`` (timed, inside its budget), our fixed split (16 / 4 images, fold 0 of 5) as ``splits_final.json``,
   ``nnUNetv2_train 501 2d 0 -tr nnUNetTrainerWallClock -device cpu`` for the budget minus the preprocessing, then
   ``nnUNetv2_predict`` on the 4 validation images with its defaults (mirroring on, step 0.5).
2. **Ours**: ``benchmarks/drive.py --budget_minutes M --epochs E`` (the bundle's ``train.json``; ``E`` =
   ``EPOCHS_PER_MINUTE * M``, the cosine schedule of the bundle README's 5-minute schedule, 36 epochs in 5 minutes,
   stretched to the budget), then ``unetzoo predict`` with its final weights (``model_last.pt``, no selection on the
   validation images) on the same 4 photographs, the bundle's defaults (FOV estimated from the photograph).
3. Both scored with one code: vessel Dice inside DRIVE's FOV masks (:func:`_peers.score_fov_files`, our bundle's
   validation metric), mean over the 4 images.

Usage::

    python benchmarks/peers/drive_budget.py --minutes 5 --json benchmarks/peers/drive_budget_5min.json
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

#: Epochs of our cosine schedule per budget minute: the bundle README's 5-minute schedule (36 epochs, 240 s on 2 cores).
EPOCHS_PER_MINUTE = 36 / 5


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, nargs="+", default=[5.0], help="training budgets, CPU wall minutes")
    p.add_argument("--dataset_dir", type=Path, default=_peers.SHARED_DATA / "DRIVE")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/unetzoo_peers_drive"))
    p.add_argument("--only", choices=("both", "nnunet", "ours"), default="both")
    p.add_argument("--cores", type=int, default=2, help="our pinned cores / torch threads (nnU-Net uses every CPU)")
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def drive_split(dataset_dir: Path) -> tuple[list[dict], list[dict]]:
    """Our bundle's fixed DRIVE split (fold 0 of 5: 16 / 4 training images)."""
    from monai_unetzoo.data.drive import drive_datalists

    lists = drive_datalists(dataset_dir)
    return lists["training"], lists["validation"]


def nnunet_run(args) -> _peers.NnunetRun:
    return _peers.NnunetRun(args.workdir, _peers.DRIVE_ID, _peers.DRIVE_NAME, "2d")


def prepare_nnunet(args, train, val) -> dict:
    _peers.write_nnunet_raw_drive(args.dataset_dir, args.workdir)
    return nnunet_run(args).prepare(train, val)


def run_nnunet(args, minutes: float, val, preprocessing: dict) -> dict:
    raw_images = args.workdir / "nnUNet_raw" / _peers.DRIVE_NAME / "imagesTr"
    images = args.workdir / "val_images_nnunet"
    for d in val:  # nnU-Net's own converted PNGs of the validation images
        _peers.link_file(raw_images / f"{d['case_id']}_0000.png", images / f"{d['case_id']}_0000.png")
    run = nnunet_run(args).train_and_predict(minutes, images, preprocessing)
    out, budget = run["predictions"], run["budget"]
    dice = _peers.score_fov_files([(out / f"{d['case_id']}.png", Path(d["label"]), Path(d["roi"])) for d in val])
    return {"tool": "nnU-Net v2 2d", "minutes": minutes, "iterations": budget["iterations"],
            "batch": budget["batch_size"], "patch": "x".join(map(str, preprocessing["patch_size"])),
            "preprocess_s": preprocessing["seconds"], "train_s": budget["train_seconds"],
            "train_process_s": run["train_s"], "dice": dice,
            "infer_s_per_case": round(run["predict_s"] / len(val), 2), "infer_total_s": run["predict_s"]}


def run_ours(args, minutes: float, val) -> dict:
    out = args.workdir / f"ours_{minutes:g}min"
    shutil.rmtree(out, ignore_errors=True)
    epochs = max(1, round(EPOCHS_PER_MINUTE * minutes))
    train = _peers.timed_run([sys.executable, _peers.REPO / "benchmarks" / "drive.py", "--budget_minutes", str(minutes),
                              "--epochs", str(epochs), "--val_interval", str(epochs), "--cores", str(args.cores),
                              "--dataset_dir", args.dataset_dir, "--output_dir", out], None,
                             args.workdir / f"ours_train_{minutes:g}min.log")
    trained = json.loads((out / "benchmark.json").read_text())
    images = _peers.link_inputs(val, args.workdir / "val_images", ".tif")
    pred_dir = args.workdir / f"ours_pred_{minutes:g}min"
    shutil.rmtree(pred_dir, ignore_errors=True)
    pred = _peers.timed_run([_peers.bin_path("unetzoo"), "predict", "--bundle", _peers.REPO / "bundles" / "drive",
                             "--checkpoint", out / "model_last.pt", "--input", images, "--output", pred_dir,
                             "--threads", str(args.cores), "--no-preview", "--quiet"], None,
                            args.workdir / f"ours_predict_{minutes:g}min.log")
    triples = [(_peers.predicted_file(pred_dir, d["case_id"], ".tif"), Path(d["label"]), Path(d["roi"])) for d in val]
    recipe = trained["recipe"]
    return {"tool": "monai-unetzoo drive", "minutes": minutes, "iterations": trained["iterations"],
            "batch": int(recipe["images_per_batch"]) * int(recipe["patches_per_image"]),
            "patch": "x".join(map(str, recipe["patch_size"])), "preprocess_s": 0.0,
            "train_s": trained["total_wall_s"], "train_process_s": train["seconds"], "epochs": epochs,
            "dice": _peers.score_fov_files(triples), "infer_s_per_case": round(pred["seconds"] / len(val), 2),
            "infer_total_s": pred["seconds"]}


def main(argv=None) -> dict:
    args = parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    train, val = drive_split(args.dataset_dir)
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
        r["mean_dice"] = r["dice"]["mean"]
    print(f"\n{machine}; DRIVE {len(train)} training / {len(val)} validation images (fold 0 of 5); "
          "vessel Dice inside the FOV masks")
    print_table(rows, [("tool", "tool", "<s"), ("minutes", "budget min", ">g"), ("iterations", "iterations", ">d"),
                       ("batch", "batch", ">d"), ("patch", "patch", ">s"), ("preprocess_s", "prep s", ">.0f"),
                       ("mean_dice", "FOV Dice", ">.4f"), ("infer_s_per_case", "infer s/image", ">.2f")])
    payload = {"machine": machine, "preprocessing": preprocessing, "rows": rows, "date": time.strftime("%Y-%m-%d %H:%M")}
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
