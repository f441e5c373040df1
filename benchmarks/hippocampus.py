"""Time-budgeted training of the hippocampus bundle on MSD Task04, scored on the bundle's fixed validation split.

Not a test. It trains ``bundles/hippocampus/train.json`` (the very recipe users run, with its network, loss,
transforms and optimiser) for a fixed wall-clock budget on a fixed number of CPU threads, then evaluates the final
weights on the bundle's validation split (42 of the 208 open cases, ``split_msd_cases`` seed 0) with the bundle's
own evaluator (Gaussian sliding windows, MONAI ``DiceMetric`` per class, background excluded).

Differences from ``python -m monai.bundle run training`` (and why):

* The learning-rate schedule runs on elapsed time instead of epochs: ``lr = lr0 * (1 - t / budget) ** 0.9`` (the
  bundle's polynomial decay, with the epoch count replaced by the budget), updated every iteration, so the run ends
  with a decayed LR at the budget whatever the machine speed.
* No validation during the budget (``--val_every_minutes`` adds some, excluded from the budget and reported), no
  checkpoint selection on the validation split: the final weights are scored, so the number is not optimistic.
* The budget counts from the start of data loading/caching to the last training iteration (caching included).

Usage (the repository's goal: mean Dice >= 0.90 in 60 minutes, > 0.865 in 15 minutes, on 2 CPU cores)::

    python benchmarks/hippocampus.py --minutes 15
    python benchmarks/hippocampus.py --minutes 60 --json runs/bench60.json
    python benchmarks/hippocampus.py --minutes 3 --set network_def#features=[24,48,96,192] --set batch_size=4

``--pin`` restricts the process to the first ``--threads`` CPUs (``os.sched_setaffinity``) on a larger machine.
The CPU load average before and after the run is recorded: on a shared machine the budget buys fewer iterations.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "hippocampus"


def default_dataset_dir() -> str:
    base = Path(os.environ.get("UNETZOO_DATA_DIR", REPO.parent / "shared" / "data"))
    return str(base / "Task04_Hippocampus")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset_dir", default=default_dataset_dir(), help="MSD Task04 folder (with dataset.json)")
    p.add_argument("--minutes", type=float, default=15.0, help="training budget in minutes (caching included)")
    p.add_argument("--bundle", default=str(BUNDLE),
                   help="bundle folder whose train.json is trained (default bundles/hippocampus; benchmarks/planned.py "
                   "passes a bundle planned by unetzoo plan)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--pin", action="store_true", help="pin the process to the first --threads CPUs")
    p.add_argument("--output_dir", default=str(Path(os.environ.get("TMPDIR", "/tmp")) / "unetzoo_bench_hippocampus"))
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                   help="override a bundle config entry, e.g. learning_rate=0.003 or network_def#features=[16,32,64,128]")
    p.add_argument("--val_every_minutes", type=float, default=0.0,
                   help="also validate every so many minutes of training (time excluded from the budget)")
    p.add_argument("--num_train_cases", type=int, default=None, help="only the first N training cases (smoke runs)")
    p.add_argument("--num_val_cases", type=int, default=None, help="only the first N validation cases (smoke runs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the result here too")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.pin and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.threads])
    import torch
    from ignite.engine import Events
    from monai.bundle import ConfigParser
    from monai.utils import set_determinism

    from monai_unetzoo.backend_choice import cpu_description  # model + the AVX-512 / AMX flags

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import cpu_name  # after the affinity setting: _common imports torch

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
    log = logging.getLogger("bench")
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)

    parser = ConfigParser()
    parser.read_config(str(Path(args.bundle) / "train.json"))
    parser.update({
        "dataset_dir": args.dataset_dir,
        "output_dir": str(out),
        "num_train_cases": args.num_train_cases,
        "num_val_cases": args.num_val_cases,
        "seed": args.seed,
        "epochs": 100000,  # the budget stops training, not the epoch count
    })
    for item in args.set:
        key, _, value = item.partition("=")
        try:
            parser[key] = json.loads(value)
        except json.JSONDecodeError:
            parser[key] = value  # plain strings, e.g. "$..." expressions
    # Only the loss logger is kept from the bundle's training handlers: no epoch-based LR schedule, no validation
    # or checkpoints inside the budget (see the module docstring).
    parser["train#handlers"] = []
    parser["validate#handlers"] = [{"_target_": "StatsHandler", "iteration_log": False}]
    set_determinism(seed=args.seed)
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    budget = args.minutes * 60.0

    t_start = time.perf_counter()
    trainer = parser.get_parsed_content("train#trainer")  # builds and caches the training data set
    t_cached = time.perf_counter()
    log.info("training data cached in %.1f s (%d cases)", t_cached - t_start, len(parser.get_parsed_content("train#dataset")))
    evaluator = parser.get_parsed_content("validate#evaluator")
    optimizer = parser.get_parsed_content("optimizer")
    lr0 = float(parser.get_parsed_content("learning_rate"))
    excluded = {"val": 0.0}
    history: list[dict] = []
    losses: list[float] = []

    def elapsed() -> float:
        return time.perf_counter() - t_start - excluded["val"]

    @trainer.on(Events.ITERATION_STARTED)
    def set_lr(engine):
        lr = lr0 * max(0.0, 1.0 - elapsed() / budget) ** 0.9
        for group in optimizer.param_groups:
            group["lr"] = lr

    @trainer.on(Events.ITERATION_COMPLETED)
    def stop_at_budget(engine):
        losses.append(float(engine.state.output[0]["loss"] if isinstance(engine.state.output, list)
                            else engine.state.output["loss"]))
        if elapsed() >= budget:
            engine.terminate()

    state = {"last_val": 0.0}

    @trainer.on(Events.EPOCH_COMPLETED)
    def epoch_log(engine):
        n = len(engine.state.dataloader) if hasattr(engine.state.dataloader, "__len__") else 0
        recent = losses[-n:] if n else losses
        log.info("epoch %d  iterations %d  %.1f min  lr %.2e  loss %.4f", engine.state.epoch, engine.state.iteration,
                 elapsed() / 60, optimizer.param_groups[0]["lr"], sum(recent) / max(1, len(recent)))
        if args.val_every_minutes > 0 and elapsed() - state["last_val"] >= args.val_every_minutes * 60:
            t0 = time.perf_counter()
            evaluator.run()
            excluded["val"] += time.perf_counter() - t0
            state["last_val"] = elapsed()
            m = evaluator.state.metrics
            dice = [float(v) for v in m["val_dice_per_class"]]
            history.append({"minutes": elapsed() / 60, "iteration": engine.state.iteration, "dice": dice,
                            "mean_dice": float(m["val_mean_dice"])})
            log.info("  validation at %.1f min: Dice %s mean %.4f", elapsed() / 60, [round(d, 4) for d in dice],
                     m["val_mean_dice"])

    trainer.run()
    train_minutes = elapsed() / 60
    iterations, epochs = trainer.state.iteration, trainer.state.epoch
    t0 = time.perf_counter()
    evaluator.run()
    eval_seconds = time.perf_counter() - t0
    m = dict(evaluator.state.metrics)
    dice = [float(v) for v in m["val_dice_per_class"]]
    # The same weights with evaluate.json's / inference.json's default left-right mirroring TTA.
    inferer = parser.get_parsed_content("validate#inferer")
    inferer.tta_axes = [0]
    evaluator.run()
    dice_tta = [float(v) for v in evaluator.state.metrics["val_dice_per_class"]]
    network = parser.get_parsed_content("network")
    torch.save(network.state_dict(), out / "model_benchmark.pt")
    result = {
        "budget_minutes": args.minutes,
        "train_minutes_incl_caching": round(train_minutes, 2),
        "caching_seconds": round(t_cached - t_start, 1),
        "iterations": iterations,
        "epochs": epochs,
        "validation_cases": len(parser.get_parsed_content("val_datalist")),
        "training_cases": len(parser.get_parsed_content("train_datalist")),
        "dice_anterior": round(dice[0], 4),
        "dice_posterior": round(dice[1], 4),
        "mean_dice": round(float(m["val_mean_dice"]), 4),
        "dice_anterior_tta": round(dice_tta[0], 4),
        "dice_posterior_tta": round(dice_tta[1], 4),
        "mean_dice_tta": round(float(evaluator.state.metrics["val_mean_dice"]), 4),
        "eval_seconds": round(eval_seconds, 1),
        "excluded_validation_seconds": round(excluded["val"], 1),
        "history": history,
        "overrides": args.set,
        "threads": args.threads,
        "cpu": cpu_name(),
        "cpu_flags": cpu_description(),
        "cpu_count": os.cpu_count(),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__,
        "final_loss_mean_last_100": round(sum(losses[-100:]) / max(1, len(losses[-100:])), 4),
    }
    log.info("RESULT %s", json.dumps({k: v for k, v in result.items() if k != "history"}))
    (out / "benchmark_result.json").write_text(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    if not math.isfinite(result["mean_dice"]):
        raise SystemExit("validation Dice is not finite")
    return result


if __name__ == "__main__":
    main()
