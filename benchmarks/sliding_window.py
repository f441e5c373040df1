"""Sliding-window inference: our ``SlidingWindowPredictor`` next to MONAI's ``sliding_window_inference`` (issue 7, 1).

For each volume and network, in separate subprocesses (so each peak RSS is its own; ``ru_maxrss`` only grows):

* ``monai``: ``monai.inferers.sliding_window_inference(x, roi, sw_batch_size=1, net, overlap=0.5, mode="gaussian")``
  in fp32 under ``torch.no_grad`` with the network in eval mode -- what a MONAI user gets out of the box at the
  same grid -- then a softmax over the stitched logits;
* ``ours``: ``SlidingWindowPredictor(roi)`` with its defaults as they are in ``monai_unetzoo/inference.py``
  (sw_batch_size 4, overlap 0.5, Gaussian, softmax per window, channels-last windows, inference mode);
* ``ours-amp``: the same with ``amp="auto"`` (bf16 autocast on CPUs with native bf16 / on CUDA; a no-op
  elsewhere, which the ``amp`` column shows);
* ``monai-probs`` (opt-in via ``--configs``): MONAI's function with the softmax inside the window function, so it
  blends probabilities as ``ours`` does. ``ours`` vs ``monai`` mixes two effects -- blending probabilities rather
  than logits (a deliberate change of the answer near window borders, nnU-Net's choice) and the numerics of the
  speed-ups; ``ours`` vs ``monai-probs`` isolates the second.

Volumes: a synthetic 1x1x256x256x128 smooth random field, and the TotalSegmentator example CT
(``../shared/data/TotalSegmentator_examples/example_ct.nii.gz``, 122x101x112; HU clipped to [-1000, 1000] / 1000;
skipped with a message when absent). Networks (``--networks``): the zoo's 3D ResUNet and UNet++ and MONAI's
``UNet(num_res_units=2)``, same ``--features``, 1 input channel, ``--out-channels`` classes, seeded.

Each child times ``--repeats`` calls after one warm-up call on the full volume and reports the median; it writes its
probabilities to a temporary ``.npy``; the parent compares every configuration with ``monai``: Dice between the
argmax maps (mean over the classes present in either map) and the max abs difference of the probabilities.

AGREEMENT ON UNTRAINED NETWORKS IS MEANINGLESS: a random network's class scores are nearly tied, so tiny
floating-point differences flip the argmax. The issue's target (Dice >= 0.995) is about trained networks: pass
``--checkpoint resunet=PATH`` (etc.) with weights whose architecture matches ``--features``/``--out-channels``.

    python benchmarks/sliding_window.py --quick              # smoke run: 128x128x64, ROI 64^3, small nets, 1 repeat
    python benchmarks/sliding_window.py --json sw.json       # full table (tens of minutes on 2 busy CPU cores)
    python benchmarks/sliding_window.py --networks resunet --checkpoint resunet=models/model.pt --out-channels 3

Not a test: nothing asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

CONFIGS = ("monai", "ours", "ours-amp")
EXTRA_CONFIGS = ("monai-probs",)


# ---------------------------------------------------------------------------------------------------------------
# child: one (volume, network, configuration)


def _load_volume(spec: dict):
    import numpy as np
    import torch

    if spec["volume"] == "synthetic":
        g = torch.Generator().manual_seed(0)  # smooth random field: low-resolution noise upsampled trilinearly
        shape = tuple(spec["shape"])
        low = torch.randn(1, 1, *[max(2, s // 8) for s in shape], generator=g)
        return torch.nn.functional.interpolate(low, size=shape, mode="trilinear", align_corners=False).contiguous()
    import nibabel as nib

    path = Path(spec["path"])
    a = np.asarray(nib.load(str(path)).get_fdata(), dtype=np.float32)
    if a.ndim != 3:
        raise ValueError(f"{path}: expected a 3D volume, got shape {a.shape}")
    return torch.from_numpy(np.clip(a, -1000.0, 1000.0) / 1000.0)[None, None].contiguous()


def run_child(spec: dict) -> dict:
    import numpy as np
    import torch
    from monai.inferers import sliding_window_inference

    from monai_unetzoo.inference import SlidingWindowPredictor, channels_last_network, resolve_autocast_dtype

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    device = C.pick_device(spec["device"])
    x = _load_volume(spec).to(device)
    net, desc = C.build_network(spec["network"], 3, 1, spec["out_channels"], spec["features"])
    if spec.get("checkpoint"):
        C.load_weights(net, spec["checkpoint"])
    net = net.to(device).eval()
    roi = tuple(spec["roi"])
    cfg = spec["config"]
    amp_dtype = None
    if cfg == "monai":

        def call():
            with torch.no_grad():
                out = sliding_window_inference(x, roi, 1, net, overlap=0.5, mode="gaussian")
                if isinstance(out, (list, tuple)):
                    out = out[0]
                return torch.softmax(out, dim=1)

    elif cfg == "monai-probs":
        # MONAI's function with the softmax moved into the window (what the predictor blends): separates the effect
        # of blending probabilities instead of logits from the numerical effect of our speed-ups

        def call():
            with torch.no_grad():
                return sliding_window_inference(
                    x, roi, 1, lambda w: torch.softmax(net(w), dim=1), overlap=0.5, mode="gaussian"
                )

    else:
        amp = "auto" if cfg == "ours-amp" else None
        amp_dtype = resolve_autocast_dtype(amp, device)
        predictor = SlidingWindowPredictor(roi, amp=amp)
        channels_last_network(net)  # as the bundles and the batch CLI build it (MONAI's rows keep PyTorch's default)

        def call():
            return predictor(x, net)

    rss0 = C.rss_bytes()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    last: list = [None]

    def timed():
        last[0] = None  # drop the previous output first, so two outputs never coexist (peak RSS)
        last[0] = call()

    t = C.time_call(timed, spec["repeats"], device, warmup=1)
    peak = C.peak_rss_bytes()
    probs = last[0]  # the output of the last timed call
    n_vox = int(x[0, 0].numel())
    row = {
        "volume": spec["volume_name"],
        "network": spec["network"],
        "network_desc": desc,
        "trained": bool(spec.get("checkpoint")),
        "config": cfg,
        "amp": str(amp_dtype).replace("torch.", "") if amp_dtype is not None else "fp32",
        "roi": list(roi),
        "shape": list(x.shape),
        **t,
        "voxels_per_s": n_vox / t["seconds"],
        "rss0_mib": rss0 / 2**20,
        "peak_rss_mib": peak / 2**20,
        "device": str(device),
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        row["peak_cuda_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    np.save(spec["probs_out"], probs[0].float().cpu().numpy())
    return row


# ---------------------------------------------------------------------------------------------------------------
# parent


def _dice_argmax(pa, pb) -> float:
    import numpy as np

    a, b = pa.argmax(0), pb.argmax(0)
    ds = []
    for k in range(pa.shape[0]):
        ma, mb = a == k, b == k
        denom = int(ma.sum()) + int(mb.sum())
        if denom:
            ds.append(2.0 * int(np.logical_and(ma, mb).sum()) / denom)
    return float(np.mean(ds)) if ds else 1.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="128x128x64 volume, ROI 64^3, features 8..128, 1 repeat")
    ap.add_argument("--json", type=Path, help="write machine info and rows to this JSON file")
    ap.add_argument("--device", default="auto", help="auto (CUDA if available, else CPU) | cpu | cuda[:i]")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per child (default: torch's default)")
    ap.add_argument("--repeats", type=int, default=None, help="timed calls per configuration (default 3; 1 --quick)")
    ap.add_argument("--roi", type=int, nargs=3, default=None, help="window size (default 96 96 96; 64^3 --quick)")
    ap.add_argument("--features", type=int, nargs="+", default=None, help="widths (default 16 32 64 128 256)")
    ap.add_argument("--out-channels", type=int, default=3)
    ap.add_argument("--networks", nargs="+", default=["resunet", "unetpp", "monai-unet"], choices=C.NETWORK_CHOICES)
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS + EXTRA_CONFIGS,
                    help="monai-probs (opt-in): MONAI with a per-window softmax, i.e. blending probabilities as ours")
    ap.add_argument("--checkpoint", action="append", default=[], metavar="NETWORK=PATH",
                    help="trained weights for one network (repeatable), e.g. resunet=bundles/x/models/model.pt")
    ap.add_argument("--ct", type=Path, default=C.DEFAULT_CT, help="CT volume (NIfTI); skipped when absent")
    ap.add_argument("--synthetic-shape", type=int, nargs=3, default=None, help="default 256 256 128 (128 128 64 --quick)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        print("RESULT " + json.dumps(run_child(json.loads(args.child))), flush=True)
        return 0

    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)
    roi = args.roi or ([64, 64, 64] if args.quick else [96, 96, 96])
    features = args.features or ([8, 16, 32, 64, 128] if args.quick else [16, 32, 64, 128, 256])
    syn_shape = args.synthetic_shape or ([128, 128, 64] if args.quick else [256, 256, 128])
    checkpoints: dict[str, str] = {}
    for item in args.checkpoint:
        name, sep, path = item.partition("=")
        if not sep or name not in C.NETWORK_CHOICES:
            ap.error(f"--checkpoint {item!r}: expected NETWORK=PATH with NETWORK in {C.NETWORK_CHOICES}")
        if not Path(path).is_file():
            ap.error(f"--checkpoint {item!r}: {path} is not a file")
        checkpoints[name] = path
    # "monai" is the reference of speed ratio and agreement; leaving it out of --configs (e.g. for the memory check
    # of a large volume) leaves those columns empty
    configs = list(dict.fromkeys(args.configs))
    with_ref = "monai" in configs
    if with_ref:
        configs = ["monai", *[c for c in configs if c != "monai"]]
    volumes = [{"volume": "synthetic", "volume_name": "synthetic {}x{}x{}".format(*syn_shape), "shape": syn_shape}]
    if args.ct.is_file():
        volumes.append({"volume": "ct", "volume_name": args.ct.name, "path": str(args.ct)})
    else:
        print(f"note: {args.ct} not found: example_ct rows skipped", file=sys.stderr)

    import numpy as np

    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="unetzoo_sw_") as tmp:
        for vol in volumes:
            for net_name in args.networks:
                outs: dict[str, str] = {}
                group: list[dict] = []
                for cfg in configs:
                    spec = dict(vol, network=net_name, config=cfg, device=args.device, threads=args.threads,
                                repeats=repeats, roi=roi, features=features, out_channels=args.out_channels,
                                checkpoint=checkpoints.get(net_name),
                                probs_out=str(Path(tmp) / f"{vol['volume']}_{net_name}_{cfg}.npy"))
                    print(f"... {vol['volume_name']} / {net_name} / {cfg}", file=sys.stderr, flush=True)
                    res = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
                                         capture_output=True, text=True, env=env)
                    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
                    if res.returncode != 0 or not lines:
                        print(f"{vol['volume_name']} / {net_name} / {cfg} failed:\n{res.stderr[-3000:]}", file=sys.stderr)
                        return 1
                    group.append(json.loads(lines[-1][len("RESULT "):]))
                    outs[cfg] = spec["probs_out"]
                ref = np.load(outs["monai"]) if with_ref else None
                base = group[0]
                for r in group if with_ref else []:
                    p = np.load(outs[r["config"]])
                    r["dice_vs_monai"] = _dice_argmax(p, ref)
                    r["max_abs_prob_diff_vs_monai"] = float(np.abs(p - ref).max())
                    r["speedup_vs_monai"] = base["seconds"] / r["seconds"]
                    del p
                del ref
                if "monai-probs" in outs:  # the numerics of the speed-ups alone (both blend probabilities)
                    ref = np.load(outs["monai-probs"])
                    for r in group:
                        p = np.load(outs[r["config"]])
                        r["dice_vs_monai_probs"] = _dice_argmax(p, ref)
                        r["max_abs_prob_diff_vs_monai_probs"] = float(np.abs(p - ref).max())
                        del p
                    del ref
                rows.extend(group)
                for f in outs.values():
                    os.remove(f)

    import torch

    dev = C.pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = C.machine_info(dev)
    print(f"\nsliding-window inference{' (QUICK: small volume, small networks, 1 repeat -- noisy)' if args.quick else ''}")
    print(f"ROI {tuple(roi)}, overlap 0.5, Gaussian; features {tuple(features)}; {args.out_channels} classes; "
          f"median of {repeats} after 1 warm-up; {info}")
    if not all(r["trained"] for r in rows):
        print("NOTE: rows with trained=False use untrained random networks: their Dice is NOT meaningful "
              "(near-tied class scores); the >= 0.995 target needs --checkpoint.")
    cols = [("volume", "volume", "<s"), ("network", "network", "<s"), ("trained", "trained", "<"),
            ("config", "config", "<s"), ("amp", "amp", "<s"), ("seconds", "s (median)", ">.2f"),
            ("cpu_seconds", "cpu_s", ">.2f"), ("voxels_per_s", "Mvox/s", ">.3f"), ("speedup_vs_monai", "x monai", ">.2f"),
            ("peak_rss_mib", "peak RSS MiB", ">.0f"), ("dice_vs_monai", "Dice vs monai", ">.4f"),
            ("max_abs_prob_diff_vs_monai", "max|dp|", ">.2e")]
    if any("dice_vs_monai_probs" in r for r in rows):
        cols += [("dice_vs_monai_probs", "Dice vs monai-probs", ">.4f"), ("max_abs_prob_diff_vs_monai_probs", "max|dp| mp", ">.2e")]
    if dev.type == "cuda":
        cols.insert(-2, ("peak_cuda_mib", "peak CUDA MiB", ">.0f"))
    printable = [dict(r, voxels_per_s=r["voxels_per_s"] / 1e6) for r in rows]
    C.print_table(printable, cols)
    C.write_json(args.json, {"benchmark": "sliding_window", "quick": args.quick, "machine": info, "roi": roi,
                             "features": features, "repeats": repeats, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
