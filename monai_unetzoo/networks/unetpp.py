"""UNet++ (nested UNet) with deep supervision and pruning, for 2D and 3D.

Reference: Z. Zhou, M. M. Rahman Siddiquee, N. Tajbakhsh, J. Liang, "UNet++: A Nested U-Net Architecture for Medical
Image Segmentation", DLMIA 2018 (and the TMI 2019 follow-up "UNet++: Redesigning Skip Connections ..."):

* the backbone column X(i, 0), i = 0..L, is a UNet encoder (DoubleConv, then max-pool + DoubleConv per level);
* every nested node X(i, j), j >= 1, applies a DoubleConv to the concatenation of all same-level predecessors
  X(i, 0..j-1) and the up-sampled node below, Up(X(i + 1, j - 1));
* deep supervision puts a 1x1 convolution head on each of X(0, 1..L);
* pruning: the sub-network that ends at X(0, p) needs only the nodes with i + j <= p, so running it skips the
  deeper encoder levels and every node right of the anti-diagonal.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
from monai.networks.layers.factories import Conv

from .blocks import DoubleConv, SkipUpsampler, UNetDownBlock, ensure_feature_tuple, ensure_pool_sizes

__all__ = ["UNetPlusPlus"]


class UNetPlusPlus(nn.Module):
    """UNet++ with optional deep supervision and inference-time pruning (Zhou et al. 2018).

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels ``C_in``.
        out_channels: output channels (classes) ``C_out``.
        features: channels per level, shallowest first; depth ``L = len(features) - 1``.
        act, norm, bias, dropout, upsample, pool_sizes: as in :class:`~monai_unetzoo.networks.ClassicUNet`
            (``pool_sizes[i]``: between levels i and i + 1, for the backbone and every nested up-sampler).
        deep_supervision: put a head on every X(0, j), j = 1..L (else one head on X(0, L)).
        prune_level: ``p`` in 1..L, the head used in eval mode; only the nodes with ``i + j <= p`` are computed.
            ``None`` means ``L`` (the full network). Needs ``deep_supervision=True`` when ``p < L`` (the shallower
            heads only exist, and are only trained, with deep supervision). Can be changed after construction.

    Outputs (``S`` the input spatial size, every head at full resolution):
        * training mode with deep supervision: a list of ``L`` tensors (B, C_out, S), **the final, deepest head
          X(0, L) first**, then X(0, L-1), ..., X(0, 1). Index ``k`` is X(0, L - k); this matches nnU-Net's order,
          so a deep-supervision loss with weights 1/2^k weights the final head most.
        * eval mode, or training without deep supervision: one tensor (B, C_out, S), the head of X(0, prune_level).
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 2,
        features: Sequence[int] = (32, 64, 128, 256, 512),
        act: str | tuple = ("relu", {"inplace": True}),
        norm: str | tuple = "batch",
        bias: bool = False,
        dropout: float | tuple = 0.0,
        upsample: str = "deconv",
        deep_supervision: bool = False,
        prune_level: int | None = None,
        pool_sizes: Sequence[int | Sequence[int]] | None = None,
    ):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        feats = ensure_feature_tuple(features)
        self.spatial_dims = spatial_dims
        self.features = feats
        self.depth = len(feats) - 1
        self.pool_sizes = ensure_pool_sizes(pool_sizes, self.depth, spatial_dims)
        self.deep_supervision = deep_supervision
        self._prune_level = self.depth
        self.prune_level = prune_level if prune_level is not None else self.depth

        def conv_block(c_in: int, c_out: int) -> nn.Module:
            return DoubleConv(spatial_dims, c_in, c_out, act=act, norm=norm, bias=bias, dropout=dropout)

        depth = self.depth
        # Backbone X(i, 0).
        self.backbone = nn.ModuleList([conv_block(in_channels, feats[0])])
        for i in range(1, depth + 1):
            self.backbone.append(UNetDownBlock(spatial_dims, conv_block(feats[i - 1], feats[i]), self.pool_sizes[i - 1]))
        # Nested nodes X(i, j), j >= 1, keyed "i_j"; each has its own up-sampler from X(i + 1, j - 1).
        self.upsamplers = nn.ModuleDict()
        self.nodes = nn.ModuleDict()
        for j in range(1, depth + 1):
            for i in range(0, depth - j + 1):
                up = SkipUpsampler(spatial_dims, feats[i + 1], feats[i], upsample=upsample, scale=self.pool_sizes[i])
                self.upsamplers[f"{i}_{j}"] = up
                self.nodes[f"{i}_{j}"] = conv_block(j * feats[i] + up.out_channels, feats[i])
        conv_type = Conv["conv", spatial_dims]
        head_levels = range(1, depth + 1) if deep_supervision else [depth]
        # heads["j"] sits on X(0, j).
        self.heads = nn.ModuleDict({str(j): conv_type(feats[0], out_channels, kernel_size=1) for j in head_levels})

    @property
    def prune_level(self) -> int:
        return self._prune_level

    @prune_level.setter
    def prune_level(self, level: int) -> None:
        level = int(level)
        if not 1 <= level <= self.depth:
            raise ValueError(f"prune_level must be in 1..{self.depth}, got {level}.")
        if level < self.depth and not self.deep_supervision:
            raise ValueError("prune_level < depth needs deep_supervision=True: only then do shallower heads exist.")
        self._prune_level = level

    def _grid(self, x: torch.Tensor, level: int) -> dict[str, torch.Tensor]:
        """Compute every node X(i, j) with ``i + j <= level``; keys are "i_j"."""
        out: dict[str, torch.Tensor] = {}
        h = x
        for i in range(level + 1):
            h = self.backbone[i](h)
            out[f"{i}_0"] = h
        # Column by column: X(i, j) needs X(i, 0..j-1) and X(i + 1, j - 1), all in earlier columns.
        for j in range(1, level + 1):
            for i in range(0, level - j + 1):
                key = f"{i}_{j}"
                same_level = [out[f"{i}_{k}"] for k in range(j)]
                below = self.upsamplers[key](out[f"{i + 1}_{j - 1}"], same_level[0])
                out[key] = self.nodes[key](torch.cat([*same_level, below], dim=1))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if self.training and self.deep_supervision:
            grid = self._grid(x, self.depth)
            return [self.heads[str(j)](grid[f"0_{j}"]) for j in range(self.depth, 0, -1)]
        level = self.prune_level if not self.training else self.depth
        grid = self._grid(x, level)
        return self.heads[str(level)](grid[f"0_{level}"])
