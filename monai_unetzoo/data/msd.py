"""Medical Segmentation Decathlon (MSD) style data sets: ``dataset.json`` -> datalists, split, synthetic stand-in.

Reference: Antonelli et al. 2022, "The Medical Segmentation Decathlon", Nat. Commun. 13:4128; Simpson et al. 2019,
arXiv:1902.09063. The layout (as distributed for every task, e.g. ``Task04_Hippocampus``)::

    <root>/dataset.json            {"name", "modality": {"0": "MRI"}, "labels": {"0": "background", ...},
                                    "training": [{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}],
                                    "test": ["./imagesTs/y.nii.gz", ...]}
    <root>/imagesTr/x.nii.gz       image volumes
    <root>/labelsTr/x.nii.gz       label volumes on the image's grid (0 background, 1..K classes)
    <root>/imagesTs/y.nii.gz       unlabelled test volumes (optional)

Path resolution is MONAI's own (:func:`monai.data.load_decathlon_datalist`) and so is the split
(:func:`monai.data.partition_dataset`); what MONAI lacks and this module adds is (1) one clear error listing every
missing or malformed file (MONAI only fails later, inside a data loader worker, on the first bad file), with a cheap
header check that image and label share a grid; (2) a train/validation split that does not depend on the order of
``dataset.json``; (3) a small synthetic MSD-style data set (ellipsoid "hippocampi") used as the bundle's default so
that it runs from a fresh clone, and never as a silent fall-back for a real folder.

Datalist items are ``{"image": path, "label": path, "case_id": "hippocampus_004"}`` (no ``label`` for test items).
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .folds import fold_split
from .generated import (
    generation_scratch_folder,
    log_synthetic_data_banner,
    publish_generated_folder,
    raise_or_exit,
    reuse_or_clear_generated_folder,
)

__all__ = [
    "MSD_SYNTHETIC_SENTINEL",
    "MSD_SYNTHETIC_MARKER",
    "MSDDatasetError",
    "read_msd_dataset_json",
    "msd_case_id",
    "build_msd_datalist",
    "split_msd_cases",
    "msd_datalists",
    "msd_label_names",
    "resolve_msd_dataset_dir",
    "checked_msd_dataset_dir",
    "draw_synthetic_hippocampus",
    "write_synthetic_msd_hippocampus",
    "volume_inference_datalist",
]

logger = logging.getLogger(__name__)

#: ``dataset_dir`` value that asks for the generated synthetic data set instead of a real MSD folder.
MSD_SYNTHETIC_SENTINEL = "synthetic"
#: JSON file written at the top of a generated data set, holding the generator parameters.
MSD_SYNTHETIC_MARKER = "synthetic_msd.json"
_GENERATOR_VERSION = 1
_VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".mgz")


class MSDDatasetError(FileNotFoundError):
    """An MSD folder is missing, incomplete or holds malformed files; the message lists every problem."""


def msd_case_id(path: str | os.PathLike) -> str:
    """Case identifier of a volume file: its name without the volume suffix (``hippocampus_004.nii.gz`` -> ...004)."""
    name = Path(path).name
    for suffix in _VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def read_msd_dataset_json(root: str | os.PathLike) -> dict[str, Any]:
    """Parse ``<root>/dataset.json``; raise :class:`MSDDatasetError` naming the file when it is absent or not MSD."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise MSDDatasetError(
            f"MSD data set folder {str(root)!r} does not exist (expected {root}/dataset.json with imagesTr/ and "
            "labelsTr/ beside it, as in the Medical Segmentation Decathlon, e.g. Task04_Hippocampus)."
        )
    path = root / "dataset.json"
    if not path.is_file():
        raise MSDDatasetError(
            f"{root} is not an MSD data set folder: {path} is missing (the folder must hold dataset.json listing "
            '"training": [{"image": "./imagesTr/...", "label": "./labelsTr/..."}], as in the Medical '
            "Segmentation Decathlon)."
        )
    try:
        content = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise MSDDatasetError(f"{path}: cannot be parsed as JSON ({type(exc).__name__}: {exc}).") from exc
    if not isinstance(content, dict):
        raise MSDDatasetError(f"{path}: expected a JSON object at the top level, got {type(content).__name__}.")
    training = content.get("training")
    if not isinstance(training, list):
        raise MSDDatasetError(f'{path}: no "training" list (keys present: {sorted(content)}).')
    bad = [i for i, it in enumerate(training) if not (isinstance(it, dict) and isinstance(it.get("image"), str)
                                                       and isinstance(it.get("label"), str))]
    if bad:
        raise MSDDatasetError(
            f'{path}: "training" entries {bad[:10]}{" ..." if len(bad) > 10 else ""} are not '
            '{"image": "<path>", "label": "<path>"} objects.'
        )
    test = content.get("test", [])
    if not isinstance(test, list) or not all(isinstance(t, (str, dict)) for t in test):
        raise MSDDatasetError(f'{path}: "test" must be a list of paths (or {{"image": path}} objects).')
    labels = content.get("labels")
    if labels is not None and not isinstance(labels, dict):
        raise MSDDatasetError(f'{path}: "labels" must map label values to names, got {type(labels).__name__}.')
    return content


def msd_label_names(dataset_dir: str | os.PathLike) -> list[str]:
    """The class names of ``dataset.json``'s ``labels`` ordered by label value (``["background", "Anterior", ...]``)."""
    labels = read_msd_dataset_json(dataset_dir).get("labels") or {}
    try:
        return [str(labels[k]) for k in sorted(labels, key=int)]
    except ValueError as exc:
        raise MSDDatasetError(f"{Path(dataset_dir) / 'dataset.json'}: label keys must be integers ({exc}).") from exc


def _header_grid(path: Path) -> tuple[tuple[tuple[int, ...], np.ndarray] | None, str | None]:
    """(shape, affine) from the file header (no voxel data read), or (None, problem)."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
        return (tuple(int(s) for s in img.shape), np.asarray(img.affine, dtype=np.float64)), None
    except Exception as exc:  # nibabel raises ImageFileError, EOFError, OSError, gzip errors ...
        return None, f"{path}: cannot be read as a NIfTI/MGH volume ({type(exc).__name__}: {exc})"


def build_msd_datalist(
    root: str | os.PathLike,
    section: str = "training",
    validate: bool = True,
) -> list[dict[str, str]]:
    """Datalist of one section of an MSD ``dataset.json``, sorted by case id.

    Args:
        root: the MSD task folder (holding ``dataset.json``).
        section: ``"training"`` (image + label) or ``"test"`` (image only).
        validate: also read every NIfTI header (cheap: no voxel data) and check that image and label have the same
            shape and affine (to 1e-3 mm). Files in other formats are only checked for existence.

    Returns:
        ``[{"image": abs path, "label": abs path, "case_id": "hippocampus_004"}, ...]``, plus ``"roi"`` (abs path)
        where ``dataset.json`` lists a region-of-interest mask for the case (e.g. a fundus field of view; training
        cases: all or none).

    Raises:
        MSDDatasetError: one error listing every missing or malformed file and what is wrong with it.
    """
    from monai.data import load_decathlon_datalist

    if section not in ("training", "test"):
        raise ValueError(f'MSD section must be "training" or "test", got {section!r}.')
    root = Path(root).expanduser().resolve()
    content = read_msd_dataset_json(root)
    if section == "test" and not content.get("test"):
        return []
    items = load_decathlon_datalist(root / "dataset.json", is_segmentation=section == "training",
                                    data_list_key=section, base_dir=root)
    keys = ("image", "label") if section == "training" else ("image",)
    problems: list[str] = []
    with_roi = sum(1 for item in items if "roi" in item)
    if with_roi and section == "training" and with_roi < len(items):
        problems.append(f'{root / "dataset.json"}: {with_roi} of {len(items)} training cases list a "roi" mask; '
                        "give one for every case or for none")
    datalist: list[dict[str, str]] = []
    seen: dict[str, str] = {}
    for item in items:
        paths = {k: Path(item[k]) for k in (*keys, "roi") if k in item}
        missing = [f"{paths[k]} (missing {k} file, listed in {root / 'dataset.json'})" for k in paths
                   if not paths[k].is_file()]
        problems.extend(missing)
        if validate and not missing:
            grids = {}
            for k in keys:
                if paths[k].name.lower().endswith((".nii", ".nii.gz", ".mgz")):
                    grid, problem = _header_grid(paths[k])
                    if problem:
                        problems.append(problem)
                    else:
                        grids[k] = grid
            if len(grids) == 2:
                (s_img, a_img), (s_lab, a_lab) = grids["image"], grids["label"]
                if s_img[:3] != s_lab[:3]:
                    problems.append(f"{paths['label']}: label shape {s_lab} differs from its image's {s_img} "
                                    f"({paths['image']})")
                elif not np.allclose(a_img, a_lab, atol=1e-3):
                    problems.append(f"{paths['label']}: label affine differs from its image's ({paths['image']}):\n"
                                    f"    image {np.round(a_img, 4).tolist()}\n    label {np.round(a_lab, 4).tolist()}")
        cid = msd_case_id(paths["image"])
        if cid in seen:
            problems.append(f"case id {cid!r} listed twice ({seen[cid]} and {paths['image']})")
        seen[cid] = str(paths["image"])
        datalist.append({**{k: str(paths[k]) for k in paths}, "case_id": cid})
    if section == "training" and not datalist:
        problems.append(f'{root / "dataset.json"} lists no "training" cases')
    if problems:
        raise MSDDatasetError(f"MSD data set {root} ({section}): {len(problems)} problem(s):\n  " + "\n  ".join(problems))
    return sorted(datalist, key=lambda d: d["case_id"])


def msd_case_order(n: int, seed: int = 0) -> list[int]:
    """The permutation of ``n`` cases (sorted by case id) the split and the folds cut: MONAI's
    ``partition_dataset(shuffle=True, seed=seed)`` order (``numpy.random.RandomState(seed).shuffle``)."""
    order = list(range(n))
    np.random.RandomState(seed).shuffle(order)
    return order


def split_msd_cases(
    datalist: Sequence[dict[str, Any]],
    val_fraction: float = 0.2,
    num_val: int | None = None,
    seed: int = 0,
    fold: int | None = None,
    num_folds: int = 5,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Deterministic train/validation split of an MSD datalist.

    The items are sorted by ``case_id`` (so the order of ``dataset.json`` does not matter) and split with MONAI's
    :func:`monai.data.partition_dataset` (``shuffle=True, seed=seed``) into ``num_val`` validation cases (default
    ``round(val_fraction * n)``, at least 1 when ``val_fraction > 0``) and the rest. Both parts come back sorted by
    case id. For the 208 open Task04 cases the defaults give 166 training and 42 validation cases.

    ``fold`` (0-based, with ``num_folds``): cross-validation fold instead (:mod:`monai_unetzoo.data.folds`; fold 0
    of 5 is the default split above).
    """
    from monai.data import partition_dataset

    items = sorted(datalist, key=lambda d: str(d["case_id"]))
    n = len(items)
    if fold is not None:
        return fold_split(items, msd_case_order(n, seed), fold, num_folds)
    if num_val is None:
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}.")
        num_val = max(1, int(math.floor(val_fraction * n + 0.5))) if val_fraction > 0 else 0
    if not 0 <= num_val < n:
        raise ValueError(f"num_val must be in [0, {n - 1}] for {n} cases, got {num_val}.")
    if num_val == 0:
        return list(items), []
    # partition_dataset with the counts as ratios: the first part gets int(num_val / n * n + 0.5) == num_val items
    # of the indices shuffled by RandomState(seed).
    val_part, _ = partition_dataset(items, ratios=[num_val, n - num_val], shuffle=True, seed=seed)
    val_ids = {d["case_id"] for d in val_part}
    train = [d for d in items if d["case_id"] not in val_ids]
    val = [d for d in items if d["case_id"] in val_ids]
    return train, val


def msd_datalists(
    dataset_dir: str | os.PathLike,
    val_fraction: float = 0.2,
    num_val: int | None = None,
    seed: int = 0,
    num_train_cases: int | None = None,
    num_val_cases: int | None = None,
    validate: bool = True,
    fold: int | None = None,
    num_folds: int = 5,
) -> dict[str, list[dict[str, str]]]:
    """``{"training", "validation", "all_training", "test"}`` datalists of an MSD folder (``fold``/``num_folds``:
    a cross-validation fold instead of the fixed split, see :func:`split_msd_cases`).

    ``training``/``validation`` are the fixed split of :func:`split_msd_cases`; ``num_train_cases`` /
    ``num_val_cases`` (``None`` = all) keep only the first cases of each part -- for quick runs and tests; the split
    itself does not change. ``all_training`` is every labelled case, ``test`` the unlabelled ``test`` section.
    """
    all_training = build_msd_datalist(dataset_dir, "training", validate=validate)
    train, val = split_msd_cases(all_training, val_fraction=val_fraction, num_val=num_val, seed=seed, fold=fold,
                                 num_folds=num_folds)
    for name, n in (("num_train_cases", num_train_cases), ("num_val_cases", num_val_cases)):
        if n is not None and int(n) < 1:
            raise ValueError(f"{name} must be >= 1 or None, got {n}.")
    if num_train_cases is not None:
        train = train[: int(num_train_cases)]
    if num_val_cases is not None:
        val = val[: int(num_val_cases)]
    test = build_msd_datalist(dataset_dir, "test", validate=validate)
    return {"training": train, "validation": val, "all_training": all_training, "test": test}


def volume_inference_datalist(
    input_dir: str | os.PathLike, suffixes: Sequence[str] = _VOLUME_SUFFIXES
) -> list[dict[str, str]]:
    """``[{"image": path, "case_id": id}, ...]`` for every volume file in ``input_dir`` (sorted by name).

    Raises:
        MSDDatasetError: the folder does not exist or holds no file with one of ``suffixes``.
    """
    folder = Path(input_dir).expanduser()
    if not folder.is_dir():
        raise MSDDatasetError(f"input folder {str(folder)!r} does not exist.")
    low = tuple(s.lower() for s in suffixes)
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(low))
    if not files:
        raise MSDDatasetError(f"input folder {folder} holds no volumes with suffix {list(suffixes)}.")
    return [{"image": str(p.absolute()), "case_id": msd_case_id(p)} for p in files]


# ----------------------------------------------------------------------------------------------------------------
# Synthetic stand-in
# ----------------------------------------------------------------------------------------------------------------


def draw_synthetic_hippocampus(
    shape: Sequence[int] = (36, 50, 36), seed: int | np.random.Generator = 0
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic MRI crop around an ellipsoid "hippocampus" with an anterior (1) and a posterior (2) part.

    Geometry loosely follows Task04 (RAS voxel axes, 1 mm): a curved, tapering tube whose axis runs from the
    anterior end (high ``y``, low ``z``, label 1: the thick "head") to the posterior end (low ``y``, high ``z``,
    label 2: the thin "tail"); the head/tail boundary is a plane across the axis at a random fraction of its length.
    The image is T1-like: grey background texture, the structure slightly brighter than its surroundings with a dark
    rim on one side (a ventricle-like band), a bright blob that is NOT hippocampus, a smooth multiplicative bias
    field, Rician-like noise and a random global intensity scale (so intensity normalisation matters). MONAI's
    ``create_test_image_3d`` draws random spheres with one label each, which cannot model a two-part structure.

    Returns:
        ``image`` float32 (X, Y, Z) and ``label`` uint8 (X, Y, Z) in {0, 1, 2}; both parts are non-empty.
    """
    from scipy.ndimage import gaussian_filter

    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    sx, sy, sz = (int(s) for s in shape)
    if min(sx, sy, sz) < 16:
        raise ValueError(f"shape must be at least 16 voxels along every axis, got {tuple(shape)}.")
    xx, yy, zz = np.meshgrid(np.arange(sx, dtype=np.float64), np.arange(sy, dtype=np.float64),
                             np.arange(sz, dtype=np.float64), indexing="ij")
    # Axis of the structure: a quadratic Bezier curve from the anterior to the posterior end.
    a = np.array([sx * rng.uniform(0.42, 0.55), sy * rng.uniform(0.78, 0.86), sz * rng.uniform(0.25, 0.35)])
    p = np.array([sx * rng.uniform(0.35, 0.48), sy * rng.uniform(0.14, 0.22), sz * rng.uniform(0.62, 0.75)])
    mid = (a + p) / 2 + np.array([rng.normal(0, 0.05 * sx), 0.0, rng.uniform(-0.12, -0.04) * sz])
    t = np.linspace(0.0, 1.0, 64)
    curve = ((1 - t) ** 2)[:, None] * a + (2 * (1 - t) * t)[:, None] * mid + (t ** 2)[:, None] * p
    r_head, r_tail = rng.uniform(5.0, 6.0), rng.uniform(3.0, 3.8)
    radius = r_head + (r_tail - r_head) * t ** 0.8  # tapering from head to tail
    flat = rng.uniform(1.3, 1.7)  # wider along x than along y/z (an elliptic cross-section, as in Task04)
    pts = np.stack([xx, yy, zz], axis=-1)
    best = np.full(xx.shape, np.inf)
    best_t = np.zeros(xx.shape)
    for ti, ci, ri in zip(t, curve, radius):
        d = pts - ci
        dist = np.sqrt((d[..., 0] / flat) ** 2 + d[..., 1] ** 2 + d[..., 2] ** 2) / ri
        closer = dist < best
        best = np.where(closer, dist, best)
        best_t = np.where(closer, ti, best_t)
    inside = best <= 1.0
    split = rng.uniform(0.42, 0.55)
    label = np.zeros(shape, dtype=np.uint8)
    label[inside & (best_t < split)] = 1
    label[inside & (best_t >= split)] = 2
    if not ((label == 1).any() and (label == 2).any()):  # cannot happen with the ranges above; keep it an invariant
        raise RuntimeError("synthetic hippocampus without both parts; adjust the generator ranges.")

    # Intensities (arbitrary T1-like units before the global scale).
    texture = gaussian_filter(rng.normal(0, 1, shape), sigma=2.0)
    texture /= texture.std() + 1e-8
    img = 0.55 + 0.05 * texture  # grey-ish tissue background
    img += 0.2 * np.clip(1.0 - best, 0.0, 1.0) ** 0.3 * inside  # structure brighter than surroundings
    rim = (best > 1.0) & (best < 1.5) & (xx > curve[:, 0].mean())  # dark band (CSF-like) along one side
    img -= 0.3 * rim
    blob_c = np.array([sx * rng.uniform(0.1, 0.3), sy * rng.uniform(0.3, 0.7), sz * rng.uniform(0.1, 0.3)])
    blob = np.exp(-(((xx - blob_c[0]) ** 2 + (yy - blob_c[1]) ** 2 + (zz - blob_c[2]) ** 2) / (2 * 3.0 ** 2)))
    img += 0.25 * blob  # a bright structure that is not hippocampus
    img = gaussian_filter(img, sigma=0.7)  # partial-volume blur
    bias = np.exp(0.15 * ((xx / sx - 0.5) * rng.normal() + (yy / sy - 0.5) * rng.normal() + (zz / sz - 0.5) * rng.normal()))
    img *= bias
    noise_sd = 0.04
    img = np.sqrt((img + rng.normal(0, noise_sd, shape)) ** 2 + rng.normal(0, noise_sd, shape) ** 2)  # Rician
    img *= rng.uniform(400.0, 1500.0)  # arbitrary scanner scaling, as in Task04 (maxima from ~300 to ~4000)
    return img.astype(np.float32), label


def _synthetic_params(num_training: int, num_test: int, shape: Sequence[int], seed: int) -> dict[str, Any]:
    return {"generator": "monai_unetzoo.data.msd", "version": _GENERATOR_VERSION, "num_training": int(num_training),
            "num_test": int(num_test), "shape": [int(s) for s in shape], "seed": int(seed)}


def write_synthetic_msd_hippocampus(
    root: str | os.PathLike,
    num_training: int = 16,
    num_test: int = 2,
    shape: Sequence[int] = (36, 50, 36),
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write (or reuse) a synthetic MSD-layout hippocampus data set under ``root``; return ``root``.

    Files: ``dataset.json`` (MSD style, labels 0 background / 1 Anterior / 2 Posterior), ``imagesTr/`` and
    ``labelsTr/`` with ``synthetic_hippocampus_NNN.nii.gz`` (float32 image, uint8 label, 1 mm RAS, each case's shape
    within +-3 voxels of ``shape``), ``imagesTs/`` with ``num_test`` unlabelled cases, and
    :data:`MSD_SYNTHETIC_MARKER` with the parameters. A folder already generated with the same parameters is reused;
    one generated with other parameters is regenerated; a non-empty folder without the marker is never touched
    (``FileExistsError``). Generation happens in a temporary sibling that is renamed into place, so concurrent
    callers (ranks of a ``torchrun`` job) never see half-written data.
    """
    import nibabel as nib

    root = Path(root).expanduser().resolve()
    params = _synthetic_params(num_training, num_test, shape, seed)
    if reuse_or_clear_generated_folder(root, MSD_SYNTHETIC_MARKER, params, overwrite):
        return root
    tmp = generation_scratch_folder(root)
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (tmp / sub).mkdir(parents=True)
    rng = np.random.default_rng(seed)
    training, test = [], []
    for i in range(num_training + num_test):
        case_shape = [int(s) + int(rng.integers(-3, 4)) for s in shape]
        image, label = draw_synthetic_hippocampus(case_shape, rng)
        affine = np.eye(4)
        affine[:3, 3] = rng.uniform(-2.0, 2.0, 3).round(2)  # 1 mm RAS, origin varies a little
        name = f"synthetic_hippocampus_{i + 1:03d}.nii.gz"
        if i < num_training:
            nib.save(nib.Nifti1Image(image, affine), str(tmp / "imagesTr" / name))
            nib.save(nib.Nifti1Image(label, affine), str(tmp / "labelsTr" / name))
            training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
        else:
            nib.save(nib.Nifti1Image(image, affine), str(tmp / "imagesTs" / name))
            test.append(f"./imagesTs/{name}")
    dataset = {
        "name": "SyntheticHippocampus",
        "description": "SYNTHETIC ellipsoid 'hippocampi' generated by monai_unetzoo.data.msd for smoke runs; "
                       "not anatomy, not for any scientific use.",
        "tensorImageSize": "3D",
        "modality": {"0": "MRI"},
        "labels": {"0": "background", "1": "Anterior", "2": "Posterior"},
        "numTraining": len(training),
        "numTest": len(test),
        "training": training,
        "test": test,
    }
    (tmp / "dataset.json").write_text(json.dumps(dataset, indent=2))
    publish_generated_folder(tmp, root, MSD_SYNTHETIC_MARKER, params)
    logger.info("wrote a synthetic MSD-layout hippocampus data set to %s (%s)", root, params)
    return root


def resolve_msd_dataset_dir(
    dataset_dir: str | os.PathLike,
    synthetic_dir: str | os.PathLike,
    num_training: int = 16,
    num_test: int = 2,
    shape: Sequence[int] = (36, 50, 36),
    seed: int = 0,
    exit_on_error: bool = False,
) -> str:
    """The MSD folder a bundle should use.

    ``dataset_dir == "synthetic"`` (:data:`MSD_SYNTHETIC_SENTINEL`, the hippocampus bundle's default) generates --
    or reuses -- a small synthetic data set under ``synthetic_dir`` (:func:`write_synthetic_msd_hippocampus`) and
    logs a loud WARNING. Any other value must be a real MSD folder: its ``dataset.json`` is parsed and every listed
    file checked (:func:`build_msd_datalist` without header reads); a folder that is not an MSD data set raises
    :class:`MSDDatasetError` -- never a silent fall-back to synthetic data. (A folder literally named ``synthetic``
    in the working directory is reached as ``./synthetic``.)

    ``exit_on_error`` (bundle configs): print the problems and exit with status 2 instead of raising.
    """
    if str(dataset_dir) == MSD_SYNTHETIC_SENTINEL:
        out = write_synthetic_msd_hippocampus(synthetic_dir, num_training=num_training, num_test=num_test,
                                              shape=shape, seed=seed)
        log_synthetic_data_banner(
            logger, MSD_SYNTHETIC_SENTINEL,
            f"{num_training} training + {num_test} test volumes of about {'x'.join(str(v) for v in shape)} voxels, "
            "ellipsoid 'hippocampi'", out, "hippocampus segmentation", "/path/to/Task04_Hippocampus")
        return str(out)
    return checked_msd_dataset_dir(dataset_dir, exit_on_error=exit_on_error)


def checked_msd_dataset_dir(dataset_dir: str | os.PathLike, exit_on_error: bool = False) -> str:
    """The absolute path of a real MSD folder after checking its ``dataset.json`` and that every listed file
    exists (:func:`build_msd_datalist` without header reads); planned bundles use it directly (they have no
    synthetic stand-in). ``exit_on_error``: print the problems and exit with status 2 instead of raising."""
    root = Path(dataset_dir).expanduser().resolve()
    try:
        build_msd_datalist(root, "training", validate=False)  # raises an MSDDatasetError listing what is missing
    except MSDDatasetError as exc:
        raise_or_exit(exc, exit_on_error)
    logger.info("MSD data set: %s", root)
    return str(root)
