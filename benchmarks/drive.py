"""DRIVE benchmark: train the bundle's default recipe under a wall-clock budget on a few CPU cores.

Not a test. Trains ``bundles/drive/train.json`` (its default recipe, unless overridden) on the DRIVE training split
(16 images with the default ``val_fraction=0.2, split_seed=0``), validates on the 4 held-out training images, and
prints the FOV-masked validation Dice after every validation together with the wall-clock and CPU time elapsed since
the start (data loading and caching included), the time at which given Dice levels were first reached, and the best
value. The DRIVE test annotations are not public, so this reports VALIDATION figures, not test figures.

Usage (from the repository root)::

    python benchmarks/drive.py --dataset_dir ../shared/data/DRIVE --budget_minutes 60 --cores 2
    python benchmarks/drive.py --budget_minutes 5 --epochs 12 --val_interval 2      # the 5-minute schedule
    python benchmarks/drive.py --override learning_rate=0.003 --override patch_size=[64,64]

``--cores N`` pins the process to N CPU cores (``os.sched_setaffinity``) and uses N torch threads, so that a bigger
machine measures what a 2-core one would (up to differences in per-core speed). Results go to
``benchmarks/results/drive_<time>/`` (git-ignored): the checkpoints, ``benchmark.json`` and the training log.
Wall-clock numbers are only meaningful on an otherwise idle machine; the CPU time (user + system of this process and
its data-loader workers) is printed as well, so that a run on a shared machine can be judged.
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import os
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "drive"


#: The issue's reference ("the bar to beat"): a plain MONAI BasicUNet (features 32..512) with MONAI's DiceCELoss,
#: Adam 1e-3, uniformly random 96x96 patches, batch 8 (2 images x 4 patches), no augmentation, constant lr, no FOV
#: in the loss. Input normalisation and validation (FOV-masked Dice of the foreground channel, sliding window,
#: overlap 0.5, Gaussian) are the bundle's, so the two recipes are scored identically.
BASELINE_OVERRIDES: dict[str, object] = {
    "network_def": {"_target_": "BasicUNet", "spatial_dims": 2, "in_channels": 3, "out_channels": 2,
                    "features": [32, 64, 128, 256, 512, 32]},
    "loss": {"_target_": "DiceCELoss", "to_onehot_y": True, "softmax": True},
    "optimizer#_target_": "torch.optim.Adam",
    "optimizer#lr": 0.001,
    "weight_decay": 0.0,
    "learning_rate": 0.001,
    "lr_scheduler#eta_min": 0.001,
    "train#prepare_batch": "$monai.engines.default_prepare_batch",
    "train#deterministic_transforms": [
        {"_target_": "EnsureTyped", "keys": ["image", "label", "roi"], "track_meta": False}],
    "train#random_transforms": [
        {"_target_": "RandSpatialCropSamplesd", "keys": ["image", "label", "roi"], "roi_size": [96, 96],
         "num_samples": 4, "random_size": False},
        {"_target_": "EnsureTyped", "keys": ["image", "label", "roi"], "track_meta": False}],
    "validate#inferer#activation": "softmax",
    "validate#postprocessing#transforms": [
        {"_target_": "CopyItemsd", "keys": "pred", "names": "prob"},
        {"_target_": "AsDiscreted", "keys": ["pred", "label"], "argmax": [True, False], "to_onehot": [2, 2]}],
    "validate#key_metric#val_dice#include_background": False,
}


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (data-loader workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _parse_override(text: str) -> tuple[str, object]:
    key, _, raw = text.partition("=")
    if not key or not _:
        raise argparse.ArgumentTypeError(f"override must be key=value, got {text!r}")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw  # plain string (e.g. a path or a "$..." expression)
    return key, value


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset_dir", default=str(REPO.parent / "shared" / "data" / "DRIVE"))
    ap.add_argument("--budget_minutes", type=float, default=60.0, help="wall-clock budget, caching included")
    ap.add_argument("--cores", type=int, default=2, help="CPU cores to pin to and torch threads to use")
    ap.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs (cosine schedule length)")
    ap.add_argument("--val_interval", type=int, default=None)
    ap.add_argument("--num_workers", type=int, default=None)
    ap.add_argument("--levels", type=float, nargs="*", default=[0.78, 0.80, 0.81, 0.82, 0.83])
    ap.add_argument("--override", type=_parse_override, action="append", default=[],
                    help="extra config override key=value (python literal or string), repeatable")
    ap.add_argument("--output_dir", default=None)
    ap.add_argument("--baseline", action="store_true",
                    help="train the issue's reference recipe (BasicUNet 32..512, DiceCELoss, Adam 1e-3, random 96x96 "
                         "patches, batch 8) instead of the bundle's, validated the same way")
    args = ap.parse_args(argv)

    if hasattr(os, "sched_setaffinity") and args.cores > 0:
        available = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, available[: args.cores])
    os.environ.setdefault("OMP_NUM_THREADS", str(args.cores))

    import ignite.engine
    import torch
    from monai.bundle import ConfigParser

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import cpu_name  # after the affinity/thread settings: _common imports torch

    torch.set_num_threads(max(1, args.cores))
    start_wall, start_cpu = time.perf_counter(), _cpu_seconds()

    out = Path(args.output_dir or REPO / "benchmarks" / "results" / time.strftime("drive_%Y%m%d_%H%M%S"))
    out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s",
                        handlers=[logging.StreamHandler(sys.stdout), logging.FileHandler(out / "benchmark_log.txt")])

    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "train.json"))
    parser.read_meta(str(BUNDLE / "metadata.json"))
    overrides: dict[str, object] = {"dataset_dir": args.dataset_dir, "output_dir": str(out),
                                    "num_threads": max(1, args.cores), "device": "cpu"}
    if args.baseline:
        overrides.update(BASELINE_OVERRIDES)
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    if args.val_interval is not None:
        overrides["val_interval"] = args.val_interval
    if args.num_workers is not None:
        overrides["num_workers"] = args.num_workers
    overrides.update(dict(args.override))
    parser.update(overrides)
    recipe_keys = ["network_def", "epochs", "val_interval", "passes_per_epoch", "images_per_batch",
                   "patches_per_image", "patch_size", "learning_rate", "weight_decay", "val_fraction", "split_seed",
                   "train_split", "num_workers", "seed"]
    recipe = {k: parser.get(k) if k == "network_def" else parser.get_parsed_content(k) for k in recipe_keys}
    for i in range(len(parser["initialize"])):  # output folder, log file, threads, determinism (as the CLI does)
        parser.get_parsed_content(f"initialize#{i}")

    trainer = parser.get_parsed_content("train#trainer")
    evaluator = parser.get_parsed_content("validate#evaluator")
    budget_s = args.budget_minutes * 60.0
    history: list[dict] = []

    @evaluator.on(ignite.engine.Events.EPOCH_COMPLETED)
    def _record(engine) -> None:
        metrics = {k: float(v) for k, v in engine.state.metrics.items()}
        row = {"epoch": trainer.state.epoch, "iteration": trainer.state.iteration,
               "wall_s": round(time.perf_counter() - start_wall, 1), "cpu_s": round(_cpu_seconds() - start_cpu, 1),
               **metrics}
        history.append(row)
        logging.getLogger("benchmark").info("validation %s", row)

    @trainer.on(ignite.engine.Events.ITERATION_COMPLETED)
    def _budget(engine) -> None:
        if time.perf_counter() - start_wall > budget_s:
            logging.getLogger("benchmark").info("wall-clock budget of %.1f min reached: stopping", args.budget_minutes)
            engine.terminate()

    trainer.run()
    for i in range(len(parser["finalize"])):
        parser.get_parsed_content(f"finalize#{i}")

    key = "val_dice"
    reached = {}
    for level in args.levels:
        hit = next((r for r in history if r.get(key, 0.0) >= level), None)
        reached[f"{level:.2f}"] = None if hit is None else {"wall_s": hit["wall_s"], "cpu_s": hit["cpu_s"],
                                                            "epoch": hit["epoch"]}
    best = max(history, key=lambda r: r.get(key, -1.0)) if history else None
    result = {
        "dataset_dir": args.dataset_dir, "cores": args.cores, "budget_minutes": args.budget_minutes,
        "recipe_name": "baseline (issue's reference)" if args.baseline else "bundle default",
        "total_wall_s": round(time.perf_counter() - start_wall, 1), "total_cpu_s": round(_cpu_seconds() - start_cpu, 1),
        "iterations": trainer.state.iteration, "recipe": recipe, "history": history, "reached": reached, "best": best,
        "torch": torch.__version__, "cpu": cpu_name(),
        "note": "validation = the held-out training images of the split (DRIVE test annotations are not public)",
    }
    (out / "benchmark.json").write_text(json.dumps(result, indent=2, default=str))
    print("\n=== DRIVE benchmark (FOV-masked validation Dice) ===")
    print(f"{'epoch':>5} {'iter':>6} {'wall_s':>8} {'cpu_s':>8} {'val_dice':>9} {'val_auc':>8}")
    for r in history:
        dice, auc = r.get(key, float("nan")), r.get("val_auc", float("nan"))
        print(f"{r['epoch']:>5} {r['iteration']:>6} {r['wall_s']:>8.1f} {r['cpu_s']:>8.1f} {dice:>9.4f} {auc:>8.4f}")
    for level, hit in reached.items():
        when = "not reached" if hit is None else (
            f"after {hit['wall_s']:.0f} s wall ({hit['cpu_s']:.0f} s CPU), epoch {hit['epoch']}")
        print(f"Dice >= {level}: {when}")
    if best:
        print(f"best val_dice {best[key]:.4f} at epoch {best['epoch']} ({best['wall_s']:.0f} s wall)")
    print(f"results: {out / 'benchmark.json'}")
    return result


if __name__ == "__main__":
    main()
