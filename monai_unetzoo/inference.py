"""Sliding-window inference: one predictor for every bundle and for the batch CLI.

:class:`SlidingWindowPredictor` is MONAI's :class:`~monai.inferers.SlidingWindowInferer` (so it can be the
``inferer`` of a ``SupervisedEvaluator`` in a bundle config) with the per-window work that MONAI leaves to the caller:

* the network runs in eval mode and under ``torch.inference_mode`` (blending under ``no_grad``);
* optional automatic mixed precision (``torch.autocast``; bf16 or fp16 on CUDA, bf16 on CPUs with native bf16);
* a deep-supervision network's list/tuple output yields its first (final, full-resolution) head;
* the activation (softmax over channels, or sigmoid) is applied **per window**, before blending;
* optional mirroring test-time augmentation (TTA) over chosen spatial axes, averaged in probability space;
* windows are fed in channels-last memory format, which lets oneDNN/cuDNN pick their fast NDHWC kernels without
  touching the caller's network (measured on this project's 2-core AVX-512 machines, 1 thread: a 16->16 3x3x3 conv
  on a 96^3 window 170 -> 115 ms, an 8->8 conv on two 32^3 windows 7.1 -> 3.5 ms).

Batching windows matters on CPU: for a batch of ONE window PyTorch (2.x) sends fp32 convolutions with few input
channels (C_in * D * H < 20480, e.g. every first layer with C_in = 1, or 8 channels at 32^3) to its slow
``slow_conv3d`` fallback instead of oneDNN (5x slower at 32^3), so keep ``sw_batch_size >= 2`` (default 4; MONAI's
default is 1). bf16 autocast always uses oneDNN.

Reference design: the sliding-window prediction of nnU-Net (Isensee et al. 2021, "nnU-Net: a self-configuring
method for deep learning-based biomedical image segmentation", Nature Methods 18:203-211): Gaussian importance
weighting of overlapping windows (overlap 0.5), softmax per window, mirroring TTA over all combinations of the chosen
axes averaged after the softmax, argmax at the end. Blending and the full-volume accumulator are MONAI's
``sliding_window_inference``; what is written here is only the per-window function and the dtype/device/mode
handling around it, because MONAI has no inferer that applies an activation or TTA inside the window loop (MONAI's
``TestTimeAugmentation`` inverts random transforms over whole volumes, i.e. one full-volume output per augmentation).

Returned scores are **probabilities** (after the activation, averaged over the TTA flips) in float32, shape
(B, C, *spatial) like the input; :func:`scores_to_labels` / :meth:`SlidingWindowPredictor.predict_labels` turn them
into a label map (argmax, or threshold for one channel / sigmoid multi-label outputs).
"""

from __future__ import annotations

import itertools
import os
import platform
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn
from monai.data.meta_tensor import MetaTensor
from monai.inferers import SlidingWindowInferer
from monai.inferers.utils import sliding_window_inference
from monai.utils import BlendMode, PytorchPadMode

__all__ = [
    "ProbabilityEnsemble",
    "SlidingWindowPredictor",
    "WindowScoreFunction",
    "scores_to_labels",
    "cpu_has_native_bf16",
    "resolve_autocast_dtype",
    "mirror_axis_combinations",
    "channels_last_network",
]

_ACTIVATIONS = ("softmax", "sigmoid", None)
_AMP_NAMES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
}
_AMP_OFF = {"none", "off", "fp32", "float32", "false", ""}


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (x86: AVX512-BF16 or AMX-BF16; aarch64: the BF16 extension).

    Without native support PyTorch emulates bf16 on CPU, which is slower than fp32, so ``amp="auto"`` stays fp32
    there. Detection: ``torch.cpu.get_capabilities()`` (PyTorch >= 2.5 on x86), else the private
    ``torch.cpu._is_avx512_bf16_supported`` / ``_is_amx_tile_supported`` probes, else the flags of
    ``/proc/cpuinfo`` (Linux), else False.
    """
    try:
        caps = torch.cpu.get_capabilities()  # type: ignore[attr-defined]
        if isinstance(caps, dict) and any(k in caps for k in ("avx512_bf16", "amx_bf16")):
            return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))
    except Exception:  # older torch, or a platform without cpuinfo support
        pass
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        fn = getattr(torch.cpu, probe, None)
        try:
            if fn is not None and fn():
                return True
        except Exception:
            pass
    if os.path.exists("/proc/cpuinfo"):
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                for line in f:
                    key = line.split(":", 1)[0].strip().lower()
                    if key in ("flags", "features"):
                        flags = set(line.split(":", 1)[1].split())
                        if platform.machine().lower() in ("aarch64", "arm64"):
                            return "bf16" in flags
                        return bool(flags & {"avx512_bf16", "amx_bf16"})
        except OSError:
            pass
    return False


def resolve_autocast_dtype(amp: str | bool | torch.dtype | None, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype for windows computed on ``device``, or None for plain fp32.

    Args:
        amp: ``None``/``False``/``"fp32"``: no autocast. ``"bf16"``, ``"fp16"`` or a ``torch.dtype``: that dtype
            (on CPU, fp16 and non-native bf16 are emulated and slow; a warning says so). ``"auto"``/``True``: on
            CUDA bf16 where ``torch.cuda.is_bf16_supported()`` (Ampere and later) else fp16; on CPU bf16 when
            :func:`cpu_has_native_bf16` else None; None on any other device type.
        device: where the network runs (the predictor's ``sw_device``).
    """
    dev = torch.device(device)
    if amp is None or amp is False:
        return None
    if isinstance(amp, torch.dtype):
        dtype: torch.dtype | None = amp
    elif amp is True or (isinstance(amp, str) and amp.lower() == "auto"):
        if dev.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if dev.type == "cpu":
            return torch.bfloat16 if cpu_has_native_bf16() else None
        return None
    elif isinstance(amp, str) and amp.lower() in _AMP_OFF:
        return None
    elif isinstance(amp, str) and amp.lower() in _AMP_NAMES:
        dtype = _AMP_NAMES[amp.lower()]
    else:
        raise ValueError(f"amp must be None, 'auto', 'bf16', 'fp16', 'fp32', a bool or a torch dtype; got {amp!r}.")
    if dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"autocast dtype must be torch.bfloat16 or torch.float16, got {dtype}.")
    if dev.type == "cpu" and (dtype == torch.float16 or not cpu_has_native_bf16()):
        warnings.warn(
            f"amp={amp!r} on a CPU without native {dtype} support: PyTorch emulates it, which is usually slower than"
            " fp32 (use amp='auto' to enable autocast only where it pays).",
            stacklevel=3,
        )
    return dtype


def mirror_axis_combinations(tta_axes: Sequence[int] | int | None, spatial_dims: int) -> list[tuple[int, ...]]:
    """All subsets of ``tta_axes`` (spatial axes, 0-based) as tensor dims of a (B, C, *spatial) tensor.

    The identity (empty tuple) comes first; ``len == 2 ** len(set(tta_axes))``, as nnU-Net's mirroring TTA.
    Negative axes count from the last spatial axis.
    """
    if tta_axes is None:
        return [()]
    axes = (tta_axes,) if isinstance(tta_axes, int) else tuple(tta_axes)
    norm: list[int] = []
    for a in axes:
        if not -spatial_dims <= int(a) < spatial_dims:
            raise ValueError(f"tta_axes {tuple(axes)}: axis {a} is out of range for {spatial_dims} spatial dims.")
        a = int(a) % spatial_dims
        if a not in norm:
            norm.append(a)
    dims = [a + 2 for a in sorted(norm)]
    return [c for r in range(len(dims) + 1) for c in itertools.combinations(dims, r)]


class ProbabilityEnsemble(nn.Module):
    """Several networks of one bundle (e.g. cross-validation folds) as one: ``forward(x)`` is the mean of the
    members' *activated* outputs (softmax or sigmoid probabilities, float32), as nnU-Net ensembles folds.

    ``x (B, C_in, *spatial) -> (B, C, *spatial)`` probabilities. :class:`SlidingWindowPredictor` sees
    ``returns_probabilities`` and does not activate again, so an ensemble runs window by window like one network:
    no full-volume copy per member. Members run under the caller's autocast; the activation and the mean run in
    float32 with autocast off. With identical members the result equals one member's exactly.

    Args:
        members: the networks (same input/output channels), in eval mode.
        activation: ``"softmax"`` (over channels) or ``"sigmoid"``.
    """

    returns_probabilities = True

    def __init__(self, members: Sequence[nn.Module], activation: str = "softmax") -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member network.")
        if activation not in ("softmax", "sigmoid"):
            raise ValueError(f"activation must be 'softmax' or 'sigmoid', got {activation!r}.")
        self.members = nn.ModuleList(members)
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total: torch.Tensor | None = None
        for member in self.members:
            out = member(x)
            out = out[0] if isinstance(out, (list, tuple)) else out  # deep supervision: the final head
            with torch.autocast(device_type=x.device.type, enabled=False):
                out = out.float()
                prob = torch.softmax(out, dim=1) if self.activation == "softmax" else torch.sigmoid(out)
            total = prob if total is None else total + prob
        assert total is not None
        return total / len(self.members) if len(self.members) > 1 else total


class WindowScoreFunction:
    """The per-window callable handed to MONAI's ``sliding_window_inference`` in place of the network.

    ``window (W, C_in, *roi) -> scores (W, C, *roi) float32``: for every mirroring in ``flips`` the flipped window
    goes through ``network`` (under autocast when ``autocast_dtype`` is set); a list/tuple output (deep
    supervision) yields its first element; the output is cast to float32, activated (softmax over channels or
    sigmoid), flipped back and summed; the sum is divided by the number of flips. Only window-sized tensors are
    made here, so the whole volume only exists as MONAI's float32 accumulator and count map.

    The network runs under ``torch.inference_mode`` (``inference_mode=True``) or ``torch.no_grad``; what this
    function returns is an ordinary tensor either way (outputs of ops applied outside inference mode are ordinary
    tensors; a window-sized clone where no op follows), so that the stitched volume is an ordinary tensor that
    downstream post-processing may modify in place.
    """

    def __init__(
        self,
        network: Callable[..., Any],
        activation: str | None = "softmax",
        flips: Sequence[tuple[int, ...]] = ((),),
        autocast_dtype: torch.dtype | None = None,
        autocast_device_type: str = "cpu",
        channels_last: bool = True,
        inference_mode: bool = True,
    ) -> None:
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {_ACTIVATIONS}, got {activation!r}.")
        self.network = network
        self.activation = activation
        self.flips = [tuple(f) for f in flips] or [()]
        self.autocast_dtype = autocast_dtype
        self.autocast_device_type = autocast_device_type
        self.channels_last = channels_last
        self.inference_mode = inference_mode

    def _forward(self, window: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        grad_ctx = torch.inference_mode() if self.inference_mode else torch.no_grad()
        with grad_ctx:
            if self.autocast_dtype is not None:
                with torch.autocast(device_type=self.autocast_device_type, dtype=self.autocast_dtype):
                    out = self.network(window, *args, **kwargs)
            else:
                out = self.network(window, *args, **kwargs)
        if isinstance(out, (list, tuple)):  # deep supervision: index 0 is the final, full-resolution head
            if len(out) == 0:
                raise ValueError("the network returned an empty list/tuple of outputs.")
            out = out[0]
        if isinstance(out, dict):
            raise TypeError("SlidingWindowPredictor needs a network returning a tensor or a list/tuple of tensors, got a dict.")
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"the network returned {type(out).__name__}, expected a torch.Tensor.")
        if out.ndim != window.ndim or out.shape[0] != window.shape[0]:
            raise ValueError(
                f"the network output has shape {tuple(out.shape)} for a window of shape {tuple(window.shape)};"
                " expected (W, C, *spatial) with the same number W of windows."
            )
        out = out.float()  # activation, TTA sum and blending in fp32, whatever autocast produced
        if getattr(self.network, "returns_probabilities", False):
            pass  # a ProbabilityEnsemble: its members' probabilities are already averaged
        elif self.activation == "softmax":
            if out.shape[1] == 1:
                raise ValueError(
                    "activation='softmax' on a 1-channel network output is 1 everywhere; use activation='sigmoid'"
                    " (or None) for single-channel networks."
                )
            out = torch.softmax(out, dim=1)
        elif self.activation == "sigmoid":
            out = torch.sigmoid(out)
        if out.is_inference() and not torch.is_inference_mode_enabled():
            out = out.clone()  # a normal (window-sized) tensor: MONAI's blending scales it in place
        return out

    def __call__(self, window: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.channels_last and window.ndim in (4, 5):
            # (W, C, *roi) in NHWC/NDHWC strides: conv layers then run their channels-last kernels end to end.
            window = window.contiguous(memory_format=torch.channels_last if window.ndim == 4 else torch.channels_last_3d)
        condition = kwargs.get("condition")  # MONAI's optional per-window conditioning tensor flips with the window
        total: torch.Tensor | None = None
        for dims in self.flips:
            if dims:
                if isinstance(condition, torch.Tensor):
                    kwargs["condition"] = torch.flip(condition, dims)
                out = torch.flip(self._forward(torch.flip(window, dims), *args, **kwargs), dims)
            else:
                if condition is not None:
                    kwargs["condition"] = condition
                out = self._forward(window, *args, **kwargs)
            total = out if total is None else total.add_(out)
        assert total is not None
        if len(self.flips) > 1:
            total.div_(len(self.flips))
        return total


def channels_last_network(network: nn.Module) -> nn.Module:
    """Put the convolution weights of a 2D or 3D ``network`` in channels-last memory format, in place; returns it.

    Values are unchanged, only strides: (O, I, H, W) weights become ``torch.channels_last``, (O, I, D, H, W) weights
    ``torch.channels_last_3d``. A network mixing 2D and 3D weights, or without any, is returned as it is.

    Why: :class:`SlidingWindowPredictor` feeds windows in channels-last, and oneDNN convolutions then run end to end
    in NDHWC only when the weights are channels-last as well; with channels-first weights every layer converts.
    Measured with ``benchmarks/sliding_window.py --threads 2 --features 16 32 64 128`` (ROI 96^3, bf16, 2 CPU
    threads) before and after its predictor rows used this: example_ct ResUNet 8.31 -> 4.90 s, UNet++ 11.26 ->
    6.72 s; the 256x256x128 volume ResUNet 48.4 -> 24.6 s (``benchmarks/RESULTS.md``). The bundles build their
    networks this way (``network_memory_format``); the batch CLI calls this after loading a checkpoint.
    """
    dims = {p.dim() for p in network.parameters() if p.dim() in (4, 5)}
    if len(dims) != 1:
        return network
    fmt = torch.channels_last if dims == {4} else torch.channels_last_3d
    with torch.no_grad():
        return network.to(memory_format=fmt)


def _has_channels_first_conv_weights(network: nn.Module, ndim: int) -> bool:
    """True when a weight of ``network`` with ``ndim`` dims and more than one input channel is channels-first."""
    fmt = torch.channels_last if ndim == 4 else torch.channels_last_3d
    for p in network.parameters():
        if p.dim() == ndim and p.shape[1] > 1 and p.shape[2:].numel() > 1:
            return not p.is_contiguous(memory_format=fmt)
    return False


def _first_parameter_device(network: Any) -> torch.device | None:
    """Device of the first parameter (or buffer) of an ``nn.Module``; None for other callables or empty modules."""
    if isinstance(network, nn.Module):
        for t in itertools.chain(network.parameters(), network.buffers()):
            return t.device
    return None


class SlidingWindowPredictor(SlidingWindowInferer):
    """Sliding-window predictor returning per-class probabilities; a MONAI ``SlidingWindowInferer``.

    ``predictor(image, network)``: ``image`` (B, C_in, *spatial) tensor or MetaTensor (2D or 3D) ->
    (B, C, *spatial) float32 scores on ``device``: softmax probabilities (``activation="softmax"``, default),
    sigmoid probabilities, or raw network outputs (``activation=None``), each averaged over the TTA mirrorings.
    ``scores.argmax(1)`` (or ``scores > 0.5`` for one channel) is the prediction; see :meth:`predict_labels`.

    Args:
        roi_size: window size per spatial dim; non-positive entries take the image size (MONAI's rule).
        sw_batch_size: windows per network call.
        overlap: fraction of overlap between neighbouring windows (nnU-Net: 0.5).
        mode: ``"gaussian"`` (nnU-Net's importance weighting, default) or ``"constant"`` blending.
        amp: autocast for the network: None/``"fp32"`` (off), ``"bf16"``, ``"fp16"`` or ``"auto"`` (bf16/fp16 on
            CUDA, bf16 on CPUs with native bf16, else off); see :func:`resolve_autocast_dtype`. Activation, TTA
            averaging and blending always run in float32, so the output is float32 either way.
        tta_axes: spatial axes (0-based; e.g. ``(0, 1, 2)``) to mirror for test-time augmentation; every subset is
            used (``2 ** len(tta_axes)`` network passes per window) and the activated outputs are averaged.
        sw_device: where windows run. Default: the device of the network's parameters (``nn.Module``), else the
            input's device. Put the network there yourself; it is not moved.
        device: where the full-volume accumulator lives and the output is returned. Default: the input's device.
            ``sw_device="cuda", device="cpu"`` runs windows on the GPU and keeps volumes that do not fit in GPU memory
            on the CPU.
        activation: ``"softmax"`` (over channels; needs C >= 2), ``"sigmoid"`` or None (raw outputs).
        sigma_scale, padding_mode, cval, progress, cpu_thresh, buffer_steps, buffer_dim, with_coord: as in MONAI's
            ``SlidingWindowInferer``.
        cache_roi_weight_map: compute the Gaussian weight map once (when ``roi_size`` is fully positive).
        channels_last: feed windows in channels-last memory format (faster oneDNN/cuDNN convolutions; no effect on
            values beyond floating-point summation order). Put the network's weights in channels-last as well
            (:func:`channels_last_network`; the bundles and the batch CLI do): mixed formats convert at every layer
            and were 1.7-2.0x slower on CPU. The predictor does not change your module; it warns once when the formats
            differ.
        eval_mode: put an ``nn.Module`` network in eval mode for the call and restore each submodule's
            ``training`` flag afterwards (so dropout is off, batch norm uses running statistics and UNet++ returns its
            pruned single head). With False the caller is responsible (``SupervisedEvaluator`` calls ``eval()``).
        inference_mode: run the network under ``torch.inference_mode`` (default) rather than ``torch.no_grad``.
            Blending runs under ``torch.no_grad`` and the output is an ordinary tensor (no autograd history), which
            post-processing may modify in place; an inference-mode output would forbid that outside inference mode.

    Memory (N voxels per image, B images, C_in input channels, C output classes, R voxels per window, float32):
    on ``device`` the input cast to float32 (``4*B*C_in*N`` bytes; shared with the input when it already is float32
    there), MONAI's accumulator ``4*B*C*N`` and count map ``4*N``; padded copies of the input and output are added
    only when the volume is smaller than ``roi_size`` along some axis. No other full-volume tensor is made: the
    activation and the TTA mean are applied per window. On ``sw_device`` per network call: the network's
    activations for ``sw_batch_size`` windows (in the autocast dtype) plus about ``3*4*sw_batch_size*C*R`` bytes
    (window output, TTA sum, weighted copy). So a 512x512x300 CT (N = 78.6 M) with C = 3 needs about
    ``4*N*(1+3+1)`` = 1.6 GB plus the window working set, which the network's activations dominate: measured with
    ``benchmarks/inference.py`` (peak RSS minus the RSS before the call, 1x1x256x256x128 volume, ROI 96^3,
    ``sw_batch_size=4``, ResUNet features 8..128) about 1.3 GB in fp32 and 0.7 GB under bf16 autocast, of which the
    volume-sized buffers are 0.17 GB. Lower ``sw_batch_size`` or ``roi_size`` to shrink the working set.
    :meth:`predict_labels` adds the label map (``N`` bytes for uint8) and a float32 running maximum over slabs of
    ``scores_to_labels``'s ``chunk_voxels`` while the scores are alive.
    """

    def __init__(
        self,
        roi_size: Sequence[int] | int,
        sw_batch_size: int = 4,
        overlap: Sequence[float] | float = 0.5,
        mode: BlendMode | str = BlendMode.GAUSSIAN,
        amp: str | bool | torch.dtype | None = None,
        tta_axes: Sequence[int] | int | None = None,
        sw_device: torch.device | str | None = None,
        device: torch.device | str | None = None,
        activation: str | None = "softmax",
        sigma_scale: Sequence[float] | float = 0.125,
        padding_mode: PytorchPadMode | str = PytorchPadMode.CONSTANT,
        cval: float = 0.0,
        progress: bool = False,
        cache_roi_weight_map: bool = True,
        cpu_thresh: int | None = None,
        buffer_steps: int | None = None,
        buffer_dim: int = -1,
        with_coord: bool = False,
        channels_last: bool = True,
        eval_mode: bool = True,
        inference_mode: bool = True,
    ) -> None:
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {_ACTIVATIONS}, got {activation!r}.")
        if int(sw_batch_size) < 1:
            raise ValueError(f"sw_batch_size must be >= 1, got {sw_batch_size}.")
        if isinstance(amp, str) and amp.lower() not in set(_AMP_NAMES) | _AMP_OFF | {"auto"}:
            raise ValueError(f"amp must be None, 'auto', 'bf16', 'fp16' or 'fp32'; got {amp!r}.")
        cacheable = not isinstance(roi_size, int) and all(r is not None and int(r) > 0 for r in roi_size)
        super().__init__(
            roi_size=roi_size,
            sw_batch_size=int(sw_batch_size),
            overlap=overlap,
            mode=mode,
            sigma_scale=sigma_scale,
            padding_mode=padding_mode,
            cval=cval,
            sw_device=sw_device,
            device=device,
            progress=progress,
            cache_roi_weight_map=bool(cache_roi_weight_map and cacheable),
            cpu_thresh=cpu_thresh,
            buffer_steps=buffer_steps,
            buffer_dim=buffer_dim,
            with_coord=with_coord,
        )
        self.amp = amp
        self.tta_axes = tta_axes
        self.activation = activation
        self.channels_last = channels_last
        self.eval_mode = eval_mode
        self.inference_mode = inference_mode
        self._warned_channels_first = False

    def window_function(self, network: Callable[..., Any], spatial_dims: int, sw_device: torch.device) -> WindowScoreFunction:
        """The per-window callable for ``network`` running on ``sw_device`` (see :class:`WindowScoreFunction`)."""
        return WindowScoreFunction(
            network,
            activation=self.activation,
            flips=mirror_axis_combinations(self.tta_axes, spatial_dims),
            autocast_dtype=resolve_autocast_dtype(self.amp, sw_device),
            autocast_device_type=sw_device.type,
            channels_last=self.channels_last,
            inference_mode=self.inference_mode,
        )

    def __call__(  # type: ignore[override]
        self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        """Scores (B, C, *spatial) float32 on ``device`` for ``inputs`` (B, C_in, *spatial).

        ``args``/``kwargs`` go to the network (MONAI's ``condition`` kwarg is windowed and mirrored with the input);
        ``device``, ``buffer_steps`` and ``buffer_dim`` kwargs override the constructor's for this call.
        """
        if not isinstance(inputs, torch.Tensor):
            raise TypeError(f"inputs must be a torch.Tensor of shape (B, C_in, *spatial), got {type(inputs).__name__}.")
        if inputs.ndim not in (4, 5):
            raise ValueError(f"inputs must be (B, C_in, H, W) or (B, C_in, D, H, W), got shape {tuple(inputs.shape)}.")
        if inputs.shape[0] == 0 or any(s == 0 for s in inputs.shape[1:]):
            raise ValueError(f"inputs has an empty dimension: shape {tuple(inputs.shape)}.")
        if not isinstance(self.roi_size, int) and len(self.roi_size) != inputs.ndim - 2:
            raise ValueError(
                f"roi_size {tuple(self.roi_size)} has {len(self.roi_size)} dims but inputs of shape "
                f"{tuple(inputs.shape)} have {inputs.ndim - 2} spatial dims."
            )
        device = kwargs.pop("device", self.device)
        buffer_steps = kwargs.pop("buffer_steps", self.buffer_steps)
        buffer_dim = kwargs.pop("buffer_dim", self.buffer_dim)
        if device is None and self.cpu_thresh is not None and inputs.shape[2:].numel() > self.cpu_thresh:
            device = "cpu"  # stitch in CPU memory when the volume is large (MONAI's rule)
        net_device = _first_parameter_device(network)
        sw_device = self.sw_device if self.sw_device is not None else net_device
        sw_device = torch.device(sw_device) if sw_device is not None else inputs.device
        if net_device is not None and net_device.type != sw_device.type:
            raise ValueError(
                f"the network's parameters are on {net_device} but windows would run on sw_device={sw_device}; move"
                " the network there (network.to(sw_device)) or leave sw_device=None to follow the network."
            )
        if inputs.dtype != torch.float32:
            # MONAI accumulates in the input dtype: float32 keeps the accumulator at 4 bytes/voxel/class.
            inputs = inputs.to(torch.float32)
        window_fn = self.window_function(network, inputs.ndim - 2, sw_device)
        if (
            self.channels_last
            and not self._warned_channels_first
            and isinstance(network, nn.Module)
            and _has_channels_first_conv_weights(network, inputs.ndim)
        ):
            self._warned_channels_first = True
            warnings.warn(
                "SlidingWindowPredictor(channels_last=True) got a network with channels-first convolution weights:"
                " every layer then converts memory formats (measured 1.7-2.0x slower on CPU). Call"
                " monai_unetzoo.inference.channels_last_network(network) once, or pass channels_last=False.",
                stacklevel=2,
            )

        modes: list[tuple[nn.Module, bool]] = []
        if self.eval_mode and isinstance(network, nn.Module):
            modes = [(m, m.training) for m in network.modules()]
            network.eval()
        try:
            with torch.no_grad():
                out = sliding_window_inference(
                    inputs,
                    self.roi_size,
                    self.sw_batch_size,
                    window_fn,
                    self.overlap,
                    self.mode,
                    self.sigma_scale,
                    self.padding_mode,
                    self.cval,
                    sw_device,
                    device,
                    self.progress,
                    self.roi_weight_map,
                    None,
                    buffer_steps,
                    buffer_dim,
                    self.with_coord,
                    *args,
                    **kwargs,
                )
        finally:
            for m, training in modes:
                m.training = training
        return out  # type: ignore[return-value]

    def predict_labels(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> torch.Tensor:
        """Label map for ``inputs`` (B, C_in, *spatial): the scores of ``self(inputs, network)`` through
        :func:`scores_to_labels` -- argmax -> (B, 1, *spatial) for softmax (or raw) multi-class outputs; threshold
        (0.5 on probabilities, 0 on raw outputs) -> (B, C, *spatial) uint8 for sigmoid or single-channel outputs.
        """
        scores = self(inputs, network, *args, **kwargs)
        label_mode = "threshold" if self.activation == "sigmoid" else "auto"
        threshold = 0.5 if self.activation is not None else 0.0
        return scores_to_labels(scores, mode=label_mode, threshold=threshold)


def _smallest_label_dtype(num_classes: int) -> torch.dtype:
    if num_classes <= 256:
        return torch.uint8
    if num_classes <= 32768:
        return torch.int16
    return torch.int32


def _channel_argmax(scores: torch.Tensor, out: torch.Tensor) -> None:
    """``out[:] = scores.argmax(dim=1)`` for ``scores`` (B, C, *spatial) into ``out`` (B, *spatial), class by class.

    Why not ``torch.argmax(dim=1)``: on CPU its reduction over a strided (non-innermost) dimension is 5-30x slower
    than C-1 elementwise passes (measured on 2 threads: (1, 3, 128^3) float32 367 vs 17 ms, a hippocampus case
    (1, 3, 42x51x28) 10.6 vs 0.7 ms, (1, 14, 64x128x128) 207 vs 44 ms), and it was the largest single cost of a
    hippocampus prediction after the network. Same answer, ties and NaN included: the first maximal index wins, and
    the first NaN wins over every number (as ``torch.argmax``).
    """
    best = scores[:, 0].clone()
    out.zero_()
    for k in range(1, scores.shape[1]):
        candidate = scores[:, k]
        wins = ~(candidate <= best)  # candidate > best, or candidate is NaN ...
        wins &= best == best  # ... unless an earlier class already was NaN
        out.masked_fill_(wins, k)
        torch.maximum(best, candidate, out=best)  # NaN propagates: later classes cannot win over it


def scores_to_labels(
    scores: torch.Tensor, mode: str = "auto", threshold: float = 0.5, chunk_voxels: int = 1 << 24
) -> torch.Tensor:
    """Discrete prediction from class scores (B, C, *spatial).

    Args:
        scores: probabilities or logits, e.g. the output of :class:`SlidingWindowPredictor`.
        mode: ``"argmax"`` -> (B, 1, *spatial) class indices in the smallest integer dtype that holds C classes
            (uint8 up to 256 classes; ties go to the lowest index, as ``torch.argmax``); ``"threshold"`` ->
            (B, C, *spatial) uint8, ``scores > threshold`` per channel (one-channel foreground, or multi-label
            sigmoid outputs); ``"auto"``: argmax for C > 1, threshold for C == 1.
        threshold: for ``"threshold"``: 0.5 for probabilities, 0.0 for logits.
        chunk_voxels: the argmax runs over slabs of about this many voxels along the first spatial axis, so that
            its float32 running maximum never exists for the whole volume (4 bytes/voxel).

    A MetaTensor input gives a MetaTensor with the same metadata (affine etc.).
    """
    if not isinstance(scores, torch.Tensor) or scores.ndim < 3:
        shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ValueError(f"scores must be a (B, C, *spatial) tensor, got {shape}.")
    if mode not in ("auto", "argmax", "threshold"):
        raise ValueError(f"mode must be 'auto', 'argmax' or 'threshold', got {mode!r}.")
    num_classes = scores.shape[1]
    if mode == "auto":
        mode = "argmax" if num_classes > 1 else "threshold"
    plain = scores.as_tensor() if isinstance(scores, MetaTensor) else scores
    if mode == "threshold":
        labels = (plain > threshold).to(torch.uint8)
    else:
        b, _, first, *rest = plain.shape
        labels = torch.empty((b, 1, first, *rest), dtype=_smallest_label_dtype(num_classes), device=plain.device)
        per_row = max(1, int(torch.Size(rest).numel()) * num_classes * b)
        step = max(1, chunk_voxels // per_row)
        for s in range(0, first, step):
            _channel_argmax(plain[:, :, s : s + step], labels[:, 0, s : s + step])
    if isinstance(scores, MetaTensor):
        labels = MetaTensor(labels).copy_meta_from(scores, copy_attr=False)
    return labels
