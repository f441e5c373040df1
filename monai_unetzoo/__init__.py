"""monai-unetzoo: UNet, UNet++ and ResUNet for 2D/3D medical image segmentation on MONAI.

Importing the package imports its submodules, so that MONAI's config resolver (which scans loaded modules
whose name starts with ``monai``) finds our components by short name in bundle configs after
``"imports": ["$import monai_unetzoo"]``.
"""

from __future__ import annotations

__version__ = "0.1.0"

from . import (  # noqa: F401,E402
    checkpoints,
    data,
    distributed,
    engines,
    inference,
    losses,
    metrics,
    networks,
    numerics,
    predict,
    presets,
    schedule,
    transforms,
    validation,
)
