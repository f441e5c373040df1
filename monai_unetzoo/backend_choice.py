"""``--backend auto``: the fastest backend for this network on this machine, chosen by measurement and remembered.

The first ``auto`` run for a network (checkpoint), window, batch, precision, CPU and set of library versions times
each candidate on the work the predictor gives it -- one call of one window (a scan smaller than the window, a
case's last batch) plus one call of ``sw_batch_size`` windows, the median of three each after a warm-up that
exports/compiles --, checks its labels against eager's on the same seeded windows (argmax, or threshold 0 on the
logit of a one-channel network; agreement >= :data:`AGREEMENT` for the precision, issue 19's bars) and picks the
fastest that meets the bar, keeping eager unless another is at least :data:`MIN_GAIN` faster (a choice that flips
with timing noise helps no one). The choice and its timings are written to ``<cache>/auto/<key>.json`` and read
back by later runs, which measure nothing.

Candidates: ``eager``, and on the CPU ``openvino`` (bf16 or fp32) and ``onnxruntime`` (fp32 only, so only when the
run is fp32) when installed. ``compile`` is not a candidate: each new process pays about 10 s of dynamo tracing even
with inductor's caches warm (benchmarks/RESULTS.md), more than it saves on a batch of a few cases. On a GPU, for
ensembles and for windows without a fixed size ``auto`` is ``eager``.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from .backends import backend_unavailable_reason, build_window_network, unetzoo_cache_dir, window_model_key
from .inference import WindowScoreFunction, scores_to_labels

__all__ = ["AGREEMENT", "MIN_GAIN", "MeasuredBackendChoice", "auto_backend_candidates", "backend_window_call",
           "choose_backend_by_measurement", "cpu_description", "pick_fastest_backend"]

#: label agreement with eager required of a candidate, per precision (issue 19)
AGREEMENT = {"fp32": 0.999, "bf16": 0.995, "fp16": 0.995}
#: another backend replaces eager only when it is at least this much faster (fraction of eager's time)
MIN_GAIN = 0.10


@dataclass
class MeasuredBackendChoice:
    """What ``auto`` chose and why: ``seconds`` (one window + one full batch) and ``agreement`` per candidate."""

    backend: str
    precision: str
    seconds: dict[str, float] = field(default_factory=dict)
    agreement: dict[str, float] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        times = ", ".join(f"{b} {s * 1000:.0f} ms" for b, s in sorted(self.seconds.items(), key=lambda kv: kv[1]))
        return f"auto -> {self.backend} (measured per window + batch: {times})"


def auto_backend_candidates(precision: str, device: torch.device) -> list[str]:
    """The backends ``auto`` times for this precision and device (eager first)."""
    if device.type != "cpu":
        return ["eager"]
    found = ["eager"]
    for name, precisions in (("openvino", ("fp32", "bf16")), ("onnxruntime", ("fp32",))):
        if precision in precisions and backend_unavailable_reason(name) is None:
            found.append(name)
    return found


def cpu_description() -> str:
    """The CPU model and the flags that decide the bf16 paths (AVX-512, AMX, AVX2/FMA; SVE on Arm): a choice made on
    an AMX machine is not reused on an AVX512-BF16 one."""
    try:
        lines = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return "unknown"
    model = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "unknown")
    flags = next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith(("flags", "Features"))), [])
    keep = sorted(f for f in flags if f.startswith(("avx512", "amx", "sve")) or f in ("avx2", "fma"))
    return f"{model}; {' '.join(keep) or 'no AVX-512/AMX flags'}"


def backend_window_call(backend: str, network: nn.Module, *, window_shape: Sequence[int], batch: int,
                        dtype: torch.dtype | None, weights_sha256: str, threads: int,
                        cache_root: Path | None = None) -> WindowScoreFunction:
    """``backend``'s window network called as the predictor calls it (:class:`WindowScoreFunction`: inference mode,
    channels-last windows, eager under autocast to ``dtype``), returning float32 logits ``(W, C, *roi)``."""
    window_net = build_window_network(backend, network, window_shape=window_shape, batch=batch, dtype=dtype,
                                      weights_sha256=weights_sha256, threads=threads, cache_root=cache_root)
    return WindowScoreFunction(window_net, activation=None, autocast_dtype=dtype if backend == "eager" else None)


def _timed(call, x: torch.Tensor, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _choice_path(cache_root: Path, network: nn.Module, weights_sha256: str, window_shape: Sequence[int], batch: int,
                 precision: str, candidates: Sequence[str], threads: int) -> Path:
    key = window_model_key(f"auto:{','.join(candidates)}:{threads}:{cpu_description()}:{precision}", network,
                           weights_sha256, window_shape, batch, torch.float32)
    return cache_root / "auto" / f"{key}.json"


def choose_backend_by_measurement(network: nn.Module, *, window_shape: Sequence[int], batch: int, precision: str,
                                  dtype: torch.dtype | None, weights_sha256: str, threads: int,
                                  cache_root: Path | None = None) -> MeasuredBackendChoice:
    """The measured choice for this network (module docstring), read from the cache when it was made before.

    Args:
        window_shape: ``(C_in, *roi)``; batch: ``sw_batch_size``; precision: the resolved precision name (the
            agreement bar); dtype: the inference dtype it means here (None: float32).
    """
    root = cache_root or unetzoo_cache_dir()
    candidates = auto_backend_candidates(precision, torch.device("cpu"))
    path = _choice_path(root, network, weights_sha256, window_shape, batch, precision, candidates, threads)
    if path.is_file():
        try:
            return MeasuredBackendChoice(**json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            pass  # unreadable: measure again and rewrite it
    choice = _measure(network, candidates, window_shape, batch, precision, dtype, weights_sha256, threads, root)
    _write_json_atomic(path, asdict(choice))
    return choice


def _measure(network: nn.Module, candidates: Sequence[str], window_shape: Sequence[int], batch: int, precision: str,
             dtype: torch.dtype | None, weights_sha256: str, threads: int, root: Path) -> MeasuredBackendChoice:
    generator = torch.Generator().manual_seed(0)
    full = torch.randn((batch, *window_shape), generator=generator)  # preprocessed scans are about N(0, 1)
    one = full[:1]
    choice = MeasuredBackendChoice(backend="eager", precision=precision)
    reference = None
    for name in candidates:
        try:
            call = backend_window_call(name, network, window_shape=window_shape, batch=batch, dtype=dtype,
                                       weights_sha256=weights_sha256, threads=threads, cache_root=root)
            labels = scores_to_labels(call(full), threshold=0.0)  # the warm-up: exports, compiles, loads
            call(one)
        except Exception as exc:  # a runtime that cannot take this network is not a candidate
            choice.rejected[name] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"
            continue
        reference = labels if reference is None else reference
        choice.agreement[name] = float((labels == reference).float().mean())
        if choice.agreement[name] < AGREEMENT.get(precision, 0.999):
            choice.rejected[name] = f"label agreement {choice.agreement[name]:.4f} with eager"
            continue
        choice.seconds[name] = _timed(call, one) + _timed(call, full)
    choice.backend = pick_fastest_backend(choice.seconds)
    return choice


def pick_fastest_backend(seconds: dict[str, float]) -> str:
    """The fastest of ``seconds`` (backend -> measured seconds), unless it beats eager by less than
    :data:`MIN_GAIN` (then eager)."""
    if not seconds:
        return "eager"
    eager = seconds.get("eager", float("inf"))
    best = min(seconds, key=seconds.get)
    return best if seconds[best] <= (1.0 - MIN_GAIN) * eager else "eager"


def _write_json_atomic(path: Path, payload: dict) -> None:
    from .volume_io import atomic_output_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2), encoding="utf-8")
