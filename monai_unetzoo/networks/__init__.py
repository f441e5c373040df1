"""Networks of the zoo, registered by name.

``get_network(name, **kwargs)`` builds one from the registry (names are case-insensitive; "unet++" is an alias of
"unetpp"); the classes are importable from here too, so bundle configs can use
``"_target_": "monai_unetzoo.networks.ResUNet"`` or, after ``"imports": ["$import monai_unetzoo"]``, the short
``"_target_": "ResUNet"``.
"""

from __future__ import annotations

import torch.nn as nn

from .blocks import DoubleConv, ResidualConvBlock, SkipUpsampler, UNetDownBlock, pad_to_match
from .encoder_decoder import EncoderDecoderUNet
from .resunet import ResUNet
from .unet import ClassicUNet
from .unetpp import UNetPlusPlus

NETWORK_REGISTRY: dict[str, type[nn.Module]] = {"unet": ClassicUNet, "unetpp": UNetPlusPlus, "resunet": ResUNet}
NETWORK_ALIASES: dict[str, str] = {"classicunet": "unet", "unet++": "unetpp", "unetplusplus": "unetpp"}

__all__ = [
    "ClassicUNet",
    "UNetPlusPlus",
    "ResUNet",
    "EncoderDecoderUNet",
    "DoubleConv",
    "ResidualConvBlock",
    "SkipUpsampler",
    "UNetDownBlock",
    "pad_to_match",
    "NETWORK_REGISTRY",
    "get_network",
]


def get_network(name: str, **kwargs) -> nn.Module:
    """Build the network registered as ``name`` (e.g. "unet", "unetpp", "resunet") with ``kwargs``."""
    key = name.lower()
    key = NETWORK_ALIASES.get(key, key)
    if key not in NETWORK_REGISTRY:
        raise KeyError(f"unknown network {name!r}; available: {sorted(NETWORK_REGISTRY)}")
    return NETWORK_REGISTRY[key](**kwargs)
