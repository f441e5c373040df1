"""One run at a time per output folder (and shard): two runs on the same ``--output`` would overwrite each other's
summary and provenance. An advisory ``flock`` on ``<output>/.unetzoo/lock[.shard-i-of-n]`` is held for the whole
run; the kernel drops it when the process ends, however it ends, so a killed run never leaves a stale lock.
Shards of one batch lock separately and share the folder, as they are meant to.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["OutputFolderBusy", "OutputFolderLock"]


class OutputFolderBusy(RuntimeError):
    """Another run holds the output folder; the message names it and what to do."""


class OutputFolderLock:
    """Context manager: hold the output folder's lock or raise :class:`OutputFolderBusy` at once (no waiting)."""

    def __init__(self, out_root: Path, shard: tuple[int, int] | None = None):
        tag = f".shard-{shard[0]}-of-{shard[1]}" if shard else ""
        self.path = Path(out_root) / ".unetzoo" / f"lock{tag}"
        self._fd: int | None = None

    def __enter__(self) -> "OutputFolderLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            owner = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise OutputFolderBusy(
                f"{self.path.parent.parent} is in use by another unetzoo predict (pid {owner}); wait for it to finish, "
                "or choose another --output (several machines share one folder with --shard i/n)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode("ascii"), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd = None
