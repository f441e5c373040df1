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
        return ResolvedSettings(
            device=str(self.resolved_device()),
            overlap=bundle.overlap if self.overlap is None else float(self.overlap),
            sw_batch_size=bundle.sw_batch_size if self.sw_batch_size is None else int(self.sw_batch_size),
            tta_axes=list(tta_axes) if tta_axes else None,
            precision=bundle.precision if self.precision is None else self.precision,
            postprocess=parse_postprocess(bundle.postprocess if self.postprocess is None else self.postprocess).describe(),
            threads=self.threads or available_cores(),
            roi_size=list(bundle.roi_size),
            blend_mode=bundle.mode,
            activation=bundle.activation,
            threshold=bundle.threshold,
            output_format=self.output_format,
        )


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
            amp=None if self.precision == "fp32" else self.precision,
            tta_axes=tuple(self.tta_axes) if self.tta_axes else None,
            sw_device=device,
            device=device,
            activation=self.activation,
        )
