"""Backends x bundles through the real CLI (issue 19): seconds per case end to end, first and second run, agreement.

For each bundle (hippocampus: real Task04 volumes; drive: real DRIVE test images) and each backend that can run
here, ``unetzoo predict --backend B`` runs twice in fresh processes with its own empty cache folder
(``UNETZOO_CACHE_DIR``): the first run pays the compile/export, the second loads it from the cache. Reported per
run: the process wall time divided by the cases (``wall_s/case``: start-up, bundle loading, compile/export, every
case read -> preprocess -> windows -> invert -> write), the mean of summary.csv's per-case ``seconds`` (the case
alone), and the label agreement with the eager run's files (fraction of equal voxels; min over cases).

Checkpoints: ``--checkpoint-hippocampus`` / ``--checkpoint-drive`` (trained weights), else a seeded untrained
``network_def`` of the bundle (then agreement is between backends only, which is what it measures anyway; timing
is the same for trained and untrained weights). Nothing here asserts anything.

The ``monai`` rows (``--monai``, on by default) are the reference of the issue's speed target: the same cases
through ``benchmarks/monai_way.py`` (the bundle's preprocessing, MONAI's ``sliding_window_inference`` at its default
batch of one window in fp32, MONAI's post-transforms, ``Invertd``, ``SaveImaged``), run twice like the others.
``x monai`` = the monai rows' mean / this row's (per-case seconds, and process wall per case). Agreement is the mean
over cases of the foreground Dice (classes 1..C-1, averaged; a class empty in both counts 1.0) against eager's first
run (``dice eager``) and against the monai run (``dice monai``). ``--no-tta`` passes ``--no-tta`` to the CLI: the
same work as the monai rows (the hippocampus bundle mirrors left-right by default, which doubles its windows).

    python benchmarks/backends.py --quick                      # 2 hippocampus volumes, 1 DRIVE image
    python benchmarks/backends.py --cases 10 --threads 2 --json /tmp/backends.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("UNETZOO_DATA_DIR", REPO.parent / "shared" / "data"))
BACKENDS = ("eager", "compile", "onnxruntime", "openvino", "auto")
NUM_CLASSES = {"hippocampus": 3, "drive": 2}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundles", nargs="+", default=["hippocampus", "drive"], choices=["hippocampus", "drive"])
    p.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    p.add_argument("--cases", type=int, default=5, help="cases per bundle (DRIVE: images)")
    p.add_argument("--quick", action="store_true", help="2 hippocampus volumes and 1 DRIVE image")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", default=None, choices=["auto", "bf16", "fp32"],
                   help="passed to every run (default: the bundle's; onnxruntime then runs fp32)")
    p.add_argument("--no-tta", action="store_true", help="pass --no-tta to every CLI run")
    p.add_argument("--no-monai", dest="monai", action="store_false", help="skip the monai_way.py rows")
    p.add_argument("--checkpoint-hippocampus", default=None)
    p.add_argument("--checkpoint-drive", default=None)
    p.add_argument("--workdir", default=None, help="default: a temporary folder")
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def cpu_flags() -> str:
    """The CPU model and its AVX-512 / AMX / bf16 flags (what decides the bf16 paths)."""
    from monai_unetzoo.backend_choice import cpu_description

    return cpu_description()


def seeded_checkpoint(bundle: str, folder: Path) -> Path:
    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / bundle / "train.json"))
    parser["bundle_root"] = str(REPO / "bundles" / bundle)
    parser.get_parsed_content("imports")
    torch.manual_seed(0)
    path = folder / f"{bundle}_seed0.pt"
    torch.save(parser.get_parsed_content("network_def").state_dict(), path)
    return path


def inputs_of(bundle: str, n: int) -> list[Path]:
    if bundle == "hippocampus":
        return sorted((DATA / "Task04_Hippocampus" / "imagesTr").glob("hippocampus_*.nii.gz"))[:n]
    return sorted((DATA / "DRIVE" / "test" / "images").glob("*.tif"))[:n]


def run_cli(bundle: str, backend: str, ckpt: Path, inp: Path, out: Path, cache: Path, args) -> float:
    """One ``unetzoo predict`` process; returns its wall time (raises with its stderr when it fails)."""
    cmd = [sys.executable, "-m", "unetzoo_cli", "predict", "--bundle", str(REPO / "bundles" / bundle),
           "--checkpoint", str(ckpt), "--input", str(inp), "--output", str(out), "--device", "cpu",
           "--threads", str(args.threads), "--backend", backend, "--quiet"]
    if args.precision:
        cmd += ["--precision", args.precision]
    if args.no_tta:
        cmd += ["--no-tta"]
    if backend == "monai":
        cmd = [sys.executable, str(REPO / "benchmarks" / "monai_way.py"), "--bundle", bundle, "--checkpoint",
               str(ckpt), "--input", str(inp), "--output", str(out), "--threads", str(args.threads)]
    return timed_process(cmd, cache, args.threads)


def timed_process(cmd: list[str], cache: Path, threads: int) -> float:
    """Run ``cmd`` with the cache folder and thread count set; its wall time (raises with its stderr on failure)."""
    env = dict(os.environ, UNETZOO_CACHE_DIR=str(cache), OMP_NUM_THREADS=str(threads),
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} -> {proc.returncode}\n{proc.stderr[-2000:]}")
    return wall


def read_labels(path: Path, num_classes: int):
    """A label map as integers 0..C-1 (a DRIVE mask written 0/255 -> 0/1)."""
    import numpy as np
    import SimpleITK as sitk

    labels = np.squeeze(sitk.GetArrayFromImage(sitk.ReadImage(str(path))))
    return (labels > 0).astype(np.int64) if num_classes == 2 else labels.astype(np.int64)


def foreground_dice(a, b, num_classes: int) -> float:
    """Mean Dice of classes 1..C-1 between two label maps (a class empty in both counts 1.0)."""
    scores = []
    for c in range(1, num_classes):
        x, y = a == c, b == c
        total = int(x.sum() + y.sum())
        scores.append(1.0 if total == 0 else 2.0 * int((x & y).sum()) / total)
    return sum(scores) / len(scores)


def agreement(out: Path, reference: Path, num_classes: int) -> float:
    """Mean over cases of :func:`foreground_dice` between two output folders (files matched by name before
    ``_seg``; the monai rows write PNG where the CLI writes TIFF)."""
    def by_case(folder: Path) -> dict[str, Path]:
        return {p.name.split("_seg")[0]: p for p in folder.glob("*_seg.*")}

    ours, ref = by_case(out), by_case(reference)
    scores = [foreground_dice(read_labels(ours[k], num_classes), read_labels(ref[k], num_classes), num_classes)
              for k in sorted(ref)]
    return sum(scores) / len(scores)


def run_rows(bundle: str, backend: str, ckpt: Path, inp: Path, work: Path, n: int, args) -> list[dict]:
    rows, cache = [], work / "cache" / bundle / backend
    for run in ("first", "second"):
        out = work / "out" / bundle / f"{backend}-{run}"
        wall = run_cli(bundle, backend, ckpt, inp, out, cache, args)
        with open(out / "summary.csv", newline="", encoding="utf-8") as f:
            seconds = [float(r["seconds"]) for r in csv.DictReader(f) if r.get("status", "ok") == "ok"]
        provenance = out / "provenance.json"
        precision = json.loads(provenance.read_text())["settings"].get("precision") if provenance.is_file() else "fp32"
        row = {"bundle": bundle, "backend": backend, "precision": precision, "cases": n, "run": run,
               "wall_per_case": wall / n, "case_s": sum(seconds) / max(1, len(seconds))}
        for side in ("eager", "monai"):
            reference = work / "out" / bundle / f"{side}-first"
            row[f"dice_{side}"] = agreement(out, reference, NUM_CLASSES[bundle]) if reference.is_dir() else None
        rows.append(row)
    return rows


def add_speedups(rows: list[dict]) -> None:
    """``x_monai_case`` / ``x_monai_wall``: the bundle's monai rows' mean seconds over this row's."""
    for bundle in {r["bundle"] for r in rows}:
        ref = [r for r in rows if r["bundle"] == bundle and r["backend"] == "monai"]
        for r in rows:
            if r["bundle"] == bundle and ref:
                r["x_monai_case"] = sum(x["case_s"] for x in ref) / len(ref) / r["case_s"]
                r["x_monai_wall"] = sum(x["wall_per_case"] for x in ref) / len(ref) / r["wall_per_case"]


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="unetzoo_backends_"))
    work.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO))
    from monai_unetzoo.backends import backend_unavailable_reason

    print(f"cpu: {cpu_flags()}; threads {args.threads}; load average {os.getloadavg()[0]:.1f} at start")
    rows = []
    # monai and eager first: the agreement references
    backends = ["monai"] * args.monai + ["eager"] + [b for b in args.backends if b != "eager"]
    for bundle in args.bundles:
        n = (2 if bundle == "hippocampus" else 1) if args.quick else args.cases
        inp = work / "in" / bundle
        inp.mkdir(parents=True, exist_ok=True)
        for f in inputs_of(bundle, n):
            if not (inp / f.name).exists():
                (inp / f.name).symlink_to(f)
        ckpt = getattr(args, f"checkpoint_{bundle}") or seeded_checkpoint(bundle, work)
        for backend in backends:
            reason = None if backend == "monai" else backend_unavailable_reason(backend)
            if reason:
                print(f"{bundle} {backend}: skipped ({reason})")
                continue
            rows += run_rows(bundle, backend, Path(ckpt), inp, work, n, args)
            print(json.dumps(rows[-2:]), flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    add_speedups(rows)
    print_rows(rows)
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu_flags(), "threads": args.threads, "no_tta": args.no_tta,
                                               "rows": rows}, indent=2))
    return rows


def print_rows(rows: list[dict]) -> None:
    def num(value, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    header = (f"{'bundle':<12} {'backend':<12} {'prec':<5} {'cases':>5} {'run':<6} {'wall s/case':>11} {'case s':>7} "
              f"{'x monai case':>12} {'x monai wall':>12} {'dice eager':>10} {'dice monai':>10}")
    print(header + "\n" + "-" * len(header))
    for r in rows:
        print(f"{r['bundle']:<12} {r['backend']:<12} {r['precision']:<5} {r['cases']:>5} {r['run']:<6} "
              f"{r['wall_per_case']:>11.2f} {r['case_s']:>7.3f} {num(r.get('x_monai_case'), '.2f'):>12} "
              f"{num(r.get('x_monai_wall'), '.2f'):>12} {num(r['dice_eager'], '.4f'):>10} "
              f"{num(r['dice_monai'], '.4f'):>10}")


if __name__ == "__main__":
    main()
