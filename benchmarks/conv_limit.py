"""How close the bundles' networks run to this machine's convolution limit, per backend (issue 19's 70 % target).

For each bundle and backend, in one process, with the same threads: the rate of the bundle's network on one
window batch (``sw_batch_size`` windows of the inferer's ``roi_size``, counted FLOPs of convolutions only, 2 per
multiply-add, by ``torch.utils.flop_counter``), and the rate of the machine's best case for a convolution through
the same backend and precision: the fastest of three large 3x3x3 (3x3 for DRIVE) convolutions on the same number
of windows -- 64 -> 64 channels on the full window, 128 -> 128 on half of it per axis, 256 -> 256 on a quarter (the
shapes of a U-Net's levels). ``ratio`` = network rate / convolution rate: the share of the physical limit for a convolutional
network that the network reaches (norms, activations, up-sampling and concatenations are work the FLOP count does
not see). Each callable is what the predictor calls for that backend (``monai_unetzoo.backends.build_window_network``;
``eager`` under the predictor's autocast, inference mode, channels-last windows); the median of ``--repeats``
calls after two warm-up calls (the first of which compiles or loads a compiled model) is reported. Nothing here
asserts anything.

    python benchmarks/conv_limit.py --threads 2 --json benchmarks/conv_limit.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _common import forward_flops, time_call  # noqa: E402
from backends import cpu_flags, seeded_checkpoint  # noqa: E402

#: backend -> precisions it is timed in
PRECISIONS = {"eager": ("fp32", "bf16"), "compile": ("bf16",), "onnxruntime": ("fp32",), "openvino": ("fp32", "bf16")}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundles", nargs="+", default=["hippocampus", "drive"], choices=["hippocampus", "drive"])
    p.add_argument("--backends", nargs="+", default=list(PRECISIONS), choices=list(PRECISIONS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def bundle_window(bundle: str, folder: Path):
    """(network, window batch (B, C, *roi)) of the bundle's inference settings, seeded weights."""
    from monai_unetzoo.predict import PredictionSettings, load_prediction_bundle

    loaded = load_prediction_bundle(REPO / "bundles" / bundle, seeded_checkpoint(bundle, folder))
    resolved = PredictionSettings(device="cpu").resolve(loaded)
    torch.manual_seed(0)
    return loaded.network.eval(), torch.randn(resolved.sw_batch_size, loaded.in_channels, *resolved.roi_size)


def reference_convs(batch: torch.Tensor) -> list[tuple[str, torch.nn.Module, torch.Tensor]]:
    """(name, convolution, input) for C -> C 3-wide convolutions, C = 64, 128, 256 on the window / 2**k per axis."""
    conv_type = torch.nn.Conv3d if batch.ndim == 5 else torch.nn.Conv2d
    torch.manual_seed(1)
    found = []
    for k, channels in enumerate((64, 128, 256)):
        shape = [max(1, s >> k) for s in batch.shape[2:]]
        found.append((f"{channels}ch {'x'.join(map(str, shape))}",
                      conv_type(channels, channels, 3, padding=1, bias=False).eval(),
                      torch.randn(batch.shape[0], channels, *shape)))
    return found


def window_callable(backend: str, precision: str, net: torch.nn.Module, x: torch.Tensor, cache: Path):
    """What the predictor calls per window batch for this backend and precision."""
    from monai_unetzoo.backend_choice import backend_window_call

    return backend_window_call(backend, net, window_shape=tuple(x.shape[1:]), batch=x.shape[0],
                               dtype=torch.bfloat16 if precision == "bf16" else None, weights_sha256="",
                               threads=torch.get_num_threads(), cache_root=cache)


def seconds_per_call(fn, x: torch.Tensor, repeats: int) -> tuple[float, float]:
    """(first call's seconds -- compile or load included --, median of ``repeats`` after a second warm-up)."""
    start = time.perf_counter()
    fn(x)
    first = time.perf_counter() - start
    return first, time_call(lambda: fn(x), repeats, torch.device("cpu"), warmup=1)["seconds"]


def measure(bundle: str, backend: str, precision: str, args, work: Path) -> dict:
    net, x = bundle_window(bundle, work)
    row = {"bundle": bundle, "backend": backend, "precision": precision, "batch": list(x.shape), "convs": {}}
    for side, module, inp in [("network", net, x)] + reference_convs(x):
        flops = forward_flops(module, inp)
        first, median = seconds_per_call(window_callable(backend, precision, module, inp, work / "cache"), inp,
                                         args.repeats)
        rate = {"gflop": flops / 1e9, "s": median, "first_s": first, "gflops": flops / median / 1e9}
        if side == "network":
            row.update({f"network_{k}": v for k, v in rate.items()})
        else:
            row["convs"][side] = rate
    best = max(row["convs"], key=lambda k: row["convs"][k]["gflops"])
    row.update(best_conv=best, conv_gflops=row["convs"][best]["gflops"])
    row["ratio"] = row["network_gflops"] / row["conv_gflops"]
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from monai_unetzoo.backends import backend_unavailable_reason

    print(f"cpu: {cpu_flags()}; threads {args.threads}; load average {os.getloadavg()[0]:.1f} at start", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="unetzoo_conv_limit_") as tmp:
        for bundle in args.bundles:
            for backend in args.backends:
                reason = backend_unavailable_reason(backend)
                if reason:
                    print(f"{backend}: skipped ({reason})")
                    continue
                for precision in PRECISIONS[backend]:
                    rows.append(measure(bundle, backend, precision, args, Path(tmp)))
                    print(json.dumps(rows[-1]), flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    header = (f"{'bundle':<12} {'backend':<12} {'prec':<5} {'net GFLOP':>9} {'net s':>7} {'net GFLOP/s':>11} "
              f"{'conv GFLOP/s':>12} {'ratio':>6}  best conv")
    print(header + "\n" + "-" * len(header))
    for r in rows:
        print(f"{r['bundle']:<12} {r['backend']:<12} {r['precision']:<5} {r['network_gflop']:>9.2f} "
              f"{r['network_s']:>7.3f} {r['network_gflops']:>11.1f} {r['conv_gflops']:>12.1f} {r['ratio']:>6.2f}  {r['best_conv']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu_flags(), "threads": args.threads, "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()
