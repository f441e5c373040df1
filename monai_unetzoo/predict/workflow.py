"""``unetzoo predict`` after argument parsing: usage checks before any work (exit 2), the run's header lines, the
dry run, then the batch. Called by :mod:`unetzoo_cli` with its parsed arguments."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from .. import __version__
from ..backends import backend_unavailable_reason, unetzoo_cache_dir
from .batch import EXIT_USAGE, run_batch_prediction
from .bundle import BundleConfigError, PredictionBundle, load_prediction_bundle
from .dicom_output import DicomOutputPipeline, discover_cases_for_output
from .discovery import check_output_writable, select_shard
from .lock import OutputFolderBusy, OutputFolderLock
from .settings import PredictionSettings, ResolvedSettings

__all__ = ["run_predict_command", "settings_from_arguments"]


def _usage_error(msg: str) -> int:
    print(f"unetzoo predict: error: {msg}", file=sys.stderr)
    return EXIT_USAGE


def settings_from_arguments(args: argparse.Namespace) -> PredictionSettings:
    """The CLI's arguments as :class:`PredictionSettings` (None where the bundle decides)."""
    return PredictionSettings(
        device=args.device,
        overlap=args.overlap,
        sw_batch_size=args.sw_batch_size,
        tta=args.tta,
        precision=args.precision,
        postprocess=args.postprocess,
        threads=args.threads,
        save_probabilities=args.save_probabilities,
        overwrite=args.overwrite,
        quiet=args.quiet,
        preview=args.preview,
        shard=args.shard,
        output_format=args.output_format,
        push=args.push,
        backend=getattr(args, "backend", "eager"),
        read_ahead=getattr(args, "read_ahead", None),
    )


def _device_problem(device: str) -> str | None:
    if not device.startswith("cuda"):
        return None
    if not torch.cuda.is_available():
        return f"--device {device} was requested but PyTorch sees no CUDA GPU (use --device cpu or auto)"
    index = int(device.split(":")[1]) if ":" in device else 0
    if index >= torch.cuda.device_count():
        return f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) (cuda:0..cuda:{torch.cuda.device_count() - 1})"
    return None


def _header(bundle: PredictionBundle, resolved: ResolvedSettings) -> list[str]:
    labels = ", ".join(f"{v}={n}" for v, n in sorted(bundle.label_names.items()))
    tta = f"mirror axes {resolved.tta_axes}" if resolved.tta_axes else "off"
    return [
        f"monai-unetzoo {__version__}: bundle '{bundle.name}' {bundle.version} ({bundle.spatial_dims}D, "
        f"{bundle.in_channels} input channel(s); labels {labels})",
        *(f"  weights   {path} (sha256 {sha[:16]}...)" for path, sha in bundle.members),
        *([f"  ensemble  mean probability of {len(bundle.members)} networks"] if len(bundle.members) > 1 else []),
        f"  device    {resolved.device} ({resolved.threads} thread(s)); window "
        f"{'x'.join(str(r) for r in resolved.roi_size)}, overlap {resolved.overlap}, TTA {tta}, precision "
        f"{resolved.precision}, post-processing {resolved.postprocess}, backend {resolved.backend}",
        *([f"  backend   {resolved.backend_choice}"] if resolved.backend_choice else []),
    ]


def run_predict_command(args: argparse.Namespace) -> int:
    """Run ``unetzoo predict`` for parsed ``args``; returns the exit code (see :mod:`unetzoo_cli`)."""
    info = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    try:
        out_dir = check_output_writable(args.output, create=not args.dry_run)
    except OSError as exc:
        return _usage_error(str(exc))
    problem = _device_problem(args.device) or backend_unavailable_reason(getattr(args, "backend", "eager"))
    if problem:
        return _usage_error(problem)
    settings = settings_from_arguments(args)
    try:
        cases, input_root = discover_cases_for_output(args, out_dir)  # files/folders or DICOMweb; --output-format
    except (OSError, ValueError) as exc:
        return _usage_error(str(exc))
    if not cases:
        return _usage_error(f"no input files found in {' '.join(args.input)}")
    total = len(cases)
    if args.shard is not None:
        cases = select_shard(cases, *args.shard)
    try:
        bundle = load_prediction_bundle(args.bundle, args.checkpoint)
        resolved = settings.resolve(bundle)
    except (BundleConfigError, ValueError) as exc:
        return _usage_error(str(exc))
    pending = [c for c in cases if c.problem is None]
    existing = [c for c in pending if c.output is not None and c.output.is_file()]
    for line in _header(bundle, resolved):
        info(line)
    shard_note = f" (shard {args.shard[0]}/{args.shard[1]} of {total})" if args.shard else ""
    redo = "redone with --overwrite" if args.overwrite else "kept if made by this bundle, checkpoint and settings"
    info(f"  input     {input_root}: {len(cases)} input(s){shard_note}, {len(existing)} with an output ({redo}); "
         f"{len(cases) - len(pending)} not usable as images (listed in the summary)")
    info(f"  output    {out_dir}")
    if args.dry_run:
        for c in cases:
            print(f"{c.case_id}\t{c.problem if c.problem else c.output}")
        return 0
    try:
        lock = OutputFolderLock(out_dir, args.shard).__enter__()
    except (OutputFolderBusy, OSError) as exc:
        return _usage_error(str(exc))
    try:
        if resolved.backend != "eager":
            info(f"  backend   {resolved.backend}: compiled/exported once per checkpoint, window and dtype, cached in "
                 f"{unetzoo_cache_dir()}")
        try:
            pipeline = DicomOutputPipeline(bundle, resolved, push=args.push)
        except BundleConfigError as exc:
            return _usage_error(str(exc))
        extra = {"input_root": str(input_root), "inputs": [str(Path(p)) for p in args.input],
                 "checkpoint_arg": args.checkpoint}
        return run_batch_prediction(pipeline, cases, out_dir, settings, extra_provenance=extra,
                                    log=lambda msg: print(msg, flush=True))
    finally:
        lock.__exit__(None, None, None)
