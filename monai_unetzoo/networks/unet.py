"""The classic UNet of Ronneberger et al. 2015, for 2D and 3D.

Reference: O. Ronneberger, P. Fischer, T. Brox, "U-Net: Convolutional Networks for Biomedical Image Segmentation",
MICCAI 2015, as commonly implemented in PyTorch (DoubleConv = (conv-norm-act) x 2; Down = max-pool then DoubleConv;
Up = transposed convolution or interpolation, pad to the skip's size, concatenate, DoubleConv; 1x1 output
convolution). With ``features=(64, 128, 256, 512, 1024)``, ``upsample="deconv"``, ``bias=True`` and batch norm the
2D network for one input and one output channel has exactly 31,042,369 parameters.
"""

from __future__ import annotations

from typing import Sequence

import torch.nn as nn

from .blocks import DoubleConv
from .encoder_decoder import EncoderDecoderUNet

__all__ = ["ClassicUNet"]


class ClassicUNet(EncoderDecoderUNet):
    """Classic encoder-decoder UNet with skip connections (Ronneberger et al. 2015).

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels ``C_in``.
        out_channels: output channels (classes) ``C_out``.
        features: channels per resolution level, shallowest first; ``len(features) - 1`` poolings. The input size
            need not be divisible by ``2 ** (len(features) - 1)``: up-sampled maps are padded to their skip's size.
        act: activation (MONAI ``Act`` factory name or ``(name, kwargs)``).
        norm: normalisation (MONAI ``Norm`` factory name or ``(name, kwargs)``), e.g. ``"batch"``, ``"instance"``.
        bias: whether the 3x3 convolutions have a bias (redundant before batch norm, hence ``False`` by default).
        dropout: dropout probability inside every DoubleConv.
        upsample: ``"deconv"`` (transposed convolution, halves the channels) or ``"nontrainable"`` (interpolation;
            the decoder convolution then sees ``features[i + 1] + features[i]`` channels).
        pool_sizes: pooling factor per level (shallowest first), an int or one per axis; default 2 everywhere.
            ``[[2, 2, 1], [2, 2, 1], [2, 2, 2]]`` pools the third axis only at the deepest level (nnU-Net's plans
            for anisotropic data; see :func:`monai_unetzoo.planning.rules.pool_kernels`).
        deep_supervision: in training mode also return 1x1 heads on the decoder levels ``1 .. L-2`` (nnU-Net's;
            see :class:`~monai_unetzoo.networks.encoder_decoder.EncoderDecoderUNet`); eval mode is unchanged.

    Shapes: (B, C_in, S) -> (B, C_out, S) logits, for any spatial size S (2D ``H, W`` or 3D ``D, H, W``).
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 2,
        features: Sequence[int] = (64, 128, 256, 512, 1024),
        act: str | tuple = ("relu", {"inplace": True}),
        norm: str | tuple = "batch",
        bias: bool = False,
        dropout: float | tuple = 0.0,
        upsample: str = "deconv",
        pool_sizes: Sequence[int | Sequence[int]] | None = None,
        deep_supervision: bool = False,
    ):
        def make_block(c_in: int, c_out: int) -> nn.Module:
            return DoubleConv(spatial_dims, c_in, c_out, act=act, norm=norm, bias=bias, dropout=dropout)

        super().__init__(
            spatial_dims, in_channels, out_channels, features, upsample, make_block, pool_sizes, deep_supervision
        )
