"""Shared helpers of the speed benchmarks (``sliding_window.py``, ``training_throughput.py``, ``efficiency.py``).

Not a library and not a test: timing (median of repeats after a warm-up), peak RSS of a process, device choice,
the measured matrix-multiply rate of this machine, FLOP counting with ``torch.utils.flop_counter``, network
construction (the zoo's ResUNet / UNet++ and MONAI's ``UNet(num_res_units=2)``), checkpoint loading, and table /
JSON output. Every script imports this module by path (``benchmarks/`` is not a package).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
DEFAULT_CT = SHARED_DATA / "TotalSegmentator_examples" / "example_ct.nii.gz"

NETWORK_CHOICES = ("resunet", "unetpp", "unetpp-pruned", "unet", "monai-unet")


# ---------------------------------------------------------------------------------------------------------------
# machine / process


def pick_device(name: str = "auto") -> torch.device:
    """``"auto"``: the first CUDA GPU when one is available, else the CPU; otherwise ``torch.device(name)``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device {name}: no CUDA device is available")
    return dev


def rss_bytes() -> int:
    """Current resident set size of this process (Linux ``/proc/self/statm``; -1 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except OSError:
        return -1


def peak_rss_bytes() -> int:
    """Peak RSS of this process so far (``ru_maxrss``: KiB on Linux, bytes on macOS). Only ever grows."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def cpu_name() -> str:
    """The CPU model (``/proc/cpuinfo``'s "model name" on Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_info(device: torch.device) -> dict[str, Any]:
    from monai_unetzoo.inference import cpu_has_native_bf16

    info: dict[str, Any] = {
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "cpu_native_bf16": cpu_has_native_bf16(),
        "loadavg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        import monai

        info["monai"] = monai.__version__
    except Exception:
        pass
    return info


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], Any], repeats: int, device: torch.device, warmup: int = 1) -> dict[str, Any]:
    """Run ``fn`` ``warmup`` times, then ``repeats`` timed times; median/min wall seconds and median CPU seconds."""
    for _ in range(warmup):
        fn()
    sync(device)
    walls, cpus = [], []
    for _ in range(max(1, repeats)):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        sync(device)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return {
        "seconds": statistics.median(walls),
        "min_seconds": min(walls),
        "all_seconds": walls,
        "cpu_seconds": statistics.median(cpus),
    }


# ---------------------------------------------------------------------------------------------------------------
# machine rates and FLOPs


def matmul_rate(n: int, dtype: torch.dtype, device: torch.device, repeats: int = 5) -> float:
    """Measured FLOP/s of an ``n x n @ n x n`` matrix product in ``dtype`` on ``device`` (``2 n^3`` FLOPs)."""
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    t = time_call(lambda: torch.mm(a, b), repeats, device, warmup=2)
    return 2.0 * n**3 / t["seconds"]


def forward_flops(net: torch.nn.Module, x: torch.Tensor) -> int:
    """FLOPs of one ``net(x)`` counted by ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matrix
    products, 2 per multiply-add; element-wise ops, norms and activations are not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        net(x)
    return int(counter.get_total_flops())


# ---------------------------------------------------------------------------------------------------------------
# networks and checkpoints


def build_network(
    name: str,
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    features: Sequence[int],
    seed: int = 0,
) -> tuple[torch.nn.Module, str]:
    """A seeded network and a printable description.

    ``resunet``/``unet``/``unetpp``: the zoo's networks (``get_network``); ``unetpp-pruned``: UNet++ with deep
    supervision evaluated at ``prune_level = depth - 1`` (one level less, Zhou et al. 2019 Sec. III-D);
    ``monai-unet``: MONAI's ``UNet(channels=features, strides=2..., num_res_units=2)`` -- the issue's baseline.
    """
    torch.manual_seed(seed)
    feats = tuple(int(f) for f in features)
    common = {"spatial_dims": spatial_dims, "in_channels": in_channels, "out_channels": out_channels}
    if name == "monai-unet":
        from monai.networks.nets import UNet as MonaiUNet

        net = MonaiUNet(channels=feats, strides=(2,) * (len(feats) - 1), num_res_units=2, **common)
        return net, f"MONAI UNet{feats} num_res_units=2"
    from monai_unetzoo.networks import get_network

    if name == "unetpp-pruned":
        net = get_network("unetpp", features=feats, deep_supervision=True, **common)
        net.prune_level = len(feats) - 2
        return net, f"zoo UNetPlusPlus{feats} deep_supervision prune_level={len(feats) - 2}"
    if name not in ("resunet", "unet", "unetpp"):
        raise ValueError(f"unknown network {name!r}; choose from {NETWORK_CHOICES}")
    net = get_network(name, features=feats, **common)
    return net, f"zoo {type(net).__name__}{feats}"


def load_weights(net: torch.nn.Module, path: str | os.PathLike) -> None:
    """Load a trained state dict into ``net``: a bare state dict, or a bundle checkpoint with a ``"model"`` /
    ``"network"`` / ``"state_dict"`` entry (what MONAI's ``CheckpointSaver`` writes). Errors name the file."""
    from monai_unetzoo.checkpoints import load_checkpoint_file

    ckpt = load_checkpoint_file(path)
    state = ckpt
    for key in ("model", "network", "state_dict"):
        if key in ckpt and isinstance(ckpt[key], dict):
            state = ckpt[key]
            break
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise RuntimeError(f"{path}: checkpoint does not fit the benchmarked network ({e})") from e


# ---------------------------------------------------------------------------------------------------------------
# output


def print_table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> None:
    """Print ``rows`` as a fixed-width table; ``columns`` = (key, header, format spec such as ``">8.3f"``)."""
    cells = []
    for r in rows:
        line = []
        for key, _, spec in columns:
            v = r.get(key)
            if v is None or (isinstance(v, float) and v != v):
                line.append("-")
            else:
                try:
                    line.append(format(v, spec.lstrip("<>")))
                except (ValueError, TypeError):
                    line.append(str(v))
        cells.append(line)
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, (_, h, _) in enumerate(columns)]
    left = [spec.startswith("<") for _, _, spec in columns]
    fmt = lambda vals: "  ".join(v.ljust(w) if lf else v.rjust(w) for v, w, lf in zip(vals, widths, left))  # noqa: E731
    print(fmt([h for _, h, _ in columns]))
    print("  ".join("-" * w for w in widths))
    for c in cells:
        print(fmt(c))


def write_json(path: str | os.PathLike | None, payload: dict[str, Any]) -> None:
    if not path:
        return
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(payload, indent=2, default=str))
    print(f"wrote {p}")
