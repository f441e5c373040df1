"""Parameters, forward time and training-step time of the zoo's networks next to MONAI's equivalents.

Compares, at comparable width (channels 32-64-128-256-512), our ClassicUNet, UNetPlusPlus (full and pruned) and
ResUNet with MONAI's ``BasicUNet``, ``BasicUNetPlusPlus`` and ``UNet(num_res_units=2)``, on a 2D 1x3x512x512 and a
3D 1x1x96x96x96 input, on the CPU (or the GPU when one is available and ``--device auto``).

    python benchmarks/networks.py                 # full table (a few minutes on 2 CPU cores)
    python benchmarks/networks.py --quick         # smaller inputs, one repeat: a smoke run
    python benchmarks/networks.py --json out.json

Times are the median of ``--repeats`` runs after one warm-up, in seconds. Not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from monai.networks.nets import BasicUNet, BasicUNetPlusPlus, UNet

from monai_unetzoo.networks import get_network

WIDTH = (32, 64, 128, 256, 512)


def candidates(spatial_dims: int, in_channels: int, out_channels: int) -> dict[str, callable]:
    common = {"spatial_dims": spatial_dims, "in_channels": in_channels, "out_channels": out_channels}

    def pruned_unetpp():
        net = get_network("unetpp", features=WIDTH, deep_supervision=True, **common)
        net.prune_level = 2
        return net

    return {
        "ours ClassicUNet": lambda: get_network("unet", features=WIDTH, **common),
        "MONAI BasicUNet": lambda: BasicUNet(features=(*WIDTH, WIDTH[0]), **common),
        "ours UNetPlusPlus": lambda: get_network("unetpp", features=WIDTH, deep_supervision=True, **common),
        "ours UNetPlusPlus prune=2": pruned_unetpp,
        "MONAI BasicUNetPlusPlus": lambda: BasicUNetPlusPlus(features=(*WIDTH, WIDTH[0]), deep_supervision=True, **common),
        "ours ResUNet": lambda: get_network("resunet", features=WIDTH, **common),
        "MONAI UNet(res=2)": lambda: UNet(channels=WIDTH, strides=(2, 2, 2, 2), num_res_units=2, **common),
    }


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench(name: str, make, shape: tuple[int, ...], repeats: int, device: torch.device) -> dict:
    torch.manual_seed(0)
    net = make().to(device)
    params = sum(p.numel() for p in net.parameters())
    x = torch.randn(*shape, device=device)

    def forward():
        with torch.inference_mode():
            net(x)
        if device.type == "cuda":
            torch.cuda.synchronize()

    optim = torch.optim.SGD(net.parameters(), lr=1e-3)

    def train_step():
        out = net(x)
        outs = out if isinstance(out, (list, tuple)) else [out]
        loss = sum(o.float().square().mean() for o in outs)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    net.eval()
    fwd = median_time(forward, repeats)
    net.train()
    step = median_time(train_step, repeats)
    return {"network": name, "input": "x".join(map(str, shape)), "params": params, "forward_s": fwd, "train_step_s": step}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small inputs (1x3x128x128, 1x1x48^3), one repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto", help="auto|cpu|cuda")
    parser.add_argument("--json", help="write the rows to this JSON file")
    args = parser.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    repeats = 1 if args.quick else args.repeats
    shapes = [(1, 3, 128, 128), (1, 1, 48, 48, 48)] if args.quick else [(1, 3, 512, 512), (1, 1, 96, 96, 96)]
    rows = []
    print(f"device={device} threads={torch.get_num_threads()} torch={torch.__version__} repeats={repeats}")
    print(f"{'network':28s} {'input':>14s} {'params':>12s} {'forward s':>10s} {'train step s':>13s}")
    for shape in shapes:
        for name, make in candidates(len(shape) - 2, shape[1], 2).items():
            row = bench(name, make, shape, repeats, device)
            rows.append(row)
            print(f"{row['network']:28s} {row['input']:>14s} {row['params']:>12,d} {row['forward_s']:>10.3f} "
                  f"{row['train_step_s']:>13.3f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": str(device), "threads": torch.get_num_threads(), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
