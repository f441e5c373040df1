"""Shared skeleton of the single-path encoder-decoder networks (ClassicUNet, ResUNet).

Both are the UNet topology of Ronneberger et al. 2015 and differ only in the convolution unit used at every level
(``DoubleConv`` vs ``ResidualConvBlock``); this base class owns the topology so the two stay in step.
"""

from __future__ import annotations

from typing import Callable, List, Sequence, Union

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

    Deep supervision (``deep_supervision=True``, Lee et al. 2015 "Deeply-Supervised Nets", as nnU-Net v2's
    ``UNetDecoder``): a 1x1 head also on the decoder outputs of levels ``1 .. L-2`` (``L = len(features) - 1``).
    nnU-Net builds a head at every decoder level and gives the coarsest (level ``L-1``) loss weight 0; leaving it
    out is the same training and skips a dead head. In training mode the network then returns the list
    ``[level 0 (full resolution), level 1, ..., level L-2]`` for :class:`~monai_unetzoo.losses.MaskedDeepSupervisionLoss`
    (its default weights ``1/2**i``, normalised, are nnU-Net's); in eval mode only the full-resolution output, so
    inference, export and checkpoints of the final head are unchanged (``strict=False`` loading of a deeply
    supervised checkpoint into a plain network drops only ``aux_heads.*``).

    Shapes: (B, C_in, S) -> (B, C_out, S) for any spatial size S; a deep-supervision head of level l gives
    (B, C_out, S_l) with ``S_l`` the encoder's size at level l (S pooled l times).
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
        deep_supervision: bool = False,
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
        self.deep_supervision = bool(deep_supervision)
        # aux_heads[k] sits on the decoder output of level k + 1.
        aux_levels = range(1, len(feats) - 2) if self.deep_supervision else range(0)
        self.aux_heads = nn.ModuleList(
            Conv["conv", spatial_dims](feats[level], out_channels, kernel_size=1) for level in aux_levels
        )

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, List[torch.Tensor]]:
        # typing.Union / List rather than ``|`` / ``list``: TorchScript resolves these.
        x = self.stem(x)
        skips: List[torch.Tensor] = [x]
        for down in self.encoder:
            x = down(x)
            skips.append(x)
        n_skips = len(skips)
        supervise = self.training and self.deep_supervision
        # Decoder outputs, coarsest level first, level 0 last; kept only for the heads, so that inference frees
        # each level's output as soon as the next level is computed.
        decoded: List[torch.Tensor] = []
        for i, (up, block) in enumerate(zip(self.upsamplers, self.decoder)):
            skip = skips[n_skips - 2 - i]  # the skip of the level this decoder step returns to
            x = block(torch.cat([skip, up(x, skip)], dim=1))
            if supervise:
                decoded.append(x)
        if not supervise:
            return self.head(x)
        heads = [self.head(x)]
        for k, aux_head in enumerate(self.aux_heads):
            heads.append(aux_head(decoded[-2 - k]))  # level k + 1
        return heads
