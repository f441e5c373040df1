"""Atomic checkpoints and resuming an interrupted training, on top of MONAI's and ignite's checkpoint handlers.

What MONAI 1.6.1 / ignite 0.5.5 give, and what this module adds:

* ``monai.handlers.CheckpointSaver`` writes through ignite's ``DiskSaver`` with ``atomic=False`` (MONAI chose this
  because ignite's atomic mode leaves the file readable by the owner only), i.e. ``torch.save`` straight to the
  final path: a run killed while writing leaves a truncated ``model.pt``. With a fixed file name it also *deletes*
  the previous best/final file before writing the new one. :class:`AtomicCheckpointSaver` is the same handler
  (same arguments, same file names) whose files are written by :func:`save_checkpoint_atomically`: serialise to
  ``<file>.tmp-<pid>`` in the same folder, ``fsync``, then ``os.replace`` onto the final name (atomic on POSIX and
  Windows within one file system), so a reader sees either the old or the new complete file, never a partial one.
  Old files are removed only after the new one is in place.
* ``monai.handlers.CheckpointLoader`` loads with ``torch.load(..., weights_only=True)`` (verified in 1.6.1), but a
  truncated, empty or foreign file surfaces as an unhelpful ``OSError: [Errno 22] Invalid argument``,
  ``EOFError`` or ``KeyError: 101`` from deep inside torch. :func:`load_checkpoint_file` (also
  ``weights_only=True``) turns those into :class:`CorruptCheckpointError` ("<file>: truncated or corrupt checkpoint:
  <reason>"), and a checkpoint that lacks an object or does not fit it into :class:`IncompatibleCheckpointError`.
* Resuming needs more than the network: :class:`ResumeCheckpointSaver` writes one fixed file (default
  ``<save_dir>/resume.pt``) every N epochs (or iterations) holding the trainer's ignite state (epoch/iteration
  counters), and whatever stateful objects it is given -- typically network, optimizer, LR scheduler,
  :class:`BestMetricState` (the evaluator's best metric and the best-model saver's ranking) and
  :class:`RNGStateKeeper` (torch/numpy/python RNG and every MONAI random transform's state, so that shuffling and
  augmentation after the resume are the ones the uninterrupted run would have drawn).
  :class:`ResumeCheckpointLoader` (a ``CheckpointLoader``) restores all of it on ``Events.STARTED`` so that
  ``trainer.run()`` continues at the next epoch. Asking to resume without a checkpoint, or from a damaged one, is
  an error -- never a silent fresh start.

Bundle config (the trainer itself is added to ``save_dict``/``load_dict`` at ``attach``, so that the handler list
of the trainer need not reference the trainer, which MONAI's config parser would reject as a cycle)::

    "resume": false,
    "ckpt_dir": "$@bundle_root + '/models'",
    "resume_state": {"network": "@network", "optimizer": "@optimizer", "lr_scheduler": "@lr_scheduler",
                     "best": {"_target_": "monai_unetzoo.checkpoints.BestMetricState",
                              "engine": "@validate#evaluator", "saver": "@validate#handlers#0"},
                     "rng": {"_target_": "monai_unetzoo.checkpoints.RNGStateKeeper", "sources": ["@train#dataset"]}},
    "train#handlers": [
        {"_target_": "monai_unetzoo.checkpoints.ResumeCheckpointLoader", "load_dict": "@resume_state",
         "resume": "@resume", "save_dir": "@ckpt_dir"},                          # first: restores on STARTED
        {"_target_": "ValidationHandler", ...},
        ...,
        {"_target_": "monai_unetzoo.checkpoints.ResumeCheckpointSaver", "save_dict": "@resume_state",
         "save_dir": "@ckpt_dir", "save_interval": 1}                            # last: after validation
    ]

and ``python -m monai.bundle run training --config_file train.json --resume true`` (``true``/``false``, ``auto``
= resume when ``resume.pt`` exists, or the path of a checkpoint file).

Determinism: with an epoch-level resume checkpoint written after everything else of the epoch (validation
included: attach the saver last), the resumed run draws the same shuffles and augmentations as the uninterrupted
one; on CPU the final weights are then bitwise equal (tested). Iteration-level checkpoints
(``epoch_level=False``) resume the counters, weights and optimizer exactly, but the rest of the interrupted epoch
is drawn from a new data-loader iterator (ignite re-creates it and skips the consumed batches), so the sample order
differs from the uninterrupted run when shuffling. Under DDP, attach :class:`ResumeCheckpointSaver` on every rank
(it writes on rank 0 only; :class:`RNGStateKeeper` gathers every rank's generators into the file and gives each
rank its own back on resume).
"""

from __future__ import annotations

import logging
import os
import pickle
import random
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver
from monai.handlers import CheckpointLoader, CheckpointSaver

from .numerics import NonFiniteTrainingError, nonfinite_tensor_names

__all__ = [
    "RESUME_FILENAME",
    "CorruptCheckpointError",
    "IncompatibleCheckpointError",
    "refuse_nonfinite_checkpoint",
    "save_checkpoint_atomically",
    "load_checkpoint_file",
    "checkpoint_state_dict",
    "resolve_resume_path",
    "AtomicDiskSaver",
    "AtomicCheckpointSaver",
    "ResumeCheckpointSaver",
    "ResumeCheckpointLoader",
    "BestMetricState",
    "RNGStateKeeper",
]

logger = logging.getLogger(__name__)

#: Default file name of the resume checkpoint inside ``save_dir``.
RESUME_FILENAME = "resume.pt"
_TMP_MARK = ".tmp-"


class CorruptCheckpointError(RuntimeError):
    """A checkpoint file is truncated, empty, not a PyTorch checkpoint, or holds objects ``weights_only`` refuses."""


class IncompatibleCheckpointError(ValueError):
    """A readable checkpoint lacks an object asked for, or its content does not fit the object (keys/shapes)."""


def _ckpt_current_rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


def refuse_nonfinite_checkpoint(obj: Any, path: str | os.PathLike) -> None:
    """Raise :class:`~monai_unetzoo.numerics.NonFiniteTrainingError` if ``obj`` holds a NaN/Inf float tensor.

    Called before every checkpoint write: a diverged training must not replace the last good ``model.pt`` or
    ``resume.pt`` (the file on disk is left as it is). Integer tensors (RNG states) are not checked.
    """
    bad = nonfinite_tensor_names(obj)
    if bad:
        raise NonFiniteTrainingError(
            f"{path}: not saved, the checkpoint would hold non-finite values in {len(bad)} tensor(s) "
            f"({', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''}); the file on disk keeps its previous content. "
            "The training diverged: try --autocast fp32 or a lower --learning_rate."
        )


def save_checkpoint_atomically(
    obj: Any, path: str | os.PathLike, require_finite: bool = True, **save_kwargs: Any
) -> Path:
    """``torch.save(obj, path)`` such that ``path`` is never seen half-written, nor replaced by NaN weights.

    Serialises into ``<path>.tmp-<pid>`` in the destination folder, flushes and ``fsync``\\ s it, then
    ``os.replace``\\ s it onto ``path`` and ``fsync``\\ s the folder (so the rename survives a power cut). If
    serialisation fails or the process dies first, ``path`` keeps its previous content; a temporary file left by a
    killed process is removed by the next save to the same path. File permissions follow the umask (unlike
    ``tempfile``'s 0600, the reason MONAI does not use ignite's atomic mode).

    Args:
        obj: what ``torch.save`` accepts (for loading with ``weights_only=True``: tensors, dicts, lists, tuples,
            numbers, strings).
        path: the final file.
        require_finite: refuse (:func:`refuse_nonfinite_checkpoint`) to write NaN/Inf float tensors.
        save_kwargs: passed to ``torch.save``.

    Returns:
        ``Path(path)``.
    """
    path = Path(path)
    if require_finite:
        refuse_nonfinite_checkpoint(obj, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(path.name + _TMP_MARK + "*"):  # left by a process killed mid-write
        try:
            stale.unlink()
        except OSError:
            pass
    tmp = path.with_name(f"{path.name}{_TMP_MARK}{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f, **save_kwargs)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    try:  # make the rename itself durable; not possible on every platform/file system
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    return path


def load_checkpoint_file(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``torch.load(path, map_location, weights_only=True)`` and clear errors.

    Raises:
        FileNotFoundError: ``path`` does not exist (the message names it).
        CorruptCheckpointError: ``"<path>: truncated or corrupt checkpoint: <reason>"`` for an empty, truncated or
            foreign file, or one holding objects that ``weights_only=True`` refuses to unpickle.
        IncompatibleCheckpointError: the file loads but is not a dict of named objects.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint file does not exist.")
    size = path.stat().st_size
    if size == 0:
        raise CorruptCheckpointError(f"{path}: truncated or corrupt checkpoint: the file is empty (0 bytes).")
    is_zip = zipfile.is_zipfile(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        text = " ".join(str(exc).split())
        if is_zip and isinstance(exc, pickle.UnpicklingError) and "Weights only load failed" in text:
            lines = str(exc).splitlines()
            detail = next((ln.strip() for ln in lines if "Unsupported global" in ln), text[:200])
            reason = (f"it holds objects that torch.load(weights_only=True) refuses to unpickle ({detail}); "
                      "only tensors, numbers, strings and containers of them are accepted")
        elif not is_zip:  # torch.save writes zip archives; a cut-off or foreign file has no zip directory
            reason = (f"not a PyTorch zip archive ({size} bytes; the file is truncated, overwritten or not a "
                      f"checkpoint) -- torch.load: {type(exc).__name__}: {text[:200]}")
        else:
            reason = f"{type(exc).__name__}: {text[:300]}"
        raise CorruptCheckpointError(f"{path}: truncated or corrupt checkpoint: {reason}") from exc
    if not isinstance(ckpt, Mapping):
        raise IncompatibleCheckpointError(
            f"{path}: expected a checkpoint dict of named objects, got a {type(ckpt).__name__}."
        )
    return dict(ckpt)


def _ckpt_unwrap_parallel(obj: Any) -> Any:
    return obj.module if isinstance(obj, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else obj


def checkpoint_state_dict(save_dict: Mapping[str, Any]) -> dict[str, Any]:
    """``{name: obj.state_dict()}`` with (Distributed)DataParallel unwrapped, as ignite's ``Checkpoint`` stores it."""
    out: dict[str, Any] = {}
    for name, obj in save_dict.items():
        obj = _ckpt_unwrap_parallel(obj)
        if not callable(getattr(obj, "state_dict", None)):
            raise TypeError(f"checkpoint object {name!r} ({type(obj).__name__}) has no state_dict().")
        out[name] = obj.state_dict()
    return out


def _ckpt_parse_resume(resume: Any) -> bool | str:
    """``resume`` from a config or the command line: bool, "true"/"false"/"auto", or a path."""
    if resume is None:
        return False
    if isinstance(resume, bool):
        return resume
    if isinstance(resume, (int, np.integer)):
        return bool(resume)
    text = str(resume).strip()
    low = text.lower()
    if low in ("", "false", "0", "no", "off", "none"):
        return False
    if low in ("true", "1", "yes", "on"):
        return True
    if low in ("auto", "latest", "last"):
        return "auto"
    return text


def resolve_resume_path(
    resume: bool | str | None, save_dir: str | os.PathLike | None = None, filename: str = RESUME_FILENAME
) -> Path | None:
    """The checkpoint to resume from, or None for a fresh start.

    Args:
        resume: ``False``/"false" (fresh start), ``True``/"true" (``save_dir/filename`` must exist), ``"auto"``
            (``save_dir/filename`` if it exists, else a fresh start), or the path of a checkpoint file.
        save_dir, filename: where the resume checkpoint is written.

    Raises:
        FileNotFoundError: resuming was asked for but the checkpoint does not exist.
    """
    mode = _ckpt_parse_resume(resume)
    if mode is False:
        return None
    if mode is True or mode == "auto":
        if save_dir is None:
            raise ValueError("resume=True/'auto' needs save_dir (the folder the resume checkpoint is written to).")
        path = Path(save_dir) / filename
        if path.is_file():
            return path
        if mode == "auto":
            logger.info("resume='auto': no checkpoint %s, starting a fresh training.", path)
            return None
        raise FileNotFoundError(
            f"{path}: resume was requested but this checkpoint does not exist (nothing to resume from). "
            "Start without --resume for a fresh training, or pass the checkpoint file: --resume /path/to/file.pt."
        )
    path = Path(mode).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: resume checkpoint does not exist.")
    return path


class AtomicDiskSaver(DiskSaver):
    """ignite ``DiskSaver`` that writes through :func:`save_checkpoint_atomically` (rank ``save_on_rank`` only).

    Args:
        dirname: output folder (created on the saving rank).
        filename: a fixed file name used instead of ignite's generated one (as MONAI's internal saver does for
            ``final_filename``/``key_metric_filename``).
        save_on_rank: the rank that writes.
        kwargs: passed to ``torch.save``.

    ignite's ``Checkpoint`` removes the file it replaces *before* writing the new one. Here removals are deferred
    until the next file is in place; with a fixed file name there is nothing to remove, the new file replaces the
    old one atomically.
    """

    def __init__(
        self, dirname: str | os.PathLike, filename: str | None = None, save_on_rank: int = 0, **kwargs: Any
    ) -> None:
        super().__init__(dirname=dirname, atomic=True, create_dir=True, require_empty=False,
                         save_on_rank=save_on_rank, **kwargs)
        self.filename = filename
        self._pending_removal: list[str] = []

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        name = self.filename if self.filename is not None else filename
        if _ckpt_current_rank() == self.save_on_rank:
            save_checkpoint_atomically(checkpoint, self.dirname / name, **self.kwargs)
            pending, self._pending_removal = self._pending_removal, []
            for old in pending:
                if old != name:
                    try:
                        (self.dirname / old).unlink()
                    except FileNotFoundError:
                        pass

    def remove(self, filename: str) -> None:
        if self.filename is None and _ckpt_current_rank() == self.save_on_rank:
            self._pending_removal.append(filename)


class AtomicCheckpointSaver(CheckpointSaver):
    """``monai.handlers.CheckpointSaver`` whose files are written atomically (see the module docstring).

    Same arguments, file names and behaviour as MONAI's ``CheckpointSaver`` (best model by key metric, every N
    epochs/iterations, final/exception); only the save handler of each of its ignite ``Checkpoint`` objects is
    replaced by an :class:`AtomicDiskSaver`. Writes on rank 0 only, like MONAI's. One difference: an exception raised
    before the run completed a single iteration does not write the final checkpoint (see :meth:`exception_raised`).

    Example (bundle)::

        {"_target_": "monai_unetzoo.checkpoints.AtomicCheckpointSaver", "save_dir": "@ckpt_dir",
         "save_dict": {"model": "@network"}, "save_key_metric": true, "key_metric_filename": "model.pt"}
    """

    def __init__(self, save_dir: str, save_dict: dict, **kwargs: Any) -> None:
        super().__init__(save_dir=save_dir, save_dict=save_dict, **kwargs)
        for ckpt in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if ckpt is not None:
                fixed = getattr(ckpt.save_handler, "filename", None)
                ckpt.save_handler = AtomicDiskSaver(self.save_dir, filename=fixed)
        self._iterations_this_run = 0

    def attach(self, engine: Engine) -> None:
        super().attach(engine)
        if self._final_checkpoint is not None:
            engine.add_event_handler(Events.STARTED, self._count_reset)
            engine.add_event_handler(Events.ITERATION_COMPLETED, self._count_iteration)

    def _count_reset(self, engine: Engine) -> None:
        self._iterations_this_run = 0

    def _count_iteration(self, engine: Engine) -> None:
        self._iterations_this_run += 1

    def exception_raised(self, engine: Engine, e: Exception) -> None:
        """MONAI's final save on an exception, except when this run has not completed a single iteration.

        An exception before the first iteration (e.g. a damaged resume checkpoint raised on ``STARTED``, a data
        loader failing on its first batch) would otherwise make MONAI overwrite ``model_last.pt`` with weights this
        run never trained -- the fresh initialisation -- and destroy the previous run's final model. A
        :class:`~monai_unetzoo.numerics.NonFiniteTrainingError` (a diverged training) is re-raised without a save
        too: the weights are NaN (and the write would be refused anyway, hiding the original error).
        """
        if self._iterations_this_run == 0:
            if self.logger is not None:
                self.logger.info("Exception raised before any iteration of this run: the final checkpoint is not "
                                 "written (an existing file is kept).")
            raise e
        if isinstance(e, NonFiniteTrainingError):
            if self.logger is not None:
                self.logger.info("Training stopped on non-finite values: the final checkpoint is not written (an "
                                 "existing file is kept).")
            raise e
        super().exception_raised(engine, e)


class ResumeCheckpointSaver:
    """Handler writing the resume checkpoint ``save_dir/filename`` (default ``resume.pt``) atomically, rank 0 only.

    The file is a dict ``{name: obj.state_dict()}`` (ignite ``Checkpoint`` layout, loadable with ``weights_only``)
    of ``save_dict`` plus the attached engine under ``engine_key`` (its ignite state: ``epoch_length``,
    ``iteration``, ``max_epochs``). It is overwritten at every save, so it always holds the latest complete state.

    Args:
        save_dir: output folder.
        save_dict: the stateful objects, e.g. ``{"network": net, "optimizer": opt, "lr_scheduler": sched,
            "best": BestMetricState(...), "rng": RNGStateKeeper(...)}``. DDP models are unwrapped.
        filename: file name inside ``save_dir``.
        save_interval: save every N epochs (or iterations with ``epoch_level=False``); must be >= 1.
        epoch_level: save on epoch (default) or iteration boundaries; see the module docstring on determinism.
        save_final: also save when the run completes.
        engine_key: key of the attached engine in the checkpoint (None: do not add it).
        save_rank: the rank that writes.
        name: logger name (default: the engine's logger).

    Attach it after the handlers that run at the end of an epoch (validation, LR scheduling) so that the saved
    state is the complete end-of-epoch state. Under DDP attach it on every rank: ``state_dict()`` runs on all ranks
    (so that :class:`RNGStateKeeper` can gather every rank's generators), the file is written by ``save_rank``.
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        save_dict: Mapping[str, Any],
        filename: str = RESUME_FILENAME,
        save_interval: int = 1,
        epoch_level: bool = True,
        save_final: bool = True,
        engine_key: str | None = "trainer",
        save_rank: int = 0,
        name: str | None = None,
    ) -> None:
        if int(save_interval) < 1:
            raise ValueError(f"save_interval must be >= 1, got {save_interval}.")
        self.save_dir = Path(save_dir)
        self.save_dict = dict(save_dict)
        self.filename = filename
        self.save_interval = int(save_interval)
        self.epoch_level = epoch_level
        self.save_final = save_final
        self.engine_key = engine_key
        self.save_rank = save_rank
        self._name = name
        self.logger = logging.getLogger(name)
        self._last_saved_iteration: int | None = None

    @property
    def path(self) -> Path:
        return self.save_dir / self.filename

    def attach(self, engine: Engine) -> None:
        if self._name is None:
            self.logger = engine.logger
        if self.engine_key is not None:
            if self.engine_key in self.save_dict and self.save_dict[self.engine_key] is not engine:
                raise ValueError(f"save_dict already holds a different object under {self.engine_key!r}.")
            self.save_dict[self.engine_key] = engine
        event = Events.EPOCH_COMPLETED if self.epoch_level else Events.ITERATION_COMPLETED
        engine.add_event_handler(event(every=self.save_interval), self)
        if self.save_final:
            engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if self._last_saved_iteration == engine.state.iteration:
            return  # COMPLETED right after the last epoch's save: same state
        state = checkpoint_state_dict(self.save_dict)
        refuse_nonfinite_checkpoint(state, self.path)  # on every rank, so that all of them stop
        if _ckpt_current_rank() == self.save_rank:
            save_checkpoint_atomically(state, self.path, require_finite=False)
            self.logger.info(
                f"Saved resume checkpoint {self.path} (epoch {engine.state.epoch}, iteration {engine.state.iteration})"
            )
        self._last_saved_iteration = engine.state.iteration


class ResumeCheckpointLoader(CheckpointLoader):
    """``monai.handlers.CheckpointLoader`` for the resume option: loads on ``Events.STARTED``, fails loudly.

    Loads with ``torch.load(..., weights_only=True)`` through :func:`load_checkpoint_file`, checks that every
    object of ``load_dict`` is in the file, restores them (``Checkpoint.load_objects``; DDP models unwrapped) and
    the engine's counters, keeping the engine's current ``max_epochs`` (so a run can be extended) -- MONAI's
    semantics, with MONAI's error when the checkpoint is past ``max_epochs``.

    Args:
        load_dict: the stateful objects, the same names as the saver's ``save_dict``; the attached engine is added
            under ``engine_key``.
        resume: ``False`` (do nothing), ``True`` (``save_dir/filename`` must exist), ``"auto"`` (resume when it
            exists) or a checkpoint path; strings "true"/"false" from the command line work too.
        save_dir, filename: where :class:`ResumeCheckpointSaver` writes.
        map_location: ``torch.load`` map_location (default "cpu": tensors are then copied to the objects' devices).
        strict: strict ``load_state_dict`` of modules.
        engine_key: key of the engine's state in the checkpoint (None: do not restore the counters).
        name: logger name.

    Raises (at construction, i.e. before any training): ``FileNotFoundError`` when resuming is requested and the
    checkpoint does not exist. On ``STARTED``: :class:`CorruptCheckpointError`, :class:`IncompatibleCheckpointError`.
    """

    def __init__(
        self,
        load_dict: Mapping[str, Any],
        resume: bool | str | None = True,
        save_dir: str | os.PathLike | None = None,
        filename: str = RESUME_FILENAME,
        map_location: Any = "cpu",
        strict: bool = True,
        engine_key: str | None = "trainer",
        name: str | None = None,
    ) -> None:
        self.resume_path = resolve_resume_path(resume, save_dir, filename)
        super().__init__(
            load_path=str(self.resume_path) if self.resume_path is not None else "",
            load_dict=dict(load_dict),
            name=name,
            map_location=map_location,
            strict=strict,
        )
        self.engine_key = engine_key

    def attach(self, engine: Engine) -> None:
        if self.resume_path is None:
            return
        if self.engine_key is not None:
            self.load_dict[self.engine_key] = engine
        super().attach(engine)

    def __call__(self, engine: Engine) -> None:
        path = self.resume_path
        if path is None:
            return
        ckpt = load_checkpoint_file(path, map_location=self.map_location)
        missing = [k for k in self.load_dict if k not in ckpt]
        if missing:
            raise IncompatibleCheckpointError(
                f"{path}: the checkpoint lacks {missing} (it holds {sorted(ckpt)}); it was not written by this "
                "configuration's ResumeCheckpointSaver."
            )
        prior_max_epochs = engine.state.max_epochs
        try:
            Checkpoint.load_objects(to_load=self.load_dict, checkpoint=ckpt, strict=self.strict)
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:
            raise IncompatibleCheckpointError(
                f"{path}: the checkpoint does not fit this configuration ({type(exc).__name__}: {exc})"
            ) from exc
        if prior_max_epochs is not None and engine.state.epoch > prior_max_epochs:
            raise ValueError(
                f"{path}: epoch count ({engine.state.epoch}) in the checkpoint is larger than max_epochs "
                f"({prior_max_epochs}); to train further, raise max_epochs (e.g. --epochs)."
            )
        engine.state.max_epochs = prior_max_epochs
        self.logger.info(
            f"Resumed from {path}: epoch {engine.state.epoch}, iteration {engine.state.iteration}"
        )


class BestMetricState:
    """Stateful view of an engine's best key metric (and of a best-model saver's ranking) for checkpoints.

    MONAI's ``Workflow`` keeps ``engine.state.best_metric``/``best_metric_epoch`` only in memory and
    ``CheckpointSaver`` keeps the ranking of saved best models in its ignite ``Checkpoint``. Without them a resumed
    run would report a wrong best metric and overwrite ``model.pt`` with the first model after the resume, better
    or not. ``state_dict()`` -> ``{"best_metric": float, "best_metric_epoch": int, "saved": [(score, file)]}``.

    Args:
        engine: the engine whose key metric is tracked (usually the validation evaluator).
        saver: optional ``CheckpointSaver`` (or :class:`AtomicCheckpointSaver`) saving by key metric on that engine.
    """

    def __init__(self, engine: Engine | None = None, saver: CheckpointSaver | None = None) -> None:
        self.engine = engine
        self.saver = saver

    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"best_metric": -1.0, "best_metric_epoch": -1, "saved": []}
        if self.engine is not None:
            best = getattr(self.engine.state, "best_metric", -1)
            out["best_metric"] = float(torch.as_tensor(best).item()) if best is not None else -1.0
            out["best_metric_epoch"] = int(getattr(self.engine.state, "best_metric_epoch", -1))
        ckpt = getattr(self.saver, "_key_metric_checkpoint", None)
        if ckpt is not None:
            out["saved"] = [(float(p), str(f)) for p, f in ckpt._saved]
        return out

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if self.engine is not None:
            self.engine.state.best_metric = float(state["best_metric"])
            self.engine.state.best_metric_epoch = int(state["best_metric_epoch"])
        ckpt = getattr(self.saver, "_key_metric_checkpoint", None)
        if ckpt is not None:
            # Set the ranking directly: the key of ignite's Checkpoint.state_dict() differs between versions
            # ("saved" in 0.4, "_saved" in 0.5).
            ckpt._saved = [Checkpoint.Item(float(p), str(f)) for p, f in state.get("saved", [])]


def _ckpt_find_randomizables(sources: Sequence[Any]) -> list[Any]:
    """Objects holding a ``numpy.random.RandomState`` as ``.R`` (MONAI ``Randomizable``), in a stable order.

    Walks attributes, lists, tuples and dict values like ``monai.data.utils.set_rnd`` (which seeds the same
    objects), skipping tensors, arrays and strings, and visiting every object once.
    """
    found: list[Any] = []
    seen: set[int] = set()

    def walk(obj: Any, depth: int) -> None:
        if depth > 12 or obj is None or isinstance(obj, (str, bytes, int, float, bool, torch.Tensor, np.ndarray)):
            return
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(getattr(obj, "R", None), np.random.RandomState) and hasattr(obj, "set_random_state"):
            found.append(obj)
        if isinstance(obj, (list, tuple)):
            for item in obj:
                walk(item, depth + 1)
            return
        if isinstance(obj, dict):
            for item in obj.values():
                walk(item, depth + 1)
            return
        if isinstance(obj, (nn.Module, Engine)) or not hasattr(obj, "__dict__"):
            return
        for key, value in vars(obj).items():
            if not key.startswith("__"):
                walk(value, depth + 1)

    for src in sources:
        walk(src, 0)
    return found


def _ckpt_np_state_to_dict(state: tuple) -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = state
    if name != "MT19937":
        raise ValueError(f"unsupported numpy bit generator {name!r}")
    return {"keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def _ckpt_np_state_from_dict(d: Mapping[str, Any]) -> tuple:
    keys = np.asarray(torch.as_tensor(d["keys"]).numpy(), dtype=np.uint32)
    return ("MT19937", keys, int(d["pos"]), int(d["has_gauss"]), float(d["cached_gaussian"]))


class RNGStateKeeper:
    """Stateful snapshot of the random number generators a training draws from, for bitwise resumes.

    Saves and restores the torch CPU generator (shuffling of ``DataLoader``\\ s, the seeds of their workers, which
    MONAI's ``worker_init_fn`` turns into the workers' transform seeds), the current CUDA device's generator (when
    CUDA is initialised), numpy's and Python's global generators, and the ``numpy.random.RandomState`` of every
    MONAI random transform found in ``sources`` (datasets, transforms, data loaders: with ``num_workers=0`` the
    augmentation state lives in these objects in the main process). Everything is stored as tensors and numbers,
    so the checkpoint loads with ``weights_only=True``.

    Under DDP every rank has its own generators (bundles seed them with ``seed + rank``): ``state_dict()`` gathers
    all ranks' states (``all_gather_object``, so it must be called on every rank at the same time -- which
    :class:`ResumeCheckpointSaver` does when attached on every rank) into ``{"ranks": [state_0, state_1, ...]}``, and
    ``load_state_dict`` gives each rank its own. Resuming with another number of processes reuses the saved states
    cyclically (a warning says so); a single-process state is given to every rank.

    Args:
        sources: objects to search for MONAI random transforms (e.g. ``[train_dataset]``); may be empty.
    """

    def __init__(self, sources: Sequence[Any] | Any = ()) -> None:
        self.sources = list(sources) if isinstance(sources, (list, tuple)) else [sources]

    def _local_state(self) -> dict[str, Any]:
        py_version, py_state, py_gauss = random.getstate()
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": _ckpt_np_state_to_dict(np.random.get_state()),
            "python": {"version": int(py_version), "state": torch.tensor(py_state, dtype=torch.int64),
                       "gauss": py_gauss},
            "transforms": [_ckpt_np_state_to_dict(t.R.get_state()) for t in _ckpt_find_randomizables(self.sources)],
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state()  # this process's device
        return state

    def state_dict(self) -> dict[str, Any]:
        local = self._local_state()
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, local)
            return {"ranks": gathered}
        return local

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "ranks" in state:
            ranks = list(state["ranks"])
            dist = torch.distributed
            distributed = dist.is_available() and dist.is_initialized()
            rank = dist.get_rank() if distributed else 0
            world = dist.get_world_size() if distributed else 1
            if world != len(ranks):
                logger.warning("RNGStateKeeper: the checkpoint holds the RNG states of %d process(es), this run has "
                               "%d; rank %d takes the state of rank %d.", len(ranks), world, rank, rank % len(ranks))
            state = ranks[rank % len(ranks)]
        transforms = _ckpt_find_randomizables(self.sources)
        saved = list(state.get("transforms", []))
        if len(saved) != len(transforms):
            raise IncompatibleCheckpointError(
                f"the checkpoint holds the random state of {len(saved)} random transform(s), this configuration "
                f"has {len(transforms)} ({[type(t).__name__ for t in transforms]}): the transforms changed."
            )
        torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8))
        np.random.set_state(_ckpt_np_state_from_dict(state["numpy"]))
        py = state["python"]
        random.setstate((int(py["version"]), tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
        for t, s in zip(transforms, saved):
            t.R.set_state(_ckpt_np_state_from_dict(s))
        cuda = state.get("cuda")
        if cuda is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(torch.as_tensor(cuda, dtype=torch.uint8))
