"""The timing run behind the epoch rule: seconds per training iteration of the planned network on this machine.

Why measure rather than estimate: the speed of a 3D convolution on CPU varies by an order of magnitude with the
core count, the oneDNN build and the memory bandwidth; a few real iterations (forward, Dice + cross-entropy,
backward, AdamW step) of the planned network at the planned patch and batch size are the budget's only reliable
unit. The step is the planned bundle's: channels-last memory format and the trainer's
:class:`~monai_unetzoo.engines.AutocastForwardInferer` (``amp="auto"``: bf16 where the device computes it natively
and its backward is checked safe, else fp32). The first iteration (allocation, kernel selection, the bf16 check)
is not counted.
"""

from __future__ import annotations

import time
from typing import Sequence

import torch

__all__ = ["time_training_iteration"]


def time_training_iteration(
    network_name: str, spatial_dims: int, in_channels: int, num_classes: int, features: Sequence[int],
    patch_size: Sequence[int], batch_size: int, device: str = "cpu", iterations: int = 2,
    pool_sizes: Sequence[Sequence[int]] | None = None,
) -> float:
    """Mean wall-clock seconds of ``iterations`` training steps on a random (B, C_in, *patch_size) batch.

    The network is built from the registry (:func:`monai_unetzoo.networks.get_network`) with the planned bundles'
    settings (instance norm, transposed-convolution up-sampling, the planned ``pool_sizes``); the labels are random
    classes (B, 1, *patch).
    """
    from monai.losses import DiceCELoss

    from ..engines import AutocastForwardInferer
    from ..networks import get_network

    dev = torch.device(device)
    net = get_network(network_name, spatial_dims=spatial_dims, in_channels=in_channels, out_channels=num_classes,
                      features=list(features), norm=("instance", {"affine": True}), upsample="deconv",
                      pool_sizes=pool_sizes)
    layout = torch.channels_last_3d if spatial_dims == 3 else torch.channels_last
    net = net.to(dev, memory_format=layout)
    forward = AutocastForwardInferer(amp="auto", channels_last=True)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn((batch_size, in_channels, *patch_size), generator=generator).to(dev)
    y = torch.randint(0, num_classes, (batch_size, 1, *patch_size), generator=generator).to(dev)
    elapsed = 0.0
    for step in range(iterations + 1):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        out = forward(x, net)
        loss = loss_fn(out[0] if isinstance(out, (list, tuple)) else out, y)
        loss.backward()
        optimizer.step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        if step > 0:
            elapsed += time.perf_counter() - start
    return elapsed / max(iterations, 1)
