"""Per-case preview PNGs: the segmentation over the image, for a quick look without a viewer.

3D: three orthogonal planes (sagittal, coronal, axial) through the centre of the predicted structures (the image
centre when nothing was predicted), after reorienting the arrays to RAS (flips/transposes only, nibabel's
``io_orientation``), shown the radiological way (patient's right on the viewer's left, superior/anterior up). 2D:
the whole image as stored (rows top to bottom). Pixels are square in millimetres whatever the voxel spacing (nearest
neighbour resampling at one common pixel size for all panels), so anisotropic scans keep their true proportions.

Colours: the bundle's ``metadata.json`` ``label_colors`` (``{"1": "#e6194b", ...}``), else a fixed palette; names
from ``channel_def``. Intensity window: the bundle's ``ScaleIntensityRanged`` range when its preprocessing has one
(the CT presets' HU window), else the 0.5 / 99.5 percentiles of the image (MRI, photographs). Labels are blended
over the grey (or RGB) image with opacity :data:`OVERLAY_ALPHA`; nothing else is drawn inside a panel, a legend
strip below them names the colours and planes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..volume_io import ScanGrid, atomic_output_path

__all__ = ["OVERLAY_ALPHA", "PreviewPanel", "label_colours", "display_window", "preview_panels",
           "compose_preview", "write_case_preview"]

OVERLAY_ALPHA = 0.5
#: Distinct colours (Kelly / Trubetskoy) for label 1, 2, ... when the bundle names none.
DEFAULT_PALETTE = ("#e6194b", "#3cb44b", "#4363d8", "#ffe119", "#f58231", "#911eb4", "#42d4f4", "#f032e6",
                   "#bfef45", "#fabed4", "#469990", "#dcbeff", "#9a6324", "#800000", "#aaffc3", "#000075")
PANEL_GAP = 4  # pixels between panels
MIN_PANEL_PIXELS = 192  # small crops (hippocampus ~35x50x35) are enlarged to at least this on their long side
MAX_PANEL_PIXELS = 512  # large CTs are reduced to at most this


@dataclass
class PreviewPanel:
    """One plane of a preview: ``rgb`` (H, W, 3) uint8, ``labels`` (H, W) on the same pixels, where it sits in the
    composed PNG (``x0``, ``y0``), and which plane it is (``name``, RAS ``axis`` held fixed, ``index`` on it)."""

    name: str
    axis: int | None
    index: int | None
    rgb: np.ndarray
    labels: np.ndarray
    x0: int = 0
    y0: int = 0


def _hex_rgb(text: str) -> tuple[int, int, int]:
    t = text.lstrip("#")
    return int(t[0:2], 16), int(t[2:4], 16), int(t[4:6], 16)


def label_colours(bundle_root: Path | None, label_values: list[int]) -> dict[int, tuple[int, int, int]]:
    """RGB per label value: ``metadata.json``'s ``label_colors`` where given, else :data:`DEFAULT_PALETTE`."""
    declared: dict[str, Any] = {}
    meta_path = Path(bundle_root) / "metadata.json" if bundle_root is not None else None
    if meta_path is not None and meta_path.is_file():
        try:
            declared = dict(json.loads(meta_path.read_text(encoding="utf-8")).get("label_colors", {}) or {})
        except (OSError, ValueError, TypeError):
            declared = {}
    out = {}
    for v in label_values:
        given = declared.get(str(v))
        out[v] = _hex_rgb(given) if isinstance(given, str) else _hex_rgb(DEFAULT_PALETTE[(v - 1) % len(DEFAULT_PALETTE)])
    return out


def display_window(preprocessing: Any, image: np.ndarray) -> tuple[float, float]:
    """``(low, high)`` intensities mapped to black and white: the range of the bundle's ``ScaleIntensityRanged``
    (e.g. the CT preset's HU window) if its preprocessing has one, else the 0.5 / 99.5 percentiles of ``image``."""
    for t in getattr(preprocessing, "transforms", ()) or ():
        scaler = getattr(t, "scaler", None)
        if type(t).__name__ == "ScaleIntensityRanged" and scaler is not None:
            return float(scaler.a_min), float(scaler.a_max)
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(finite, [0.5, 99.5]))
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def _to_uint8(image: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    lo, hi = window
    scaled = (np.nan_to_num(image.astype(np.float64), nan=lo) - lo) / (hi - lo)
    return np.round(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)


def _ras_arrays(image: np.ndarray, labels: np.ndarray, grid: ScanGrid) -> tuple[np.ndarray, np.ndarray, tuple]:
    """``image`` (C, X, Y, Z) and ``labels`` (X, Y, Z) flipped/transposed to RAS, and the spacing per RAS axis."""
    from nibabel.orientations import apply_orientation, io_orientation

    ornt = io_orientation(grid.affine)
    spacing = [0.0, 0.0, 0.0]
    for in_axis, (out_axis, _) in enumerate(ornt):
        spacing[int(out_axis)] = grid.spacing[in_axis]
    ras_labels = apply_orientation(labels, ornt)
    ras_image = np.stack([apply_orientation(c, ornt) for c in image])
    return ras_image, ras_labels, tuple(spacing)


def _structure_centre(labels: np.ndarray) -> tuple[int, ...]:
    """Voxel index of the centroid of all foreground voxels (the array centre when there are none)."""
    coords = np.nonzero(labels)
    if not coords[0].size:
        return tuple(s // 2 for s in labels.shape)
    return tuple(int(round(float(c.mean()))) for c in coords)


def _planes_3d(ras_image: np.ndarray, ras_labels: np.ndarray, centre: tuple[int, ...], spacing: tuple):
    """``(name, axis, index, image (C, H, W), labels (H, W), (row mm, col mm))`` of the three planes, oriented
    for display: rows from superior (or anterior, axial) down, columns from the patient's right (or anterior)."""
    i, j, k = centre
    return [
        ("sagittal", 0, i, ras_image[:, i, ::-1, ::-1].transpose(0, 2, 1), ras_labels[i, ::-1, ::-1].T,
         (spacing[2], spacing[1])),
        ("coronal", 1, j, ras_image[:, ::-1, j, ::-1].transpose(0, 2, 1), ras_labels[::-1, j, ::-1].T,
         (spacing[2], spacing[0])),
        ("axial", 2, k, ras_image[:, ::-1, ::-1, k].transpose(0, 2, 1), ras_labels[::-1, ::-1, k].T,
         (spacing[1], spacing[0])),
    ]


def _pixel_size(planes: list, spacing: tuple) -> float:
    """One pixel size (mm) for every panel: the finest spacing, enlarged or reduced to the panel size limits."""
    finest = min(spacing)
    longest = max(max(img.shape[1] * mm[0], img.shape[2] * mm[1]) for _, _, _, img, _, mm in planes)
    if longest / finest > MAX_PANEL_PIXELS:
        return longest / MAX_PANEL_PIXELS
    return finest / max(1, math.ceil(MIN_PANEL_PIXELS / (longest / finest)))


def _resample_indices(n: int, spacing: float, pixel: float) -> np.ndarray:
    """Source index per output pixel (nearest neighbour) for ``n`` voxels of ``spacing`` mm at ``pixel`` mm."""
    m = max(1, int(round(n * spacing / pixel)))
    return np.minimum(((np.arange(m) + 0.5) * pixel / spacing).astype(np.int64), n - 1)


def _blend(gray_or_rgb: np.ndarray, labels: np.ndarray, colours: dict[int, tuple[int, int, int]]) -> np.ndarray:
    """(H, W, 3) uint8: the image with each label's colour blended in at :data:`OVERLAY_ALPHA` where it is."""
    rgb = gray_or_rgb.astype(np.float64)
    for value, colour in colours.items():
        where = labels == value
        rgb[where] = (1.0 - OVERLAY_ALPHA) * rgb[where] + OVERLAY_ALPHA * np.asarray(colour, np.float64)
    return np.round(rgb).astype(np.uint8)


def _panel(name, axis, index, image, labels, mm, pixel, window, colours) -> PreviewPanel:
    rows = _resample_indices(labels.shape[0], mm[0], pixel)
    cols = _resample_indices(labels.shape[1], mm[1], pixel)
    lab = labels[np.ix_(rows, cols)]
    img = _to_uint8(image[:, rows][:, :, cols], window)
    base = np.repeat(img[0][..., None], 3, axis=-1) if img.shape[0] != 3 else img.transpose(1, 2, 0)
    return PreviewPanel(name, axis, index, _blend(base, lab, colours), lab)


def preview_panels(image: np.ndarray, labels: np.ndarray, grid: ScanGrid, window: tuple[float, float],
                   colours: dict[int, tuple[int, int, int]]) -> list[PreviewPanel]:
    """The panels of a preview (not yet placed): ``image`` (C, *spatial) raw intensities and ``labels``
    (*spatial) on ``grid``; three RAS planes through the structures' centre for 3D, the whole image for 2D."""
    labels = np.asarray(labels)
    if labels.ndim == 3:
        ras_image, ras_labels, spacing = _ras_arrays(np.asarray(image), labels, grid)
        planes = _planes_3d(ras_image, ras_labels, _structure_centre(ras_labels), spacing)
    else:
        img2, lab2 = (np.asarray(image), labels) if grid.axes_reversed else (np.asarray(image).transpose(0, 2, 1), labels.T)
        spacing = tuple(grid.spacing[::-1]) if not grid.axes_reversed else tuple(grid.spacing)
        planes = [("image", None, None, img2, lab2, spacing)]
    pixel = _pixel_size(planes, tuple(s for p in planes for s in p[5]))
    return [_panel(*p[:5], p[5], pixel, window, colours) for p in planes]


def compose_preview(panels: list[PreviewPanel], legend: list[tuple[str, tuple[int, int, int]]], title: str):
    """A PIL image: panels left to right (top-aligned, :data:`PANEL_GAP` apart; each panel's ``x0``/``y0`` set
    here), then a legend strip with ``title``, the planes and a colour swatch per label name."""
    from PIL import Image, ImageDraw

    line = 14
    x = 0
    for p in panels:
        p.x0, p.y0 = x, 0
        x += p.rgb.shape[1] + PANEL_GAP
    width = max(x - PANEL_GAP, 260)
    height = max(p.rgb.shape[0] for p in panels) + line * (2 + len(legend)) + 6
    canvas = Image.new("RGB", (width, height), (0, 0, 0))
    for p in panels:
        canvas.paste(Image.fromarray(p.rgb, "RGB"), (p.x0, p.y0))
    draw = ImageDraw.Draw(canvas)
    y = max(p.rgb.shape[0] for p in panels) + 4
    draw.text((2, y), title[:90], fill=(255, 255, 255))
    planes = "   ".join(p.name if p.index is None else f"{p.name} {'xyz'[p.axis]}={p.index}" for p in panels)
    draw.text((2, y + line), planes, fill=(200, 200, 200))
    for n, (name, colour) in enumerate(legend):
        top = y + line * (2 + n)
        draw.rectangle((2, top + 2, 12, top + 11), fill=colour)
        draw.text((18, top), name, fill=(255, 255, 255))
    return canvas


def write_case_preview(path: Path, image: np.ndarray, labels: np.ndarray, grid: ScanGrid, *, preprocessing: Any,
                       label_names: dict[int, str], bundle_root: Path | None, title: str) -> list[PreviewPanel]:
    """Render and write (atomically) the preview PNG of one case; returns the placed panels."""
    colours = label_colours(bundle_root, sorted(label_names))
    panels = preview_panels(image, labels, grid, display_window(preprocessing, np.asarray(image)), colours)
    canvas = compose_preview(panels, [(label_names[v], colours[v]) for v in sorted(label_names)], title)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output_path(path) as tmp:
        # zlib level 3: about 4x faster than PIL's default 6 for a 10 % larger picture (benchmarks/RESULTS.md)
        canvas.save(tmp, format="PNG", compress_level=3)
    return panels
