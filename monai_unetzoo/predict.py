"""Batch prediction: a folder of scans in, segmentations on the scans' own grids and a summary out, nothing lost.

This is the engine behind ``unetzoo predict`` (see :mod:`monai_unetzoo.cli`); it can also be driven from Python:
``load_prediction_bundle`` + ``discover_prediction_cases`` + ``run_batch_prediction``.

A bundle the CLI can run
========================
A MONAI bundle in the flat layout ``<bundle>/{metadata.json, inference.json, ...}``. Nothing about a particular
bundle is hard-coded; the CLI reads:

``metadata.json``
    ``name`` and ``version`` (provenance), and ``network_data_format``:

    * ``inputs.image.num_channels``: channels the network takes (1 for MRI/CT, 3 for RGB fundus photographs);
    * ``inputs.image.spatial_shape``: only its length is used, as the number of spatial dims (2 or 3);
    * ``outputs.pred.num_channels`` and ``outputs.pred.channel_def`` (``{"0": "background", "1": "vessel"}``):
      the label names of the summary. With C >= 2 channels the label value is the argmax channel and channel 0 is
      background; with one channel (sigmoid) the label is 1 where the probability exceeds 0.5 and is named by
      ``channel_def["0"]``.

``inference.json`` (parsed with :class:`monai.bundle.ConfigParser`, ``bundle_root`` set to the bundle folder, the
bundle folder put on ``sys.path`` as MONAI's own bundle runner does, and ``imports`` evaluated first). When it is
written to be layered over ``train.json`` (it uses MONAI's ``"+key"`` merge syntax, or has no ``network_def`` of its
own) it is read as ``--config_file "['train.json', 'inference.json']"`` would read it. Resolution is lazy: only the
items below and what they reference are built (no datalists, no dataset downloads). Ids looked up:

    * ``network_def`` (required): the network; ``(B, C_in, *spatial) -> (B, C, *spatial)`` logits (a list/tuple of
      deep-supervision outputs is fine: the first is used).
    * ``preprocessing``, else ``infer#preprocessing`` (optional): a MONAI ``Compose`` of dictionary transforms on
      key ``"image"``. Its leading ``LoadImaged``/``EnsureChannelFirstd`` are dropped: the CLI loads every input
      itself (all formats, DICOM series included) with the reader MONAI's ``LoadImage`` auto-selection uses for that
      file type (see :mod:`monai_unetzoo.volume_io`), channel first, float32, so the remaining transforms see what
      a default ``LoadImaged`` + ``EnsureChannelFirstd`` would give them. One exception, for 2D photographs: when
      the bundle's ``LoadImaged`` names a ``PILReader`` (with options, e.g. ``reverse_indexing=False`` for
      ``(C, H, W)`` arrays), that reader reads PNG/JPEG/GIF/BMP and single-page TIFF inputs, as in training. Other
      reader options that change the array layout are refused. The remaining spatial transforms must be
      invertible (Orientationd, Spacingd, crops, pads, resizes: all of MONAI's are) and keep MetaTensor tracking
      on; intensity transforms are free. Only ``"image"`` is given (no label, no mask); transforms that create
      other keys from it are fine (``allow_missing_keys`` on multi-key transforms).
    * ``roi`` (optional, an item the preprocessing may create, e.g. an estimated fundus field of view, on the
      preprocessed image's grid): everything outside it is background, as a bundle's ``MaskIntensityd``
      post-processing would do.
    * ``inferer``, else ``infer#inferer`` (optional): the keys ``roi_size``, ``sw_batch_size``, ``overlap``,
      ``mode`` and ``activation`` of its definition (whatever the ``_target_``) are the defaults of the CLI's own
      :class:`monai_unetzoo.inference.SlidingWindowPredictor`; the command line overrides overlap, batch size, TTA
      and AMP. Without ``roi_size`` (nor integer ``spatial_shape`` in the metadata) the whole image is one window.
      ``activation`` defaults to ``"softmax"`` (C >= 2) or ``"sigmoid"`` (C == 1); multi-label sigmoid outputs with
      C >= 2 are not supported.
    * the bundle's ``postprocessing``, ``evaluator``, datalists etc. are not used: the CLI inverts the
      preprocessing itself and writes with :mod:`monai_unetzoo.volume_io`.

Per case
========
``load_scan`` (MONAI reader) -> checks (dims, channels, NaN/Inf) -> bundle preprocessing -> sliding-window
probabilities -> ``monai.transforms.Invertd`` of the preprocessing on the probabilities (linear interpolation) ->
argmax/threshold on the input's own grid -> ``write_scan_like`` (atomic) -> voxel counts and volumes.

Outputs under ``--output``, mirroring the input folders: ``<stem>_seg<suffix>`` (labels, uint8/uint16) and, with
``--save-probabilities``, ``<stem>_prob<suffix>``; ``summary.csv`` and ``provenance.json`` (with ``--shard i/n``:
``summary.shard-i-of-n.csv``, ``provenance.shard-i-of-n.json``), ``errors.log`` with tracebacks of unexpected
errors. A case is done when its final output exists; running again skips it unless ``--overwrite``.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import glob
import hashlib
import io
import json
import os
import platform
import re
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .inference import channels_last_network, scores_to_labels
from .volume_io import (
    SCAN_SUFFIXES,
    ScanGrid,
    ScanReadError,
    atomic_output_path,
    load_scan,
    quiet_optional_reader_warnings,
    remove_stale_temporaries,
    scan_family,
    scan_output_suffix,
    split_scan_suffix,
    write_scan_like,
)

__all__ = [
    "BundleConfigError",
    "PredictionBundle",
    "PredictionCase",
    "PredictionSettings",
    "PredictionInterrupted",
    "load_prediction_bundle",
    "discover_prediction_cases",
    "select_shard",
    "check_output_writable",
    "predict_one_case",
    "infer_one_case",
    "write_case_outputs",
    "run_batch_prediction",
    "summary_file_names",
    "EXIT_OK",
    "EXIT_FAILED",
    "EXIT_USAGE",
]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
_LOADER_TRANSFORM_NAMES = ("LoadImaged", "LoadImage", "EnsureChannelFirstd", "EnsureChannelFirst")
_STATE_DICT_KEYS = ("model", "network", "state_dict", "net")
BASE_COLUMNS = ["case", "input", "output", "status", "error", "seconds", "shape", "spacing"]


class BundleConfigError(ValueError):
    """The bundle (or checkpoint) cannot be used for prediction; the message says what is missing or wrong."""


class PredictionInterrupted(BaseException):
    """Raised in the main thread by the SIGTERM/SIGINT handler; a BaseException so that per-case
    ``except Exception`` blocks let it through and the batch stops cleanly."""

    def __init__(self, signum: int):
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum


# ----------------------------------------------------------------------------------------------------- bundle
@dataclass
class PredictionBundle:
    """What the CLI needs from a bundle (see the module docstring for the contract)."""

    root: Path
    name: str
    version: str
    spatial_dims: int
    in_channels: int
    out_channels: int
    label_names: dict[int, str]  # foreground label value -> name
    network: torch.nn.Module
    preprocessing: Any  # monai.transforms.Compose without the loader transforms
    roi_size: tuple[int, ...]
    sw_batch_size: int = 4
    overlap: float = 0.5
    mode: str = "gaussian"
    activation: str = "softmax"
    checkpoint: Path | None = None
    checkpoint_sha256: str = ""
    input_description: str = ""
    raster_reader: Any = None  # the bundle's own PILReader (and its options) for 2D images, if it names one
    config_files: tuple[str, ...] = ("inference.json",)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _unwrap_state_dict(obj: Any, path: Path) -> dict:
    if isinstance(obj, dict):
        for key in _STATE_DICT_KEYS:
            if key in obj and isinstance(obj[key], dict):
                return obj[key]
        if all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    raise BundleConfigError(f"{path}: not a state_dict (nor a dict holding one under {list(_STATE_DICT_KEYS)})")


def _strip_loader(preprocessing: Any) -> tuple[Any, Any]:
    """``(Compose without the leading loader transforms, the PILReader the bundle's LoadImaged names or None)``.

    The CLI loads inputs itself (every format, DICOM series included); what it takes over from the bundle's
    ``LoadImaged`` is an explicitly named ``PILReader`` with its options (e.g. ``reverse_indexing=False``, so a
    network trained on ``(C, H, W)`` photographs sees them the same way). Other reader options that change the
    array layout cannot be honoured and are refused rather than silently ignored.
    """
    from monai.data import ITKReader, NibabelReader, PILReader
    from monai.transforms import Compose

    if preprocessing is None:
        return Compose([]), None
    transforms = list(preprocessing.transforms) if isinstance(preprocessing, Compose) else [preprocessing]
    raster_reader = None
    while transforms and type(transforms[0]).__name__ in _LOADER_TRANSFORM_NAMES:
        t = transforms.pop(0)
        loader = getattr(t, "_loader", t)  # LoadImaged wraps a LoadImage
        if getattr(loader, "auto_select", True) or not getattr(loader, "readers", None):
            continue
        named = loader.readers[-1]  # LoadImage registers the readers it is given after its defaults
        if isinstance(named, PILReader):
            raster_reader = named
        elif (isinstance(named, ITKReader) and not named.reverse_indexing) or (
            isinstance(named, NibabelReader) and getattr(named, "as_closest_canonical", False)
        ):
            raise BundleConfigError(
                f"the bundle loads images with {type(named).__name__} options that change the array layout; the CLI "
                "supports MONAI's default ITKReader/NibabelReader layout (and any PILReader options)"
            )
    for t in transforms:
        if type(t).__name__ in _LOADER_TRANSFORM_NAMES:
            raise BundleConfigError(
                f"preprocessing has {type(t).__name__} after other transforms; only leading loader transforms are supported"
            )
    return Compose(transforms), raster_reader


def load_prediction_bundle(bundle_dir: str | os.PathLike, checkpoint: str | os.PathLike | None = None) -> PredictionBundle:
    """Read ``bundle_dir`` (flat MONAI bundle) and its checkpoint; raise :class:`BundleConfigError` with a clear
    message when something the contract needs is missing."""
    from monai.bundle import ConfigParser

    root = Path(bundle_dir).resolve()
    if not root.is_dir():
        raise BundleConfigError(f"bundle folder not found: {bundle_dir}")
    meta_path, infer_path = root / "metadata.json", root / "inference.json"
    for p in (meta_path, infer_path):
        if not p.is_file():
            raise BundleConfigError(f"{root} is not a bundle the CLI can run: {p.name} is missing")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        ndf = meta["network_data_format"]
        image_fmt, pred_fmt = ndf["inputs"]["image"], ndf["outputs"]["pred"]
        in_channels = int(image_fmt["num_channels"])
        spatial_dims = len(image_fmt["spatial_shape"])
        out_channels = int(pred_fmt["num_channels"])
        channel_def = {int(k): str(v) for k, v in pred_fmt.get("channel_def", {}).items()}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise BundleConfigError(
            f"{meta_path}: needs network_data_format.inputs.image.{{num_channels, spatial_shape}} and "
            f"outputs.pred.{{num_channels, channel_def}} ({type(exc).__name__}: {exc})"
        ) from exc
    if spatial_dims not in (2, 3):
        raise BundleConfigError(f"{meta_path}: inputs.image.spatial_shape must have 2 or 3 entries")
    if out_channels < 1:
        raise BundleConfigError(f"{meta_path}: outputs.pred.num_channels must be >= 1")
    if out_channels == 1:
        label_names = {1: channel_def.get(0, "foreground")}
    else:
        label_names = {k: channel_def.get(k, f"label{k}") for k in range(1, out_channels)}

    if str(root) not in sys.path:
        sys.path.insert(1, str(root))  # bundle-local modules (scripts/), as monai.bundle's runner does
    try:
        infer_raw = json.loads(infer_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BundleConfigError(f"{infer_path}: cannot be parsed ({type(exc).__name__}: {exc})") from exc
    # an inference.json written to be layered over train.json (MONAI's "+key" merge syntax, or no network_def of
    # its own) is read as `--config_file "['train.json', 'inference.json']"` would
    train_path = root / "train.json"
    layered = isinstance(infer_raw, dict) and (
        any(str(k).startswith("+") for k in infer_raw) or "network_def" not in infer_raw
    )
    config_files = [train_path, infer_path] if layered and train_path.is_file() else [infer_path]
    config_names = " + ".join(p.name for p in config_files)
    parser = ConfigParser()
    try:
        parser.read_meta(str(meta_path))
        parser.read_config([str(p) for p in config_files])
    except Exception as exc:
        raise BundleConfigError(f"{root}: {config_names} cannot be parsed ({type(exc).__name__}: {exc})") from exc
    parser["bundle_root"] = str(root)

    def in_raw(key: str) -> bool:
        node: Any = infer_raw
        for part in key.split("#"):
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True

    def find(*ids: str) -> str | None:
        """The first id that inference.json itself defines, else the first one the merged config has."""
        return next((i for i in ids if in_raw(i)), None) or next((i for i in ids if i in parser), None)

    def parsed(key: str | None, default: Any = None) -> Any:
        if key is None or key not in parser:
            return default
        try:
            return parser.get_parsed_content(key, instantiate=True)
        except Exception as exc:
            raise BundleConfigError(
                f"{root}: '{key}' of {config_names} cannot be built ({type(exc).__name__}: {exc})"
            ) from exc

    parsed("imports")
    if "network_def" not in parser:
        raise BundleConfigError(f"{root}: {config_names} define no 'network_def'")
    network = parsed("network_def")
    if not isinstance(network, torch.nn.Module):
        raise BundleConfigError(f"{root}: 'network_def' is a {type(network).__name__}, not a torch.nn.Module")
    with quiet_optional_reader_warnings():  # the bundle's LoadImaged is built here (and then dropped)
        preprocessing, raster_reader = _strip_loader(parsed(find("preprocessing", "infer#preprocessing")))
    inferer_id = find("inferer", "infer#inferer")

    def inferer_arg(name: str, default: Any) -> Any:
        return parsed(f"{inferer_id}#{name}", default) if inferer_id is not None else default

    roi = inferer_arg("roi_size", None)
    if roi is None and all(isinstance(v, int) for v in image_fmt["spatial_shape"]):
        roi = image_fmt["spatial_shape"]
    if roi is None:
        roi = [-1] * spatial_dims  # the whole image is one window
    roi_size = (int(roi),) * spatial_dims if isinstance(roi, int) else tuple(int(v) for v in roi)
    if len(roi_size) != spatial_dims:
        raise BundleConfigError(f"{root}: inferer roi_size {roi_size} does not have {spatial_dims} entries")
    activation = inferer_arg("activation", "softmax" if out_channels > 1 else "sigmoid")
    if activation not in ("softmax", "sigmoid"):
        raise BundleConfigError(f"{root}: inferer activation must be 'softmax' or 'sigmoid', got {activation!r}")
    if activation == "sigmoid" and out_channels > 1:
        raise BundleConfigError(f"{root}: multi-label (sigmoid, {out_channels} channels) outputs are not supported")
    if activation == "softmax" and out_channels == 1:
        raise BundleConfigError(f"{root}: softmax over a single output channel; use activation 'sigmoid'")

    ckpt = Path(checkpoint) if checkpoint is not None else root / "models" / "model.pt"
    if not ckpt.is_file():
        hint = "" if checkpoint is not None else " (train the bundle first, or pass --checkpoint FILE)"
        raise BundleConfigError(f"checkpoint not found: {ckpt}{hint}")
    try:
        state = torch.load(str(ckpt), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BundleConfigError(f"{ckpt}: cannot be loaded as a PyTorch checkpoint ({type(exc).__name__}: {exc})") from exc
    try:
        network.load_state_dict(_unwrap_state_dict(state, ckpt), strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[:3]
        raise BundleConfigError(f"{ckpt}: does not fit the bundle's network_def: {' '.join(first)}") from exc
    network.eval()
    channels_last_network(network)  # the predictor's windows are channels-last: matching weights, 1.7-2x on CPU
    return PredictionBundle(
        root=root,
        name=str(meta.get("name", root.name)),
        version=str(meta.get("version", "")),
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        label_names=label_names,
        network=network,
        preprocessing=preprocessing,
        roi_size=roi_size,
        sw_batch_size=int(inferer_arg("sw_batch_size", 4)),
        overlap=float(inferer_arg("overlap", 0.5)),
        mode=str(inferer_arg("mode", "gaussian")),
        raster_reader=raster_reader,
        config_files=tuple(p.name for p in config_files),
        activation=str(activation),
        checkpoint=ckpt.resolve(),
        checkpoint_sha256=_sha256(ckpt),
        input_description=str(image_fmt.get("channel_def", "")),
    )


# ------------------------------------------------------------------------------------------------- discovery
@dataclass
class PredictionCase:
    """One unit of work: an image file or one DICOM series, and where its results go."""

    case_id: str  # input path relative to the input root (posix), "<folder>/" for a DICOM series
    source: Path
    family: str | None
    rel_stem: str  # output path relative to --output, without "_seg<suffix>"
    series_uid: str | None = None
    output: Path | None = None
    prob_output: Path | None = None
    problem: str | None = None  # set at discovery: reported without trying to read
    problem_status: str = "failed"  # "skipped" for files that are not images at all


def _non_magic_prefix(pattern: str) -> Path:
    parts = Path(pattern).parts
    keep: list[str] = []
    for part in parts:
        if glob.has_magic(part):
            break
        keep.append(part)
    base = Path(*keep) if keep else Path(".")
    return base if base.is_dir() else base.parent


def _walk_files(folder: Path, exclude: Path | None) -> list[Path]:
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        dirnames[:] = sorted(
            d for d in dirnames if not d.startswith(".") and (exclude is None or (here / d).resolve() != exclude)
        )
        files.extend(here / f for f in sorted(filenames) if not f.startswith("."))
    return files


def _dicom_series(folder: Path) -> list[tuple[str, list[Path]]]:
    """``(series identifier, files)`` per DICOM series directly in ``folder``, grouped exactly as MONAI's
    ``ITKReader`` groups them (ITK's GDCMSeriesFileNames with series details and the series-date restriction), so
    that each identifier can be handed to ``ITKReader(series_name=...)``."""
    import itk

    names = itk.GDCMSeriesFileNames.New()
    names.SetUseSeriesDetails(True)
    names.AddSeriesRestriction("0008|0021")  # Series Date, as monai.data.ITKReader
    names.SetDirectory(str(folder))
    out = []
    for uid in sorted(str(u) for u in names.GetSeriesUIDs()):
        out.append((uid, [Path(n) for n in names.GetFileNames(uid)]))
    return out


def discover_prediction_cases(
    inputs: Sequence[str | os.PathLike], output_dir: str | os.PathLike, save_probabilities: bool = False
) -> tuple[list[PredictionCase], Path]:
    """Expand ``inputs`` (files, folders searched recursively, glob patterns) into cases with output paths.

    Returns ``(cases, input_root)``; outputs mirror each input's path relative to ``input_root`` (the common folder
    of all inputs) under ``output_dir``. Hidden files and anything inside ``output_dir`` are ignored; files that are
    not images are returned as cases with ``problem`` set (reported as skipped), never silently dropped. A folder
    of DICOM files becomes one case per series. Raises ``FileNotFoundError`` for an input that matches nothing.
    """
    out_root = Path(output_dir).resolve()
    found: list[tuple[Path, Path]] = []  # (file, base)
    for spec in inputs:
        spec = str(spec)
        p = Path(spec)
        if p.is_dir():
            found.extend((f, p) for f in _walk_files(p, out_root))
        elif p.is_file():
            found.append((p, p.parent))
        elif glob.has_magic(spec):
            matches = sorted(glob.glob(spec, recursive=True))
            if not matches:
                raise FileNotFoundError(f"no file matches {spec!r}")
            base = _non_magic_prefix(spec)
            for m in map(Path, matches):
                if m.is_dir():
                    found.extend((f, base) for f in _walk_files(m, out_root))
                elif m.is_file() and not m.name.startswith("."):
                    found.append((m, base))
        else:
            raise FileNotFoundError(f"input not found: {spec}")
    # absolute (not symlink-resolved) paths name the cases, so that a folder of symlinks mirrors its own layout;
    # resolved paths only decide what is inside the output folder and what an output must never overwrite
    files: dict[Path, Path] = {}
    for f, base in found:
        rf = f.resolve()
        if out_root == rf or out_root in rf.parents:
            continue  # our own outputs (output folder inside the input folder)
        files.setdefault(Path(os.path.abspath(f)), Path(os.path.abspath(base)))
    if not files:
        return [], Path(os.path.abspath("."))
    bases = sorted(set(files.values()))
    root = Path(os.path.commonpath([str(b) for b in bases])) if len(bases) > 1 else bases[0]

    def rel(path: Path) -> str:
        r = PurePosixPath(path.relative_to(root).as_posix()) if path != root else PurePosixPath(root.name or "input")
        return str(r)

    cases: list[PredictionCase] = []
    dicom_by_dir: dict[Path, list[Path]] = {}
    for f in files:
        family = scan_family(f)
        if family == "dicom":
            dicom_by_dir.setdefault(f.parent, []).append(f)
            continue
        stem, suffix = split_scan_suffix(f.name)
        rel_stem = str(PurePosixPath(rel(f)).with_name(stem))
        case = PredictionCase(case_id=rel(f), source=f, family=family, rel_stem=rel_stem)
        if family is None:
            case.problem_status = "skipped"
            case.problem = (
                f"{f}: not an image this tool reads (supported: {', '.join(sorted(SCAN_SUFFIXES))} and DICOM series)"
            )
        cases.append(case)
    for folder, dcm_files in sorted(dicom_by_dir.items()):
        try:
            series = _dicom_series(folder)
        except Exception as exc:  # GDCM could not scan the folder at all
            series = []
            scan_error = f" ({type(exc).__name__}: {exc})"
        else:
            scan_error = ""
        wanted = set(dcm_files)
        used: set[Path] = set()
        chosen = [(uid, names) for uid, names in series if wanted & {Path(os.path.abspath(n)) for n in names}]
        folder_rel = rel(folder)
        for uid, names in chosen:
            used |= {Path(os.path.abspath(n)) for n in names}
            rel_stem = folder_rel if len(series) == 1 else f"{folder_rel}_series-{uid}"
            case_id = f"{folder_rel}/" if len(series) == 1 else f"{folder_rel}/ [series {uid}]"
            cases.append(
                PredictionCase(case_id=case_id, source=folder, family="dicom", rel_stem=rel_stem, series_uid=uid)
            )
        for f in sorted(wanted - used):
            cases.append(
                PredictionCase(
                    case_id=rel(f),
                    source=f,
                    family="dicom",
                    rel_stem=str(PurePosixPath(rel(f)).with_name(split_scan_suffix(f.name)[0])),
                    problem=f"{f}: DICOM file that is not part of any readable DICOM image series "
                    f"(corrupt, or not an image){scan_error}",
                )
            )
    cases.sort(key=lambda c: c.case_id)
    _assign_outputs(cases, out_root, {f.resolve() for f in files}, save_probabilities)
    return cases, root


def _assign_outputs(cases: list[PredictionCase], out_root: Path, input_files: set[Path], save_probabilities: bool) -> None:
    def natural(case: PredictionCase, tag: str = "") -> tuple[Path, Path]:
        suffix = split_scan_suffix(case.source.name)[1] if case.family != "dicom" else ""
        stem = case.rel_stem + (f"_{tag}" if tag else "")
        return (
            out_root / f"{stem}_seg{scan_output_suffix(case.family or 'raster', suffix, 'label')}",
            out_root / f"{stem}_prob{scan_output_suffix(case.family or 'raster', suffix, 'prob')}",
        )

    real = [c for c in cases if c.problem is None]
    for c in real:
        c.output, c.prob_output = natural(c)
    by_output: dict[Path, list[PredictionCase]] = {}
    for c in real:
        by_output.setdefault(c.output, []).append(c)
    for group in by_output.values():
        if len(group) > 1:  # e.g. x.png and x.jpg, x.mha and x.mhd, a DICOM folder "ct" next to ct.nii.gz
            for c in group:
                tag = "dicom" if c.family == "dicom" else split_scan_suffix(c.source.name)[1].lstrip(".").replace(".", "-")
                c.output, c.prob_output = natural(c, tag)
    taken = [p for c in real for p in ((c.output, c.prob_output) if save_probabilities else (c.output,))]
    if len(set(taken)) != len(taken):  # cannot happen with distinct input paths; refuse rather than overwrite
        dupes = sorted({str(p) for p in taken if taken.count(p) > 1})
        raise ValueError(f"two inputs would write the same output: {dupes}")
    for c in real:
        for p in (c.output, c.prob_output):
            if p is not None and p.resolve() in input_files:
                c.problem = f"{c.source}: its output {p} would overwrite an input file; choose another --output folder"
                c.output = c.prob_output = None
                break


def select_shard(cases: Sequence[PredictionCase], index: int, count: int) -> list[PredictionCase]:
    """Cases of shard ``index`` (1-based) of ``count``: assigned by a hash of the case id, so every machine computes
    the same split without coordination and adding files does not move the others between shards."""
    if not 1 <= index <= count:
        raise ValueError(f"shard index must be between 1 and {count}, got {index}")
    return [c for c in cases if int(hashlib.sha1(c.case_id.encode("utf-8")).hexdigest(), 16) % count == index - 1]


def check_output_writable(output_dir: str | os.PathLike) -> Path:
    """Create ``output_dir`` if needed and prove it is writable with a probe file; raise ``PermissionError`` (or
    ``NotADirectoryError``) naming the folder otherwise. Done before any work."""
    out = Path(output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PermissionError(f"cannot create the output folder {out}: {exc.strerror or exc}") from exc
    if not out.is_dir():
        raise NotADirectoryError(f"--output {out} exists and is not a folder")
    probe = out / f".unetzoo-write-test-{os.getpid()}"
    try:
        with open(probe, "wb") as f:
            f.write(b"ok")
        probe.unlink()
    except OSError as exc:
        raise PermissionError(f"the output folder {out} is not writable: {exc.strerror or exc}") from exc
    return out.resolve()


# --------------------------------------------------------------------------------------------- prediction
@dataclass
class PredictionSettings:
    """Run settings (all recorded in provenance.json)."""

    device: str = "auto"
    overlap: float | None = None  # None: the bundle's
    sw_batch_size: int | None = None  # None: the bundle's
    tta: bool = False
    amp: bool = False
    save_probabilities: bool = False
    overwrite: bool = False
    quiet: bool = False
    shard: tuple[int, int] | None = None

    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)


def _make_predictor(bundle: PredictionBundle, settings: PredictionSettings, device: torch.device):
    from .inference import SlidingWindowPredictor

    return SlidingWindowPredictor(
        roi_size=bundle.roi_size,
        sw_batch_size=settings.sw_batch_size or bundle.sw_batch_size,
        overlap=bundle.overlap if settings.overlap is None else settings.overlap,
        mode=bundle.mode,
        amp="auto" if settings.amp else None,
        tta_axes=tuple(range(bundle.spatial_dims)) if settings.tta else None,
        sw_device=device,
        device=device,
        activation=bundle.activation,
    )


def _drop_singleton_axes(image: Any, spatial_dims: int) -> Any:
    """A 2D bundle on an ``(X, Y, 1)`` volume: drop the trailing singleton spatial axes (and their affine rows)."""
    from monai.data import MetaTensor

    spatial = tuple(image.shape[1:])
    keep = spatial[:spatial_dims]
    affine = np.asarray(image.affine, dtype=np.float64)
    new_affine = np.eye(spatial_dims + 1)
    new_affine[:spatial_dims, :spatial_dims] = affine[:spatial_dims, :spatial_dims]
    new_affine[:spatial_dims, spatial_dims] = affine[:spatial_dims, -1]
    meta = dict(image.meta)
    meta["spatial_shape"] = np.asarray(keep)
    out = MetaTensor(image.as_tensor().reshape((image.shape[0],) + keep), meta=meta)
    out.affine = torch.as_tensor(new_affine)
    return out


class _CaseError(ValueError):
    """A per-case problem with a message fit for the summary."""


def predict_one_case(
    bundle: PredictionBundle, case: PredictionCase, predictor: Callable, device: torch.device, save_probabilities: bool
) -> tuple[ScanGrid, np.ndarray]:
    """Predict ``case`` and write its outputs; return its grid and the label map (on the input's grid)."""
    grid, labels, probs = infer_one_case(bundle, case, predictor, device)
    write_case_outputs(case, grid, labels, probs, save_probabilities)
    return grid, labels


def infer_one_case(
    bundle: PredictionBundle, case: PredictionCase, predictor: Callable, device: torch.device
) -> tuple[ScanGrid, np.ndarray, np.ndarray]:
    """Read, check, preprocess, predict and invert: ``(grid, labels, probabilities)`` on the input's own grid
    (labels of the grid's spatial shape, or of the bundle's when a 2D bundle runs on an ``(X, Y, 1)`` volume;
    probabilities ``(C, *that shape)``). Raises ``ScanReadError``/``ValueError`` with a message for the summary."""
    from monai.data import MetaTensor
    from monai.transforms import Invertd

    image, grid = load_scan(case.source, series_uid=case.series_uid, raster_reader=bundle.raster_reader)
    sd = bundle.spatial_dims
    if grid.spatial_dims != sd:
        if grid.spatial_dims > sd and all(s == 1 for s in grid.spatial_shape[sd:]):
            image = _drop_singleton_axes(image, sd)
        else:
            raise _CaseError(
                f"{case.source}: a {grid.spatial_dims}D image of shape {grid.spatial_shape}, but the bundle "
                f"'{bundle.name}' segments {sd}D images"
            )
    if image.shape[0] != bundle.in_channels:
        raise _CaseError(
            f"{case.source}: has {image.shape[0]} channel(s), but the bundle '{bundle.name}' expects "
            f"{bundle.in_channels}" + (f" ({bundle.input_description})" if bundle.input_description else "")
        )
    loaded_shape = tuple(image.shape[1:])
    try:
        data = bundle.preprocessing({"image": image})
    except Exception as exc:
        raise _CaseError(f"{case.source}: the bundle's preprocessing failed ({type(exc).__name__}: {exc})") from exc
    x = data["image"]
    batch = x.as_tensor()[None].to(device) if hasattr(x, "as_tensor") else torch.as_tensor(x)[None].to(device)
    scores = predictor(batch, bundle.network)[0].detach().to("cpu", torch.float32)
    del batch
    roi = data.get("roi")
    if roi is not None:  # a region of interest made by the preprocessing (e.g. a fundus field of view)
        inside = torch.as_tensor(roi).detach().cpu()
        if inside.ndim == scores.ndim:
            inside = inside.amax(0)
        if tuple(inside.shape) != tuple(scores.shape[1:]):
            raise _CaseError(
                f"{case.source}: the bundle's 'roi' {tuple(inside.shape)} is not on the image grid {tuple(scores.shape[1:])}"
            )
        outside = inside <= 0
        scores[:, outside] = 0.0
        if scores.shape[0] > 1:
            scores[0, outside] = 1.0  # background
    data["pred"] = MetaTensor(scores)  # Invertd takes the transform trace from "image", only for MetaTensors
    if getattr(x, "applied_operations", None):  # spatial preprocessing ran: bring the probabilities back
        inverted = Invertd(keys="pred", transform=bundle.preprocessing, orig_keys="image", nearest_interp=False)(data)[
            "pred"
        ]
    else:
        inverted = scores
    probs = inverted.as_tensor() if hasattr(inverted, "as_tensor") else torch.as_tensor(inverted)
    if tuple(probs.shape[1:]) != loaded_shape:
        raise _CaseError(
            f"{case.source}: the bundle's preprocessing could not be inverted (prediction {tuple(probs.shape[1:])}"
            f" vs image {loaded_shape}); its spatial transforms must be invertible"
        )
    if probs.shape[0] == 1:
        labels = (probs[0] > 0.5).numpy().astype(np.uint8)
    else:
        # class-by-class argmax (monai_unetzoo.inference.scores_to_labels): 2x faster than numpy's over axis 0
        labels = scores_to_labels(probs[None], mode="argmax")[0, 0].numpy()
        labels = labels.astype(np.uint8 if probs.shape[0] <= 256 else np.uint16, copy=False)
    return grid, labels, probs.numpy()


def write_case_outputs(
    case: PredictionCase, grid: ScanGrid, labels: np.ndarray, probs: np.ndarray, save_probabilities: bool
) -> None:
    """Write the label map (and the probabilities) of ``case`` on ``grid``, each atomically."""
    if case.output is None:
        raise ValueError(f"{case.source}: no output path")
    if save_probabilities and case.prob_output is not None:  # first, so that the label map marks the case done
        write_scan_like(np.clip(probs, 0.0, 1.0), grid, case.prob_output, kind="prob")
    write_scan_like(labels, grid, case.output, kind="label")


def _label_columns(bundle: PredictionBundle) -> list[tuple[int, str, str]]:
    """(label value, count column, size column) per foreground label."""
    cols = []
    used: set[str] = set()
    for value, name in sorted(bundle.label_names.items()):
        base = re.sub(r"[^0-9A-Za-z]+", "_", name).strip("_") or f"label{value}"
        if base in used:
            base = f"{base}_{value}"
        used.add(base)
        if bundle.spatial_dims == 3:
            cols.append((value, f"{base}_voxels", f"{base}_mL"))
        else:
            cols.append((value, f"{base}_pixels", f"{base}_mm2"))
    return cols


def _measure(labels: np.ndarray, grid: ScanGrid, bundle: PredictionBundle) -> dict[str, Any]:
    counts = np.bincount(np.asarray(labels).ravel().astype(np.int64), minlength=max(bundle.label_names) + 1)
    row: dict[str, Any] = {
        "shape": " x ".join(str(s) for s in grid.spatial_shape),
        "spacing": " x ".join(f"{s:.6g}" for s in grid.spacing) if grid.physical else "",
    }
    # size of one voxel over the bundle's spatial axes: sqrt(det(A^T A)) of the affine's first columns, i.e.
    # |det A| in 3D and the in-plane pixel area for a 2D bundle (also on an (X, Y, 1) volume), oblique or not
    d = grid.spatial_dims
    a = grid.affine[:d, : bundle.spatial_dims]
    voxel = float(np.sqrt(abs(np.linalg.det(a.T @ a))))
    unit = 1000.0 if bundle.spatial_dims == 3 else 1.0  # mm^3 -> mL; mm^2 stays mm^2
    for value, count_col, size_col in _label_columns(bundle):
        n = int(counts[value]) if value < len(counts) else 0
        row[count_col] = n
        row[size_col] = f"{n * voxel / unit:.6g}" if grid.physical else ""
    return row


def summary_file_names(shard: tuple[int, int] | None) -> tuple[str, str, str]:
    """Names of the summary CSV, the provenance JSON and the error log (per shard when sharding)."""
    if shard is None:
        return "summary.csv", "provenance.json", "errors.log"
    tag = f".shard-{shard[0]}-of-{shard[1]}"
    return f"summary{tag}.csv", f"provenance{tag}.json", f"errors{tag}.log"


def _write_text_atomic(path: Path, text: str) -> None:
    with atomic_output_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds")


@dataclass
class _RunState:
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    predicted: list[str] = field(default_factory=list)
    interrupted_by: int | None = None
    stopping: bool = False  # once set, signals are only recorded (clean-up must not be interrupted)
    deferring: bool = False  # while a finished case is written and recorded, a signal waits (pending)
    pending: int | None = None


def _signal_guard(state: _RunState):
    """Install SIGTERM/SIGINT handlers that raise :class:`PredictionInterrupted` once (later signals are only
    recorded, so the clean-up that follows is not itself interrupted). Returns a function restoring the old ones."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    old = {}

    def handler(signum, frame):  # noqa: ARG001
        if state.stopping:
            if state.interrupted_by is None:
                state.interrupted_by = signum
            return
        if state.deferring:
            state.pending = signum
            return
        state.stopping = True
        state.interrupted_by = signum
        raise PredictionInterrupted(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            old[sig] = signal.signal(sig, handler)
        except (ValueError, OSError):
            pass

    def restore() -> None:
        for sig, h in old.items():
            with contextlib.suppress(ValueError, OSError):
                signal.signal(sig, h)

    return restore


@contextlib.contextmanager
def _signals_deferred(state: _RunState):
    """Writing a case's outputs, its summary row and the summary file is one step for SIGTERM/SIGINT: a signal
    arriving meanwhile is raised when the step is complete, so the summary always matches the files on disk."""
    state.deferring = True
    try:
        yield
    finally:
        state.deferring = False
    if state.pending is not None and not state.stopping:
        signum, state.pending = state.pending, None
        state.stopping = True
        state.interrupted_by = signum
        raise PredictionInterrupted(signum)


def run_batch_prediction(
    bundle: PredictionBundle,
    cases: Sequence[PredictionCase],
    output_dir: str | os.PathLike,
    settings: PredictionSettings,
    *,
    input_root: str | os.PathLike | None = None,
    extra_provenance: dict[str, Any] | None = None,
    log: Callable[[str], None] | None = None,
) -> int:
    """Predict every case, keeping ``summary.csv`` and ``provenance.json`` current after each one.

    Returns the exit code: 0 when every case is ok or skipped, 1 when any failed, 128 + signal number (143 for
    SIGTERM, 130 for SIGINT) when the run was interrupted; the case in progress is then abandoned cleanly (no
    partial file) and it and the remaining cases are listed as ``interrupted``.
    """
    from tqdm.auto import tqdm

    import monai

    from . import __version__

    out_root = Path(output_dir).resolve()
    summary_name, provenance_name, errors_name = summary_file_names(settings.shard)
    summary_path, provenance_path, errors_path = out_root / summary_name, out_root / provenance_name, out_root / errors_name
    device = settings.resolved_device()
    bundle.network.to(device)
    predictor = _make_predictor(bundle, settings, device)
    label_cols = _label_columns(bundle)
    columns = BASE_COLUMNS + [c for _, count_col, size_col in label_cols for c in (count_col, size_col)]
    if settings.save_probabilities:
        columns.insert(3, "probabilities")
    say = log or (lambda msg: None)
    state = _RunState()
    start_time, t_start = _now(), time.perf_counter()

    previous_runs: list[Any] = []
    if provenance_path.is_file():
        try:
            old = json.loads(provenance_path.read_text(encoding="utf-8"))
            previous_runs = list(old.pop("previous_runs", [])) + [old]
        except (OSError, ValueError):
            previous_runs = [{"unreadable_previous_provenance": True}]

    def base_row(case: PredictionCase) -> dict[str, Any]:
        row = {c: "" for c in columns}
        row.update(case=case.case_id, input=str(case.source), output=str(case.output) if case.output else "")
        if settings.save_probabilities and case.prob_output is not None:
            row["probabilities"] = str(case.prob_output)
        return row

    def write_summary() -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for case in cases:
            if case.case_id in state.rows:
                writer.writerow(state.rows[case.case_id])
        _write_text_atomic(summary_path, buf.getvalue())

    def counts() -> dict[str, int]:
        c = {"ok": 0, "skipped": 0, "failed": 0, "interrupted": 0}
        for row in state.rows.values():
            c[row["status"]] = c.get(row["status"], 0) + 1
        return c

    def write_provenance(end: bool, exit_code: int | None) -> None:
        prov = {
            "tool": "monai-unetzoo predict",
            "monai_unetzoo_version": __version__,
            "monai_version": monai.__version__,
            "torch_version": torch.__version__,
            "python_version": platform.python_version(),
            "platform": platform.platform(),
            "bundle": {"path": str(bundle.root), "name": bundle.name, "version": bundle.version},
            "checkpoint": {"path": str(bundle.checkpoint), "sha256": bundle.checkpoint_sha256},
            "settings": {
                "input_root": str(input_root) if input_root is not None else None,
                "output": str(out_root),
                "device": str(device),
                "device_requested": settings.device,
                "roi_size": list(bundle.roi_size),
                "sw_batch_size": settings.sw_batch_size or bundle.sw_batch_size,
                "overlap": bundle.overlap if settings.overlap is None else settings.overlap,
                "blend_mode": bundle.mode,
                "activation": bundle.activation,
                "tta": settings.tta,
                "amp": settings.amp,
                "save_probabilities": settings.save_probabilities,
                "overwrite": settings.overwrite,
                "shard": f"{settings.shard[0]}/{settings.shard[1]}" if settings.shard else None,
                **(extra_provenance or {}),
            },
            "start_time": start_time,
            "end_time": _now() if end else None,
            "status": (
                "running"
                if not end
                else (
                    f"interrupted by {signal.Signals(exit_code - 128).name}"
                    if exit_code is not None and exit_code > 128
                    else ("finished" if exit_code is not None else "aborted by an unexpected error")
                )
            ),
            "exit_code": exit_code,
            "cases_total": len(cases),
            "counts": counts(),
            "cases_predicted": list(state.predicted),
            "previous_runs": previous_runs,
        }
        _write_text_atomic(provenance_path, json.dumps(prov, indent=2, default=str) + "\n")

    def log_error(case: PredictionCase, exc: BaseException) -> None:
        with contextlib.suppress(OSError), open(errors_path, "a", encoding="utf-8") as f:
            f.write(f"--- {_now()} {case.case_id} ({case.source})\n")
            f.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))

    restore_signals: Callable[[], None] = lambda: None
    bar = None
    current: PredictionCase | None = None
    exit_code: int | None = None
    try:
        restore_signals = _signal_guard(state)
        write_provenance(end=False, exit_code=None)
        bar = tqdm(total=len(cases), unit="case", disable=settings.quiet, file=sys.stderr, dynamic_ncols=True,
                   desc="Predicting")
        for case in cases:
            current = case
            row = base_row(case)
            if bar is not None:
                bar.set_postfix_str(case.case_id, refresh=True)
            t0 = time.perf_counter()
            result = None
            if case.problem is not None:
                row.update(status=case.problem_status, error=case.problem)
            elif not settings.overwrite and case.output.is_file() and (
                not settings.save_probabilities or case.prob_output.is_file()
            ):
                row.update(status="skipped", error="output exists (already done; use --overwrite to predict again)")
                try:
                    labels_img, grid_out = load_scan(case.output)
                    row.update(_measure(labels_img[0].numpy().round().astype(np.int64), grid_out, bundle))
                except Exception as exc:  # the output exists but cannot be measured: say so, keep going
                    row["error"] += f"; could not measure the existing output ({exc})"
            else:
                for p in (case.output, case.prob_output):
                    remove_stale_temporaries(p)
                try:
                    result = infer_one_case(bundle, case, predictor, device)
                except (ScanReadError, _CaseError) as exc:
                    row.update(status="failed", error=str(exc))
                except Exception as exc:
                    row.update(status="failed", error=f"{case.source}: unexpected error {type(exc).__name__}: {exc}")
                    log_error(case, exc)
            with _signals_deferred(state):
                if result is not None:
                    grid, labels, probs = result
                    try:
                        write_case_outputs(case, grid, labels, probs, settings.save_probabilities)
                        row.update(status="ok", **_measure(labels, grid, bundle))
                        state.predicted.append(case.case_id)
                    except Exception as exc:
                        row.update(status="failed", error=f"{case.output}: cannot be written ({type(exc).__name__}: {exc})")
                        log_error(case, exc)
                row["seconds"] = f"{time.perf_counter() - t0:.2f}"
                state.rows[case.case_id] = row
                if row["status"] == "failed" and not settings.quiet:
                    tqdm.write(f"FAILED {case.case_id}: {row['error']}", file=sys.stderr)
                write_summary()
                write_provenance(end=False, exit_code=None)  # the audit trail survives even a SIGKILL
                if bar is not None:
                    bar.set_postfix_str(f"{case.case_id} {row['status']} {row['seconds']}s", refresh=False)
                    bar.update(1)
            current = None
        c = counts()
        exit_code = EXIT_FAILED if c["failed"] else EXIT_OK
    except PredictionInterrupted as exc:
        state.interrupted_by = exc.signum
        exit_code = 128 + exc.signum
        for case in cases:
            if case.case_id not in state.rows:
                row = base_row(case)
                row.update(
                    status="interrupted",
                    error=f"run stopped by {signal.Signals(exc.signum).name} before this case "
                    + ("finished" if case is current else "started")
                    + "; run the same command again to finish",
                )
                state.rows[case.case_id] = row
    finally:
        state.stopping = True  # a signal from here on is only recorded: the clean-up below must finish
        if bar is not None:
            bar.close()
        with contextlib.suppress(Exception):
            write_summary()
        with contextlib.suppress(Exception):
            write_provenance(end=True, exit_code=exit_code)
        restore_signals()
    c = counts()
    elapsed = time.perf_counter() - t_start
    parts = [f"{c['ok']} ok", f"{c['skipped']} skipped", f"{c['failed']} failed"]
    if c["interrupted"]:
        parts.append(f"{c['interrupted']} interrupted")
    say(
        f"unetzoo predict: {len(cases)} case(s): {', '.join(parts)} in {_format_seconds(elapsed)}; "
        f"summary: {summary_path}"
    )
    return int(exit_code if exit_code is not None else EXIT_FAILED)


def _format_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"
