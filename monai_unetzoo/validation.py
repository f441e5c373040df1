"""Check a whole datalist before training or prediction starts, and report every problem at once.

MONAI finds bad data one case at a time and deep inside a run: a truncated file fails in a data-loader worker
after minutes of training, a label with a stray value 7 in a 3-class problem crashes (or silently corrupts) the
one-hot encoding, a label on a different grid than its image is cropped or resampled into nonsense, NaN
intensities turn the loss into NaN epochs later. MONAI has no datalist checker, hence :func:`validate_datalist`:
it loads every file of every case through MONAI's own ``LoadImage`` (so it sees exactly the arrays and affines the
bundle's ``LoadImaged`` will see), checks

* files: missing, empty (0 bytes), unreadable or truncated (whatever the reader raises);
* image: NaN/Inf intensities, channel count against the network's ``in_channels``, spatial dimensionality;
* label (and ROI): spatial shape and geometry (affine: spacing, origin, direction) against the image, label
  channel count, non-integer values, values outside the declared classes (an ``ignore_index`` is allowed),
  empty / all-background labels (also inside the ROI); ROI: empty, NaN;

collects all problems of all cases and raises ONE :class:`DatalistValidationError` (a ``ValueError``) whose message
lists ``<file>: <problem>`` one per line. Shapes are MONAI's channel-first ``(C, *spatial)`` after ``LoadImage(...,
ensure_channel_first=True)``.

From a bundle config, before the trainer runs (``exit_on_error=True``: the message is printed to stderr and
``monai.bundle run`` exits with status 2; without it the exception also stops the run, inside a long traceback)::

    "initialize": ["$monai_unetzoo.validation.validate_datalist(@train_datalist + @val_datalist,
                     num_classes=2, in_channels=3, label_values=[0, 255], ignore_index=None,
                     loader_kwargs={'reader': 'PILReader', 'reverse_indexing': False}, name='DRIVE training',
                     exit_on_error=True)"]

From the command line (exit status 1 and the list of problems on stderr, 0 and a one-line summary otherwise)::

    python -m monai_unetzoo.validation --datalist dataset.json --section training --num_classes 3 --in_channels 1
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data.generated import raise_or_exit

__all__ = [
    "DatalistValidationError",
    "validate_datalist",
    "run_datalist_validation_cli",
    "switch_enabled",
    "bundle_data_check",
]

logger = logging.getLogger(__name__)


class DatalistValidationError(ValueError):
    """Every problem found in a datalist; ``problems`` is the list of ``(file, problem)`` pairs.

    The message is a header line followed by one ``<file>: <problem>`` line per problem.
    """

    def __init__(self, problems: Sequence[tuple[str, str]], name: str = "datalist", num_cases: int = 0) -> None:
        self.problems = list(problems)
        self.name = name
        self.num_cases = num_cases
        lines = "\n".join(f"  {f}: {p}" for f, p in self.problems)
        super().__init__(
            f"{len(self.problems)} problem(s) in {name} ({num_cases} case(s) checked); fix or remove these "
            f"before training or prediction:\n{lines}"
        )


class _DLVImage:
    """A loaded file: channel-first array ``(C, *spatial)`` and its affine (None when the reader gives none)."""

    __slots__ = ("array", "affine")

    def __init__(self, array: np.ndarray, affine: np.ndarray | None) -> None:
        self.array = array
        self.affine = affine

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.array.shape)

    @property
    def ndim(self) -> int:
        return self.array.ndim


def _dlv_make_loader(loader_kwargs: Mapping[str, Any] | None) -> Any:
    from monai.transforms import LoadImage

    kwargs = {"image_only": False, "ensure_channel_first": True}
    kwargs.update(dict(loader_kwargs or {}))
    kwargs["image_only"] = False  # the meta data (affine) is needed for the geometry check
    return LoadImage(**kwargs)


def _dlv_exc_text(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if len(text) > 300:
        text = text[:300] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _dlv_affine(img: Any) -> np.ndarray | None:
    affine = getattr(img, "affine", None)
    if affine is None:
        return None
    return np.asarray(torch.as_tensor(affine).detach().cpu().double().numpy())


def _dlv_fmt(values: Sequence[float], limit: int = 8) -> str:
    vals = [int(v) if float(v).is_integer() else float(v) for v in values]
    text = ", ".join(str(v) for v in vals[:limit])
    return f"[{text}{', ...' if len(vals) > limit else ''}]"


def validate_datalist(
    datalist: Sequence[Mapping[str, Any]],
    num_classes: int | None = None,
    in_channels: int | None = None,
    spatial_dims: int | None = None,
    image_key: str = "image",
    label_key: str | None = "label",
    roi_key: str | None = "roi",
    require_labels: bool = True,
    require_roi: bool = False,
    label_values: Sequence[float] | None = None,
    background_value: float = 0,
    ignore_index: float | None = None,
    allow_empty_labels: bool = False,
    label_channels: int | None = 1,
    loader_kwargs: Mapping[str, Any] | None = None,
    check_geometry: bool = True,
    geometry_atol: float = 1e-3,
    name: str = "datalist",
    exit_on_error: bool = False,
) -> list[dict[str, Any]]:
    """Load every case of ``datalist`` and raise one error listing every problem found (see the module docstring).

    Args:
        datalist: ``[{"image": path, "label": path, "roi": path, ...}, ...]`` (other keys are ignored).
        num_classes: the declared classes are ``0 .. num_classes - 1`` (unless ``label_values`` is given).
        in_channels: the network's input channels; each image must have exactly this many (after MONAI's
            ``ensure_channel_first``).
        spatial_dims: 2 or 3: the images' number of spatial dimensions.
        image_key, label_key, roi_key: datalist keys (``None`` skips labels / ROI).
        require_labels: every case must have a label (training, evaluation); False for prediction.
        require_roi: every case must have an ROI.
        label_values: the allowed raw label values instead of ``0..num_classes-1`` (e.g. ``[0, 255]`` for DRIVE's
            GIF annotations, mapped to 0/1 by the bundle's transforms).
        background_value: the label value of the background (for the empty-label check).
        ignore_index: a label value that is allowed besides the classes (not scored).
        allow_empty_labels: accept labels without any foreground.
        label_channels: required channels of a label (1 = class indices); None skips the check.
        loader_kwargs: keyword arguments of ``monai.transforms.LoadImage`` (``reader``, ``reverse_indexing``,
            ...) -- use the bundle's own, so the checked arrays are the ones it trains on.
        check_geometry: compare the affines (spacing, origin, direction) of label/ROI and image.
        geometry_atol: tolerance on affine entries (mm).
        name: what the error message calls the datalist.
        exit_on_error: instead of raising, print the message to stderr and exit the process with status 2
            (``SystemExit``). For bundle configs: ``monai.bundle run`` would otherwise bury the message in the
            middle of a long chained traceback.

    Returns:
        the datalist, as a list (so that a config can validate and use it in one expression).

    Raises:
        DatalistValidationError: one error with every problem, ``<file>: <problem>`` per line.
    """
    items = list(datalist) if datalist is not None else []
    allowed: np.ndarray | None = None
    if label_values is not None:
        allowed = np.asarray(sorted({float(v) for v in label_values}), dtype=np.float64)
    elif num_classes is not None:
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
        allowed = np.arange(int(num_classes), dtype=np.float64)
    problems: list[tuple[str, str]] = []

    def report(where: str, problem: str) -> None:
        if (where, problem) not in problems:
            problems.append((where, problem))

    if not items:
        report(name, "the datalist is empty (no cases)")
        _dlv_fail(DatalistValidationError(problems, name=name, num_cases=0), exit_on_error)

    loader = _dlv_make_loader(loader_kwargs)
    cache: dict[str, tuple[_DLVImage | None, str | None]] = {}

    def load(path: str) -> tuple[Any, str | None]:
        """(MetaTensor, None) or (None, problem); each file is read once per call."""
        if path in cache:
            return cache[path]
        p = Path(path)
        result: tuple[Any, str | None]
        if not p.exists():
            result = (None, "file does not exist")
        elif p.is_file() and p.stat().st_size == 0:
            result = (None, "empty file (0 bytes)")
        else:
            try:
                img, _ = loader(str(p))
                # numpy from here on: single-threaded and free of MetaTensor dispatch (much faster on busy CPUs)
                result = (_DLVImage(np.asarray(img.detach().cpu().numpy()), _dlv_affine(img)), None)
            except Exception as exc:  # readers raise many types for damaged files
                result = (None, f"cannot be read (unreadable, truncated or corrupt file): {_dlv_exc_text(exc)}")
        cache[path] = result
        return result

    for index, item in enumerate(items):
        if not isinstance(item, Mapping):
            report(f"{name}[{index}]", f"a case must be a dict of file paths, got {type(item).__name__}")
            continue
        case = f"{name}[{index}]" + (f" (case {item['case_id']})" if "case_id" in item else "")
        required = [image_key] + ([label_key] if require_labels and label_key else []) + (
            [roi_key] if require_roi and roi_key else [])
        for key in required:
            if not item.get(key):
                report(case, f"has no {key!r} entry (keys: {sorted(item)})")
        if not item.get(image_key):
            continue
        image_path = str(item[image_key])
        image, problem = load(image_path)
        if problem:
            report(image_path, problem)
        else:
            _dlv_check_image(image, image_path, in_channels, spatial_dims, report)
        roi = None
        if roi_key and item.get(roi_key):
            roi_path = str(item[roi_key])
            roi, problem = load(roi_path)
            if problem:
                report(roi_path, problem)
                roi = None
            else:
                ok = _dlv_check_companion(roi, roi_path, "ROI", image, image_path, check_geometry, geometry_atol,
                                          report, channels=1)
                finite = np.isfinite(roi.array) if roi.array.dtype.kind == "f" else None
                if finite is not None and not finite.all():
                    report(roi_path, f"{int((~finite).sum())} NaN/Inf values in the ROI")
                empty_roi = not (roi.array > 0).any()
                if empty_roi:
                    report(roi_path, "the ROI is empty (no value > 0): nothing to train on or score")
                roi = roi if ok and not empty_roi else None  # label-in-ROI check only against a usable ROI
        if label_key and item.get(label_key):
            label_path = str(item[label_key])
            label, problem = load(label_path)
            if problem:
                report(label_path, problem)
            else:
                ok = _dlv_check_companion(label, label_path, "label", image, image_path, check_geometry,
                                          geometry_atol, report, channels=label_channels)
                _dlv_check_label_values(label, label_path, allowed, background_value, ignore_index,
                                        allow_empty_labels, roi if ok else None, report)
        if len(cache) > 64:  # keep memory bounded on large datalists; shared files are rarely far apart
            cache.clear()

    if problems:
        _dlv_fail(DatalistValidationError(problems, name=name, num_cases=len(items)), exit_on_error)
    logger.info("%s: %d case(s) checked, no problems found.", name, len(items))
    return [dict(it) for it in items]


#: Words that switch a bundle option off. ``--validate_data false`` reaches the config as the string "false"
#: (python-fire keeps lower-case words as strings), so a plain truth test would read it as True.
_OFF_WORDS = ("false", "0", "no", "off")


def switch_enabled(value: Any) -> bool:
    """Whether a bundle on/off option is on: False for ``False``, ``0`` and the words false/0/no/off (any case,
    surrounding blanks ignored); True for anything else (``True``, "true", "yes", ...)."""
    return str(value).strip().lower() not in _OFF_WORDS


def bundle_data_check(
    enabled: Any, datalists: Mapping[str, Sequence[Mapping[str, Any]]], splits: Sequence[str], **kwargs: Any
) -> list[dict[str, Any]] | None:
    """The bundles' data check before training: :func:`validate_datalist` on the cases of ``splits``.

    Args:
        enabled: the bundle's ``validate_data`` option (see :func:`switch_enabled`); off -> nothing is read and
            None is returned.
        datalists: split name -> datalist, built *without* the builders' own file checks (``validate=False``):
            those raise at the first bad section, while this check loads every case and reports all problems.
        splits: the split names checked together, in order (e.g. ``[train_split, "validation"]``).
        kwargs: passed on to :func:`validate_datalist` (classes, channels, reader, name, ...); ``exit_on_error``
            defaults to True: print every problem and exit with status 2, not a traceback.

    Returns:
        The checked cases, or None when the check is switched off.
    """
    if not switch_enabled(enabled):
        return None
    kwargs.setdefault("exit_on_error", True)
    return validate_datalist([case for split in splits for case in datalists[split]], **kwargs)


def _dlv_fail(error: DatalistValidationError, exit_on_error: bool) -> None:
    raise_or_exit(error, exit_on_error)


def _dlv_check_image(image: _DLVImage, path: str, in_channels: int | None, spatial_dims: int | None,
                     report: Any) -> None:
    if image.ndim < 2:
        report(path, f"expected a channel-first image (C, *spatial), got shape {image.shape}")
        return
    channels, spatial = image.shape[0], image.shape[1:]
    if spatial_dims is not None and len(spatial) != int(spatial_dims):
        report(path, f"{len(spatial)} spatial dimension(s) {spatial}, the network is {spatial_dims}D")
    if in_channels is not None and channels != int(in_channels):
        report(path, f"{channels} channel(s) (shape {image.shape}), the network expects in_channels={in_channels}")
    if any(s == 0 for s in spatial):
        report(path, f"the image has an empty spatial dimension {spatial}")
    if image.array.dtype.kind in "fc":
        nan = int(np.isnan(image.array).sum())
        inf = int(np.isinf(image.array).sum())
        if nan or inf:
            report(path, f"{nan} NaN and {inf} Inf intensity value(s) out of {image.array.size}")


def _dlv_check_companion(
    other: _DLVImage, path: str, what: str, image: _DLVImage | None, image_path: str, check_geometry: bool,
    atol: float, report: Any,
    channels: int | None,
) -> bool:
    """Shape/geometry of a label or ROI against its image; True when it is on the image's grid."""
    if channels is not None and other.ndim >= 2 and other.shape[0] != int(channels):
        report(path, f"the {what} has {other.shape[0]} channel(s) (shape {other.shape}), expected {channels}")
    if image is None:
        return False
    img_sp, oth_sp = image.shape[1:], other.shape[1:]
    if img_sp != oth_sp:
        report(path, f"{what} spatial shape {oth_sp} differs from the image {image_path} {img_sp}")
        return False
    if check_geometry:
        a_img, a_oth = image.affine, other.affine
        if a_img is not None and a_oth is not None and a_img.shape == a_oth.shape:
            diff = float(np.max(np.abs(a_img - a_oth)))
            if diff > atol:
                r = a_img.shape[0] - 1
                sp_img = np.sqrt((a_img[:r, :r] ** 2).sum(0))
                sp_oth = np.sqrt((a_oth[:r, :r] ** 2).sum(0))
                parts = []
                if not np.allclose(sp_img, sp_oth, atol=atol):
                    parts.append(f"spacing {tuple(np.round(sp_oth, 4).tolist())} vs "
                                 f"{tuple(np.round(sp_img, 4).tolist())}")
                if not np.allclose(a_img[:r, r], a_oth[:r, r], atol=atol):
                    parts.append(f"origin {tuple(np.round(a_oth[:r, r], 3).tolist())} vs "
                                 f"{tuple(np.round(a_img[:r, r], 3).tolist())}")
                if not parts:
                    parts.append("direction (orientation) differs")
                report(path, f"{what} geometry differs from the image {image_path}: " + ", ".join(parts)
                       + f" (max |affine difference| {diff:.4g})")
                return False
    return True


def _dlv_check_label_values(
    label: _DLVImage, path: str, allowed: np.ndarray | None, background: float, ignore_index: float | None,
    allow_empty: bool, roi: _DLVImage | None, report: Any,
) -> None:
    lab = label.array
    if lab.dtype.kind in "fc":
        finite = np.isfinite(lab)
        if not finite.all():
            report(path, f"{int((~finite).sum())} NaN/Inf values in the label")
            lab = np.where(finite, lab, background)
    values = np.unique(lab).astype(np.float64)
    non_integer = values[values != np.floor(values)]
    if non_integer.size:
        report(path, f"label values are not integers: {_dlv_fmt(non_integer.tolist())} (an intensity image, or "
                     "a label resampled with linear interpolation?)")
    if allowed is not None:
        permitted = allowed if ignore_index is None else np.append(allowed, float(ignore_index))
        outside = values[~np.isin(values, permitted) & (values == np.floor(values))]
        if outside.size:
            declared = (f"{int(allowed[0])}..{int(allowed[-1])}" if np.array_equal(
                allowed, np.arange(allowed.size)) else _dlv_fmt(allowed.tolist()))
            extra = f" (ignore value {ignore_index})" if ignore_index is not None else ""
            report(path, f"label values {_dlv_fmt(outside.tolist())} outside the declared classes {declared}{extra}")
    if not allow_empty:
        background_like = [float(background)] + ([float(ignore_index)] if ignore_index is not None else [])
        if np.isin(values, background_like).all():
            report(path, "the label is empty (all background): no foreground to learn from")
        elif roi is not None and roi.shape[1:] == label.shape[1:]:
            fg = ~np.isin(lab, background_like)
            inside = np.broadcast_to(roi.array[:1] > 0, fg.shape)
            if not (fg & inside).any():
                report(path, "the label has no foreground inside the ROI")


def run_datalist_validation_cli(argv: Sequence[str] | None = None) -> int:
    """``python -m monai_unetzoo.validation``: validate a JSON datalist; return the exit status (0 ok, 1 problems).

    The datalist is a MONAI/MSD style JSON file (``{"training": [{"image": ..., "label": ...}, ...]}``; the
    section's list may also hold bare image paths, as MSD's ``test``) or a plain JSON list of cases; relative paths
    are relative to ``--base_dir`` (default: the JSON file's folder).
    """
    parser = argparse.ArgumentParser(prog="python -m monai_unetzoo.validation", description=__doc__.split("\n")[0])
    parser.add_argument("--datalist", required=True, help="JSON datalist file")
    parser.add_argument("--section", default="training", help="key of the case list in the JSON (default training)")
    parser.add_argument("--base_dir", default=None, help="folder the paths are relative to (default: the file's)")
    parser.add_argument("--num_classes", type=int, default=None)
    parser.add_argument("--label_values", type=float, nargs="+", default=None)
    parser.add_argument("--ignore_index", type=float, default=None)
    parser.add_argument("--in_channels", type=int, default=None)
    parser.add_argument("--spatial_dims", type=int, default=None)
    parser.add_argument("--no_labels", action="store_true", help="labels are not required (prediction)")
    parser.add_argument("--allow_empty_labels", action="store_true")
    parser.add_argument("--reader", default=None, help="MONAI reader name, e.g. PILReader, ITKReader, NibabelReader")
    parser.add_argument("--image_key", default="image")
    parser.add_argument("--label_key", default="label")
    parser.add_argument("--roi_key", default="roi")
    args = parser.parse_args(argv)

    path = Path(args.datalist)
    try:
        with open(path) as f:
            content = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        print(f"{path}: cannot read the datalist: {_dlv_exc_text(exc)}", file=sys.stderr)
        return 1
    base = Path(args.base_dir) if args.base_dir else path.parent
    if isinstance(content, Mapping):
        if args.section not in content:
            print(f"{path}: no {args.section!r} list (keys: {sorted(content)})", file=sys.stderr)
            return 1
        content = content[args.section]
    if not isinstance(content, list):
        print(f"{path}: expected a list of cases, got {type(content).__name__}", file=sys.stderr)
        return 1
    keys = (args.image_key, args.label_key, args.roi_key)
    items = []
    for it in content:
        if isinstance(it, str):  # MSD "test" lists hold bare image paths
            it = {args.image_key: it}
        if isinstance(it, Mapping):
            it = {k: (str(base / v) if k in keys and isinstance(v, str) and not os.path.isabs(v) else v)
                  for k, v in it.items()}
        items.append(it)
    try:
        validate_datalist(
            items, num_classes=args.num_classes, in_channels=args.in_channels, spatial_dims=args.spatial_dims,
            image_key=args.image_key, label_key=args.label_key, roi_key=args.roi_key,
            require_labels=not args.no_labels, label_values=args.label_values, ignore_index=args.ignore_index,
            allow_empty_labels=args.allow_empty_labels,
            loader_kwargs={"reader": args.reader} if args.reader else None, name=f"{path} [{args.section}]",
        )
    except DatalistValidationError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    print(f"{path} [{args.section}]: {len(items)} case(s) checked, no problems found.")
    return 0


if __name__ == "__main__":
    sys.exit(run_datalist_validation_cli())
