"""Label post-processing a bundle (or ``--postprocess``) declares, as nnU-Net and TotalSegmentator users expect:
keep the largest connected component per class, and/or remove components smaller than a size in mm^3 (mm^2 for
2D bundles). Off unless asked for; the summary names what ran.

Why not MONAI's ``KeepLargestConnectedComponent`` / ``RemoveSmallObjects``: both label components with
scikit-image (or cuCIM), which is not a dependency of this package; ``scipy.ndimage.label`` (a dependency) does the
same labelling with the same full connectivity (26-neighbourhood in 3D, 8 in 2D, MONAI's default ``connectivity=None``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

__all__ = ["LabelPostprocess", "parse_postprocess"]


@dataclass(frozen=True)
class LabelPostprocess:
    """Per foreground class: keep only its largest component (``keep_largest``); drop components smaller than
    ``min_size`` (in mm^3 for 3D, mm^2 for 2D; voxel counts when the image has no physical spacing)."""

    keep_largest: bool = False
    min_size: float = 0.0

    @property
    def active(self) -> bool:
        return self.keep_largest or self.min_size > 0

    def describe(self) -> str:
        """The canonical spec (``parse_postprocess(p.describe()) == p``)."""
        parts = (["largest"] if self.keep_largest else []) + ([f"min-size={self.min_size:g}"] if self.min_size > 0 else [])
        return ",".join(parts) or "none"

    def __call__(self, labels: np.ndarray, voxel_size: float = 1.0) -> np.ndarray:
        """``labels`` (*spatial) integer label map -> the post-processed map (a copy; removed voxels become 0).

        ``voxel_size``: the volume (area in 2D) of one voxel, converting ``min_size`` to a voxel count.
        """
        if not self.active:
            return labels
        from scipy import ndimage

        out = labels.copy()
        structure = ndimage.generate_binary_structure(labels.ndim, labels.ndim)
        min_voxels = self.min_size / voxel_size if voxel_size > 0 else self.min_size
        for value in np.unique(labels):
            if value == 0:
                continue
            components, n = ndimage.label(labels == value, structure=structure)
            if n == 0:
                continue
            sizes = np.bincount(components.ravel())[1:]
            keep = sizes >= min_voxels
            if self.keep_largest:
                keep &= np.arange(n) == int(np.argmax(sizes))
            drop = np.concatenate([[False], ~keep])[components]
            out[drop] = 0
        return out


def parse_postprocess(spec: Any) -> LabelPostprocess:
    """``None``/``"none"`` -> off; ``"largest"``, ``"min-size=50"``, ``"largest,min-size=50"``; or a mapping
    ``{"keep_largest": true, "min_size": 50}`` (the form a bundle's ``inference.json`` uses)."""
    if spec is None or isinstance(spec, LabelPostprocess):
        return spec or LabelPostprocess()
    if isinstance(spec, Mapping):
        unknown = set(spec) - {"keep_largest", "min_size"}
        if unknown:
            raise ValueError(f"postprocess: unknown keys {sorted(unknown)} (expected keep_largest, min_size)")
        return LabelPostprocess(bool(spec.get("keep_largest", False)), float(spec.get("min_size", 0.0)))
    keep, min_size = False, 0.0
    for part in (p.strip().lower() for p in str(spec).split(",") if p.strip()):
        if part == "none":
            continue
        if part == "largest":
            keep = True
        elif part.startswith("min-size="):
            try:
                min_size = float(part.split("=", 1)[1])
            except ValueError:
                raise ValueError(f"postprocess {spec!r}: min-size needs a number, e.g. min-size=50") from None
            if min_size < 0:
                raise ValueError(f"postprocess {spec!r}: min-size must be >= 0")
        else:
            raise ValueError(f"postprocess {spec!r}: expected none, largest, min-size=N or a comma-separated mix")
    return LabelPostprocess(keep, min_size)
