"""Throughput (voxels/s), peak memory and argmax agreement of sliding-window inference, ours next to MONAI's.

Volumes: a synthetic 1x1x256x256x128 smooth random field and the TotalSegmentator example CT
(``../shared/data/TotalSegmentator_examples/example_ct.nii.gz``, 122x101x112, HU clipped to [-1000, 1000] / 1000).
Network: the zoo's 3D ResUNet (``get_network("resunet", features=...)``, 3 classes, seeded, untrained); if
``monai_unetzoo.networks`` cannot be imported it falls back to MONAI's ``UNet(num_res_units=2)`` and says so.

Configurations (ROI 96^3 by default):

* ``monai-default``: MONAI's ``SlidingWindowInferer(roi)`` with its defaults (sw_batch_size=1, overlap 0.25,
  constant blending), fp32, under ``torch.no_grad`` as MONAI's ``SupervisedEvaluator`` runs it -- the baseline;
* ``monai-same-grid``: MONAI's ``sliding_window_inference`` with our settings (sw_batch_size=4, overlap 0.5,
  Gaussian), fp32 -- the cost of the denser grid without our per-window work;
* ``ours``: ``SlidingWindowPredictor(roi)`` defaults (sw_batch_size=4, overlap 0.5, Gaussian, softmax per
  window, channels-last windows, inference mode), fp32; ``ours+amp``: the same with ``amp="auto"`` (bf16 on CPUs
  with native bf16); ``ours+tta`` and ``ours+amp+tta``: mirroring TTA over ``--tta-axes`` (all 2^k subsets).

Each configuration runs in its own subprocess, so that its peak RSS (``ru_maxrss``, which is process-wide and
only grows) is its own; ``rss0`` is the RSS just before the timed calls (imports, network, input loaded) and
``peak`` the maximum reached. Times are the minimum over ``--repeats`` calls after a warm-up call on a crop (oneDNN
builds its kernels on first use). ``Dice`` is the mean over the 3 classes of the Dice between the configuration's
argmax map and the one of ``ours`` (fp32, no TTA): the effect of AMP/TTA/blending on the prediction. With an
untrained network the margins between classes are small, so this understates the agreement a trained network shows.

    python benchmarks/inference.py                  # full table (1-2 hours on 2 CPU cores: 8 TTA passes, 2 repeats)
    python benchmarks/inference.py --quick          # TTA over one axis, 1 repeat, features 8..128 (~8 min idle, 2 cores)
    python benchmarks/inference.py --json out.json  # also write the rows as JSON

Not a test: nothing here asserts a time. On a shared machine wall times are noisy; ``cpu_s`` (user+sys CPU time of
the call) is printed beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CT = REPO_ROOT.parent / "shared" / "data" / "TotalSegmentator_examples" / "example_ct.nii.gz"
NUM_CLASSES = 3


# ----------------------------------------------------------------------------------------------------------------
# worker side: one configuration, one volume, in a fresh process


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except OSError:
        return -1


def _peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def _load_volume(spec: dict):
    import numpy as np
    import torch

    if spec["volume"] == "synthetic":
        # smooth random field: low-resolution noise upsampled trilinearly (image-like spatial correlation)
        g = torch.Generator().manual_seed(0)
        shape = tuple(spec["shape"])
        low = torch.randn(1, 1, *[max(2, s // 8) for s in shape], generator=g)
        return torch.nn.functional.interpolate(low, size=shape, mode="trilinear", align_corners=False).contiguous()
    import nibabel as nib

    path = Path(spec["path"])
    if not path.exists():
        raise FileNotFoundError(f"{path}: CT volume not found (pass --ct PATH)")
    a = np.asarray(nib.load(str(path)).get_fdata(), dtype=np.float32)
    if a.ndim != 3:
        raise ValueError(f"{path}: expected a 3D volume, got shape {a.shape}")
    return torch.from_numpy(np.clip(a, -1000.0, 1000.0) / 1000.0)[None, None].contiguous()


def _build_network(features: tuple[int, ...]):
    import torch

    torch.manual_seed(0)
    try:
        from monai_unetzoo.networks import get_network

        net = get_network("resunet", spatial_dims=3, in_channels=1, out_channels=NUM_CLASSES, features=features)
        name = f"monai_unetzoo ResUNet{tuple(features)}"
    except ImportError as e:  # before the zoo's networks exist
        from monai.networks.nets import UNet

        net = UNet(3, 1, NUM_CLASSES, channels=features, strides=(2,) * (len(features) - 1), num_res_units=2)
        name = f"MONAI UNet{tuple(features)} num_res_units=2 (fallback: {e})"
    return net.eval(), name


def run_worker(spec: dict) -> dict:
    import numpy as np
    import torch
    from monai.inferers import SlidingWindowInferer, sliding_window_inference

    from monai_unetzoo.inference import (
        SlidingWindowPredictor,
        channels_last_network,
        cpu_has_native_bf16,
        resolve_autocast_dtype,
    )

    torch.set_num_threads(spec["threads"])
    x = _load_volume(spec)
    net, net_name = _build_network(tuple(spec["features"]))
    roi = tuple(spec["roi"])
    cfg = spec["config"]
    amp_dtype = None
    if cfg == "monai-default":
        inferer = SlidingWindowInferer(roi)

        def call(inp):
            with torch.no_grad():
                return inferer(inp, net)

    elif cfg == "monai-same-grid":

        def call(inp):
            with torch.no_grad():
                return sliding_window_inference(inp, roi, 4, net, overlap=0.5, mode="gaussian")

    else:
        amp = "auto" if "amp" in cfg else None
        tta = tuple(spec["tta_axes"]) if "tta" in cfg else None
        amp_dtype = resolve_autocast_dtype(amp, "cpu")
        predictor = SlidingWindowPredictor(roi, amp=amp, tta_axes=tta)
        warm = SlidingWindowPredictor(roi, amp=amp)  # same kernels, without the TTA repeats
        channels_last_network(net)  # as the bundles and the batch CLI build it (MONAI's rows keep PyTorch's default)

        def call(inp, _p=predictor):
            return _p(inp, net)

    # warm-up on a crop of about 1.5 ROI per axis (oneDNN creates its primitives on first use)
    crop = x[(..., *[slice(0, min(s, r + r // 2)) for s, r in zip(x.shape[2:], roi)])]
    if cfg.startswith("ours"):
        warm(crop, net)
    else:
        call(crop)
    rss0 = _rss_bytes()
    times, cpus = [], []
    out = None
    for _ in range(spec["repeats"]):
        out = None
        c0, t0 = time.process_time(), time.perf_counter()
        out = call(x)
        times.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    peak = _peak_rss_bytes()
    labels = out.argmax(1)[0].to(torch.uint8).numpy()
    np.save(spec["labels_out"], labels)
    best = min(range(len(times)), key=times.__getitem__)
    n_vox = int(x[0, 0].numel())
    return {
        "volume": spec["volume_name"],
        "shape": list(x.shape),
        "config": cfg,
        "network": net_name,
        "roi": list(roi),
        "amp_dtype": str(amp_dtype).replace("torch.", "") if amp_dtype is not None else "fp32",
        "tta_passes": 2 ** len(set(spec["tta_axes"])) if "tta" in cfg else 1,
        "seconds": times[best],
        "all_seconds": times,
        "cpu_seconds": cpus[best],
        "voxels_per_s": n_vox / times[best],
        "rss0_mib": rss0 / 2**20,
        "peak_rss_mib": peak / 2**20,
        "threads": torch.get_num_threads(),
        "cpu_native_bf16": cpu_has_native_bf16(),
    }


# ----------------------------------------------------------------------------------------------------------------
# driver side


def _dice_mean(a, b) -> float:
    import numpy as np

    ds = []
    for k in range(NUM_CLASSES):
        pa, pb = a == k, b == k
        denom = int(pa.sum()) + int(pb.sum())
        if denom:
            ds.append(2.0 * int(np.logical_and(pa, pb).sum()) / denom)
    return float(np.mean(ds)) if ds else 1.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one repeat, TTA over one axis, features (8,16,32,64,128)")
    ap.add_argument("--json", type=Path, help="write the result rows to this JSON file")
    ap.add_argument("--threads", type=int, default=2, help="torch threads per configuration (default 2)")
    ap.add_argument("--repeats", type=int, default=None, help="timed calls per configuration (default 2; 1 with --quick)")
    ap.add_argument("--roi", type=int, nargs=3, default=(96, 96, 96))
    ap.add_argument("--features", type=int, nargs="+", default=None, help="network widths (default 16 32 64 128 256)")
    ap.add_argument("--tta-axes", type=int, nargs="+", default=None, help="mirrored axes (default 0 1 2; 0 with --quick)")
    ap.add_argument("--ct", type=Path, default=DEFAULT_CT, help="CT volume (NIfTI) for the second row group")
    ap.add_argument("--synthetic-shape", type=int, nargs=3, default=(256, 256, 128))
    ap.add_argument(
        "--configs",
        nargs="+",
        default=["monai-default", "monai-same-grid", "ours", "ours+amp", "ours+tta", "ours+amp+tta"],
        choices=["monai-default", "monai-same-grid", "ours", "ours+amp", "ours+tta", "ours+amp+tta"],
    )
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:  # subprocess mode: run one configuration, print one JSON line
        print("RESULT " + json.dumps(run_worker(json.loads(args.worker))), flush=True)
        return 0

    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 2)
    features = args.features or ([8, 16, 32, 64, 128] if args.quick else [16, 32, 64, 128, 256])
    tta_axes = args.tta_axes or ([0] if args.quick else [0, 1, 2])
    configs = list(dict.fromkeys(["ours", *args.configs]))  # "ours" is the agreement reference
    volumes = [
        {"volume": "synthetic", "volume_name": "synthetic 1x1x{}x{}x{}".format(*args.synthetic_shape), "shape": list(args.synthetic_shape)},
    ]
    if args.ct.exists():
        volumes.append({"volume": "ct", "volume_name": f"{args.ct.name}", "path": str(args.ct)})
    else:
        print(f"note: {args.ct} not found, CT rows skipped", file=sys.stderr)

    rows: list[dict] = []
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    with tempfile.TemporaryDirectory() as tmp:
        for vol in volumes:
            labels: dict[str, str] = {}
            for cfg in configs:
                spec = dict(
                    vol,
                    config=cfg,
                    threads=args.threads,
                    repeats=repeats,
                    roi=list(args.roi),
                    features=features,
                    tta_axes=tta_axes,
                    labels_out=str(Path(tmp) / f"{vol['volume']}_{cfg}.npy"),
                )
                print(f"... {vol['volume_name']}: {cfg}", file=sys.stderr, flush=True)
                res = subprocess.run(
                    [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
                    capture_output=True,
                    text=True,
                    env=env,
                )
                lines = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
                if res.returncode != 0 or not lines:
                    print(f"configuration {cfg} on {vol['volume_name']} failed:\n{res.stderr[-3000:]}", file=sys.stderr)
                    return 1
                rows.append(json.loads(lines[-1][len("RESULT ") :]))
                labels[cfg] = spec["labels_out"]
            import numpy as np

            ref = np.load(labels["ours"])
            base = next(r for r in rows if r["volume"] == vol["volume_name"] and r["config"] == "monai-default") if "monai-default" in configs else None
            for r in rows:
                if r["volume"] != vol["volume_name"]:
                    continue
                r["dice_vs_ours_fp32"] = _dice_mean(np.load(labels[r["config"]]), ref)
                if base is not None:
                    r["speedup_vs_monai_default"] = base["seconds"] / r["seconds"]

    import torch

    print(f"\nnetwork: {rows[0]['network']}; ROI {tuple(args.roi)}; {args.threads} threads; torch {torch.__version__};"
          f" {platform.processor() or platform.machine()}; CPU native bf16: {rows[0]['cpu_native_bf16']}")
    hdr = f"{'volume':<28} {'config':<16} {'amp':<9} {'tta':>3} {'s':>7} {'cpu_s':>7} {'Mvox/s':>7} {'x base':>6} {'rss0':>6} {'peakMiB':>7} {'Dice':>6}"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(
            f"{r['volume']:<28} {r['config']:<16} {r['amp_dtype']:<9} {r['tta_passes']:>3} {r['seconds']:>7.2f} "
            f"{r['cpu_seconds']:>7.2f} {r['voxels_per_s'] / 1e6:>7.3f} {r.get('speedup_vs_monai_default', float('nan')):>6.2f} "
            f"{r['rss0_mib']:>6.0f} {r['peak_rss_mib']:>7.0f} {r['dice_vs_ours_fp32']:>6.4f}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
