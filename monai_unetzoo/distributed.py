"""Helpers for multi-process (DDP) training with MONAI bundles under ``torchrun``.

MONAI's multi-GPU bundles (model zoo ``multi_gpu_train.json``) hard-code ``backend='nccl'`` and
``cuda:LOCAL_RANK``, so they cannot run on a CPU machine (or in CI), and they drop the *last N* handlers on ranks
other than 0 by list slicing, which silently breaks when someone reorders the handler list. This module adds the
small pieces that make one ``multi_gpu_train.json`` work everywhere:

* :func:`ddp_backend` / :func:`init_ddp`: ``"nccl"`` when CUDA is available, ``"gloo"`` otherwise, process group
  from torchrun's environment (``env://``), each process on ``cuda:LOCAL_RANK`` or the CPU;
* :func:`wrap_ddp`: ``DistributedDataParallel`` with ``device_ids`` only on CUDA (gloo on CPU must not get them);
* :func:`handlers_for_rank`: keeps every handler on rank 0 and, on other ranks, drops the handlers that only
  write (logs, TensorBoard, MONAI checkpoint savers) *by type*, keeping those that take part in collective
  operations or must act on every rank (validation, metric savers, LR scheduling, early stopping, checkpoint
  loading, :class:`~monai_unetzoo.checkpoints.ResumeCheckpointSaver`) on every rank.

Data: use MONAI's ``monai.data.DistributedSampler`` -- ``even_divisible=True, shuffle=True`` for training and
``even_divisible=False, shuffle=False`` for validation (no duplicated cases in the metrics; MONAI's metrics gather
uneven parts correctly) -- and ``shuffle: false`` on the data loader; MONAI's ``Workflow`` calls
``sampler.set_epoch`` every epoch.

Overrides for a bundle (``multi_gpu_train.json``, merged after ``train.json``)::

    {
      "device": "$monai_unetzoo.distributed.ddp_device()",
      "network": {"_target_": "monai_unetzoo.distributed.wrap_ddp", "network": "@network_def",
                  "device": "@device"},
      "train#sampler": {"_target_": "DistributedSampler", "dataset": "@train#dataset",
                        "even_divisible": true, "shuffle": true},
      "train#dataloader#sampler": "@train#sampler",
      "train#dataloader#shuffle": false,
      "validate#sampler": {"_target_": "DistributedSampler", "dataset": "@validate#dataset",
                           "even_divisible": false, "shuffle": false},
      "validate#dataloader#sampler": "@validate#sampler",
      "train#trainer#train_handlers": "$monai_unetzoo.distributed.handlers_for_rank(@train#handlers)",
      "validate#evaluator#val_handlers": "$monai_unetzoo.distributed.handlers_for_rank(@validate#handlers)",
      "initialize": ["$monai_unetzoo.distributed.init_ddp()", "$monai.utils.set_determinism(seed=0)"],
      "finalize": ["$monai_unetzoo.distributed.cleanup_ddp()"]
    }

Run (single machine, N processes)::

    torchrun --standalone --nproc_per_node=N -m monai.bundle run training \\
        --config_file "['bundles/X/train.json','bundles/X/multi_gpu_train.json']"

Multi-node (M machines with N processes each): the same command on every machine with torchrun's rendezvous
options instead of ``--standalone``::

    torchrun --nnodes=M --nproc_per_node=N --rdzv_backend=c10d --rdzv_endpoint=HOST:29400 --rdzv_id=JOB_ID \\
        -m monai.bundle run training --config_file "['bundles/X/train.json','bundles/X/multi_gpu_train.json']"

(``HOST`` is one of the machines, reachable from all; ``JOB_ID`` any string shared by the machines.) NCCL/gloo
pick the network interface themselves; set ``NCCL_SOCKET_IFNAME`` / ``GLOO_SOCKET_IFNAME`` when a machine has
several. The batch size in the config is per process: the effective batch is ``batch_size * world_size``.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

__all__ = [
    "ddp_backend",
    "ddp_device",
    "init_ddp",
    "cleanup_ddp",
    "ddp_rank",
    "ddp_world_size",
    "is_rank_zero",
    "wrap_ddp",
    "rank_zero_only_handler_types",
    "handlers_for_rank",
]

logger = logging.getLogger(__name__)

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def ddp_backend(backend: str = "auto") -> str:
    """The process-group backend: ``"nccl"`` if CUDA is available, else ``"gloo"`` (for ``backend="auto"``).

    An explicit ``"nccl"`` without CUDA (or NCCL support) raises a ValueError naming the problem.
    """
    name = str(backend).lower()
    if name == "auto":
        return "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
    if name == "nccl" and not (torch.cuda.is_available() and dist.is_nccl_available()):
        raise ValueError("backend 'nccl' needs CUDA and a torch build with NCCL; use 'gloo' (or 'auto') on CPU.")
    if name not in ("nccl", "gloo", "mpi", "ucc"):
        raise ValueError(f"unknown distributed backend {backend!r}; use 'auto', 'nccl' or 'gloo'.")
    return name


def ddp_rank() -> int:
    """This process's global rank (0 when not distributed)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def ddp_world_size() -> int:
    """The number of processes (1 when not distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_rank_zero() -> bool:
    """True on rank 0 and in non-distributed runs."""
    return ddp_rank() == 0


def ddp_device() -> torch.device:
    """``cuda:LOCAL_RANK`` when CUDA is available (LOCAL_RANK from torchrun, default 0), else the CPU."""
    if torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    return torch.device("cpu")


def init_ddp(backend: str = "auto", timeout_s: float | None = None) -> torch.device:
    """Initialise the default process group from torchrun's environment (idempotent); return this rank's device.

    Args:
        backend: ``"auto"`` (``nccl`` on CUDA, ``gloo`` on CPU), or an explicit backend.
        timeout_s: collective timeout in seconds (torch's default when None).

    Raises:
        RuntimeError: the torchrun environment variables are missing (not started by ``torchrun``).
    """
    device = ddp_device()
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this torch build.")
    if not dist.is_initialized():
        missing = [v for v in _TORCHRUN_VARS if v not in os.environ]
        if missing:
            raise RuntimeError(
                f"init_ddp: environment variables {missing} are not set; start the run with torchrun, e.g. "
                "torchrun --standalone --nproc_per_node=2 -m monai.bundle run training --config_file \"['...']\"."
            )
        name = ddp_backend(backend)
        kwargs: dict[str, Any] = {"backend": name, "init_method": "env://"}
        if timeout_s is not None:
            kwargs["timeout"] = datetime.timedelta(seconds=float(timeout_s))
        if device.type == "cuda":
            torch.cuda.set_device(device)
            if name == "nccl":
                kwargs["device_id"] = device  # binds the NCCL communicator to this rank's GPU
        dist.init_process_group(**kwargs)
        logger.info("DDP: rank %d/%d on %s, backend %s", dist.get_rank(), dist.get_world_size(), device, name)
    elif device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def cleanup_ddp(barrier: bool = True) -> None:
    """Wait for every rank, then destroy the default process group, if one exists (for a bundle's ``finalize``).

    Why the barrier: ranks finish at different times (rank 0 still writes checkpoints while the others are done),
    and a gloo rank that tears down its process group and exits while collective work is still in flight can die
    with ``terminate called without an active exception`` (SIGABRT) at interpreter shutdown -- seen once in CI on
    rank 1 of the two-process test, after training had finished. A gloo barrier waits for all work enqueued before
    it, so after it no rank has a pending collective, and all ranks tear down together. ``barrier=False`` skips it
    (e.g. when some rank has already failed and the others must not wait for it).
    """
    if dist.is_available() and dist.is_initialized():
        if barrier:
            dist.barrier()
        dist.destroy_process_group()


def wrap_ddp(
    network: nn.Module,
    device: torch.device | str | None = None,
    sync_batchnorm: bool = False,
    find_unused_parameters: bool = False,
    **ddp_kwargs: Any,
) -> nn.Module:
    """Move ``network`` to ``device`` and wrap it in ``DistributedDataParallel`` (plain module if not distributed).

    ``device_ids`` is passed only for CUDA devices (DDP on CPU with gloo requires ``device_ids=None``). DDP
    broadcasts rank 0's parameters and buffers at construction, so all ranks start from the same weights.

    Args:
        network: the model, on any device.
        device: target device (default :func:`ddp_device`).
        sync_batchnorm: convert BatchNorm layers to ``SyncBatchNorm`` (batch statistics over all ranks).
        find_unused_parameters: DDP option (needed e.g. when a deep-supervision head is skipped in some steps).
        ddp_kwargs: further ``DistributedDataParallel`` arguments.
    """
    device = torch.device(device) if device is not None else ddp_device()
    network = network.to(device)
    if not (dist.is_available() and dist.is_initialized()):
        logger.warning("wrap_ddp: no process group initialised; returning the plain network (single process).")
        return network
    if sync_batchnorm:
        network = nn.SyncBatchNorm.convert_sync_batchnorm(network)
    device_ids = [device] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(
        network, device_ids=device_ids, output_device=device_ids[0] if device_ids else None,
        find_unused_parameters=find_unused_parameters, **ddp_kwargs,
    )


def rank_zero_only_handler_types() -> tuple[type, ...]:
    """Handler classes that only write (logs, TensorBoard/MLflow/ClearML, checkpoints): attached on rank 0 only.

    Handlers that call collective operations (``ValidationHandler``, ``MetricsSaver``, ``ClassificationSaver``,
    metric handlers, :class:`~monai_unetzoo.checkpoints.ResumeCheckpointSaver` -- it writes on rank 0 itself but
    gathers every rank's RNG state) or must act identically on every rank (``LrScheduleHandler``,
    ``EarlyStopHandler``, ``CheckpointLoader``) are not in this list.
    """
    import monai.handlers as mh

    names = ("StatsHandler", "TensorBoardStatsHandler", "TensorBoardImageHandler", "CheckpointSaver",
             "MLFlowHandler", "ClearMLStatsHandler", "ClearMLImageHandler")
    return tuple(getattr(mh, n) for n in names if isinstance(getattr(mh, n, None), type))


def handlers_for_rank(
    handlers: Iterable[Any] | None,
    rank: int | None = None,
    rank_zero_only: Sequence[type] | None = None,
) -> list[Any]:
    """The handlers this rank attaches: all on rank 0; elsewhere without the write-only ones (order kept).

    Args:
        handlers: instantiated handlers (``None`` entries, e.g. from ``"_disabled_"`` components, are dropped).
        rank: the rank (default: this process's, 0 when not distributed).
        rank_zero_only: the classes attached on rank 0 only (default :func:`rank_zero_only_handler_types`;
            subclasses included).
    """
    items = [h for h in (handlers or []) if h is not None]
    rank = ddp_rank() if rank is None else int(rank)
    if rank == 0:
        return items
    types = tuple(rank_zero_only) if rank_zero_only is not None else rank_zero_only_handler_types()
    return [h for h in items if not isinstance(h, types)]
