"""Reading ahead: the next case is read, checked and preprocessed on one worker thread while the current case is
in the network (issue 19's I/O overlap), so that a batch spends its time in the windows rather than waiting for
``nibabel``/``ITK``/``PIL`` and MONAI's transforms.

At most one case is read ahead (memory: the case in the windows plus one loaded case). The worker only reads:
nothing is written from it, so an interruption or a failure can abandon a read-ahead without a trace. A read
that fails raises its ``ScanReadError``/``CaseError`` when the batch takes the case, exactly as a read on the
main thread would. ``concurrent.futures`` rather than DataLoader workers: one case at a time, results in order,
exceptions carried to the caller, and no process start-up or pickling of MetaTensors.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

from .case import CasePipeline, LoadedCase
from .discovery import PredictionCase

__all__ = ["CaseReadAhead"]


class CaseReadAhead:
    """``ahead(case)`` starts :meth:`CasePipeline.load` of ``case`` on the worker; ``take(case)`` returns it (or,
    for a case not started, loads it here). ``close()`` drops what is pending."""

    def __init__(self, pipeline: CasePipeline, enabled: bool = True):
        self.pipeline = pipeline
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="unetzoo-read") if enabled else None
        self.pending: dict[str, Future] = {}

    def ahead(self, case: PredictionCase) -> None:
        if self.executor is None or case.case_id in self.pending:
            return
        for other in list(self.pending):  # bounded: only the case asked for last is kept
            self.pending.pop(other).cancel()
        self.pending[case.case_id] = self.executor.submit(self.pipeline.load, case)

    def take(self, case: PredictionCase) -> LoadedCase:
        future = self.pending.pop(case.case_id, None)
        return self.pipeline.load(case) if future is None else future.result()

    def close(self) -> None:
        for future in self.pending.values():
            future.cancel()
        self.pending.clear()
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
