"""Prediction settings: what the user asked for (:class:`PredictionSettings`, ``None`` = the bundle's choice) and the
one place where they are resolved against the bundle (:meth:`PredictionSettings.resolve`), for the CLI and for a
bundle's ``run inferring`` alike."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

import torch

from .bundle import BundleConfigError, PredictionBundle
from .postprocess import parse_postprocess

__all__ = ["PredictionSettings", "ResolvedSettings", "available_cores"]

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
OUTPUT_FORMATS = ("auto", "nifti", "dicom-seg", "rtstruct")  # what each writes: predict.dicom_output


def available_cores() -> int:
    """CPU cores this process may run on (the affinity mask where the OS has one, e.g. under taskset/cgroups)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@dataclass
class PredictionSettings:
    """Run settings chosen by the user; ``None`` means "the bundle's default" (all recorded in provenance.json)."""

    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    overlap: float | None = None
    sw_batch_size: int | None = None
    tta: bool | None = None  # None: the bundle's tta_axes; True: mirror over its mirror_axes; False: off
    precision: str | None = None  # None: the bundle's inferer amp; else one of PRECISIONS
    postprocess: str | None = None  # None: the bundle's; else a parse_postprocess spec
    threads: int | None = None  # torch intra-op threads; None: the cores available
    save_probabilities: bool = False
    overwrite: bool = False
    quiet: bool = False
    preview: bool = True  # a preview PNG per case (and thumbnails in report.html)
    shard: tuple[int, int] | None = None
    output_format: str = "auto"  # see predict.dicom_output.OUTPUT_FORMATS
    push: bool = False  # store DICOM outputs back on the DICOMweb server of the input
    backend: str = "eager"  # one of monai_unetzoo.backends.BACKEND_CHOICES
    read_ahead: bool | None = None  # read the next case while this one runs (predict.prefetch); None: on a GPU

    def resolved_read_ahead(self) -> bool:
        """``read_ahead``, where None means on when the network runs on a GPU (the CPU is free to read). On the
        CPU a reader thread competes with the network's threads and measured no gain on 2 cores, with 2 threads or
        with 1 (benchmarks/RESULTS.md), so it is off there unless asked for."""
        if self.read_ahead is not None:
            return bool(self.read_ahead)
        return self.resolved_device().type != "cpu"

    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def resolve(self, bundle: PredictionBundle) -> "ResolvedSettings":
        """Concrete values for ``bundle``; raises :class:`BundleConfigError` for a request the bundle cannot meet."""
        if self.precision is not None and self.precision not in PRECISIONS:
            raise BundleConfigError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.output_format not in OUTPUT_FORMATS:
            raise BundleConfigError(f"output format must be one of {OUTPUT_FORMATS}, got {self.output_format!r}")
        if self.tta is None:
            tta_axes = bundle.tta_axes
        elif self.tta:
            tta_axes = bundle.mirror_axes if bundle.mirror_axes is not None else bundle.tta_axes
            if tta_axes is None:
                raise BundleConfigError(
                    f"--tta: the bundle '{bundle.name}' declares no mirror_axes (the axes it was trained to be "
                    "mirrored over); mirroring others can swap structures (e.g. anterior/posterior)"
                )
        else:
            tta_axes = None
        backend, precision, choice = self._backend_and_precision(bundle)
        return ResolvedSettings(
            device=str(self.resolved_device()),
            overlap=bundle.overlap if self.overlap is None else float(self.overlap),
            sw_batch_size=self._sw_batch(bundle),
            tta_axes=list(tta_axes) if tta_axes else None,
            precision=precision,
            postprocess=parse_postprocess(bundle.postprocess if self.postprocess is None else self.postprocess).describe(),
            threads=self._threads(),
            roi_size=list(bundle.roi_size),
            blend_mode=bundle.mode,
            activation=bundle.activation,
            threshold=bundle.threshold,
            output_format=self.output_format,
            backend=backend,
            backend_choice=choice,
        )

    def _auto_backend(self, bundle: PredictionBundle, precision: str) -> tuple[str, str]:
        """``--backend auto``: (backend, why) measured by :mod:`monai_unetzoo.backend_choice` (eager, with the
        reason, where it does not apply)."""
        from ..backend_choice import choose_backend_by_measurement
        from ..inference import resolve_autocast_dtype

        device = self.resolved_device()
        ensemble = len(bundle.members) > 1 or getattr(bundle.network, "returns_probabilities", False)
        if device.type != "cpu" or ensemble or any(int(r) <= 0 for r in bundle.roi_size):
            return "eager", "auto -> eager (GPU, ensemble or a window without a fixed size: nothing to measure)"
        dtype = resolve_autocast_dtype(None if precision == "fp32" else precision, device)  # precision: concrete
        bundle.network.to(device)
        choice = choose_backend_by_measurement(
            bundle.network, window_shape=(bundle.in_channels, *bundle.roi_size), batch=self._sw_batch(bundle),
            precision=precision, dtype=dtype, weights_sha256=bundle.checkpoint_sha256, threads=self._threads())
        return choice.backend, choice.describe()

    def _sw_batch(self, bundle: PredictionBundle) -> int:
        return bundle.sw_batch_size if self.sw_batch_size is None else int(self.sw_batch_size)

    def _threads(self) -> int:
        return self.threads or available_cores()

    def _concrete_precision(self, precision: str) -> str:
        """``"auto"`` as what it computes on this device (``"bf16"``, ``"fp16"`` or ``"fp32"``), so provenance and
        the output key record the precision that ran: the same request gives bf16 on an AVX512-BF16 CPU and fp32 on
        an AVX2 one, two different results."""
        from ..inference import resolve_autocast_dtype

        if precision != "auto":
            return precision
        dtype = resolve_autocast_dtype("auto", self.resolved_device())
        return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")

    def _backend_and_precision(self, bundle: PredictionBundle) -> tuple[str, str, str]:
        """The backend (``auto`` resolved), the precision it runs and how ``auto`` chose (else ""):
        :class:`BundleConfigError` for a backend that is not installed, cannot run this bundle (an ensemble, a window
        without a fixed size, a GPU for the CPU runtimes) or this precision (onnxruntime computes fp32 only: an
        explicit bf16/fp16 is refused, the bundle's ``auto`` becomes fp32)."""
        from ..backends import backend_unavailable_reason

        requested = bundle.precision if self.precision is None else self.precision
        precision = self._concrete_precision(requested)
        problem = backend_unavailable_reason(self.backend)
        if problem:
            raise BundleConfigError(problem)
        if self.backend == "auto":
            backend, why = self._auto_backend(bundle, precision)
            return backend, precision, why  # onnxruntime is a candidate only for fp32 runs
        backend = self.backend
        if backend == "eager":
            return backend, precision, ""
        if len(bundle.members) > 1 or getattr(bundle.network, "returns_probabilities", False):
            raise BundleConfigError(f"--backend {backend} runs one network; an ensemble of checkpoints "
                                    f"({len(bundle.members)}) runs with --backend eager")
        if any(int(r) <= 0 for r in bundle.roi_size):
            raise BundleConfigError(f"--backend {backend} needs a fixed window; the bundle's roi_size is {bundle.roi_size}")
        if backend in ("onnxruntime", "openvino") and self.resolved_device().type != "cpu":
            raise BundleConfigError(f"--backend {backend} runs on the CPU; use --device cpu (or --backend compile)")
        if backend == "onnxruntime" and requested in ("bf16", "fp16"):
            raise BundleConfigError(f"--backend onnxruntime computes fp32 on the CPU, not --precision {requested}; "
                                    "use --backend openvino or compile for bf16")
        if backend == "onnxruntime":
            precision = "fp32"
        return backend, precision, ""


@dataclass(frozen=True)
class ResolvedSettings:
    """What a prediction actually runs with (provenance.json ``settings`` and the per-output record)."""

    device: str
    overlap: float
    sw_batch_size: int
    tta_axes: list[int] | None
    precision: str
    postprocess: str
    threads: int
    roi_size: list[int]
    blend_mode: str
    activation: str
    threshold: float
    output_format: str = "auto"
    backend: str = "eager"
    backend_choice: str = ""  # how --backend auto chose (timings): shown and recorded, not part of the output key

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def make_predictor(self):
        """The sliding-window predictor for these settings (the only place one is built for prediction)."""
        from ..inference import SlidingWindowPredictor

        device = torch.device(self.device)
        return SlidingWindowPredictor(
            roi_size=tuple(self.roi_size),
            sw_batch_size=self.sw_batch_size,
            overlap=self.overlap,
            mode=self.blend_mode,
            # other backends run their own dtype (weights cast once): no autocast around them
            amp=None if self.precision == "fp32" or self.backend != "eager" else self.precision,
            tta_axes=tuple(self.tta_axes) if self.tta_axes else None,
            sw_device=device,
            device=device,
            activation=self.activation,
        )

    def inference_dtype(self) -> torch.dtype | None:
        """The dtype the network computes in on this device (None: float32), as the predictor's ``amp`` resolves it."""
        from ..inference import resolve_autocast_dtype

        return resolve_autocast_dtype(None if self.precision == "fp32" else self.precision, torch.device(self.device))

    def make_window_network(self, bundle: PredictionBundle) -> Any:
        """What the predictor runs per window batch: the bundle's network (``eager``) or its compiled/exported form
        for ``backend`` (see :mod:`monai_unetzoo.backends`; compiles or exports now, or loads it from the cache).
        Raises :class:`BundleConfigError` when that backend cannot take the network."""
        from ..backends import build_window_network

        try:
            return build_window_network(
                self.backend, bundle.network, window_shape=(bundle.in_channels, *self.roi_size),
                batch=self.sw_batch_size, dtype=self.inference_dtype(), weights_sha256=bundle.checkpoint_sha256,
                threads=self.threads,
            )
        except Exception as exc:  # an exporter/compiler that cannot take this network: say so, before any case
            if self.backend == "eager":
                raise
            first = (str(exc).strip().splitlines() or [""])[0]
            raise BundleConfigError(f"--backend {self.backend} could not prepare the bundle's network "
                                    f"({type(exc).__name__}: {first}); --backend eager runs it") from exc
