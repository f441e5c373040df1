"""SIGTERM/SIGINT during a batch: the case in progress is abandoned cleanly, or, while a finished case is being
written and recorded, the signal waits until that step is complete (so the summary always matches the files)."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

__all__ = ["PredictionInterrupted", "BatchSignalGuard"]


class PredictionInterrupted(BaseException):
    """Raised in the main thread by :class:`BatchSignalGuard`; a BaseException so that per-case ``except Exception``
    blocks let it through and the batch stops cleanly."""

    def __init__(self, signum: int):
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum


class BatchSignalGuard:
    """Context manager installing SIGTERM/SIGINT handlers that raise :class:`PredictionInterrupted` once.

    Later signals are only recorded (``stopping``: the clean-up that follows must not itself be interrupted);
    inside :meth:`deferred` a signal is held back and raised when the block completes. Off the main thread (where
    Python cannot install handlers) it does nothing.
    """

    def __init__(self) -> None:
        self.interrupted_by: int | None = None
        self.stopping = False
        self._deferring = False
        self._pending: int | None = None
        self._old: dict[int, object] = {}

    def _handler(self, signum, frame) -> None:  # noqa: ARG002
        if self.stopping:
            self.interrupted_by = self.interrupted_by or signum
            return
        if self._deferring:
            self._pending = signum
            return
        self._raise(signum)

    def _raise(self, signum: int) -> None:
        self.stopping = True
        self.interrupted_by = signum
        raise PredictionInterrupted(signum)

    def __enter__(self) -> "BatchSignalGuard":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(ValueError, OSError):
                    self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        self.stopping = True
        for sig, handler in self._old.items():
            with contextlib.suppress(ValueError, OSError):
                signal.signal(sig, handler)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """One uninterruptible step: a signal arriving meanwhile is raised when the step is complete."""
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
        if self._pending is not None and not self.stopping:
            signum, self._pending = self._pending, None
            self._raise(signum)
