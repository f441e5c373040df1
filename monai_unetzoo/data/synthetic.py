"""A small synthetic stand-in for DRIVE, written in DRIVE's own file layout.

Used as the bundles' built-in default so that ``python -m monai.bundle run training --config_file
bundles/drive/train.json`` works from a fresh clone without the (research-use only) DRIVE data. It is NOT a model of
the retina good enough to pre-train on; it only exercises the full pipeline (TIFF/GIF reading, FOV masking,
patch sampling, sliding-window validation) on a task that a network can learn in minutes.

Each image is a fundus-like RGB photograph: a circular field of view (FOV) on black, reddish background with
vignetting, low-frequency texture, a bright optic disc and a darker fovea, and a few small dark blotches that are
NOT vessels; vessel trees grow from the optic disc as random walks that branch (child widths follow Murray's law
``w_parent^3 = w_1^3 + w_2^3``) and taper, and are darkest in the green channel, with a contrast that falls with the
vessel width as in real fundus images. The label is the vessel coverage (rendered 3x super-sampled, > 50 % covered),
the mask is the FOV disc. Defaults are deliberately smaller than DRIVE (256 x 256 instead of 584 x 565 pixels, 10
training and 2 test images) so that the default run is fast; everything is deterministic given ``seed``.
MONAI has no such generator (``monai.data.synthetic`` draws random circles/spheres, not trees), hence this module.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .generated import (
    generation_scratch_folder,
    publish_generated_folder,
    reuse_or_clear_generated_folder,
)

__all__ = ["draw_synthetic_fundus", "write_synthetic_drive", "SYNTHETIC_MARKER"]

logger = logging.getLogger(__name__)

#: JSON file written at the top of a generated data set, holding the generator parameters.
SYNTHETIC_MARKER = "synthetic_drive.json"
_GENERATOR_VERSION = 1
_SUPERSAMPLE = 3


def _grow_vessel_tree(
    rng: np.random.Generator,
    start: tuple[float, float],
    heading: float,
    width: float,
    fov_center: tuple[float, float],
    fov_radius: float,
    min_width: float,
    step: float,
    segments: list[tuple[float, float, float, float, float]],
    depth: int = 0,
) -> None:
    """Append the segments ``(y0, x0, y1, x1, width)`` of one vessel and, recursively, of its branches."""
    y, x = start
    curvature = rng.normal(0.0, 0.012)  # a gentle, persistent bend: arcades curve around the macula
    length = 0.0
    max_length = fov_radius * rng.uniform(1.0, 2.2)
    next_branch = rng.uniform(8, 20) * step
    while width >= min_width and length < max_length:
        heading += curvature + rng.normal(0.0, 0.07)
        ny, nx = y + step * math.sin(heading), x + step * math.cos(heading)
        if math.hypot(ny - fov_center[0], nx - fov_center[1]) > fov_radius * 1.04:
            break
        segments.append((y, x, ny, nx, width))
        y, x = ny, nx
        length += step
        width *= 1.0 - rng.uniform(0.0, 0.012)  # slow taper
        if length >= next_branch and depth < 6:
            next_branch = length + rng.uniform(6, 18) * step
            # Murray's law split: w^3 = w1^3 + w2^3 with an asymmetric ratio.
            frac = rng.uniform(0.15, 0.5)
            w_child = width * frac ** (1 / 3)
            width = width * (1 - frac) ** (1 / 3)
            side = rng.choice((-1.0, 1.0))
            child_heading = heading + side * rng.uniform(0.5, 1.2)
            heading -= side * rng.uniform(0.05, 0.25)
            if w_child >= min_width:
                _grow_vessel_tree(rng, (y, x), child_heading, w_child, fov_center, fov_radius, min_width, step,
                                  segments, depth + 1)


def draw_synthetic_fundus(
    image_size: Sequence[int] = (256, 256), seed: int | np.random.Generator = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One synthetic fundus photograph with its vessel label and FOV mask.

    Args:
        image_size: ``(H, W)`` in pixels.
        seed: integer seed or a ``numpy.random.Generator``.

    Returns:
        ``image`` (H, W, 3) uint8 RGB, ``label`` (H, W) uint8 in {0, 255}, ``fov`` (H, W) uint8 in {0, 255} -- the
        arrays ``numpy.asarray(PIL.Image.open(f))`` gives for DRIVE's TIFF and GIF files. Vessels lie inside the FOV.
    """
    from PIL import Image, ImageDraw
    from scipy.ndimage import gaussian_filter

    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    h, w = (int(s) for s in image_size)
    if h < 32 or w < 32:
        raise ValueError(f"image_size must be at least 32 x 32, got {(h, w)}.")
    scale = min(h, w) / 565.0  # DRIVE-relative scale: vessel widths below are DRIVE pixels times `scale`
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    cy, cx = (h - 1) / 2 + rng.normal(0, 0.01 * h), (w - 1) / 2 + rng.normal(0, 0.01 * w)
    radius = 0.47 * min(h, w) * rng.uniform(0.97, 1.0)
    dist = np.hypot(yy - cy, xx - cx)
    fov = dist <= radius

    # Optic disc on the left or right, fovea on the other side of the centre.
    side = rng.choice((-1.0, 1.0))
    od_y, od_x = cy + rng.normal(0, 0.05 * radius), cx + side * rng.uniform(0.45, 0.6) * radius
    fv_y, fv_x = cy + rng.normal(0, 0.04 * radius), cx - side * rng.uniform(0.05, 0.15) * radius
    od_r = rng.uniform(0.14, 0.18) * radius

    # --- vessel trees from the optic disc ---
    segments: list[tuple[float, float, float, float, float]] = []
    max_w = max(2.5, rng.uniform(7.0, 9.0) * scale)  # main trunk width in output pixels (DRIVE: ~8 px)
    min_w = max(0.9, 1.6 * scale)
    step = max(1.5, 6.0 * scale)
    toward_centre = math.atan2(cy - od_y, cx - od_x)
    trunk_headings = [toward_centre - rng.uniform(0.9, 1.3), toward_centre + rng.uniform(0.9, 1.3),
                      toward_centre + math.pi - rng.uniform(0.6, 1.0), toward_centre + math.pi + rng.uniform(0.6, 1.0)]
    trunk_headings += list(toward_centre + rng.uniform(-0.4, 0.4, size=rng.integers(1, 3)))
    for i, heading in enumerate(trunk_headings):
        width = max_w * (1.0 if i < 2 else rng.uniform(0.55, 0.8))
        start = (od_y + rng.normal(0, 0.3 * od_r), od_x + rng.normal(0, 0.3 * od_r))
        _grow_vessel_tree(rng, start, heading, width, (cy, cx), radius, min_w, step, segments)

    # Render coverage (label) and contrast (image) super-sampled; widest vessels drawn last so they stay on top.
    ss = _SUPERSAMPLE
    cover = Image.new("L", (w * ss, h * ss), 0)
    contrast = Image.new("L", (w * ss, h * ss), 0)
    d_cover, d_contrast = ImageDraw.Draw(cover), ImageDraw.Draw(contrast)
    for y0, x0, y1, x1, wd in sorted(segments, key=lambda s: s[4]):
        line_w = max(1, int(round(wd * ss)))
        c = int(255 * min(1.0, 0.30 + 0.55 * wd / max_w))  # thin vessels are fainter
        pts = [((x0 + 0.5) * ss, (y0 + 0.5) * ss), ((x1 + 0.5) * ss, (y1 + 0.5) * ss)]
        r = wd * ss / 2
        for draw, fill in ((d_cover, 255), (d_contrast, c)):
            draw.line(pts, fill=fill, width=line_w)
            draw.ellipse([pts[1][0] - r, pts[1][1] - r, pts[1][0] + r, pts[1][1] + r], fill=fill)
    cover_a = np.asarray(cover, dtype=np.float64).reshape(h, ss, w, ss).mean(axis=(1, 3)) / 255.0
    contrast_a = np.asarray(contrast, dtype=np.float64).reshape(h, ss, w, ss).mean(axis=(1, 3)) / 255.0
    label = (cover_a > 0.5) & fov

    # --- background: colour, vignetting, texture, optic disc, fovea, distractor blotches ---
    base = np.array([rng.uniform(170, 220), rng.uniform(70, 110), rng.uniform(25, 50)])
    rel = dist / radius
    grad = 1.0 + 0.15 * ((yy - cy) * rng.normal() + (xx - cx) * rng.normal()) / radius
    illum = (1.0 - 0.35 * rel ** 2) * grad
    texture = gaussian_filter(rng.normal(0, 1, (h, w)), sigma=max(2.0, 18 * scale))
    texture *= 0.06 / (texture.std() + 1e-8)
    disc = np.exp(-(((yy - od_y) ** 2 + (xx - od_x) ** 2) / (2 * od_r ** 2)))
    fovea = np.exp(-(((yy - fv_y) ** 2 + (xx - fv_x) ** 2) / (2 * (1.6 * od_r) ** 2)))
    blotches = np.zeros((h, w))
    for _ in range(rng.integers(3, 9)):  # small dark spots (haemorrhage-like), not vessels: the net must not fire
        by, bx = cy + rng.uniform(-0.8, 0.8) * radius, cx + rng.uniform(-0.8, 0.8) * radius
        br = rng.uniform(2.0, 6.0) * scale * 2
        blotches = np.maximum(blotches, np.exp(-(((yy - by) ** 2 + (xx - bx) ** 2) / (2 * br ** 2))))
    lum = illum * (1 + texture) * (1 - 0.25 * fovea) * (1 - 0.35 * blotches)
    rgb = base[None, None, :] * lum[..., None]
    rgb += disc[..., None] * np.array([50.0, 90.0, 70.0])[None, None, :]
    # Vessels: darken, most in green (haemoglobin absorption), blurred slightly like an optical system.
    vessel = gaussian_filter(contrast_a, sigma=0.6)
    absorb = np.array([0.25, 0.55, 0.40]) * rng.uniform(0.85, 1.15)
    rgb *= 1.0 - vessel[..., None] * absorb[None, None, :]
    rgb += rng.normal(0, 3.0, rgb.shape)  # sensor noise
    rgb = np.where(fov[..., None], rgb, rng.uniform(0, 3, rgb.shape))
    image = np.clip(np.round(rgb), 0, 255).astype(np.uint8)
    return image, (label * 255).astype(np.uint8), (fov * 255).astype(np.uint8)


def _params(num_training: int, num_test: int, image_size: Sequence[int], seed: int) -> dict:
    return {"generator": "monai_unetzoo.data.synthetic", "version": _GENERATOR_VERSION,
            "num_training": int(num_training), "num_test": int(num_test),
            "image_size": [int(s) for s in image_size], "seed": int(seed)}


def write_synthetic_drive(
    root: str | os.PathLike,
    num_training: int = 10,
    num_test: int = 2,
    image_size: Sequence[int] = (256, 256),
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write (or reuse) a synthetic data set in DRIVE's layout under ``root``; return ``root``.

    Files: ``training/images/NN_training.tif`` (RGB TIFF), ``training/1st_manual/NN_manual1.gif``,
    ``training/mask/NN_training_mask.gif`` for NN = 21, 22, ... (as DRIVE) and ``test/images/NN_test.tif``,
    ``test/1st_manual/NN_manual1.gif``, ``test/mask/NN_test_mask.gif`` for NN = 01, 02, ... -- with test labels, so
    that evaluating the test split works on it -- plus :data:`SYNTHETIC_MARKER` with the parameters.

    A folder already generated with the same parameters is reused as is (cheap on every run); one generated with
    other parameters is regenerated. A non-empty ``root`` without the marker is never touched (it may be real data):
    that raises ``FileExistsError``. Generation goes to a temporary sibling folder that is renamed into place, so
    concurrent callers (e.g. the ranks of a ``torchrun`` job) do not see half-written data.
    """
    root = Path(root).expanduser().resolve()
    params = _params(num_training, num_test, image_size, seed)
    if reuse_or_clear_generated_folder(root, SYNTHETIC_MARKER, params, overwrite):
        return root
    from PIL import Image

    tmp = generation_scratch_folder(root)
    rng = np.random.default_rng(seed)
    sections = (("training", [f"{21 + i:02d}" for i in range(num_training)]),
                ("test", [f"{1 + i:02d}" for i in range(num_test)]))
    for section, ids in sections:
        for sub in ("images", "1st_manual", "mask"):
            (tmp / section / sub).mkdir(parents=True, exist_ok=True)
        for cid in ids:
            image, label, fov = draw_synthetic_fundus(image_size, rng)
            Image.fromarray(image, mode="RGB").save(tmp / section / "images" / f"{cid}_{section}.tif", format="TIFF")
            # optimize=False keeps the full grey palette, so PIL reads the GIFs back as mode "L" with values 0/255,
            # exactly like DRIVE's (the optimised palette would read back as mode "P" with indices 0/1).
            gif = {"format": "GIF", "optimize": False}
            Image.fromarray(label, mode="L").save(tmp / section / "1st_manual" / f"{cid}_manual1.gif", **gif)
            Image.fromarray(fov, mode="L").save(tmp / section / "mask" / f"{cid}_{section}_mask.gif", **gif)
    publish_generated_folder(tmp, root, SYNTHETIC_MARKER, params)
    logger.info("wrote a synthetic DRIVE-layout data set to %s (%s)", root, params)
    return root
