"""Small named building blocks shared by the networks of the zoo.

Every block is dimension-agnostic: ``spatial_dims`` (2 or 3) selects the layer types through MONAI's layer
factories (via :class:`monai.networks.blocks.Convolution` and :class:`monai.networks.blocks.UpSample`), following the
style of MONAI's ``monai/networks/nets/basic_unet.py``. Shapes below use ``S`` for the spatial dimensions
(``H, W`` in 2D, ``D, H, W`` in 3D).

Names are deliberately distinct from MONAI's (``TwoConv``, ``Down``, ``UpCat``, ``ResBlock`` ... already exist there):
MONAI's config resolver sees every class of a module whose name starts with ``monai``, and a clash would make
short names ambiguous in everyone's bundle configs.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import Convolution, UpSample
from monai.networks.layers.factories import Pool
from monai.networks.layers.utils import get_act_layer

__all__ = [
    "ChannelsLastInstanceNorm",
    "use_channels_last_instance_norm",
    "DoubleConv",
    "ResidualConvBlock",
    "UNetDownBlock",
    "SkipUpsampler",
    "pad_to_match",
    "ensure_feature_tuple",
    "ensure_pool_sizes",
]


def ensure_feature_tuple(features: Sequence[int], min_levels: int = 2) -> tuple[int, ...]:
    """Validate ``features`` (channels per resolution level, shallowest first) and return it as a tuple."""
    feats = tuple(int(f) for f in features)
    if len(feats) < min_levels:
        raise ValueError(f"features needs at least {min_levels} levels (channels per level), got {feats}.")
    if any(f <= 0 for f in feats):
        raise ValueError(f"features must be positive channel counts, got {feats}.")
    return feats


def ensure_pool_sizes(pool_sizes: Sequence[int | Sequence[int]] | None, levels: int, spatial_dims: int
                      ) -> tuple[tuple[int, ...], ...]:
    """Per-level, per-axis pooling factors: ``None`` -> 2 on every axis at every level; otherwise one entry per
    level (shallowest first), each an int (all axes) or ``spatial_dims`` ints, e.g. ``[[2, 2, 1], [2, 2, 2]]`` for
    nnU-Net's anisotropic plans (a coarse axis pooled only at the deeper levels)."""
    if pool_sizes is None:
        return ((2,) * spatial_dims,) * levels
    sizes = tuple(tuple([int(p)] * spatial_dims) if isinstance(p, (int, float)) else tuple(int(v) for v in p)
                  for p in pool_sizes)
    if len(sizes) != levels or any(len(p) != spatial_dims or min(p) < 1 for p in sizes):
        raise ValueError(f"pool_sizes needs {levels} entries (one per pooling level) of {spatial_dims} positive "
                         f"ints each, got {pool_sizes}.")
    return sizes


def pad_to_match(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Zero-pad ``x`` (B, C, S...) at the end of each spatial axis so its spatial shape equals ``reference``'s.

    Max-pooling floors odd sizes (35 -> 17), so up-sampling gives back one voxel less (34); padding the up-sampled
    map to its skip's size (as the common PyTorch UNet does) makes every input size work. The lower side gets
    ``diff // 2`` and the upper side the rest, which is the usual centred padding.
    """
    pads: list[int] = []
    # F.pad takes (last_lo, last_hi, second_last_lo, ...): walk the spatial axes backwards.
    for axis in range(x.dim() - 1, 1, -1):
        diff = reference.shape[axis] - x.shape[axis]
        pads.append(diff // 2)
        pads.append(diff - diff // 2)
    if all(p == 0 for p in pads):
        return x
    return F.pad(x, pads)


class ChannelsLastInstanceNorm(nn.Module):
    """Instance normalisation (Ulyanov et al. 2016) that keeps its speed on channels-last CPU tensors.

    Shapes: (B, C, S) -> (B, C, S), in the input's dtype and memory format. The numbers are those of
    ``nn.InstanceNorm{1,2,3}d(C, affine=...)`` without running statistics (each channel of each sample normalised
    over its spatial extent, then ``weight * x + bias``), and so are the state-dict keys (``weight``, ``bias``), so
    checkpoints move freely between the two.

    Why not PyTorch's module: at inference its CPU ``instance_norm`` reshapes the input to a (1, B*C, S) batch norm,
    which copies a channels-last tensor to channels-first and back around every normalisation. ``group_norm`` with
    one group per channel is the same normalisation and has a native channels-last CPU kernel: measured on this
    project's CPU (2 threads, 2 x 16 x 40x56x40) 3.3 ms ``instance_norm`` vs 1.7 ms ``group_norm`` in bf16 and
    9.0 vs 1.6 ms in fp32, which makes the hippocampus bundle's bf16 prediction 18 % faster per case
    (``benchmarks/RESULTS.md``). Its backward, however, is 4x SLOWER than ``instance_norm``'s on channels-last bf16
    (62 vs 16 ms), so ``group_norm`` is used only when no gradient is recorded (``torch.no_grad``/``inference_mode``)
    on a channels-last CPU tensor; training, channels-first tensors and other devices keep ``instance_norm``.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True):
        super().__init__()
        self.num_features = int(num_features)
        self.eps = float(eps)
        self.affine = bool(affine)
        if self.affine:
            self.weight = nn.Parameter(torch.ones(self.num_features))
            self.bias = nn.Parameter(torch.zeros(self.num_features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Written for TorchScript too (no tuple membership, no memory-format variables).
        if x.device.type == "cpu" and not torch.is_grad_enabled() and not x.is_contiguous():
            if (x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d)) or (
                x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
            ):
                return F.group_norm(x, self.num_features, self.weight, self.bias, self.eps)
        return F.instance_norm(x, weight=self.weight, bias=self.bias, eps=self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, affine={self.affine}"


def use_channels_last_instance_norm(module: nn.Module) -> nn.Module:
    """Replace, in place, every ``nn.InstanceNorm{1,2,3}d`` without running statistics in ``module`` by a
    :class:`ChannelsLastInstanceNorm` holding the same parameters; returns ``module``.

    Instance norms that track running statistics (which use them in eval mode) are left as they are.
    """
    for name, child in list(module.named_children()):
        if isinstance(child, nn.modules.instancenorm._InstanceNorm) and not child.track_running_stats:
            replacement = ChannelsLastInstanceNorm(child.num_features, eps=child.eps, affine=child.affine)
            if child.affine:
                replacement.weight = child.weight
                replacement.bias = child.bias
            setattr(module, name, replacement)
        else:
            use_channels_last_instance_norm(child)
    return module


class DoubleConv(nn.Sequential):
    """Two 3x3(x3) convolutions, each followed by normalisation, dropout and activation.

    The basic unit of Ronneberger et al. 2015 ("U-Net", MICCAI) as commonly implemented in PyTorch (conv-norm-act
    twice, 'same' padding so the spatial shape is kept).

    Shapes: (B, in_channels, S) -> (B, out_channels, S).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        act: str | tuple,
        norm: str | tuple,
        bias: bool,
        dropout: float | tuple = 0.0,
        mid_channels: int | None = None,
    ):
        super().__init__()
        mid = out_channels if mid_channels is None else mid_channels
        self.add_module(
            "conv_0",
            Convolution(spatial_dims, in_channels, mid, kernel_size=3, act=act, norm=norm, dropout=dropout, bias=bias),
        )
        self.add_module(
            "conv_1",
            Convolution(spatial_dims, mid, out_channels, kernel_size=3, act=act, norm=norm, dropout=dropout, bias=bias),
        )
        use_channels_last_instance_norm(self)


class ResidualConvBlock(nn.Module):
    """Residual block: conv-norm-act, conv-norm, plus a shortcut, then the activation.

    Follows He et al. 2016 ("Deep Residual Learning", CVPR) as used in residual UNets (e.g. Zhang et al. 2018,
    "Road Extraction by Deep Residual U-Net"): the shortcut is a 1x1 convolution with normalisation (a
    projection) when the channel count changes and the identity otherwise; it is added before the last activation.

    Shapes: (B, in_channels, S) -> (B, out_channels, S).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        act: str | tuple,
        norm: str | tuple,
        bias: bool,
        dropout: float | tuple = 0.0,
    ):
        super().__init__()
        self.conv_0 = Convolution(
            spatial_dims, in_channels, out_channels, kernel_size=3, act=act, norm=norm, dropout=dropout, bias=bias
        )
        # No activation here: it comes after the sum with the shortcut.
        self.conv_1 = Convolution(
            spatial_dims, out_channels, out_channels, kernel_size=3, act=None, norm=norm, dropout=dropout, bias=bias
        )
        if in_channels != out_channels:
            self.shortcut: nn.Module = Convolution(
                spatial_dims, in_channels, out_channels, kernel_size=1, act=None, norm=norm, bias=bias
            )
        else:
            self.shortcut = nn.Identity()
        self.act = get_act_layer(act)
        use_channels_last_instance_norm(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv_1(self.conv_0(x)) + self.shortcut(x))


class UNetDownBlock(nn.Sequential):
    """Max-pool by ``pool_size`` (2, or one factor per axis), then a convolution block (``DoubleConv`` or
    ``ResidualConvBlock``).

    Shapes: (B, in_channels, S) -> (B, out_channels, floor(S / pool_size)).
    """

    def __init__(self, spatial_dims: int, conv_block: nn.Module, pool_size: int | Sequence[int] = 2):
        super().__init__()
        self.add_module("pool", Pool["max", spatial_dims](kernel_size=pool_size))
        self.add_module("conv", conv_block)


class SkipUpsampler(nn.Module):
    """Up-sample a coarse map by ``scale`` (2, or one factor per axis: the pooling it undoes) and pad it to the size
    of its skip connection.

    ``upsample="deconv"``: a transposed convolution with kernel = stride = ``scale`` that also maps ``in_channels`` to
    ``out_channels`` (Ronneberger et al. 2015). ``upsample="nontrainable"``: linear/bilinear/trilinear interpolation
    (``align_corners=True``, as in the common PyTorch UNet) that keeps ``in_channels``; ``out_channels`` then equals
    ``in_channels``. Implemented with MONAI's :class:`~monai.networks.blocks.UpSample`.

    Shapes: (B, in_channels, s) and skip (B, *, S) with S = scale * s + (0 .. scale - 1) -> (B, self.out_channels, S).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, upsample: str = "deconv",
                 scale: int | Sequence[int] = 2):
        super().__init__()
        if upsample not in ("deconv", "nontrainable"):
            raise ValueError(f"upsample must be 'deconv' or 'nontrainable', got {upsample!r}.")
        self.out_channels = out_channels if upsample == "deconv" else in_channels
        self.up = UpSample(
            spatial_dims,
            in_channels,
            self.out_channels,
            scale_factor=scale,
            mode=upsample,
            pre_conv=None,
            interp_mode="linear",
            align_corners=True,
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return pad_to_match(self.up(x), skip)
