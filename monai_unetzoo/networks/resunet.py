"""Residual UNet (ResUNet) for 2D and 3D.

Reference design: a UNet whose convolution units are residual blocks (He et al. 2016, "Deep Residual Learning for
Image Recognition"), as in Zhang, Liu & Wang 2018, "Road Extraction by Deep Residual U-Net" and the residual
encoders of nnU-Net v2: each block is conv-norm-act, conv-norm, plus a 1x1 projection shortcut (identity when the
channel count is unchanged) added before the last activation. Encoder: one block per level with max-pooling in
between; decoder: up-sample, concatenate the skip, one residual block; 1x1 output convolution. Instance norm and
leaky ReLU by default, the nnU-Net choice for small-batch 3D CT/MRI training.
"""

from __future__ import annotations

from typing import Sequence

import torch.nn as nn

from .blocks import ResidualConvBlock
from .encoder_decoder import EncoderDecoderUNet

__all__ = ["ResUNet"]


class ResUNet(EncoderDecoderUNet):
    """UNet with residual blocks at every level.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels ``C_in``.
        out_channels: output channels (classes) ``C_out``.
        features: channels per level, shallowest first (the first entry is the base filter count, the length is
            the depth + 1).
        act, norm, bias, dropout, upsample, pool_sizes, deep_supervision: as in
            :class:`~monai_unetzoo.networks.ClassicUNet`.

    Shapes: (B, C_in, S) -> (B, C_out, S) logits, for any spatial size S.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 2,
        features: Sequence[int] = (32, 64, 128, 256, 320),
        act: str | tuple = ("leakyrelu", {"negative_slope": 0.01, "inplace": True}),
        norm: str | tuple = ("instance", {"affine": True}),
        bias: bool = True,
        dropout: float | tuple = 0.0,
        upsample: str = "deconv",
        pool_sizes: Sequence[int | Sequence[int]] | None = None,
        deep_supervision: bool = False,
    ):
        def make_block(c_in: int, c_out: int) -> nn.Module:
            return ResidualConvBlock(spatial_dims, c_in, c_out, act=act, norm=norm, bias=bias, dropout=dropout)

        super().__init__(
            spatial_dims, in_channels, out_channels, features, upsample, make_block, pool_sizes, deep_supervision
        )
