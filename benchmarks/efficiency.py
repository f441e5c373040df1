"""Efficiency against the machine: FLOP/s of a 3D forward over the measured matrix-multiply rate (issue 7, 3 and 4).

In one process: first the rate of an ``n x n @ n x n`` matrix product (``2 n^3`` FLOPs, n = 2048; 1024 with
``--quick``) in fp32 and in bf16 (and fp16 on CUDA) -- the practical peak of this machine for dense math; then, for
each network, the FLOPs of one forward on a (B, 1, 96, 96, 96) window (``torch.utils.flop_counter.FlopCounterMode``:
convolutions and matrix products, 2 FLOPs per multiply-add; norms and activations are not counted) and its time in
several modes:

* ``fp32``: ``net.eval()`` under ``torch.no_grad``, contiguous input -- MONAI's out-of-the-box way;
* ``fp32-cl-inf``: channels-last-3d input and weights, ``torch.inference_mode``;
* ``bf16-cl-inf``: the same under ``torch.autocast(bfloat16)`` (CPUs with native bf16, CUDA);
* ``fp16-cl-inf``: the same under fp16 autocast (CUDA only);
* ``+compile``: ``torch.compile`` of the best autocast mode (opt-in with ``--compile``: minutes of compilation).

GFLOP/s = FLOPs / median seconds; ``% of mm`` is that over the matrix-multiply rate of the same dtype (fp32 rows vs
the fp32 rate, bf16 rows vs the bf16 rate). The issue's target: the 3D forward at >= 40 % of the bf16 rate.

    python benchmarks/efficiency.py --quick          # 64^3 window, matmul 1024, 1 repeat
    python benchmarks/efficiency.py --json eff.json  # 96^3 window, matmul 2048, 5 repeats
    python benchmarks/efficiency.py --batch 4        # four windows per forward (the predictor's sw_batch_size)

The device is picked automatically (CUDA when available). Not a test: nothing asserts a time.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="64^3 window, 1024 matmul, 1 repeat")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None, help="default 5; 1 with --quick")
    ap.add_argument("--window", type=int, nargs=3, default=None, help="default 96 96 96 (64^3 --quick)")
    ap.add_argument("--batch", type=int, default=1, help="windows per forward")
    ap.add_argument("--features", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    ap.add_argument("--out-channels", type=int, default=3)
    ap.add_argument("--matmul-n", type=int, default=None, help="default 2048 (1024 --quick)")
    ap.add_argument("--networks", nargs="+", default=["resunet", "unetpp", "unetpp-pruned", "monai-unet"],
                    choices=C.NETWORK_CHOICES)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile of the best autocast mode")
    args = ap.parse_args(argv)

    import torch

    from monai_unetzoo.inference import resolve_autocast_dtype

    if args.threads:
        torch.set_num_threads(args.threads)
    device = C.pick_device(args.device)
    repeats = args.repeats or (1 if args.quick else 5)
    window = args.window or ([64, 64, 64] if args.quick else [96, 96, 96])
    n = args.matmul_n or (1024 if args.quick else 2048)

    amp_auto = resolve_autocast_dtype("auto", device)
    dtypes = [torch.float32]
    if device.type == "cuda":
        dtypes += [torch.bfloat16, torch.float16] if torch.cuda.is_bf16_supported() else [torch.float16]
    elif amp_auto == torch.bfloat16:
        dtypes.append(torch.bfloat16)
    rates = {}
    for dt in dtypes:
        print(f"... matmul {n}^3 {dt}", file=sys.stderr, flush=True)
        rates[dt] = C.matmul_rate(n, dt, device, repeats=max(3, repeats))

    modes: list[tuple[str, torch.dtype | None, bool, bool]] = [("fp32", None, False, False),
                                                              ("fp32-cl-inf", None, True, True)]
    for dt in dtypes[1:]:
        modes.append((f"{'bf16' if dt == torch.bfloat16 else 'fp16'}-cl-inf", dt, True, True))

    rows = []
    for name in args.networks:
        net, desc = C.build_network(name, 3, 1, args.out_channels, args.features)
        net = net.to(device).eval()
        x = torch.randn(args.batch, 1, *window, generator=torch.Generator().manual_seed(0)).to(device)
        flops = C.forward_flops(net, x)
        run_modes = list(modes)
        if args.compile:
            best = modes[-1]
            run_modes.append((best[0] + "+compile", best[1], True, True))
        for mode, dt, cl, inf in run_modes:
            print(f"... {name} {mode}", file=sys.stderr, flush=True)
            m = net
            xi = x
            if cl:
                m = net.to(memory_format=torch.channels_last_3d)
                xi = x.contiguous(memory_format=torch.channels_last_3d)
            if mode.endswith("+compile"):
                m = torch.compile(m)

            def fwd(m=m, xi=xi, dt=dt, inf=inf):
                ctx = torch.inference_mode() if inf else torch.no_grad()
                with ctx:
                    if dt is not None:
                        with torch.autocast(device_type=device.type, dtype=dt):
                            return m(xi)
                    return m(xi)

            t = C.time_call(fwd, repeats, device, warmup=2 if mode.endswith("+compile") else 1)
            rate = flops / t["seconds"]
            ref = rates[dt if dt is not None else torch.float32]
            rows.append({"network": name, "network_desc": desc, "mode": mode, "input": [args.batch, 1, *window],
                         "gflops_per_forward": flops / 1e9, **t, "gflop_per_s": rate / 1e9,
                         "matmul_gflop_per_s": ref / 1e9, "fraction_of_matmul": rate / ref})
        net.to(memory_format=torch.contiguous_format)
    # the matmul rates again after the networks: on a shared machine the load drifts; the higher of the two
    # measurements is the reference (the practical peak), both are kept in the JSON
    rates_after = {}
    for dt in dtypes:
        print(f"... matmul {n}^3 {dt} (again)", file=sys.stderr, flush=True)
        rates_after[dt] = C.matmul_rate(n, dt, device, repeats=max(3, repeats))
    for r in rows:
        dt = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[r["mode"][:4]]
        best = max(rates[dt], rates_after[dt])
        r["matmul_gflop_per_s"] = best / 1e9
        r["fraction_of_matmul"] = r["gflop_per_s"] * 1e9 / best
    rates_before = rates
    rates = {dt: max(rates[dt], rates_after[dt]) for dt in dtypes}
    fp32_base = {r["network"]: r["seconds"] for r in rows if r["mode"] == "fp32"}
    for r in rows:
        r["speedup_vs_fp32"] = fp32_base[r["network"]] / r["seconds"]

    info = C.machine_info(device)
    print(f"\nefficiency{' (QUICK: small window, 1 repeat -- noisy)' if args.quick else ''}: input "
          f"({args.batch}, 1, {', '.join(map(str, window))}), features {tuple(args.features)}, median of {repeats}; {info}")
    print("matrix multiply (best of before/after) " + ", ".join(
        f"{str(dt).replace('torch.', '')}: {r / 1e9:.1f} GFLOP/s ({rates_before[dt] / 1e9:.1f} / {rates_after[dt] / 1e9:.1f})"
        for dt, r in rates.items()) + f" (n={n})")
    cols = [("network", "network", "<s"), ("mode", "mode", "<s"), ("gflops_per_forward", "GFLOP/fwd", ">.2f"),
            ("seconds", "s (median)", ">.4f"), ("speedup_vs_fp32", "x fp32", ">.2f"), ("gflop_per_s", "GFLOP/s", ">.1f"),
            ("pct", "% of mm", ">.1f")]
    C.print_table([dict(r, pct=100 * r["fraction_of_matmul"]) for r in rows], cols)
    C.write_json(args.json, {"benchmark": "efficiency", "quick": args.quick, "machine": info, "window": window,
                             "batch": args.batch, "features": args.features, "repeats": repeats, "matmul_n": n,
                             "matmul_gflop_per_s": {str(k).replace("torch.", ""): v / 1e9 for k, v in rates.items()},
                             "matmul_gflop_per_s_before": {str(k).replace("torch.", ""): v / 1e9 for k, v in rates_before.items()},
                             "matmul_gflop_per_s_after": {str(k).replace("torch.", ""): v / 1e9 for k, v in rates_after.items()},
                             "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
