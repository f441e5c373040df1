"""The batch: every case through one :class:`~.case.CasePipeline`, with ``summary.csv`` and ``provenance.json``
rewritten (atomically) after each case, errors logged, and SIGTERM/SIGINT handled so that nothing is lost."""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import errno
import io
import json
import platform
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..volume_io import ScanReadError, atomic_output_path, load_scan, remove_stale_temporaries
from .case import CaseError, CasePipeline, binary_mask_scale, measure_labels, summary_label_columns
from .discovery import PredictionCase
from .prefetch import CaseReadAhead
from .records import OutputRecords
from .review import BatchReview
from .settings import PredictionSettings
from .signals import BatchSignalGuard, PredictionInterrupted

__all__ = ["run_batch_prediction", "summary_file_names", "EXIT_OK", "EXIT_FAILED", "EXIT_USAGE", "EXIT_OUTPUT_FULL",
           "BASE_COLUMNS"]

#: 0 all ok or skipped; 1 some case failed; 2 usage error before any work; 3 stopped because the output could
#: not be written (disk full, quota, file-size limit): free space and run the same command again.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_OUTPUT_FULL = 0, 1, 2, 3
BASE_COLUMNS = ["case", "input", "output", "status", "error", "note", "seconds", "shape", "spacing", "postprocess"]
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class _OutputFull(Exception):
    """The output disk is full (or a quota/file-size limit is hit): the batch stops cleanly."""


def _is_full(exc: BaseException) -> bool:
    return any(isinstance(e, OSError) and e.errno in _FULL_ERRNOS for e in (exc, exc.__cause__, exc.__context__))


def summary_file_names(shard: tuple[int, int] | None) -> tuple[str, str, str]:
    """Names of the summary CSV, the provenance JSON and the error log (per shard when sharding)."""
    if shard is None:
        return "summary.csv", "provenance.json", "errors.log"
    tag = f".shard-{shard[0]}-of-{shard[1]}"
    return f"summary{tag}.csv", f"provenance{tag}.json", f"errors{tag}.log"


def _write_text_atomic(path: Path, text: str) -> None:
    with atomic_output_path(path) as tmp:  # backslashreplace: file names that are not valid UTF-8 stay readable
        with open(tmp, "w", encoding="utf-8", errors="backslashreplace", newline="") as f:
            f.write(text)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds")


def _format_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class _BatchRecord:
    """The rows of the summary and the provenance of one run, written to ``out_root`` after every case."""

    def __init__(self, pipeline: CasePipeline, cases: Sequence[PredictionCase], out_root: Path,
                 settings: PredictionSettings, provenance_extra: dict[str, Any]):
        self.pipeline, self.cases, self.settings = pipeline, cases, settings
        names = summary_file_names(settings.shard)
        self.summary_path, self.provenance_path, self.errors_path = (out_root / n for n in names)
        self.columns = BASE_COLUMNS + list(pipeline.summary_columns) + summary_label_columns(pipeline.bundle)
        if settings.save_probabilities:
            self.columns.insert(3, "probabilities")
        self.review = BatchReview(pipeline.bundle, out_root, preview=settings.preview, shard=settings.shard)
        self.columns += self.review.columns
        self.rows: dict[str, dict[str, Any]] = {}
        self.predicted: list[str] = []
        self.start_time = _now()
        self.provenance_extra = provenance_extra
        self.previous_runs = self._previous_runs()
        self.stopped_by: str | None = None  # why the batch stopped early (disk full)

    def _previous_runs(self) -> list[Any]:
        if not self.provenance_path.is_file():
            return []
        try:
            old = json.loads(self.provenance_path.read_text(encoding="utf-8"))
            return list(old.pop("previous_runs", [])) + [old]
        except (OSError, ValueError):
            return [{"unreadable_previous_provenance": True}]

    def base_row(self, case: PredictionCase) -> dict[str, Any]:
        row = {c: "" for c in self.columns}
        row.update(case=case.case_id, input=str(case.source), output=str(case.output) if case.output else "")
        if self.settings.save_probabilities and case.prob_output is not None:
            row["probabilities"] = str(case.prob_output)
        return row

    def counts(self) -> dict[str, int]:
        c = {"ok": 0, "skipped": 0, "failed": 0, "interrupted": 0}
        for row in self.rows.values():
            c[row["status"]] = c.get(row["status"], 0) + 1
        return c

    def write_summary(self) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.columns, extrasaction="ignore")
        writer.writeheader()
        for case in self.cases:
            if case.case_id in self.rows:
                writer.writerow(self.rows[case.case_id])
        _write_text_atomic(self.summary_path, buf.getvalue())

    def write_provenance(self, exit_code: int | None, end: bool) -> None:
        import monai
        import torch

        from .. import __version__

        b = self.pipeline.bundle
        if not end:
            status = "running"
        elif self.stopped_by:
            status = f"stopped: {self.stopped_by}"
        elif exit_code is None:
            status = "aborted by an unexpected error"
        else:
            status = f"interrupted by {signal.Signals(exit_code - 128).name}" if exit_code > 128 else "finished"
        prov = {
            "tool": "monai-unetzoo predict",
            "monai_unetzoo_version": __version__,
            "monai_version": monai.__version__,
            "torch_version": torch.__version__,
            "python_version": platform.python_version(),
            "platform": platform.platform(),
            "bundle": {"path": str(b.root), "name": b.name, "version": b.version},
            "checkpoint": {"path": str(b.checkpoint), "sha256": b.checkpoint_sha256,
                           "members": [{"path": str(p), "sha256": sha} for p, sha in b.members]},
            "settings": {
                **self.pipeline.settings.as_dict(),
                "device_requested": self.settings.device,
                "save_probabilities": self.settings.save_probabilities,
                "overwrite": self.settings.overwrite,
                "read_ahead": self.settings.resolved_read_ahead(),
                "shard": f"{self.settings.shard[0]}/{self.settings.shard[1]}" if self.settings.shard else None,
                **self.review.provenance(),
                **self.provenance_extra,
            },
            "start_time": self.start_time,
            "end_time": _now() if end else None,
            "status": status,
            "exit_code": exit_code,
            "cases_total": len(self.cases),
            "counts": self.counts(),
            "cases_predicted": list(self.predicted),
            "previous_runs": self.previous_runs,
            **self.pipeline.provenance_extra(),
        }
        _write_text_atomic(self.provenance_path, json.dumps(prov, indent=2, default=str) + "\n")
        self.review.write_report([self.rows[c.case_id] for c in self.cases if c.case_id in self.rows], self.columns, prov)

    def log_error(self, case: PredictionCase, exc: BaseException) -> None:
        with contextlib.suppress(OSError), open(self.errors_path, "a", encoding="utf-8", errors="backslashreplace") as f:
            f.write(f"--- {_now()} {case.case_id} ({case.source})\n")
            f.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))


class _BatchRunner:
    """Runs the cases in order; see :func:`run_batch_prediction`."""

    def __init__(self, pipeline: CasePipeline, record: _BatchRecord, settings: PredictionSettings, out_root: Path):
        self.pipeline, self.record, self.settings = pipeline, record, settings
        self.records = OutputRecords(out_root, pipeline.bundle, pipeline.settings, settings.save_probabilities)
        self.guard = BatchSignalGuard()
        pipeline.window_progress = not settings.quiet
        self.current: PredictionCase | None = None
        self.read_ahead = CaseReadAhead(pipeline, enabled=settings.resolved_read_ahead())
        self._why: dict[str, str | None] = {}

    def why_not_done(self, case: PredictionCase) -> str | None:
        """:meth:`OutputRecords.why_not_done`, asked once per case (when reading ahead, and when running it)."""
        if case.case_id not in self._why:
            self._why[case.case_id] = self.records.why_not_done(case)
        return self._why[case.case_id]

    def will_predict(self, case: PredictionCase) -> bool:
        return case.problem is None and (self.settings.overwrite or self.why_not_done(case) is not None)

    def _measure_existing(self, case: PredictionCase, row: dict[str, Any]) -> None:
        try:
            existing = self.pipeline.measure_existing(case)
            if existing is not None:
                return row.update(existing)
            labels_img, grid = load_scan(case.output)
            labels = labels_img[0].numpy().round().astype(np.int64)
            if binary_mask_scale(self.pipeline.bundle, grid) != 1:
                labels = (labels > 0).astype(np.int64)
            row.update(measure_labels(self.pipeline.bundle, labels, grid, None))
        except Exception as exc:  # the output exists but cannot be measured: say so, keep going
            row["note"] += f"; could not measure the existing output ({exc})"

    def _predict(self, case: PredictionCase, row: dict[str, Any]):
        for p in (case.output, case.prob_output):
            remove_stale_temporaries(p)
        try:
            return self.pipeline.predict(case, self.read_ahead.take(case))
        except (ScanReadError, CaseError) as exc:
            row.update(status="failed", error=str(exc))
        except Exception as exc:
            row.update(status="failed", error=f"{case.source}: unexpected error {type(exc).__name__}: {exc}")
            self.record.log_error(case, exc)
        return None

    def _write_outputs(self, case: PredictionCase, row: dict[str, Any], result) -> None:
        try:
            self.pipeline.write(case, result, self.settings.save_probabilities)
            self.records.write(case)
        except Exception as exc:
            row.update(status="failed", error=f"{case.output}: cannot be written ({type(exc).__name__}: {exc})")
            self.record.log_error(case, exc)
            if _is_full(exc):
                raise _OutputFull(row["error"]) from exc
            return
        row.update(status="ok", postprocess=self.pipeline.settings.postprocess, **self.pipeline.measure(result))
        row.update(self.record.review.review_case(case, result))
        self.record.predicted.append(case.case_id)

    def _record(self, case: PredictionCase, row: dict[str, Any], result, t0: float) -> None:
        """Write the outputs and the row: one step for the signal guard."""
        try:
            if result is not None:
                self._write_outputs(case, row, result)
        finally:
            row["seconds"] = f"{time.perf_counter() - t0:.2f}"
            self.record.rows[case.case_id] = row
        try:
            self.record.write_summary()
            self.record.write_provenance(None, end=False)  # the audit trail survives even a SIGKILL
        except OSError as exc:
            if _is_full(exc):
                raise _OutputFull(f"{self.record.summary_path} cannot be written ({exc})") from exc
            raise

    def run_case(self, case: PredictionCase) -> dict[str, Any]:
        row, t0, result = self.record.base_row(case), time.perf_counter(), None
        why = None if case.problem is not None else self.why_not_done(case)
        if case.problem is not None:
            row.update(status=case.problem_status, error=case.problem)
        elif why is None and not self.settings.overwrite:
            row.update(status="skipped", note="done: same bundle, checkpoint and settings; --overwrite predicts again")
            self._measure_existing(case, row)
            row.update(self.record.review.existing_preview(case))
        else:
            if why is not None and why != "not predicted yet":
                row["note"] = why
            result = self._predict(case, row)
        with self.guard.deferred():
            self._record(case, row, result, t0)
        return row

    def mark_not_done(self, why: str) -> None:
        """List every case without a row as interrupted, saying ``why`` the run stopped."""
        for case in self.record.cases:
            if case.case_id not in self.record.rows:
                row = self.record.base_row(case)
                when = "finished" if case is self.current else "started"
                row.update(status="interrupted", error=f"run stopped ({why}) before this case {when}; run the "
                           "same command again to finish")
                self.record.rows[case.case_id] = row

    def run(self) -> int:
        from tqdm.auto import tqdm

        exit_code: int | None = None
        bar = None
        with self.guard:  # handlers stay installed through the clean-up below (later signals are only recorded)
            try:
                self.record.write_provenance(None, end=False)
                bar = tqdm(total=len(self.record.cases), unit="case", disable=self.settings.quiet, file=sys.stderr,
                           dynamic_ncols=True, desc="Predicting")
                cases = list(self.record.cases)
                for k, case in enumerate(cases):
                    self.current = case
                    if k + 1 < len(cases) and self.will_predict(cases[k + 1]):  # read while this one runs
                        self.read_ahead.ahead(cases[k + 1])
                    bar.set_postfix_str(case.case_id, refresh=True)
                    row = self.run_case(case)
                    if row["status"] == "failed" and not self.settings.quiet:
                        tqdm.write(f"FAILED {case.case_id}: {row['error']}", file=sys.stderr)
                    bar.set_postfix_str(f"{case.case_id} {row['status']} {row['seconds']}s", refresh=False)
                    bar.update(1)
                    self.current = None
                exit_code = EXIT_FAILED if self.record.counts()["failed"] else EXIT_OK
            except PredictionInterrupted as exc:
                exit_code = 128 + exc.signum
                self.mark_not_done(f"by {signal.Signals(exc.signum).name}")
            except _OutputFull as exc:
                exit_code = EXIT_OUTPUT_FULL
                self.record.stopped_by = f"the output could not be written: {exc}"
                self.mark_not_done("the output disk is full; free space")
                print(f"unetzoo predict: stopped: {exc}; free space and run the same command again",
                      file=sys.stderr)
            finally:
                self.guard.stopping = True
                self.read_ahead.close()
                if bar is not None:
                    bar.close()
                with contextlib.suppress(Exception):
                    self.record.write_summary()
                with contextlib.suppress(Exception):
                    self.record.write_provenance(exit_code, end=True)
        return exit_code


def run_batch_prediction(
    pipeline: CasePipeline,
    cases: Sequence[PredictionCase],
    output_dir: str | Path,
    settings: PredictionSettings,
    *,
    extra_provenance: dict[str, Any] | None = None,
    log: Callable[[str], None] | None = None,
) -> int:
    """Predict every case, keeping ``summary.csv`` and ``provenance.json`` current after each one.

    Returns the exit code: 0 when every case is ok or skipped, 1 when any failed, 128 + signal number (143 for
    SIGTERM, 130 for SIGINT) when the run was interrupted; the case in progress is then abandoned cleanly (no
    partial file) and it and the remaining cases are listed as ``interrupted``.
    """
    t_start = time.perf_counter()
    record = _BatchRecord(pipeline, cases, Path(output_dir).resolve(), settings, dict(extra_provenance or {}))
    runner = _BatchRunner(pipeline, record, settings, Path(output_dir).resolve())
    exit_code = runner.run()
    c = record.counts()
    parts = [f"{c['ok']} ok", f"{c['skipped']} skipped", f"{c['failed']} failed"]
    if c["interrupted"]:
        parts.append(f"{c['interrupted']} interrupted")
    (log or (lambda msg: None))(
        f"unetzoo predict: {len(cases)} case(s): {', '.join(parts)} in {_format_seconds(time.perf_counter() - t_start)}; "
        f"summary: {record.summary_path}"
    )
    return int(exit_code if exit_code is not None else EXIT_FAILED)
