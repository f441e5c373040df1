"""The look-before-you-trust part of a batch: per case the QC flags (:mod:`.qc`) and the preview PNG
(:mod:`.preview`), per batch the ``report.html`` (:mod:`.report`). :class:`BatchReview` is what :mod:`.batch`
calls; it never changes a segmentation and a failing preview never fails a case."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .bundle import PredictionBundle
from .case import CaseResult
from .discovery import PredictionCase
from .preview import write_case_preview
from .qc import QC_COLUMNS, case_qc_flags, find_training_reference, load_training_reference, qc_columns
from .report import write_report

__all__ = ["BatchReview", "report_file_name"]


def report_file_name(shard: tuple[int, int] | None) -> str:
    """``report.html``, or ``report.shard-i-of-n.html`` for one shard (as the summary's names)."""
    return "report.html" if shard is None else f"report.shard-{shard[0]}-of-{shard[1]}.html"


class BatchReview:
    """QC flags, previews and the report of one batch writing to ``out_root``.

    ``columns``: the summary columns it fills; ``review_case(case, result)`` -> their values for one predicted case
    (and writes its preview); ``write_report(rows, columns, provenance)`` rewrites the report.
    """

    def __init__(self, bundle: PredictionBundle, out_root: Path, *, preview: bool = True,
                 shard: tuple[int, int] | None = None):
        self.bundle, self.out_root, self.preview = bundle, Path(out_root), preview
        self.report_path = self.out_root / report_file_name(shard)
        self.reference_path = find_training_reference(bundle.root, bundle.checkpoint)
        self.reference, self.reference_problem = None, ""
        if self.reference_path is not None:
            try:
                self.reference = load_training_reference(self.reference_path)
            except (OSError, ValueError) as exc:
                self.reference_problem = f"{self.reference_path}: unreadable ({exc}); only 'empty' is checked"
        self.columns = list(QC_COLUMNS) + (["preview"] if preview else [])

    def provenance(self) -> dict[str, Any]:
        """What the QC compared with, for ``provenance.json``."""
        return {"preview": self.preview, "qc_reference": str(self.reference_path) if self.reference else None,
                "qc_reference_problem": self.reference_problem or None}

    def preview_path(self, case: PredictionCase) -> Path:
        return self.out_root / f"{case.rel_stem}_preview.png"

    def review_case(self, case: PredictionCase, result: CaseResult) -> dict[str, str]:
        """QC columns (and ``preview``: its path relative to the report) of one predicted case."""
        b = self.bundle
        try:
            flags, conf = case_qc_flags(result.labels, result.probs, result.grid, b.label_names, self.reference)
            row = qc_columns(flags, conf)
        except Exception as exc:  # the QC is advice: a failure of it leaves the case ok and says so
            flags, row = [], {"qc": "unchecked", "qc_reasons": f"QC failed ({type(exc).__name__}: {exc})"}
        if self.preview:
            path = self.preview_path(case)
            try:
                title = f"{case.case_id} - {b.name} {b.version}" + (f" - QC: {row['qc_flags']}" if flags else "")
                write_case_preview(path, result.image, result.labels, result.grid, preprocessing=b.preprocessing,
                                   label_names=b.label_names, bundle_root=b.root, title=title)
                row["preview"] = path.relative_to(self.out_root).as_posix()
            except Exception as exc:  # a preview is a convenience: the case stays ok
                row["preview"] = ""
                row["error"] = f"preview not written ({type(exc).__name__}: {exc})"
        return row

    def existing_preview(self, case: PredictionCase) -> dict[str, str]:
        """``preview`` of a case skipped as already done: its earlier preview, if there is one."""
        path = self.preview_path(case)
        return {"preview": path.relative_to(self.out_root).as_posix()} if self.preview and path.is_file() else {}

    def write_report(self, rows: list[dict[str, Any]], columns: list[str], provenance: dict[str, Any]) -> None:
        write_report(self.report_path, rows, columns, provenance)
