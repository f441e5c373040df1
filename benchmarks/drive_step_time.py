"""Training-step time of the DRIVE networks (issue 22): what one step of the bundle's batch costs per network.

Not a test. ``benchmarks/train_step_formats.py`` times the bundle's own network; this one puts the candidate networks
side by side. One step (its ``training_step``) = forward under the bundle's precision, ``MaskedDiceCELoss``
(``MaskedDeepSupervisionLoss`` over it for UNet++ with deep supervision), backward, AdamW, on the bundle's batch
(8 patches of 3 x 128 x 128, channels-last) for the widths of ``bundles/drive/train.json`` (16..256, batch norm,
ReLU, transposed convolutions); median of the steps after two warm-up steps. Prints the CPU flags with the table.

Usage::

    python benchmarks/drive_step_time.py                      # bf16 autocast (the default on AVX512-BF16/AMX CPUs)
    python benchmarks/drive_step_time.py --fp32               # what an AVX2-only CPU runs
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/drive_step_time.py --fp32   # AVX2 kernels here
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))
import _peers  # noqa: E402  (the machine line shared with the other benchmarks)
from _common import time_call  # noqa: E402
from train_step_formats import training_step  # noqa: E402  (the step train_step_formats.py times per bundle)

from monai_unetzoo.losses import MaskedDeepSupervisionLoss, MaskedDiceCELoss  # noqa: E402
from monai_unetzoo.networks import ClassicUNet, ResUNet, UNetPlusPlus  # noqa: E402

WIDTHS = dict(spatial_dims=2, in_channels=3, out_channels=1, features=(16, 32, 64, 128, 256), norm="batch",
              upsample="deconv")
NETWORKS = {
    "ClassicUNet": lambda: ClassicUNet(**WIDTHS),
    "ResUNet (act relu)": lambda: ResUNet(**WIDTHS, act="relu"),
    "UNet++ deep supervision": lambda: UNetPlusPlus(**WIDTHS, deep_supervision=True),
}


def step_seconds(network: torch.nn.Module, steps: int, bf16: bool) -> float:
    """Median wall time of one training step (``train_step_formats.training_step``) after two warm-up steps."""
    network = network.to(memory_format=torch.channels_last).train()
    optimiser = torch.optim.AdamW(network.parameters(), 1e-3)
    loss_fn = MaskedDeepSupervisionLoss(MaskedDiceCELoss(sigmoid=True, ignore_index=255))
    torch.manual_seed(0)
    image = torch.randn(8, 3, 128, 128).to(memory_format=torch.channels_last)
    label = (torch.rand(8, 1, 128, 128) > 0.9).float()
    dtype = torch.bfloat16 if bf16 else None
    timing = time_call(lambda: training_step(network, loss_fn, optimiser, image, label, dtype), steps,
                       torch.device("cpu"), warmup=2)
    return timing["seconds"]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(_peers.machine_line())
    print(f"ATen kernels {torch.backends.cpu.get_cpu_capability()}, {'fp32' if args.fp32 else 'bf16 autocast'}, "
          f"{args.threads} threads, batch 8 x 3 x 128 x 128")
    base = None
    for name, build in NETWORKS.items():
        network = build()
        seconds = step_seconds(network, args.steps, bf16=not args.fp32)
        base = base or seconds
        params = sum(p.numel() for p in network.parameters()) / 1e6
        print(f"{name:26s} {params:5.2f} M parameters {1000 * seconds:7.0f} ms/step {seconds / base:5.2f}x")


if __name__ == "__main__":
    main()
