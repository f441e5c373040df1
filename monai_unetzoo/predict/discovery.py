"""Case discovery: the inputs of a prediction run (files, folders searched recursively, glob patterns, DICOM series)
as :class:`PredictionCase` units of work with their output paths; shards; the output-folder check."""

from __future__ import annotations

import glob
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Sequence

from ..volume_io import SCAN_SUFFIXES, dicom_series_in_folder, scan_family, scan_output_suffix, split_scan_suffix

__all__ = ["PredictionCase", "discover_prediction_cases", "select_shard", "check_output_writable"]


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
        if p.is_dir() and p.resolve() == out_root:
            raise ValueError(f"--output {out_root} is the input folder {spec}; choose another folder: results are "
                             "never written among the inputs")
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
    unresolvable: list[tuple[Path, str]] = []  # symlink loops, dangling links: reported, never fatal
    for f, base in found:
        try:
            rf = f.resolve(strict=True)
        except (OSError, RuntimeError) as exc:  # Python < 3.13 raises RuntimeError on a symlink loop
            unresolvable.append((Path(os.path.abspath(f)), f"{f}: cannot be opened ({type(exc).__name__}: {exc})"))
            continue
        if out_root == rf or out_root in rf.parents:
            continue  # our own outputs (output folder inside the input folder)
        files.setdefault(Path(os.path.abspath(f)), Path(os.path.abspath(base)))
    if not files and not unresolvable:
        if found:
            raise ValueError(f"--output {out_root} is the input folder (or holds every input); choose another "
                             "folder: results are never written among the inputs")
        return [], Path(os.path.abspath("."))
    for f, _ in unresolvable:
        files.setdefault(f, f.parent)
    bases = sorted(set(files.values()))
    root = Path(os.path.commonpath([str(b) for b in bases])) if len(bases) > 1 else bases[0]

    def rel(path: Path) -> str:
        r = PurePosixPath(path.relative_to(root).as_posix()) if path != root else PurePosixPath(root.name or "input")
        return str(r)

    cases: list[PredictionCase] = []
    dicom_by_dir: dict[Path, list[Path]] = {}
    broken = dict(unresolvable)
    for f in files:
        if f in broken:
            cases.append(PredictionCase(case_id=rel(f), source=f, family=None, rel_stem=rel(f), problem=broken[f]))
            continue
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
            series = dicom_series_in_folder(folder)
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
    _assign_outputs(cases, out_root, {f.resolve() for f in files if f not in broken}, save_probabilities)
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


def check_output_writable(output_dir: str | os.PathLike, create: bool = True) -> Path:
    """Prove that ``output_dir`` is (or can be made) a writable folder; raise ``PermissionError`` (or
    ``NotADirectoryError``) naming the folder otherwise. Done before any work. With ``create=False`` (``--dry-run``)
    nothing is created or written: a missing folder is checked through its nearest existing parent."""
    out = Path(output_dir)
    if not create:
        probe_dir = next((p for p in [out, *out.absolute().parents] if p.exists()), Path("/"))
        if not probe_dir.is_dir():
            raise NotADirectoryError(f"--output {out}: {probe_dir} exists and is not a folder")
        if not os.access(probe_dir, os.W_OK | os.X_OK):
            raise PermissionError(f"the output folder {out} cannot be created or written ({probe_dir} is not writable)")
        return out.absolute()
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
