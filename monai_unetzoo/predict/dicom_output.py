"""``--output-format``: DICOM SEG / RT-STRUCT outputs for DICOM series, around the one per-case path.

=============  ==========================================================================================
format         written for a DICOM series (other inputs: their usual output, see :mod:`monai_unetzoo.volume_io`)
=============  ==========================================================================================
``auto``       ``<name>_seg.dcm`` (DICOM SEG) and ``<name>_seg.nii.gz``; the NIfTI is written last and
               marks the case done (default)
``nifti``      ``<name>_seg.nii.gz`` only (the output before DICOM SEG existed)
``dicom-seg``  ``<name>_seg.dcm`` only; any other input is a failed case (a SEG must reference source slices)
``rtstruct``   ``<name>_rtstruct.dcm`` only; same rule
=============  ==========================================================================================

:class:`DicomOutputPipeline` is a :class:`~.case.CasePipeline` that also runs the header checks of
:mod:`.dicom_series` on every series it reads, fetches DICOMweb series (:mod:`.dicomweb`) and pushes what it
writes (``--push``). The SOP Instance UID of every DICOM object written is a summary column and is listed in
``provenance.json`` (``dicom_outputs``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..volume_io import ScanReadError, atomic_output_path
from .case import CaseError, CasePipeline, CaseResult, LoadedCase, measure_labels
from .dicom_series import (classify_dicom_cases, datasets_in_grid_order, read_series_headers, series_files,
                           series_header_problem, transfer_syntax_note)
from .discovery import PredictionCase
from .settings import OUTPUT_FORMATS

__all__ = ["OUTPUT_FORMATS", "DicomOutputPipeline", "DicomCaseResult", "apply_output_format", "dicom_output_suffix",
           "DICOM_SUMMARY_COLUMNS"]

DICOM_SUMMARY_COLUMNS = ("dicom_output", "sop_instance_uid", "pushed_to")


def dicom_output_suffix(output_format: str) -> str:
    """File suffix of the DICOM object of ``output_format`` (after the case's output stem)."""
    return "_rtstruct.dcm" if output_format == "rtstruct" else "_seg.dcm"


def _seg_beside(nifti_output: Path) -> Path:
    """``x_seg.nii.gz`` -> ``x_seg.dcm`` (the SEG written next to the NIfTI in ``auto``)."""
    name = nifti_output.name
    return nifti_output.with_name((name[: -len(".nii.gz")] if name.endswith(".nii.gz") else nifti_output.stem) + ".dcm")


def dicom_writers_available(output_format: str = "dicom-seg") -> bool:
    """Whether the libraries writing ``output_format`` (highdicom; rt-utils for RT-STRUCT) are installed."""
    import importlib.util

    needed = ["pydicom", "highdicom"] + (["rt_utils"] if output_format == "rtstruct" else [])
    return all(importlib.util.find_spec(name) is not None for name in needed)


def apply_output_format(cases: Sequence[PredictionCase], output_format: str, out_root: Path) -> None:
    """Set each discovered case's output for ``output_format`` and run the DICOM header checks, in place:
    ``dicom-seg``/``rtstruct`` name ``<stem>_seg.dcm``/``<stem>_rtstruct.dcm`` for DICOM series and mark other
    inputs failed with the reason."""
    classify_dicom_cases(cases)
    if output_format not in ("dicom-seg", "rtstruct"):
        return
    for case in cases:
        if case.problem is not None:
            continue
        if case.family != "dicom":
            case.problem = (f"{case.source}: --output-format {output_format} needs a DICOM series as input (the "
                            "DICOM object references the source slices); use --output-format auto or nifti for it")
            case.output = case.prob_output = None
        else:
            case.output = out_root / f"{case.rel_stem}{dicom_output_suffix(output_format)}"


@dataclass
class DicomCaseResult(CaseResult):
    """A :class:`CaseResult` with the source slices in grid order (``sources[k]`` = slice ``k``; None for a
    non-DICOM input) and the summary columns of the DICOM object once written."""

    sources: list | None = None
    written: dict[str, Any] = field(default_factory=dict)


class DicomOutputPipeline(CasePipeline):
    """See the module docstring. ``push`` True stores every DICOM object written on the DICOMweb server the case
    came from (cases of a folder have none: nothing is pushed for them)."""

    summary_columns = DICOM_SUMMARY_COLUMNS

    def __init__(self, bundle, settings, push: bool = False):
        super().__init__(bundle, settings)
        self.output_format, self.push = settings.output_format, push
        if self.output_format == "auto" and not dicom_writers_available():
            self.output_format = "nifti"  # the [dicom] extra is not installed: the NIfTI output as before
        self.dicom_outputs: dict[str, dict[str, str]] = {}

    def _series_headers(self, case: PredictionCase):
        from .dicomweb import RemoteSeriesCase, fetch_remote_series

        if isinstance(case, RemoteSeriesCase):
            try:
                files = fetch_remote_series(case)
            except Exception as exc:
                raise CaseError(f"{case.url} series {case.remote_series_uid}: cannot be fetched "
                                f"({type(exc).__name__}: {exc})") from exc
        else:
            files = series_files(case.source if case.source.is_dir() else case.source.parent, case.series_uid)
        headers = read_series_headers(files)
        found = series_header_problem(headers)
        if found is not None:
            raise CaseError(f"{case.source}: {found[1]}")
        return headers

    def load(self, case: PredictionCase) -> LoadedCase:
        """:meth:`CasePipeline.load`, with the series' headers checked first (and a DICOMweb series fetched); the
        headers travel in ``extra``."""
        headers = self._series_headers(case) if case.family == "dicom" else None
        try:
            loaded = super().load(case)
        except ScanReadError as exc:
            note = transfer_syntax_note(headers) if headers is not None else ""
            if note:
                raise CaseError(f"{case.source}: {note} by the installed DICOM readers ({exc})") from exc
            raise
        loaded.extra = headers
        return loaded

    def predict(self, case: PredictionCase, loaded: LoadedCase | None = None) -> DicomCaseResult:
        """:meth:`CasePipeline.predict`, with the source slices in grid order for the DICOM writers."""
        loaded = self.load(case) if loaded is None else loaded
        r = super().predict(case, loaded)
        headers, sources = loaded.extra, None
        if headers is not None and self.output_format != "nifti":
            try:
                sources = datasets_in_grid_order(headers, r.grid)
            except ValueError as exc:
                raise CaseError(f"{case.source}: the slices do not match the volume read from them ({exc})") from exc
        return DicomCaseResult(r.grid, r.labels, r.probs, r.image, sources=sources)

    def _dicom_object(self, case: PredictionCase, result: DicomCaseResult):
        from .. import __version__

        if self.output_format == "rtstruct":
            from .rtstruct import build_rtstruct

            return build_rtstruct(result.labels, result.sources, self.bundle, __version__)
        from .dicom_seg import build_dicom_seg

        return build_dicom_seg(result.labels, result.sources, self.bundle, __version__)

    def _write_dicom(self, case: PredictionCase, result: DicomCaseResult, path: Path, ds) -> None:
        """Push ``ds`` (with ``--push``, a DICOMweb case) and write it to ``path`` atomically; record its UIDs."""
        from .dicomweb import RemoteSeriesCase, push_dataset

        pushed = ""
        if self.push and isinstance(case, RemoteSeriesCase):  # first: a local file marks the case done
            push_dataset(case.url, ds)
            pushed = case.url
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output_path(path) as tmp:
            ds.save_as(str(tmp), enforce_file_format=True)
        result.written = {"dicom_output": str(path), "sop_instance_uid": str(ds.SOPInstanceUID), "pushed_to": pushed}
        self.dicom_outputs[case.case_id] = {**result.written, "series_instance_uid": str(ds.SeriesInstanceUID),
                                            "sop_class_uid": str(ds.SOPClassUID)}

    def _write_seg_if_possible(self, case: PredictionCase, result: DicomCaseResult) -> None:
        """``auto``: the SEG beside the NIfTI; a series that cannot carry one (e.g. headers without a Frame of
        Reference, which the SEG IOD requires) keeps its NIfTI, with the reason in the row's ``note`` column. A
        failed push is not excused: it fails the case, so that the next run tries again."""
        try:
            ds = self._dicom_object(case, result)
        except (ValueError, AttributeError, TypeError) as exc:
            result.written = {"note": f"no DICOM SEG written: {type(exc).__name__}: {exc} (the NIfTI is)"}
            return
        self._write_dicom(case, result, _seg_beside(case.output), ds)

    def write(self, case: PredictionCase, result: CaseResult, save_probabilities: bool = False) -> None:
        """The DICOM object (when the format asks for one and the input is a series), then the usual outputs
        (``auto``/``nifti``, or the probabilities) -- each atomically, the case's ``output`` last."""
        sources = getattr(result, "sources", None)
        if sources is None:
            return super().write(case, result, save_probabilities)
        if self.output_format == "auto":
            self._write_seg_if_possible(case, result)
            return super().write(case, result, save_probabilities)
        if save_probabilities and case.prob_output is not None:
            from ..volume_io import write_scan_like

            write_scan_like(np.clip(result.probs, 0.0, 1.0), result.grid, case.prob_output, kind="prob")
        self._write_dicom(case, result, case.output, self._dicom_object(case, result))

    def measure(self, result: CaseResult) -> dict[str, Any]:
        return {**super().measure(result), **getattr(result, "written", {})}

    def measure_existing(self, case: PredictionCase) -> dict[str, Any] | None:
        """Summary columns of a DICOM output a previous run wrote (a SEG is measured from its frames on the source
        slices; an RT-STRUCT only named); None for outputs :func:`~monai_unetzoo.volume_io.load_scan` reads."""
        if case.family != "dicom" or self.output_format in ("auto", "nifti"):
            return None  # the NIfTI output is measured as a scan
        import pydicom

        row = {"dicom_output": str(case.output),
               "sop_instance_uid": str(pydicom.dcmread(str(case.output), stop_before_pixels=True).SOPInstanceUID)}
        return {**row, **self._measure_seg_file(case, case.output)} if self.output_format == "dicom-seg" else row

    def _measure_seg_file(self, case: PredictionCase, path: Path) -> dict[str, Any]:
        import highdicom as hd

        from .dicom_seg import seg_label_map

        image, grid = self._load(case)
        sources = datasets_in_grid_order(read_series_headers(series_files(grid.source, case.series_uid)), grid)
        return measure_labels(self.bundle, seg_label_map(hd.seg.segread(str(path)), sources), grid, None)

    def provenance_extra(self) -> dict[str, Any]:
        return {"push": self.push, "dicom_outputs": dict(self.dicom_outputs)}


def _checkpoint_sha256(bundle_dir: str, checkpoint: str | None) -> str:
    """SHA-256 of the checkpoint :func:`~.bundle.load_prediction_bundle` will load (``""`` when it is missing: the
    bundle load then reports it)."""
    from .bundle import file_sha256

    path = Path(checkpoint) if checkpoint else Path(bundle_dir) / "models" / "model.pt"
    return file_sha256(path) if path.is_file() else ""


def discover_cases_for_output(args, out_dir: Path) -> tuple[list[PredictionCase], Path | str]:
    """The cases of ``unetzoo predict``'s parsed ``args``: a DICOMweb input (:mod:`.dicomweb`) or files and folders
    (:func:`~.discovery.discover_prediction_cases`), with outputs and checks for ``--output-format``. Raises
    ``ValueError`` for a usage error, ``FileNotFoundError``/``OSError`` for inputs that cannot be found/reached."""
    from .dicomweb import discover_dicomweb_cases, is_dicomweb_input
    from .discovery import discover_prediction_cases

    if args.output_format in ("dicom-seg", "rtstruct") and not dicom_writers_available(args.output_format):
        raise ValueError(f"--output-format {args.output_format} needs the DICOM libraries: pip install 'monai-unetzoo[dicom]'")
    remote = [s for s in args.input if is_dicomweb_input(s)]
    if not remote:
        if args.push or args.study or args.query:
            raise ValueError("--push, --study and --query need a DICOMweb input (--input dicomweb+http://HOST:PORT/PATH)")
        cases, root = discover_prediction_cases(args.input, out_dir, save_probabilities=args.save_probabilities)
        apply_output_format(cases, args.output_format, out_dir)
        return cases, root
    if len(args.input) != 1:
        raise ValueError("a DICOMweb input cannot be combined with other inputs")
    if args.push and args.output_format == "nifti":
        raise ValueError("--push stores DICOM objects: use --output-format auto, dicom-seg or rtstruct")
    query = dict(q.split("=", 1) for q in (args.query or []))
    suffix = "_seg.nii.gz" if args.output_format in ("auto", "nifti") else dicom_output_suffix(args.output_format)
    sha = _checkpoint_sha256(args.bundle, args.checkpoint) if args.push and args.output_format != "rtstruct" else None
    cases = discover_dicomweb_cases(remote[0], args.study or [], query, out_dir, suffix, sha)
    return cases, remote[0]
