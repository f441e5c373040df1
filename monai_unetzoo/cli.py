"""Command line: ``unetzoo predict`` (also ``python -m monai_unetzoo predict``).

Exit codes: 0 every case ok or skipped; 1 at least one case failed (see summary.csv); 2 usage error (bad bundle or
checkpoint, input not found, output folder not writable, CUDA requested but absent); 130/143 interrupted by
Ctrl-C/SIGTERM (the case in progress is abandoned cleanly; run the same command again to finish).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

__all__ = ["main", "build_arg_parser"]

_PREDICT_EPILOG = """\
examples:
  unetzoo predict --bundle bundles/hippocampus --input /data/mri --output /data/mri_seg
  unetzoo predict --bundle bundles/drive --input "photos/*.tif" --output vessels --device cpu
  unetzoo predict --bundle bundles/hippocampus --input /data/mri --output /data/mri_seg --shard 2/4

What it writes under --output (input sub-folders are mirrored, inputs are never modified):
  <name>_seg.<ext>     the segmentation, on exactly the input's grid (same shape, spacing, origin, direction);
                       NIfTI -> NIfTI, NRRD/MHA -> NRRD/MHA, TIFF -> TIFF, PNG/JPEG/GIF -> PNG,
                       a DICOM series (a folder of slices) -> NIfTI (.nii.gz)
  <name>_prob.<ext>    class probabilities, with --save-probabilities (PNG/JPEG/GIF inputs: a float TIFF)
  summary.csv          one row per input: status (ok / skipped / failed / interrupted), reason, seconds, shape,
                       spacing, and per label the voxel count and volume in mL (pixels and mm2 for 2D bundles)
  provenance.json      versions, bundle, checkpoint SHA-256, all settings, start and end time

Running the same command again skips the inputs already done and finishes the rest (--overwrite redoes them).
Exit code: 0 all ok or skipped, 1 some input failed (see summary.csv), 2 usage error, 143/130 interrupted.
"""


def _shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected i/n such as 1/4, got {text!r}") from None
    if n < 1 or not 1 <= i <= n:
        raise argparse.ArgumentTypeError(f"shard {text!r}: need 1 <= i <= n")
    return i, n


def _overlap(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"overlap must be a number in [0, 1), got {text!r}") from None
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"overlap must be in [0, 1), got {v}")
    return v


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def build_arg_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="unetzoo", description="monai-unetzoo: UNet-family segmentation on MONAI.")
    parser.add_argument("--version", action="version", version=f"monai-unetzoo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    p = sub.add_parser(
        "predict",
        help="segment a folder of scans with a trained bundle",
        description="Segment every scan found in --input with a trained bundle; write the segmentations on the scans'"
        " own grids, a summary.csv and a provenance.json to --output.",
        epilog=_PREDICT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--bundle", required=True, metavar="DIR", help="bundle folder, e.g. bundles/hippocampus")
    p.add_argument(
        "--checkpoint", metavar="FILE", help="trained weights (default: <bundle>/models/model.pt)"
    )
    p.add_argument(
        "--input",
        required=True,
        nargs="+",
        metavar="PATH",
        help="a scan file, a folder (searched recursively; a folder of DICOM slices is one scan), or a quoted glob"
        " such as \"scans/**/*.nii.gz\"; several may be given",
    )
    p.add_argument("--output", required=True, metavar="DIR", help="folder for the results (created if missing)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: cuda if available")
    p.add_argument("--overlap", type=_overlap, default=None, help="sliding-window overlap in [0, 1) (default: bundle's, else 0.5)")
    p.add_argument("--sw-batch-size", type=_positive_int, default=None, help="windows per network call (default: bundle's)")
    p.add_argument("--tta", action="store_true", help="test-time augmentation: average over mirrored inputs (slower)")
    p.add_argument("--amp", action="store_true", help="mixed precision (faster on recent GPUs; bf16 on CPUs that have it)")
    p.add_argument("--save-probabilities", action="store_true", help="also write class probability maps")
    p.add_argument("--overwrite", action="store_true", help="predict again inputs whose output already exists")
    p.add_argument("--shard", type=_shard, default=None, metavar="i/n", help="process only part i of n (several machines)")
    p.add_argument("--dry-run", action="store_true", help="list the inputs and where their outputs would go, then stop")
    p.add_argument("--quiet", action="store_true", help="no progress bar; print only the final one-line summary")
    return parser


def _err(msg: str) -> None:
    print(f"unetzoo predict: error: {msg}", file=sys.stderr)


def _run_predict(args: argparse.Namespace) -> int:
    import torch

    from . import __version__
    from .predict import (
        EXIT_USAGE,
        BundleConfigError,
        PredictionSettings,
        check_output_writable,
        discover_prediction_cases,
        load_prediction_bundle,
        run_batch_prediction,
        select_shard,
    )

    info = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    try:
        out_dir = check_output_writable(args.output)
    except OSError as exc:
        _err(str(exc))
        return EXIT_USAGE
    if args.device == "cuda" and not torch.cuda.is_available():
        _err("--device cuda was requested but PyTorch sees no CUDA GPU (use --device cpu or auto)")
        return EXIT_USAGE
    try:
        cases, input_root = discover_prediction_cases(args.input, out_dir, save_probabilities=args.save_probabilities)
    except (FileNotFoundError, ValueError) as exc:
        _err(str(exc))
        return EXIT_USAGE
    if not cases:
        _err(f"no input files found in {' '.join(args.input)}")
        return EXIT_USAGE
    total = len(cases)
    if args.shard is not None:
        cases = select_shard(cases, *args.shard)
    try:
        bundle = load_prediction_bundle(args.bundle, args.checkpoint)
    except BundleConfigError as exc:
        _err(str(exc))
        return EXIT_USAGE
    settings = PredictionSettings(
        device=args.device,
        overlap=args.overlap,
        sw_batch_size=args.sw_batch_size,
        tta=args.tta,
        amp=args.amp,
        save_probabilities=args.save_probabilities,
        overwrite=args.overwrite,
        quiet=args.quiet,
        shard=args.shard,
    )
    device = settings.resolved_device()
    labels = ", ".join(f"{v}={n}" for v, n in sorted(bundle.label_names.items()))
    pending = [c for c in cases if c.problem is None]
    done = [c for c in pending if c.output is not None and c.output.is_file()]
    info(f"monai-unetzoo {__version__}: bundle '{bundle.name}' {bundle.version} ({bundle.spatial_dims}D, "
         f"{bundle.in_channels} input channel(s); labels {labels})")
    info(f"  weights   {bundle.checkpoint} (sha256 {bundle.checkpoint_sha256[:16]}...)")
    info(f"  device    {device}; window {'x'.join(str(r) for r in bundle.roi_size)}, overlap "
         f"{bundle.overlap if args.overlap is None else args.overlap}, TTA {'on' if args.tta else 'off'}, "
         f"AMP {'on' if args.amp else 'off'}")
    shard_note = f" (shard {args.shard[0]}/{args.shard[1]} of {total})" if args.shard else ""
    redo = ", redone with --overwrite" if args.overwrite else ", skipped"
    info(f"  input     {input_root}: {len(cases)} input(s){shard_note}, {len(done)} already done{redo}; "
         f"{len(cases) - len(pending)} not usable as images (listed in the summary)")
    info(f"  output    {out_dir}")
    if args.dry_run:
        for c in cases:
            target = c.problem if c.problem else str(c.output)
            print(f"{c.case_id}\t{target}")
        return 0
    return run_batch_prediction(
        bundle,
        cases,
        out_dir,
        settings,
        input_root=input_root,
        extra_provenance={"inputs": [str(Path(p)) for p in args.input], "checkpoint_arg": args.checkpoint},
        log=lambda msg: print(msg, flush=True),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``unetzoo`` console script; returns the exit code."""
    parser = build_arg_parser()
    args = parser.parse_args(argv)
    if args.command == "predict":
        return _run_predict(args)
    parser.error(f"unknown command {args.command}")  # pragma: no cover - argparse rejects it first
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
