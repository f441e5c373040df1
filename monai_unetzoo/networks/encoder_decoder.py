"""Shared skeleton of the single-path encoder-decoder networks (ClassicUNet, ResUNet).

Both are the UNet topology of Ronneberger et al. 2015 and differ only in the convolution unit used at every level
(``DoubleConv`` vs ``ResidualConvBlock``); this base class owns the topology so the two stay in step.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn as nn
from monai.networks.layers.factories import Conv

from .blocks import SkipUpsampler, UNetDownBlock, ensure_feature_tuple, ensure_pool_sizes

__all__ = ["EncoderDecoderUNet"]


class EncoderDecoderUNet(nn.Module):
    """UNet topology with a pluggable convolution unit.

    ``make_block(c_in, c_out)`` builds the unit of every level. Encoder: ``make_block(C_in, f0)``, then per level
    ``max-pool by pool_sizes[i] -> make_block(f[i], f[i + 1])`` (default 2 on every axis). Decoder (deepest
    first): up-sample by the same factors (``SkipUpsampler``), pad to the skip, concatenate ``[skip, up]`` along
    channels, ``make_block(up_channels + f[i], f[i])``. Head: 1x1 conv.

    Shapes: (B, C_in, S) -> (B, C_out, S) for any spatial size S.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        features: Sequence[int],
        upsample: str,
        make_block: Callable[[int, int], nn.Module],
        pool_sizes: Sequence[int | Sequence[int]] | None = None,
    ):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        feats = ensure_feature_tuple(features)
        self.spatial_dims = spatial_dims
        self.features = feats
        self.pool_sizes = ensure_pool_sizes(pool_sizes, len(feats) - 1, spatial_dims)
        self.stem = make_block(in_channels, feats[0])
        self.encoder = nn.ModuleList(
            UNetDownBlock(spatial_dims, make_block(feats[i], feats[i + 1]), self.pool_sizes[i])
            for i in range(len(feats) - 1)
        )
        self.upsamplers = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for i in reversed(range(len(feats) - 1)):
            up = SkipUpsampler(spatial_dims, feats[i + 1], feats[i], upsample=upsample, scale=self.pool_sizes[i])
            self.upsamplers.append(up)
            self.decoder.append(make_block(up.out_channels + feats[i], feats[i]))
        self.head = Conv["conv", spatial_dims](feats[0], out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        skips: list[torch.Tensor] = [x]
        for down in self.encoder:
            x = down(x)
            skips.append(x)
        n_skips = len(skips)
        for i, (up, block) in enumerate(zip(self.upsamplers, self.decoder)):
            skip = skips[n_skips - 2 - i]  # the skip of the level this decoder step returns to
            x = block(torch.cat([skip, up(x, skip)], dim=1))
        return self.head(x)
