"""Numerical safety of training: stop at the first non-finite loss/metric, and a bf16-backward check for CPUs.

Why: on CPUs with AVX512-BF16 and no AMX (torch 2.13.0+cpu, oneDNN), the *weight gradient* of a bf16 convolution
whose input is smaller than its kernel along a spatial axis (e.g. a 3x3x3 conv on a 2x2x2 bottleneck, which a
4-level ResUNet reaches from a 16^3 patch) reads memory it never wrote: the gradient changes from run to run, by up
to 1e38, and training turns NaN a few iterations later. ``benchmarks/RESULTS.md`` ("bf16 backward at small spatial
sizes") has the reproducer and the sweep. A training must never end "successfully" with such weights, so:

* :class:`StopOnNonFiniteLoss` (trainer, ``ITERATION_COMPLETED``) raises :class:`NonFiniteTrainingError` at the
  first NaN/Inf loss (or network weight), naming the iteration, the loss, the precision and what to try. ignite's
  ``TerminateOnNan`` does the same check but only *terminates*: the run then completes, the final checkpoint is
  written and ``python -m monai.bundle run`` exits 0. An exception fails the run (non-zero exit status).
* :class:`StopOnNonFiniteMetrics` (evaluator, ``EPOCH_COMPLETED``) does the same for evaluation metrics; attach it
  before the best-model saver so that a NaN metric never ranks a model.
* :func:`nonfinite_tensor_names` is the check the checkpoint writers (:mod:`monai_unetzoo.checkpoints`) run before
  every save, so that the last good ``model.pt``/``resume.pt`` are never replaced by non-finite weights.
* :func:`bf16_backward_is_safe` is the start-up check behind ``AutocastForwardInferer(amp="auto")``: bf16 is used
  for a training only if no convolution sees an input smaller than its kernel (the rule found by the sweep) *and*
  two backward passes on the same input give bit-identical gradients (for defects the rule does not know).

Bundle config::

    "train#handlers": [{"_target_": "monai_unetzoo.numerics.StopOnNonFiniteLoss"}, ...],
    "validate#handlers": [{"_target_": "monai_unetzoo.numerics.StopOnNonFiniteMetrics"}, "@validate#best_saver", ...]
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
from ignite.engine import Engine, Events
from monai.handlers import from_engine

__all__ = [
    "NonFiniteTrainingError",
    "nonfinite_tensor_names",
    "describe_engine_precision",
    "StopOnNonFiniteLoss",
    "StopOnNonFiniteMetrics",
    "convs_smaller_than_kernel",
    "bf16_gradients_reproducible",
    "bf16_backward_is_safe",
]

logger = logging.getLogger(__name__)

def _advice(precision: str) -> str:
    """What the error messages suggest, for the precision the run used."""
    general = "a lower --learning_rate, or check the data"
    if precision.startswith("fp32"):
        return f"{general} (the run already computes in fp32)"
    return (f"--autocast fp32 (bf16 autocast backward on CPUs without AMX gives garbage gradients at small spatial "
            f"sizes; see benchmarks/RESULTS.md), {general}")


class NonFiniteTrainingError(RuntimeError):
    """A loss, a metric or the weights about to be saved are NaN or infinite: the run stops, nothing is saved."""


def nonfinite_tensor_names(obj: Any, prefix: str = "") -> list[str]:
    """Dotted names of the floating-point tensors in a nested state (dicts, lists, tuples) with a NaN or Inf.

    Integer tensors (RNG states, counters) and non-tensor leaves are skipped. ``{"model": {"w": [nan]}}`` ->
    ``["model.w"]``.
    """
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() or obj.is_complex():
            return [] if bool(torch.isfinite(obj).all()) else [prefix or "<tensor>"]
        return []
    items: Any = ()
    if isinstance(obj, Mapping):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    bad: list[str] = []
    for key, value in items:
        bad += nonfinite_tensor_names(value, f"{prefix}.{key}" if prefix else str(key))
    return bad


def describe_engine_precision(engine: Engine) -> str:
    """The precision an engine's forward runs in, for error messages.

    Reads ``engine.inferer.last_dtype`` (set by ``AutocastForwardInferer``; None: fp32), else the inferer's ``amp``
    (``SlidingWindowPredictor``), else MONAI's ``engine.amp`` (CUDA autocast).
    """
    inferer = getattr(engine, "inferer", None)
    if hasattr(inferer, "last_dtype"):
        name = {torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}.get(inferer.last_dtype, "fp32")
        return f"{name} ({type(inferer).__name__} amp={getattr(inferer, 'amp', None)!r})"
    if getattr(inferer, "amp", None) not in (None, False):  # e.g. SlidingWindowPredictor
        return f"{type(inferer).__name__} amp={inferer.amp!r}"
    if getattr(engine, "amp", False):
        return "CUDA automatic mixed precision (SupervisedTrainer amp=True)"
    return "fp32"


def _value_text(value: Any) -> str:
    """A loss for a message: ``"nan"``, ``"inf"``, ``"0.25"``, or the first values of a non-scalar."""
    t = torch.as_tensor(value).detach().float().reshape(-1)
    return str(t[0].item()) if t.numel() == 1 else str(t[:5].tolist())


class StopOnNonFiniteLoss:
    """Trainer handler: raise :class:`NonFiniteTrainingError` at the first non-finite loss or weight.

    Runs on ``ITERATION_COMPLETED``, i.e. after the optimizer step and before any epoch-end checkpoint, so the
    checkpoints on disk keep the last finite weights. The message names the epoch, the iteration, the loss value,
    the precision (:func:`describe_engine_precision`) and what to try.

    Args:
        output_transform: gives the loss from ``engine.state.output`` (default MONAI's ``"loss"`` key).
        check_weights: also check ``engine.network``'s parameters and ``engine.optimizer``'s state (a huge or
            non-finite gradient can poison the weights, or Adam's second moment, in the step whose loss was still
            finite); costs one pass over parameters and optimizer state per iteration.
    """

    def __init__(
        self, output_transform: Callable = from_engine(["loss"], first=True), check_weights: bool = True
    ) -> None:
        self.output_transform = output_transform
        self.check_weights = check_weights

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        loss = self.output_transform(engine.state.output)
        bad = nonfinite_tensor_names(torch.as_tensor(loss), "loss")
        if not bad and self.check_weights:
            bad = _nonfinite_training_state(engine)
        if not bad:
            return
        precision = describe_engine_precision(engine)
        raise NonFiniteTrainingError(
            f"training stopped at epoch {engine.state.epoch}, iteration {engine.state.iteration}: the loss is "
            f"{_value_text(loss)}" + (f" and non-finite values are in {bad[:5]}" if bad != ["loss"] else "")
            + f"; precision: {precision}. The checkpoints already written keep the last finite weights. What to "
            f"try: {_advice(precision)}."
        )


def _nonfinite_training_state(engine: Engine) -> list[str]:
    """Non-finite tensors among ``engine.network``'s parameters and ``engine.optimizer``'s state."""
    network = getattr(engine, "network", None)
    bad = nonfinite_tensor_names(dict(network.named_parameters()), "weights") if isinstance(network, nn.Module) else []
    optimizer = getattr(engine, "optimizer", None)
    if isinstance(optimizer, torch.optim.Optimizer):
        bad += nonfinite_tensor_names(list(optimizer.state.values()), "optimizer_state")
    return bad


class StopOnNonFiniteMetrics:
    """Evaluator handler: raise :class:`NonFiniteTrainingError` when a scalar metric is NaN or Inf.

    Runs on ``EPOCH_COMPLETED``; attach it *before* the best-model saver (list it first in ``val_handlers``) so a
    NaN metric never gets a model saved. Non-scalar metrics (per-class tensors) are checked element-wise.

    Args:
        metric_names: the metrics to check (default: all of ``engine.state.metrics``).
    """

    def __init__(self, metric_names: Sequence[str] | None = None) -> None:
        self.metric_names = list(metric_names) if metric_names is not None else None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        metrics = engine.state.metrics
        names = self.metric_names if self.metric_names is not None else list(metrics)
        bad = {k: metrics[k] for k in names if k in metrics and _is_nonfinite(metrics[k])}
        if not bad:
            return
        precision = describe_engine_precision(engine)
        raise NonFiniteTrainingError(
            f"evaluation produced non-finite metrics {bad} (evaluator epoch {engine.state.epoch}); precision: "
            f"{precision}. No model was saved for this evaluation. What to try: {_advice(precision)}."
        )


def _is_nonfinite(value: Any) -> bool:
    if isinstance(value, (int, float)):
        return not math.isfinite(value)
    try:
        return bool(nonfinite_tensor_names(torch.as_tensor(value, dtype=torch.float64)))
    except (TypeError, ValueError, RuntimeError):
        return False  # strings, dicts: not a number to check


# ------------------------------------------------------------------------------------------ the bf16 check
def _unwrap(network: nn.Module) -> nn.Module:
    return network.module if isinstance(network, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else network


def convs_smaller_than_kernel(network: nn.Module, input_shape: Sequence[int]) -> list[str]:
    """Convolutions of ``network`` whose input, for an input of ``input_shape``, is smaller than the kernel.

    Runs one forward pass of a copy (no gradients, eval mode) with forward hooks on every ``nn.Conv*d`` and
    ``nn.ConvTranspose*d``. Returns ``"<module name>: input (D, H, W) < kernel (kD, kH, kW)"`` for each convolution
    where some spatial extent of the input is smaller than the kernel's extent along that axis -- the condition under
    which oneDNN's bf16 weight gradient is not reproducible on AVX512-BF16 CPUs (benchmarks/RESULTS.md).

    Args:
        network: the network (DDP/DataParallel unwrapped here).
        input_shape: (B, C, *spatial) of the training batches.
    """
    net = copy.deepcopy(_unwrap(network)).eval()
    found: list[str] = []

    def hook(name: str) -> Callable:
        def record(module: nn.Module, args: tuple, _out: Any) -> None:
            spatial = tuple(args[0].shape[2:])
            kernel = tuple(module.kernel_size)
            if any(s < k for s, k in zip(spatial, kernel)):
                found.append(f"{name}: input {spatial} < kernel {kernel}")
        return record

    for name, module in net.named_modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            module.register_forward_hook(hook(name))
    param = next(net.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    with torch.no_grad():
        net(torch.zeros(tuple(input_shape), device=device))
    return found


def bf16_gradients_reproducible(
    network: nn.Module, input_shape: Sequence[int], repeats: int = 2, memory_format: torch.memory_format | None = None
) -> bool:
    """Whether ``repeats`` bf16-autocast backward passes on one input give bit-identical, finite gradients.

    A copy of the network in train mode (so the real one, its BatchNorm statistics and every global RNG stay
    untouched: dropout draws inside ``torch.random.fork_rng``) gets a fixed random input of ``input_shape`` and the
    loss ``mean(y ** 2)``; a correct kernel is deterministic on a CPU for the same input and thread count, so any
    difference is the defect (values read from memory the kernel never wrote).

    Args:
        network: the network (DDP/DataParallel unwrapped here).
        input_shape: (B, C, *spatial) of the training batches.
        repeats: number of backward passes compared (>= 2).
        memory_format: layout of the input (e.g. ``torch.channels_last_3d``, as the training inferer passes it).
    """
    net = copy.deepcopy(_unwrap(network)).train()
    param = next(net.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(tuple(input_shape), generator=gen).to(device)
    if memory_format is not None:
        x = x.contiguous(memory_format=memory_format)
    reference: list[torch.Tensor] | None = None
    with torch.random.fork_rng(devices=[]):
        for _ in range(max(2, int(repeats))):
            torch.manual_seed(0)
            net.zero_grad(set_to_none=True)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
                out = net(x)
            outs = out if isinstance(out, (list, tuple)) else [out]
            sum(o.float().square().mean() for o in outs).backward()
            grads = [p.grad.detach().clone() if p.grad is not None else torch.zeros(()) for p in net.parameters()]
            if nonfinite_tensor_names(grads):
                return False
            if reference is not None and not all(torch.equal(a, b) for a, b in zip(reference, grads)):
                return False
            reference = grads
    return True


def bf16_backward_is_safe(
    network: nn.Module, input_shape: Sequence[int], memory_format: torch.memory_format | None = None
) -> tuple[bool, str]:
    """The start-up check of ``AutocastForwardInferer(amp="auto")`` for bf16 training on a CPU.

    Unsafe when :func:`convs_smaller_than_kernel` finds a convolution (the rule from the sweep in
    ``benchmarks/RESULTS.md``, deterministic) or :func:`bf16_gradients_reproducible` sees two backward passes
    disagree (defects the rule does not know). No collective under ``torch.distributed`` (the ranks call this at
    their first batch of each shape, which need not coincide): the rule gives every rank the same verdict; should
    only one rank's repeat check fail, that rank trains in fp32 and the others in bf16 (DDP averages fp32 gradients
    either way). Costs one forward and two forward+backward passes of a copy, once per input shape.

    Returns:
        ``(safe, reason)``: the reason names the first offending convolutions, or says the gradients differed.
    """
    small = convs_smaller_than_kernel(network, input_shape)
    if small:
        return False, f"convolutions see inputs smaller than their kernels ({'; '.join(small[:3])})"
    if not bf16_gradients_reproducible(network, input_shape, memory_format=memory_format):
        return False, "two bf16 backward passes on the same input gave different (or non-finite) gradients"
    return True, ""
