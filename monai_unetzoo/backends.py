"""Inference backends: what runs the network on each sliding-window batch (``--backend`` of ``unetzoo predict``).

A backend turns a bundle's network into a *window network*: a callable ``window (W, C_in, *roi) float32 ->
logits (W, C, *roi)`` that :class:`~monai_unetzoo.inference.SlidingWindowPredictor` calls in place of the
``nn.Module`` (activation, mirroring TTA and blending stay the predictor's, in float32).

* ``eager``: the module itself, under the predictor's autocast (the default; needs nothing else).
* ``compile``: ``torch.compile`` (inductor) of a copy of the network whose weights
  are cast once to the inference dtype and put channels-last; one graph per window shape and batch bucket (a batch
  of W windows is zero-padded to the next power of two, capped at ``sw_batch_size``: at most
  ``log2(sw_batch_size) + 1`` graphs, and a case of one window -- a Task04 volume is smaller than its window -- runs
  one window, not ``sw_batch_size``). Inductor's on-disk caches (FX graph, kernels) live in
  ``<cache>/compile/<key>`` so a second process pays no compile time.
* ``onnxruntime`` / ``openvino``: the network exported once to ONNX (dynamic batch, fixed window) into
  ``<cache>/<backend>/<key>.onnx`` and run by that runtime on the CPU (onnxruntime in fp32 -- its CPU provider has
  no bf16 convolutions --, OpenVINO in bf16 or fp32 through its inference-precision hint).

Why a key and not just the checkpoint's file name: a cached model is reused only when it was made from the same
weights (the checkpoint's SHA-256, else a hash of the state dict), the same network definition (its ``repr`` and the
source files of its classes), window, batch, dtype and the same versions of torch, MONAI and the runtime; anything
else gets a new key, so a changed checkpoint never reuses a stale compiled or exported model. ``auto`` is chosen
by measurement on the machine that runs it: :mod:`monai_unetzoo.backend_choice`.

The cache folder is ``$UNETZOO_CACHE_DIR``, else ``$XDG_CACHE_HOME/monai-unetzoo``, else ``~/.cache/monai-unetzoo``.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import json
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn

__all__ = [
    "BACKENDS",
    "BACKEND_CHOICES",
    "backend_unavailable_reason",
    "unetzoo_cache_dir",
    "window_model_key",
    "build_window_network",
    "CompiledWindowNetwork",
    "OnnxRuntimeWindowNetwork",
    "OpenVinoWindowNetwork",
]

BACKENDS = ("eager", "compile", "onnxruntime", "openvino")
BACKEND_CHOICES = ("auto", *BACKENDS)
#: backend -> (pip extra, modules it imports)
_BACKEND_NEEDS = {"onnxruntime": ("onnx", ("onnxruntime",)), "openvino": ("openvino", ("openvino",))}
_DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def _importable(module: str) -> bool:
    """Whether ``module`` imports (an installed but broken runtime counts as missing)."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def backend_unavailable_reason(name: str) -> str | None:
    """None when backend ``name`` can run here, else a message naming the extra to install."""
    if name not in BACKEND_CHOICES:
        return f"unknown backend {name!r}; choose one of {', '.join(BACKEND_CHOICES)}"
    if name not in _BACKEND_NEEDS:
        return None
    extra, modules = _BACKEND_NEEDS[name]
    missing = [m for m in modules if not _importable(m)]
    if missing:
        return (f"--backend {name} needs {', '.join(missing)}, which is not installed: "
                f"pip install 'monai-unetzoo[{extra}]' (or use --backend eager)")
    return None


def unetzoo_cache_dir() -> Path:
    """The folder for compiled and exported models (see the module docstring); not created here."""
    if os.environ.get("UNETZOO_CACHE_DIR"):
        return Path(os.environ["UNETZOO_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "monai-unetzoo"


def _library_versions(backend: str) -> dict[str, str]:
    """Versions that change what a cached model contains or how it is read."""
    from importlib.metadata import PackageNotFoundError, version

    names = {"compile": [], "onnxruntime": ["onnx", "onnxruntime"], "openvino": ["openvino"]}
    found = {}
    for pkg in ["torch", "monai", *names.get(backend, [])]:
        try:
            found[pkg] = version(pkg)
        except PackageNotFoundError:
            found[pkg] = "absent"
    return found


def _state_dict_sha256(network: nn.Module) -> str:
    """SHA-256 of the network's parameters and buffers (names, dtypes, shapes, values), for networks without a file."""
    h = hashlib.sha256()
    for name, t in network.state_dict().items():
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _network_code_sha256(network: nn.Module) -> str:
    """SHA-256 of the source files defining the network's module classes: a changed ``forward`` (same ``repr``, same
    weights) must not reuse a model traced from the old code."""
    import inspect

    files = set()
    for m in network.modules():
        try:
            files.add(inspect.getsourcefile(type(m)) or "")
        except TypeError:  # a class without a source file (built-in)
            continue
    h = hashlib.sha256()
    for f in sorted(f for f in files if f and os.path.isfile(f)):
        h.update(Path(f).read_bytes())
    return h.hexdigest()


def window_model_key(backend: str, network: nn.Module, weights_sha256: str, window_shape: Sequence[int],
                     batch: int, dtype: torch.dtype) -> str:
    """The cache key of a compiled/exported model: a hash of everything it depends on (module docstring)."""
    parts = {
        "backend": backend,
        "weights": weights_sha256 or _state_dict_sha256(network),
        "network": repr(network),
        "code": _network_code_sha256(network),
        "window": [int(s) for s in window_shape],
        "batch": int(batch),
        "dtype": _DTYPE_NAMES.get(dtype, str(dtype)),
        "versions": _library_versions(backend),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def _memory_format(ndim: int) -> torch.memory_format:
    return torch.channels_last if ndim == 4 else torch.channels_last_3d


def _inference_copy(network: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A copy of ``network`` in eval mode with its weights cast once to ``dtype`` and channels-last (the caller's
    module is untouched), so that no per-call autocast casts remain."""
    from .inference import channels_last_network

    net = copy.deepcopy(network).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return channels_last_network(net.to(dtype))


class CompiledWindowNetwork:
    """``torch.compile`` of a network for one window shape: ``(W <= batch, C_in, *roi) -> (W, C, *roi)``.

    The windows are cast to the weights' dtype, zero-padded to :meth:`bucket` ``(W)`` rows (the padded rows are
    dropped from the output) and fed channels-last; each bucket is its own static graph (``dynamic=False``),
    compiled the first time a batch of its size comes, with inductor's caches in ``cache_dir`` (a second process
    with the same key loads the compiled code from there). Only the buckets a run meets are compiled.
    """

    def __init__(self, network: nn.Module, window_shape: Sequence[int], batch: int, dtype: torch.dtype,
                 cache_dir: Path):
        self.window_shape, self.batch, self.dtype = tuple(int(s) for s in window_shape), int(batch), dtype
        self.cache_dir = cache_dir
        self.network = _inference_copy(network, dtype)
        self.compiled = torch.compile(self.network, dynamic=False)
        self.compiled_buckets: set[int] = set()

    def bucket(self, windows: int) -> int:
        """Rows a call with ``windows`` windows is padded to: the next power of two, at most ``batch``."""
        return min(self.batch, 1 << max(0, int(windows) - 1).bit_length())

    def _padded(self, window: torch.Tensor) -> torch.Tensor:
        if tuple(window.shape[1:]) != self.window_shape or not 0 < window.shape[0] <= self.batch:
            raise ValueError(f"compiled for windows of {self.window_shape} in batches of <= {self.batch}, got "
                             f"{tuple(window.shape)}")
        x = window.to(self.dtype)
        rows = self.bucket(x.shape[0])
        if x.shape[0] < rows:
            x = torch.cat([x, x.new_zeros((rows - x.shape[0], *self.window_shape))])
        return x.contiguous(memory_format=_memory_format(x.ndim))

    def _compile_call(self, x: torch.Tensor) -> Any:
        """Call (and so compile) the graph for the bucket of ``x``, with inductor's caches in ``cache_dir``.

        Freezing (weights folded into the graph as oneDNN-packed constants) stays off: inductor cannot pickle
        those, so its FX graph cache is bypassed and every process compiles again (measured: 33 s per process with
        freezing, 10 s on a cache hit without, hippocampus window 40x56x40, batch 4, 2 threads)."""
        from torch._inductor import config as inductor_config
        from torch._inductor.runtime.cache_dir_utils import temporary_cache_dir

        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with temporary_cache_dir(str(self.cache_dir)), inductor_config.patch(freezing=False), torch.inference_mode():
            out = self.compiled(x)
        self.compiled_buckets.add(int(x.shape[0]))
        return out

    def __call__(self, window: torch.Tensor) -> torch.Tensor:
        x = self._padded(window)
        if x.shape[0] in self.compiled_buckets:
            out = self.compiled(x)
        else:
            out = self._compile_call(x)
        out = out[0] if isinstance(out, (list, tuple)) else out
        return out[: window.shape[0]]


def _export_onnx(network: nn.Module, path: Path, window_shape: Sequence[int]) -> None:
    """Export ``network`` (fp32) for windows ``(N, *window_shape)`` with a dynamic batch axis, atomically: a
    partly written file never sits at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    net = _inference_copy(network, torch.float32)
    try:
        # the TorchScript-based exporter (torch.export's rejects MONAI's padding logic; see bundles/drive/README.md);
        # its tracer warnings are about shape-dependent Python branches, which a fixed window makes constant
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (torch.zeros((2, *window_shape)),), str(tmp), dynamo=False,
                              input_names=["image"], output_names=["pred"],
                              dynamic_axes={"image": {0: "windows"}, "pred": {0: "windows"}})
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _cached_onnx(backend: str, network: nn.Module, weights_sha256: str, window_shape: Sequence[int],
                 dtype: torch.dtype, cache_root: Path) -> Path:
    """The ONNX file of ``network`` for this key under ``cache_root/backend``, exported if it is not there yet."""
    key = window_model_key(backend, network, weights_sha256, window_shape, 0, dtype)
    path = cache_root / backend / f"{key}.onnx"
    if not path.is_file():
        _export_onnx(network, path, window_shape)
    return path


class OnnxRuntimeWindowNetwork:
    """An exported ONNX model run by onnxruntime's CPU provider (fp32): ``(W, C_in, *roi) -> (W, C, *roi)``."""

    def __init__(self, onnx_path: Path, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, window: torch.Tensor) -> torch.Tensor:
        x = window.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {self.input_name: x})[0])


class OpenVinoWindowNetwork:
    """An exported ONNX model compiled by OpenVINO for the CPU, in bf16 (its inference-precision hint) or fp32:
    ``(W, C_in, *roi) -> (W, C, *roi)`` float32. OpenVINO's own compiled-blob cache goes to ``cache_dir``."""

    def __init__(self, onnx_path: Path, threads: int, dtype: torch.dtype, cache_dir: Path):
        import openvino as ov

        core = ov.Core()
        cache_dir.mkdir(parents=True, exist_ok=True)
        core.set_property({"CACHE_DIR": str(cache_dir)})
        precision = {torch.bfloat16: "bf16", torch.float16: "f16"}.get(dtype, "f32")
        config = {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": int(threads),
                  "PERFORMANCE_HINT": "LATENCY"}
        self.compiled = core.compile_model(core.read_model(str(onnx_path)), "CPU", config)
        self.request = self.compiled.create_infer_request()

    def __call__(self, window: torch.Tensor) -> torch.Tensor:
        x = window.detach().to("cpu", torch.float32).contiguous().numpy()
        out = self.request.infer({0: x})
        return torch.from_numpy(next(iter(out.values())).copy())


def build_window_network(backend: str, network: nn.Module, *, window_shape: Sequence[int], batch: int,
                         dtype: torch.dtype | None, weights_sha256: str, threads: int,
                         cache_root: Path | None = None) -> Any:
    """The window network of ``backend`` for ``network`` (see the module docstring); ``eager`` returns ``network``.

    Args:
        window_shape: ``(C_in, *roi)`` of one window (all positive).
        batch: windows per call (the predictor's ``sw_batch_size``); ``compile`` pads smaller batches to it.
        dtype: the inference dtype (None: float32); onnxruntime always runs float32.
        weights_sha256: the checkpoint's SHA-256 ("" -> a hash of the state dict).
        threads: CPU threads for onnxruntime/OpenVINO.
        cache_root: default :func:`unetzoo_cache_dir`.
    """
    if backend == "eager":
        return network
    dtype = dtype or torch.float32
    root = cache_root or unetzoo_cache_dir()
    if backend == "compile":
        key = window_model_key(backend, network, weights_sha256, window_shape, batch, dtype)
        return CompiledWindowNetwork(network, window_shape, batch, dtype, root / "compile" / key)
    problem = backend_unavailable_reason(backend)
    if problem:
        raise RuntimeError(problem)
    if backend == "onnxruntime":
        path = _cached_onnx(backend, network, weights_sha256, window_shape, torch.float32, root)
        return OnnxRuntimeWindowNetwork(path, threads)
    if backend == "openvino":
        path = _cached_onnx(backend, network, weights_sha256, window_shape, dtype, root)
        return OpenVinoWindowNetwork(path, threads, dtype, root / "openvino" / "blobs")
    raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
