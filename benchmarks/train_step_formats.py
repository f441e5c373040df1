"""One training step of each bundle's network in each memory format and precision this CPU offers.

Not a test. The bundles train with ``network_memory_format`` channels-last (``channels_last_3d`` for hippocampus)
and ``autocast "auto"`` (bf16 where the CPU computes it natively, else fp32). Whether those defaults hold on every
CPU kind (AMX-BF16, AVX512-BF16, AVX2 only) is measured here: the network, loss and optimiser of each bundle's
``train.json`` (``network_def``, ``loss``, AdamW at the bundle's learning rate), one batch of the bundle's training
shape (hippocampus: ``batch_size`` x 1 x ``patch_size``; DRIVE: ``images_per_batch * patches_per_image`` x 3 x
``patch_size``) of random inputs and labels, timed as forward + loss + backward + step: median of ``--repeats``
after two warm-up steps, in every combination of memory format (contiguous, channels-last) and precision (fp32,
plus bf16 autocast where the CPU has native bf16). The CPU flags are printed with the table.

    python benchmarks/train_step_formats.py --threads 2 --json benchmarks/train_step_formats_avx2.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, time_call, write_json  # noqa: E402
from backends import cpu_flags  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FORMATS = {2: torch.channels_last, 3: torch.channels_last_3d}


def bundle_batch(name: str) -> tuple[torch.nn.Module, torch.nn.Module, float, tuple[int, ...], int]:
    """(network, loss, learning rate, input shape, out channels) of ``bundles/<name>/train.json``."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / name / "train.json"))
    net = parser.get_parsed_content("network_def")
    loss = parser.get_parsed_content("loss")
    patch = tuple(parser.get_parsed_content("patch_size"))
    if name == "drive":
        n = int(parser.get_parsed_content("images_per_batch")) * int(parser.get_parsed_content("patches_per_image"))
    else:
        n = int(parser.get_parsed_content("batch_size"))
    shape = (n, int(parser.get_parsed_content("network_def#in_channels")), *patch)
    out_channels = int(parser.get_parsed_content("network_def#out_channels"))
    return net, loss, float(parser.get_parsed_content("learning_rate")), shape, out_channels


def training_step(net, loss_fn, optimizer, x, y, dtype):
    """forward (+ loss) under autocast ``dtype`` (None: fp32), backward, AdamW step."""
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        loss = loss_fn(net(x), y)
    loss.backward()
    optimizer.step()


def measure(name: str, memory_format: str, dtype, repeats: int) -> dict:
    torch.manual_seed(0)
    net, loss_fn, lr, shape, out_channels = bundle_batch(name)
    fmt = FORMATS[len(shape) - 2] if memory_format == "channels_last" else torch.contiguous_format
    net = net.to(memory_format=fmt).train()
    x = torch.randn(shape).contiguous(memory_format=fmt)
    classes = max(2, out_channels)
    y = torch.randint(0, classes, (shape[0], 1, *shape[2:])).float()
    if out_channels == 1:
        y = (y > 0).float()
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr)
    timing = time_call(lambda: training_step(net, loss_fn, optimizer, x, y, dtype), repeats, torch.device("cpu"),
                       warmup=2)
    return {"bundle": name, "batch": "x".join(map(str, shape)), "memory_format": memory_format,
            "precision": "bf16" if dtype is not None else "fp32", "step_s": round(timing["seconds"], 4),
            "all_s": [round(s, 4) for s in timing["all_seconds"]]}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundles", nargs="+", default=["hippocampus", "drive"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from monai_unetzoo.inference import cpu_has_native_bf16

    precisions = [None] + ([torch.bfloat16] if cpu_has_native_bf16() else [])
    rows = [measure(b, f, p, args.repeats) for b in args.bundles for f in ("contiguous", "channels_last")
            for p in precisions]
    for r in rows:  # relative to the bundle's default (channels-last, the first precision autocast "auto" picks)
        base = next(q for q in rows if q["bundle"] == r["bundle"] and q["memory_format"] == "channels_last"
                    and q["precision"] == ("bf16" if len(precisions) > 1 else "fp32"))
        r["x_default"] = round(base["step_s"] / r["step_s"], 2)
    machine = f"{cpu_flags()} | threads {args.threads} | torch {torch.__version__}"
    print(machine)
    print_table(rows, [("bundle", "bundle", "s"), ("batch", "batch", "s"), ("memory_format", "format", "s"),
                       ("precision", "precision", "s"), ("step_s", "s/step", ".4f"), ("x_default", "x default", ".2f")])
    payload = {"machine": machine, "rows": rows}
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
