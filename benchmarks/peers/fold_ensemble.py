"""A 5-fold ensemble of short models against one long model at the same total CPU time, hippocampus (MSD Task04).

Not a test. nnU-Net's default deliverable is the ensemble of its five cross-validation models; the question for a
2-core machine is whether five models of ``M / 5`` minutes beat one model of ``M`` minutes. Held-out data is needed
to answer it, so the folds are **nested** inside our fixed split:

* the outer split is the bundle's (fold 0 of 5: 166 training / 42 validation cases); the 42 validation cases are
  seen by no member and score everything below;
* member ``k`` trains ``benchmarks/hippocampus.py --minutes M/5`` (the bundle's ``train.json``, time-based poly LR)
  on four fifths of the 166 training cases (:func:`monai_unetzoo.data.folds.fold_split` over
  :func:`monai_unetzoo.data.msd.msd_case_order`, the same cut as the bundle's ``--fold``) and is validated by that
  script on the fifth it did not see: the five inner scores are a 5-fold cross-validation estimate on the 166 cases;
* every member alone, then all of them, predict the 42 outer cases through ``unetzoo predict`` (the ensemble:
  ``--checkpoint m0.pt ... m4.pt``, mean of the member probabilities per window, the bundle's left-right TTA), scored
  with the peers' Dice code (:func:`_peers.score_label_files`).

The single long model is the ``ours`` row of ``hippocampus_budget.py --minutes M --only ours`` (the same training
script on all 166 cases): pass its JSON as ``--single_json`` to put it in the table.

Usage::

    python benchmarks/peers/fold_ensemble.py --minutes 60 --single_json benchmarks/peers/hippocampus_budget_60min_ours.json \\
        --json benchmarks/peers/fold_ensemble_60min.json
    python benchmarks/peers/fold_ensemble.py --minutes 1 --members 2 --workdir /tmp/ens_smoke   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _peers  # noqa: E402
from _common import print_table, write_json  # noqa: E402

BUNDLE = _peers.REPO / "bundles" / "hippocampus"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=60.0, help="total training budget, shared by the members")
    p.add_argument("--members", type=int, default=5, help="inner folds = ensemble members")
    p.add_argument("--dataset_dir", type=Path, default=_peers.SHARED_DATA / "Task04_Hippocampus")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/unetzoo_fold_ensemble"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--single_json", type=Path, default=None,
                   help="hippocampus_budget.py output whose 'monai-unetzoo' row is the single long model")
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def inner_fold_expressions(fold: int, members: int) -> list[str]:
    """``--set`` overrides of ``benchmarks/hippocampus.py``: inner fold ``fold`` of the outer training cases."""
    cut = ("monai_unetzoo.data.folds.fold_split(@datalists['training'], "
           "monai_unetzoo.data.msd.msd_case_order(len(@datalists['training']), @split_seed), "
           f"{int(fold)}, {int(members)})")
    return ["--set", f"train_datalist=${cut}[0]", "--set", f"val_datalist=${cut}[1]"]


def train_member(args, fold: int) -> dict:
    out = args.workdir / f"member{fold}"
    result_json = out / "result.json"
    cmd = [sys.executable, _peers.REPO / "benchmarks" / "hippocampus.py", "--minutes", str(args.minutes / args.members),
           "--threads", str(args.threads), "--dataset_dir", args.dataset_dir, "--output_dir", out, "--json",
           result_json, *inner_fold_expressions(fold, args.members)]
    _peers.timed_run(cmd, None, args.workdir / f"member{fold}_train.log")
    result = json.loads(result_json.read_text())
    result["checkpoint"] = str(out / "model_benchmark.pt")
    return result


def predict_and_score(args, name: str, checkpoints: list[str], val: list[dict]) -> dict:
    """``unetzoo predict`` with ``checkpoints`` on the outer validation images; Dice against their labels."""
    images = _peers.link_inputs(val, args.workdir / "val_images")
    pred_dir = args.workdir / f"pred_{name}"
    shutil.rmtree(pred_dir, ignore_errors=True)
    run = _peers.timed_run([_peers.bin_path("unetzoo"), "predict", "--bundle", BUNDLE, "--checkpoint", *checkpoints,
                            "--input", images, "--output", pred_dir, "--threads", str(args.threads), "--no-preview",
                            "--quiet"], None, args.workdir / f"predict_{name}.log")
    pairs = [(_peers.predicted_file(pred_dir, d["case_id"]), Path(d["label"])) for d in val]
    return {"dice": _peers.score_label_files(pairs, 3), "infer_s_per_case": round(run["seconds"] / len(val), 2)}


def single_model_row(path: Path | None, num_train: int) -> list[dict]:
    if path is None:
        return []
    rows = [r for r in json.loads(path.read_text())["rows"] if r["tool"].startswith("monai-unetzoo")]
    return [{"model": f"1 model x {r['minutes']:g} min (all {num_train} cases)", "minutes": r["minutes"],
             "iterations": r["iterations"], "inner_cv_mean": None, "dice": r["dice"],
             "infer_s_per_case": r["infer_s_per_case"]} for r in rows]


def main(argv=None) -> dict:
    args = parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    train, val = _peers.hippocampus_split(args.dataset_dir)
    machine = _peers.machine_line()
    print(machine, flush=True)
    members = [train_member(args, k) for k in range(args.members)]
    rows = []
    for k, m in enumerate(members):
        scored = predict_and_score(args, f"member{k}", [m["checkpoint"]], val)
        rows.append({"model": f"member {k} x {args.minutes / args.members:g} min", "minutes": m["budget_minutes"],
                     "iterations": m["iterations"], "inner_cv_mean": m["mean_dice_tta"], **scored})
        print(json.dumps(rows[-1]), flush=True)
    ensemble = predict_and_score(args, "ensemble", [m["checkpoint"] for m in members], val)
    rows.append({"model": f"ensemble of {args.members}", "minutes": args.minutes,
                 "iterations": sum(m["iterations"] for m in members), "inner_cv_mean": None, **ensemble})
    rows += single_model_row(args.single_json, len(train))
    for r in rows:
        r["dice_anterior"], r["dice_posterior"] = r["dice"]["per_class"]
        r["mean_dice"] = r["dice"]["mean"]
        r["inner_cv"] = "" if r["inner_cv_mean"] is None else f"{r['inner_cv_mean']:.4f}"
    inner = [m["mean_dice_tta"] for m in members]
    cv = {"mean": round(statistics.mean(inner), 4), "stdev": round(statistics.stdev(inner), 4) if len(inner) > 1 else 0.0,
          "folds": inner, "cases_per_fold": [m["validation_cases"] for m in members]}
    print(f"\n{machine}; {len(train)} outer training cases in {args.members} inner folds; scored on the {len(val)} "
          f"outer validation cases; inner CV mean Dice (TTA) {cv['mean']:.4f} +- {cv['stdev']:.4f}")
    print_table(rows, [("model", "model", "<s"), ("iterations", "iterations", ">d"), ("inner_cv", "inner CV", ">s"),
                       ("dice_anterior", "Dice ant", ">.4f"), ("dice_posterior", "Dice post", ">.4f"),
                       ("mean_dice", "mean", ">.4f"), ("infer_s_per_case", "infer s/case", ">.2f")])
    payload = {"machine": machine, "inner_cv": cv, "rows": rows, "date": time.strftime("%Y-%m-%d %H:%M")}
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
