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
    "DoubleConv",
    "ResidualConvBlock",
    "UNetDownBlock",
    "SkipUpsampler",
    "pad_to_match",
    "ensure_feature_tuple",
]


def ensure_feature_tuple(features: Sequence[int], min_levels: int = 2) -> tuple[int, ...]:
    """Validate ``features`` (channels per resolution level, shallowest first) and return it as a tuple."""
    feats = tuple(int(f) for f in features)
    if len(feats) < min_levels:
        raise ValueError(f"features needs at least {min_levels} levels (channels per level), got {feats}.")
    if any(f <= 0 for f in feats):
        raise ValueError(f"features must be positive channel counts, got {feats}.")
    return feats


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv_1(self.conv_0(x)) + self.shortcut(x))


class UNetDownBlock(nn.Sequential):
    """Max-pool by 2, then a convolution block (``DoubleConv`` or ``ResidualConvBlock``).

    Shapes: (B, in_channels, S) -> (B, out_channels, floor(S / 2)).
    """

    def __init__(self, spatial_dims: int, conv_block: nn.Module):
        super().__init__()
        self.add_module("pool", Pool["max", spatial_dims](kernel_size=2))
        self.add_module("conv", conv_block)


class SkipUpsampler(nn.Module):
    """Up-sample a coarse map by 2 and pad it to the size of its skip connection.

    ``upsample="deconv"``: a transposed convolution with kernel 2 and stride 2 that also maps ``in_channels`` to
    ``out_channels`` (Ronneberger et al. 2015). ``upsample="nontrainable"``: linear/bilinear/trilinear interpolation
    (``align_corners=True``, as in the common PyTorch UNet) that keeps ``in_channels``; ``out_channels`` then equals
    ``in_channels``. Implemented with MONAI's :class:`~monai.networks.blocks.UpSample`.

    Shapes: (B, in_channels, s) and skip (B, *, S) with S in {2s, 2s+1} -> (B, self.out_channels, S).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, upsample: str = "deconv"):
        super().__init__()
        if upsample not in ("deconv", "nontrainable"):
            raise ValueError(f"upsample must be 'deconv' or 'nontrainable', got {upsample!r}.")
        self.out_channels = out_channels if upsample == "deconv" else in_channels
        self.up = UpSample(
            spatial_dims,
            in_channels,
            self.out_channels,
            scale_factor=2,
            mode=upsample,
            pre_conv=None,
            interp_mode="linear",
            align_corners=True,
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return pad_to_match(self.up(x), skip)
