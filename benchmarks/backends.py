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
BACKENDS = ("eager", "compile", "onnxruntime", "openvino")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundles", nargs="+", default=["hippocampus", "drive"], choices=["hippocampus", "drive"])
    p.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    p.add_argument("--cases", type=int, default=5, help="cases per bundle (DRIVE: images)")
    p.add_argument("--quick", action="store_true", help="2 hippocampus volumes and 1 DRIVE image")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", default=None, choices=["auto", "bf16", "fp32"],
                   help="passed to every run (default: the bundle's; onnxruntime then runs fp32)")
    p.add_argument("--checkpoint-hippocampus", default=None)
    p.add_argument("--checkpoint-drive", default=None)
    p.add_argument("--workdir", default=None, help="default: a temporary folder")
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def cpu_flags() -> str:
    """The CPU model and its AVX-512 / AMX / bf16 flags (what decides the bf16 paths)."""
    model, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    keep = sorted(f for f in flags if f.startswith(("avx512", "amx")) or f in ("avx2", "fma"))
    return f"{model}; {' '.join(keep) or 'no AVX-512/AMX flags'}"


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
    env = dict(os.environ, UNETZOO_CACHE_DIR=str(cache), OMP_NUM_THREADS=str(args.threads),
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} -> {proc.returncode}\n{proc.stderr[-2000:]}")
    return wall


def read_labels(path: Path):
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def agreement(out: Path, reference: Path) -> float:
    """The smallest per-case fraction of equal labels between two output folders."""
    worst = 1.0
    for ref in sorted(reference.glob("*_seg.*")):
        a, b = read_labels(out / ref.name), read_labels(ref)
        worst = min(worst, float((a == b).mean()))
    return worst


def run_rows(bundle: str, backend: str, ckpt: Path, inp: Path, work: Path, n: int, args) -> list[dict]:
    rows, cache = [], work / "cache" / bundle / backend
    for run in ("first", "second"):
        out = work / "out" / bundle / f"{backend}-{run}"
        wall = run_cli(bundle, backend, ckpt, inp, out, cache, args)
        with open(out / "summary.csv", newline="", encoding="utf-8") as f:
            seconds = [float(r["seconds"]) for r in csv.DictReader(f) if r["status"] == "ok"]
        settings = json.loads((out / "provenance.json").read_text())["settings"]
        eager = work / "out" / bundle / "eager-first"
        rows.append({"bundle": bundle, "backend": backend, "precision": settings.get("precision"), "cases": n,
                     "run": run, "wall_per_case": wall / n, "case_s": sum(seconds) / max(1, len(seconds)),
                     "agreement": agreement(out, eager) if eager.is_dir() else None})
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="unetzoo_backends_"))
    work.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO))
    from monai_unetzoo.backends import backend_unavailable_reason

    print(f"cpu: {cpu_flags()}; threads {args.threads}; load average {os.getloadavg()[0]:.1f} at start")
    rows = []
    backends = ["eager"] + [b for b in args.backends if b != "eager"]  # eager first: the agreement reference
    for bundle in args.bundles:
        n = (2 if bundle == "hippocampus" else 1) if args.quick else args.cases
        inp = work / "in" / bundle
        inp.mkdir(parents=True, exist_ok=True)
        for f in inputs_of(bundle, n):
            if not (inp / f.name).exists():
                (inp / f.name).symlink_to(f)
        ckpt = getattr(args, f"checkpoint_{bundle}") or seeded_checkpoint(bundle, work)
        for backend in backends:
            reason = backend_unavailable_reason(backend)
            if reason:
                print(f"{bundle} {backend}: skipped ({reason})")
                continue
            rows += run_rows(bundle, backend, Path(ckpt), inp, work, n, args)
            print(json.dumps(rows[-2:]), flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    header = f"{'bundle':<12} {'backend':<12} {'prec':<5} {'cases':>5} {'run':<6} {'wall s/case':>11} {'case s':>7} {'agree':>7}"
    print(header + "\n" + "-" * len(header))
    for r in rows:
        agree = "-" if r["agreement"] is None else f"{r['agreement']:.4f}"
        print(f"{r['bundle']:<12} {r['backend']:<12} {r['precision']:<5} {r['cases']:>5} {r['run']:<6} "
              f"{r['wall_per_case']:>11.2f} {r['case_s']:>7.2f} {agree:>7}")
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu_flags(), "threads": args.threads, "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()
