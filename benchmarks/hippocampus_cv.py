"""5-fold cross-validation of the hippocampus recipe on the 208 open MSD Task04 cases (issue 22).

Not a test. For each fold k of 5 (:mod:`monai_unetzoo.data.folds` over :func:`monai_unetzoo.data.msd.msd_case_order`,
the cut ``train.json --fold k`` makes and the folds of the nnU-Net peer benchmarks; fold 0 is the bundle's fixed
166 / 42 split) it runs ``benchmarks/hippocampus.py --minutes M --set fold=k``: the bundle's ``train.json`` on the
other four fifths for M wall-clock minutes (poly LR on elapsed time), then the bundle's own evaluator (Gaussian
sliding windows, MONAI ``DiceMetric`` per foreground class) with the final weights on fold k's 41-42 cases, once
plain and once with the bundle's left-right mirroring TTA (``tta_axes [0]``). Every case is validated exactly once.

Reported per fold and over the folds (mean of the fold means, and their standard deviation): Dice anterior,
posterior and their mean, plain and with TTA, and TTA's gain per fold (the issue asks that TTA never lowers the
validation Dice by more than noise: the spread of the folds is that noise). ``--set`` passes recipe changes
(levers) through to ``hippocampus.py``, and so to both training and the evaluation.

Usage (from the repository root; about M + 1 minutes per fold on 2 cores)::

    python benchmarks/hippocampus_cv.py --minutes 5 --json benchmarks/hippocampus_cv_5min_avx2.json
    python benchmarks/hippocampus_cv.py --minutes 5 --name wide --set "network_def#features=[32,64,128,256]"
    python benchmarks/hippocampus_cv.py --folds 0 --minutes 0.5                                 # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))
import _peers  # noqa: E402  (run helper and the machine line shared with the peer benchmarks)

REPO = Path(__file__).resolve().parents[1]
#: (JSON key of hippocampus.py, column) of every score the table reports, plain then TTA.
SCORES = [("dice_anterior", "anterior"), ("dice_posterior", "posterior"), ("mean_dice", "mean")]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=5.0, help="training budget per fold (wall clock, caching included)")
    p.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON", help="passed to hippocampus.py")
    p.add_argument("--name", default="bundle default", help="recipe label in the table and the JSON")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/unetzoo_hippocampus_cv"))
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def run_fold(args, fold: int) -> dict:
    """Train and validate fold ``fold`` with ``hippocampus.py``; its result JSON plus the wall time."""
    folder = args.workdir / f"fold{fold}"
    cmd = [sys.executable, REPO / "benchmarks" / "hippocampus.py", "--minutes", args.minutes, "--threads",
           args.threads, "--output_dir", folder, "--set", f"fold={fold}"]
    for item in args.set:
        cmd += ["--set", item]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS=str(args.threads))
    run = _peers.timed_run(cmd, env, args.workdir / f"fold{fold}.log")
    result = json.loads((folder / "benchmark_result.json").read_text())
    keep = ["iterations", "epochs", "training_cases", "validation_cases", "loadavg_before", "loadavg_after"]
    keep += [key for key, _ in SCORES] + [f"{key}_tta" for key, _ in SCORES]
    return {"fold": fold, "wall_s": round(run["seconds"], 1), **{k: result[k] for k in keep}}


def summarise(rows: list[dict]) -> dict:
    """Mean and standard deviation over the folds of every score, and TTA's gain per fold."""
    out = {}
    for key, _ in SCORES:
        for suffix in ("", "_tta"):
            values = [r[key + suffix] for r in rows]
            out[key + suffix] = {"mean": round(statistics.fmean(values), 4),
                                 "sd_of_folds": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0}
    gains = [r["mean_dice_tta"] - r["mean_dice"] for r in rows]
    out["tta_gain_per_fold"] = [round(g, 4) for g in gains]
    out["tta_gain_mean"] = round(statistics.fmean(gains), 4)
    out["cases_validated"] = sum(r["validation_cases"] for r in rows)
    return out


def print_table(args, machine: str, rows: list[dict], summary: dict) -> None:
    print(f"\n{machine}\nhippocampus 5-fold CV, recipe: {args.name} ({args.minutes:g} min per fold); Dice per "
          f"foreground class, final weights, {summary['cases_validated']} cases validated once")
    header = " ".join(f"{name:>9s}" for _, name in SCORES)
    print(f"{'fold':>6s} {'iters':>6s} {header} | {header} (TTA) {'gain':>7s}")
    for r in rows:
        plain = " ".join(f"{r[key]:9.4f}" for key, _ in SCORES)
        tta = " ".join(f"{r[key + '_tta']:9.4f}" for key, _ in SCORES)
        gain = r["mean_dice_tta"] - r["mean_dice"]
        print(f"{r['fold']:>6d} {r['iterations']:>6d} {plain} | {tta}       {gain:+7.4f}")
    for stat in ("mean", "sd_of_folds"):
        plain = " ".join(f"{summary[key][stat]:9.4f}" for key, _ in SCORES)
        tta = " ".join(f"{summary[key + '_tta'][stat]:9.4f}" for key, _ in SCORES)
        label = "mean" if stat == "mean" else "sd"
        gain = f"{summary['tta_gain_mean']:+7.4f}" if stat == "mean" else ""
        print(f"{label:>6s} {'':>6s} {plain} | {tta}       {gain}")


def main(argv=None) -> dict:
    args = parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    machine = _peers.machine_line()
    print(machine, flush=True)
    rows = []
    for fold in args.folds:
        rows.append(run_fold(args, fold))
        print(json.dumps(rows[-1]), flush=True)
    summary = summarise(rows)
    print_table(args, machine, rows, summary)
    payload = {"recipe": args.name, "overrides": args.set, "minutes": args.minutes, "threads": args.threads,
               "machine": machine, "python": platform.python_version(), "folds": rows, "summary": summary,
               "date": time.strftime("%Y-%m-%d %H:%M")}
    if args.json:
        Path(args.json).write_text(json.dumps(payload, indent=1) + "\n")
    return payload


if __name__ == "__main__":
    main()
