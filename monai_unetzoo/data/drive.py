"""DRIVE (Digital Retinal Images for Vessel Extraction) datalists.

Reference: J. Staal, M. D. Abramoff, M. Niemeijer, M. A. Viergever, B. van Ginneken, "Ridge-based vessel segmentation
in color images of the retina", IEEE TMI 23(4), 2004. https://drive.grand-challenge.org/

The file layout, as distributed (and as written by :func:`monai_unetzoo.data.synthetic.write_synthetic_drive`)::

    <root>/training/images/21_training.tif        RGB fundus photograph, 565 x 584 (W x H), uint8
    <root>/training/1st_manual/21_manual1.gif     vessel annotation, 0 / 255
    <root>/training/mask/21_training_mask.gif     field of view (FOV), 0 / 255
    <root>/test/images/01_test.tif
    <root>/test/1st_manual/01_manual1.gif         (only where the test labels are available)
    <root>/test/mask/01_test_mask.gif

The datalists are lists of dicts with the keys ``image``, ``label`` and ``roi`` (file paths; the FOV is the
region of interest of the ROI-masked loss and metrics) plus ``case_id`` (the two-digit number, a string). MONAI has
no DRIVE-specific datalist builder (``monai.apps`` downloads MSD/MedNIST style data sets only), hence this module.
Loading the files is left to MONAI (``LoadImaged(reader="PILReader", reverse_indexing=False)``, see
:data:`DRIVE_LOADER_KWARGS`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .folds import fold_split
from .generated import log_synthetic_data_banner, raise_or_exit

__all__ = [
    "DRIVE_KEYS",
    "DRIVE_LOADER_KWARGS",
    "DRIVE_SECTIONS",
    "SYNTHETIC_SENTINEL",
    "DriveDatasetError",
    "drive_case_paths",
    "build_drive_datalist",
    "split_drive_cases",
    "drive_datalists",
    "resolve_drive_dataset_dir",
    "inference_datalist",
    "write_drive_msd_folder",
    "labelled_split",
    "default_bundle_root",
]

logger = logging.getLogger(__name__)

DRIVE_SECTIONS = ("training", "test")
DRIVE_KEYS = ("image", "label", "roi")
#: ``LoadImaged`` keyword arguments that give arrays equal to ``numpy.asarray(PIL.Image.open(f))`` after
#: ``ensure_channel_first``: MONAI's ``PILReader`` swaps the two spatial axes by default (``reverse_indexing=True``,
#: giving (C, W, H)); with ``reverse_indexing=False`` the result is (C, H, W), i.e. ``asarray(...)`` channel-first.
DRIVE_LOADER_KWARGS: dict[str, Any] = {"reader": "PILReader", "reverse_indexing": False, "ensure_channel_first": True}
#: ``dataset_dir`` value that asks for the generated synthetic data set instead of a real DRIVE folder.
SYNTHETIC_SENTINEL = "synthetic"

_IMAGE_RE = {section: re.compile(rf"^(\d+)_{section}\.tif$") for section in DRIVE_SECTIONS}


class DriveDatasetError(FileNotFoundError):
    """A DRIVE folder is missing, incomplete or holds files that cannot be read; the message lists every problem."""


def drive_case_paths(root: str | os.PathLike, section: str, case_id: str) -> dict[str, Path]:
    """The three file paths of one DRIVE case (``image``, ``label``, ``roi``), whether or not they exist."""
    _check_section(section)
    base = Path(root) / section
    return {
        "image": base / "images" / f"{case_id}_{section}.tif",
        "label": base / "1st_manual" / f"{case_id}_manual1.gif",
        "roi": base / "mask" / f"{case_id}_{section}_mask.gif",
    }


def _check_section(section: str) -> None:
    if section not in DRIVE_SECTIONS:
        raise ValueError(f"DRIVE section must be one of {DRIVE_SECTIONS}, got {section!r}.")


def _inspect_image_file(path: Path, key: str) -> tuple[tuple[int, int] | None, str | None]:
    """Open ``path`` fully with PIL; return ((H, W), None) or (None, problem). Catches truncated/corrupt files."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()  # decodes the pixel data: a truncated or corrupt file fails here, not deep inside training
            mode, (width, height) = im.mode, im.size
    except Exception as exc:  # PIL raises several types (UnidentifiedImageError, OSError, SyntaxError ...)
        return None, f"{path}: cannot be read as an image ({type(exc).__name__}: {exc})"
    if key == "image" and mode != "RGB":
        return None, f"{path}: expected an RGB fundus photograph, got PIL mode {mode!r}"
    if key != "image" and mode not in ("1", "L", "P", "I", "I;16", "LA", "RGB", "RGBA"):
        return None, f"{path}: unexpected PIL mode {mode!r} for a binary {key} image"
    if key != "image" and mode in ("RGB", "RGBA", "LA"):
        return None, f"{path}: expected a single-channel binary {key} image, got PIL mode {mode!r}"
    return (height, width), None


def build_drive_datalist(
    root: str | os.PathLike,
    section: str = "training",
    require_label: bool | None = None,
    validate: bool = True,
) -> list[dict[str, str]]:
    """Datalist of one DRIVE section, sorted by case number.

    Args:
        root: the DRIVE folder (holding ``training/`` and/or ``test/``).
        section: ``"training"`` or ``"test"``.
        require_label: whether every case must have its ``1st_manual`` annotation. ``None`` (default): required
            for ``training``; for ``test`` labels are included when the ``test/1st_manual`` folder exists (and then
            required for every case) and left out otherwise (the public DRIVE test set ships without them).
        validate: also open every file with PIL and check that it decodes, that the photograph is RGB, the label and
            FOV single-channel, and that the three files of a case have the same size.

    Returns:
        ``[{"image": ..., "label": ..., "roi": ..., "case_id": "21"}, ...]`` (no ``label`` without labels).

    Raises:
        DriveDatasetError: one error listing every missing or malformed file (and what is wrong with it).
    """
    _check_section(section)
    root = Path(root).expanduser()
    problems: list[str] = []
    if not root.is_dir():
        raise DriveDatasetError(
            f"DRIVE folder {str(root)!r} does not exist (expected {root}/{section}/images/*_{section}.tif, "
            f"{section}/1st_manual/*_manual1.gif and {section}/mask/*_{section}_mask.gif)."
        )
    image_dir = root / section / "images"
    names = [p.name for p in image_dir.iterdir()] if image_dir.is_dir() else []
    case_ids = sorted((m.group(1) for n in names if (m := _IMAGE_RE[section].match(n))), key=int)
    if not case_ids:
        raise DriveDatasetError(
            f"{root} is not a DRIVE folder: no fundus images {image_dir}/*_{section}.tif "
            f"({'folder missing' if not image_dir.is_dir() else 'folder holds no matching files'}). Expected the "
            f"layout {section}/images/NN_{section}.tif, {section}/1st_manual/NN_manual1.gif, "
            f"{section}/mask/NN_{section}_mask.gif."
        )
    if require_label is None:
        require_label = section == "training" or (root / section / "1st_manual").is_dir()
    keys = ("image", "label", "roi") if require_label else ("image", "roi")

    datalist: list[dict[str, str]] = []
    for cid in case_ids:
        paths = drive_case_paths(root, section, cid)
        missing = [f"{paths[k]} (missing {k} file)" for k in keys if not paths[k].is_file()]
        problems.extend(missing)
        if validate and not missing:
            sizes = {}
            for k in keys:
                size, problem = _inspect_image_file(paths[k], k)
                if problem:
                    problems.append(problem)
                else:
                    sizes[k] = size
            if len(set(sizes.values())) > 1:
                detail = ", ".join(f"{k} {h}x{w} (HxW)" for k, (h, w) in sizes.items())
                problems.append(f"case {cid} of {root / section}: image, label and FOV sizes differ: {detail}")
        datalist.append({**{k: str(paths[k]) for k in keys}, "case_id": cid})
    if problems:
        raise DriveDatasetError(
            f"DRIVE folder {root} ({section}): {len(problems)} problem(s):\n  " + "\n  ".join(problems)
        )
    return datalist


def split_drive_cases(
    datalist: Sequence[dict[str, Any]],
    val_fraction: float = 0.2,
    num_val: int | None = None,
    val_case_ids: Sequence[str | int] | None = None,
    seed: int = 0,
    fold: int | None = None,
    num_folds: int = 5,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Deterministic train/validation split of a datalist (by default of the 20 DRIVE training images).

    The cases are sorted by ``case_id`` and permuted with ``numpy.random.default_rng(seed)``; the first ``num_val``
    (default ``round(val_fraction * n)``, at least 1 when ``val_fraction > 0``) go to validation. ``val_case_ids``
    (e.g. ``["21", "22"]`` or ``[21, 22]``) picks the validation cases explicitly instead. The same inputs always
    give the same split, independent of the order of ``datalist``. Both parts are returned sorted by case id.
    ``fold`` (0-based, with ``num_folds``): a cross-validation fold of the same permutation instead
    (:mod:`monai_unetzoo.data.folds`; fold 0 of 5 is the default split).
    """
    items = sorted(datalist, key=lambda d: (len(str(d["case_id"])), str(d["case_id"])))
    ids = [str(d["case_id"]) for d in items]
    if fold is not None:
        if val_case_ids is not None:
            raise ValueError("give either val_case_ids or fold, not both.")
        return fold_split(items, np.random.default_rng(seed).permutation(len(items)).tolist(), fold, num_folds)
    if val_case_ids is not None:
        wanted = [str(v).zfill(2) if str(v).isdigit() else str(v) for v in val_case_ids]
        unknown = sorted(set(wanted) - set(ids))
        if unknown:
            raise ValueError(f"val_case_ids {unknown} are not in the datalist (case ids: {ids}).")
        val_set = set(wanted)
    else:
        n = len(items)
        if num_val is None:
            if not 0.0 <= val_fraction < 1.0:
                raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}.")
            num_val = max(1, int(math.floor(val_fraction * n + 0.5))) if val_fraction > 0 else 0
        if not 0 <= num_val < n:
            raise ValueError(f"num_val must be in [0, {n - 1}] for {n} cases, got {num_val}.")
        order = np.random.default_rng(seed).permutation(n)
        val_set = {ids[i] for i in order[:num_val]}
    train = [d for d in items if str(d["case_id"]) not in val_set]
    val = [d for d in items if str(d["case_id"]) in val_set]
    return train, val


def drive_datalists(
    dataset_dir: str | os.PathLike,
    val_fraction: float = 0.2,
    num_val: int | None = None,
    val_case_ids: Sequence[str | int] | None = None,
    seed: int = 0,
    validate: bool = True,
    fold: int | None = None,
    num_folds: int = 5,
) -> dict[str, list[dict[str, str]]]:
    """``{"training": [...], "validation": [...], "all_training": [...], "test": [...]}`` for a DRIVE folder
    (``fold``/``num_folds``: a cross-validation fold instead of the fixed split, see :func:`split_drive_cases`).

    ``training``/``validation`` split ``training/`` with :func:`split_drive_cases`; ``all_training`` is the whole
    ``training/`` section (for the final model trained on all 20 images); ``test`` is the ``test/`` section with
    labels where ``test/1st_manual`` exists, an empty list when ``test/`` is absent.
    """
    all_training = build_drive_datalist(dataset_dir, "training", validate=validate)
    train, val = split_drive_cases(all_training, val_fraction=val_fraction, num_val=num_val,
                                   val_case_ids=val_case_ids, seed=seed, fold=fold, num_folds=num_folds)
    test_dir = Path(dataset_dir) / "test"
    test = build_drive_datalist(dataset_dir, "test", validate=validate) if test_dir.is_dir() else []
    return {"training": train, "validation": val, "all_training": all_training, "test": test}


def labelled_split(datalists: dict[str, list[dict[str, str]]], split: str) -> list[dict[str, str]]:
    """The datalist ``datalists[split]`` (from :func:`drive_datalists`) checked to be non-empty and labelled.

    Raises:
        ValueError: ``split`` is not one of the datalists' keys.
        DriveDatasetError: the split is empty, or some of its cases have no vessel annotation (the public DRIVE
            test set ships without ``test/1st_manual``), listing the images concerned.
    """
    if split not in datalists:
        raise ValueError(f"split must be one of {sorted(datalists)}, got {split!r}.")
    items = datalists[split]
    if not items:
        raise DriveDatasetError(f"split {split!r} holds no images.")
    unlabelled = [d["image"] for d in items if "label" not in d]
    if unlabelled:
        raise DriveDatasetError(
            f"split {split!r} cannot be evaluated: {len(unlabelled)} image(s) have no vessel annotation "
            f"(expected .../1st_manual/NN_manual1.gif; the public DRIVE test set ships without them). Evaluate "
            f"--split validation, or put the test annotations in test/1st_manual/. Images without labels:\n  "
            + "\n  ".join(unlabelled)
        )
    return items


def resolve_drive_dataset_dir(
    dataset_dir: str | os.PathLike,
    synthetic_dir: str | os.PathLike,
    num_training: int = 10,
    num_test: int = 2,
    image_size: Sequence[int] = (256, 256),
    seed: int = 0,
    exit_on_error: bool = False,
) -> str:
    """The DRIVE folder a bundle should use.

    ``dataset_dir == "synthetic"`` (:data:`SYNTHETIC_SENTINEL`, the bundles' default) generates -- or reuses, when
    already generated with the same parameters -- a small synthetic data set in the DRIVE layout under
    ``synthetic_dir`` (see :func:`monai_unetzoo.data.synthetic.write_synthetic_drive`) and logs a loud WARNING.
    Any other value must be a real DRIVE folder: it is checked with :func:`build_drive_datalist` and a folder that
    does not hold DRIVE raises :class:`DriveDatasetError` -- never a silent fall-back to synthetic data.
    (A folder literally named ``synthetic`` in the working directory is reached as ``./synthetic``.)

    ``exit_on_error`` (bundle configs): print the problems and exit with status 2 instead of raising.
    """
    if str(dataset_dir) == SYNTHETIC_SENTINEL:
        from .synthetic import write_synthetic_drive

        out = write_synthetic_drive(synthetic_dir, num_training=num_training, num_test=num_test,
                                    image_size=image_size, seed=seed)
        log_synthetic_data_banner(
            logger, SYNTHETIC_SENTINEL,
            f"{num_training} training + {num_test} test images of {image_size[0]}x{image_size[1]} pixels, "
            "random vessel trees", out, "retinal vessel segmentation", "/path/to/DRIVE")
        return str(out)
    root = Path(dataset_dir).expanduser().resolve()
    try:
        build_drive_datalist(root, "training", validate=False)  # raises a DriveDatasetError listing what is missing
    except DriveDatasetError as exc:
        raise_or_exit(exc, exit_on_error)
    logger.info("DRIVE data set: %s", root)
    return str(root)


def inference_datalist(
    input_dir: str | os.PathLike,
    mask_dir: str | os.PathLike | None = None,
    image_suffixes: Sequence[str] = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".ppm", ".bmp"),
) -> list[dict[str, str]]:
    """Datalist of the fundus photographs in ``input_dir`` for vessel prediction.

    Every file with one of ``image_suffixes`` is an input (sorted by name). When ``mask_dir`` is given, each image
    ``<stem>.<ext>`` is paired with the FOV mask in ``mask_dir`` whose name starts with ``<stem>`` (DRIVE's
    ``01_test.tif`` -> ``01_test_mask.gif``; ``img.png`` -> ``img.png``/``img_mask.png``/``img.gif``); an image
    without a mask there is an error that lists every such image. Without ``mask_dir`` the items have no ``roi`` key
    and the whole image is the FOV.

    Returns:
        ``[{"image": path, "roi": path (optional), "case_id": stem}, ...]``.
    """
    input_dir = Path(input_dir).expanduser()
    if not input_dir.is_dir():
        raise DriveDatasetError(f"input folder {str(input_dir)!r} does not exist.")
    suffixes = {s.lower() for s in image_suffixes}
    images = sorted(p for p in input_dir.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
    if not images:
        raise DriveDatasetError(f"input folder {input_dir} holds no images with suffix {sorted(suffixes)}.")
    items: list[dict[str, str]] = [{"image": str(p), "case_id": p.stem} for p in images]
    if mask_dir is None or str(mask_dir) == "":
        return items
    mask_dir = Path(mask_dir).expanduser()
    if not mask_dir.is_dir():
        raise DriveDatasetError(f"FOV mask folder {str(mask_dir)!r} does not exist.")
    masks = sorted(p for p in mask_dir.iterdir() if p.is_file())
    missing = []
    for item in items:
        stem = item["case_id"]
        # Prefer an exact stem match, then the DRIVE "<stem>_mask" pattern, then any "<stem>..." file.
        candidates = [p for p in masks if p.stem == stem] or [p for p in masks if p.stem == f"{stem}_mask"] or [
            p for p in masks if p.stem.startswith(stem) and p.suffix.lower() in suffixes | {".gif"}]
        if not candidates:
            missing.append(f"{item['image']} (no FOV mask {mask_dir}/{stem}*)")
        else:
            item["roi"] = str(candidates[0])
    if missing:
        raise DriveDatasetError(f"{len(missing)} image(s) have no FOV mask:\n  " + "\n  ".join(missing))
    return items


def write_drive_msd_folder(drive_dir: str | os.PathLike, target: str | os.PathLike) -> Path:
    """DRIVE as an MSD-style 2D folder for ``unetzoo plan``, the FOV masks as each case's ``"roi"``.

    ``target/imagesTr/<id>.tif`` and ``imagesTs/<id>.tif`` are symbolic links to the photographs (nothing is
    copied); ``labelsTr/<id>.png`` holds the vessel annotation as 0/1 (DRIVE's GIFs store 0/255, which a
    ``dataset.json`` with labels 0 and 1 would refuse) and ``roisTr/`` / ``roisTs/<id>.png`` the FOV masks as 0/1.
    ``dataset.json``: modality ``{"0": "RGB"}``, labels ``{"0": "background", "1": "vessel"}``, case ids the
    two-digit DRIVE numbers (so ``val_case_ids`` of the DRIVE bundle name the same images). Returns ``target``.
    """
    from PIL import Image

    target = Path(target)
    content: dict[str, Any] = {"name": "DRIVE", "modality": {"0": "RGB"}, "labels": {"0": "background", "1": "vessel"},
                               "licence": "DRIVE terms (research use); see shared/data/SOURCES.md",
                               "training": [], "test": []}
    for section, suffix in (("training", "Tr"), ("test", "Ts")):
        for sub in (f"images{suffix}", f"labels{suffix}", f"rois{suffix}"):
            (target / sub).mkdir(parents=True, exist_ok=True)
        for item in build_drive_datalist(drive_dir, section, validate=False):
            cid = item["case_id"]
            entry = {"image": f"./images{suffix}/{cid}.tif", "roi": f"./rois{suffix}/{cid}.png"}
            link = target / entry["image"]
            if not link.exists():
                link.symlink_to(Path(item["image"]).resolve())
            Image.fromarray((np.asarray(Image.open(item["roi"]).convert("L")) > 0).astype(np.uint8)).save(
                target / entry["roi"])
            if section == "training":
                entry["label"] = f"./labels{suffix}/{cid}.png"
                label = np.asarray(Image.open(item["label"]).convert("L")) > 127
                Image.fromarray(label.astype(np.uint8)).save(target / entry["label"])
            content[section].append(entry)
    (target / "dataset.json").write_text(json.dumps(content, indent=2))
    return target


def default_bundle_root(name: str) -> str:
    """Folder of the bundle ``bundles/<name>`` for configs run from a checkout; ``--bundle_root`` overrides it.

    A bundle config does not know where its own file lies, and MONAI's convention ``"bundle_root": "."`` only
    works when the command runs inside the bundle folder. The documented command runs from the repository root
    (``--config_file bundles/drive/train.json``), so the first match wins:

    1. ``./bundles/<name>`` when it holds ``metadata.json`` (run from the repository root);
    2. ``.`` when it is a folder called ``<name>`` holding ``metadata.json`` (run inside the bundle folder);
    3. ``<checkout>/bundles/<name>`` beside the package's source folder (editable install of a clone);
    4. otherwise ``.`` (with a warning).
    """
    cwd = Path.cwd()
    candidates = [cwd / "bundles" / name]
    if cwd.name == name:
        candidates.append(cwd)
    candidates.append(Path(__file__).resolve().parents[2] / "bundles" / name)
    for candidate in candidates:
        if (candidate / "metadata.json").is_file():
            return str(candidate.resolve())
    logger.warning("bundle folder bundles/%s not found from %s; using the working directory as bundle_root", name, cwd)
    return str(cwd)
