"""Command line: ``unetzoo predict`` (also ``python -m monai_unetzoo predict`` and ``python -m unetzoo_cli``).

Why a package of its own, outside ``monai_unetzoo``: importing ``monai_unetzoo`` imports torch and MONAI (every
submodule must be loaded for MONAI's config resolver to find our components by short name), which takes seconds.
This module parses the command line and answers ``--help``, ``--version`` and argument errors with the standard
library only; the prediction code is imported when there is work to do.

Exit codes: 0 every case ok or skipped; 1 at least one case failed (see summary.csv); 2 usage error (bad bundle or
checkpoint, input not found, output folder not writable or in use, CUDA requested but absent); 3 stopped because the
output could not be written (disk full, quota); 130/143 interrupted by
Ctrl-C/SIGTERM (the case in progress is abandoned cleanly; run the same command again to finish).
"""

from __future__ import annotations

import argparse
import re
import sys
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
                       spacing, post-processing, and per label the voxel count, the volume in mL (pixels and
                       mm2 for 2D bundles) and the mean/std image intensity inside it
                       (one-class 2D bundles write 0/255 PNG/TIFF masks; label maps keep values 0..C-1)
  provenance.json      versions, bundle, checkpoint SHA-256, all settings, start and end time

Running the same command again skips the inputs already done by the same bundle, checkpoint and settings and
finishes the rest (--overwrite redoes them).
Exit code: 0 all ok or skipped, 1 some input failed (see summary.csv), 2 usage error, 3 stopped because the output
could not be written (disk full: free space and rerun), 143/130 interrupted.
"""


#: monai_unetzoo.backends.BACKEND_CHOICES, repeated so that --help needs no torch import (a test keeps them equal)
_BACKEND_CHOICES = ("auto", "eager", "compile", "onnxruntime", "openvino")


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


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("monai-unetzoo")
    except PackageNotFoundError:  # a source checkout that is not installed
        return "unknown"


def _device(text: str) -> str:
    if re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", text):
        return text
    raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N (a GPU index), got {text!r}")


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unetzoo", description="monai-unetzoo: UNet-family segmentation on MONAI.")
    parser.add_argument("--version", action="version", version=f"monai-unetzoo {_version()}")
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
        "--checkpoint", metavar="FILE", nargs="+", default=None,
        help="trained weights (default: <bundle>/models/model.pt); several files, or a folder of fold checkpoints "
        "(<folder>/*/model.pt), make an ensemble that averages their probabilities",
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
    p.add_argument("--device", type=_device, default="auto", help="auto (cuda if available), cpu, cuda or cuda:N")
    p.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                   help="CPU threads for the network (default: the cores available to this process)")
    p.add_argument("--overlap", type=_overlap, default=None, help="sliding-window overlap in [0, 1) (default: bundle's, else 0.5)")
    p.add_argument("--sw-batch-size", type=_positive_int, default=None, help="windows per network call (default: bundle's)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="test-time augmentation: average over mirrored copies along the axes the bundle declares "
                   "(mirror_axes); default: the bundle's own choice")
    p.add_argument("--precision", choices=("auto", "bf16", "fp16", "fp32"), default=None,
                   help="network precision (default: the bundle's; 'auto' = bf16 where the device computes it natively)")
    p.add_argument("--backend", choices=_BACKEND_CHOICES, default="eager",
                   help="what runs the network: eager (PyTorch, default), compile (torch.compile, cached on disk), "
                   "onnxruntime (extra [onnx]) or openvino (extra [openvino]), exported once and cached by checkpoint "
                   "SHA-256 under ~/.cache/monai-unetzoo ($UNETZOO_CACHE_DIR); auto = eager for now")
    p.add_argument("--amp", action="store_const", const="auto", dest="precision", help="same as --precision auto")
    p.add_argument("--postprocess", default=None, metavar="SPEC",
                   help="label post-processing: none, largest (largest connected component per structure), "
                   "min-size=MM3 (remove smaller components), or both comma-separated (default: the bundle's)")
    p.add_argument("--save-probabilities", action="store_true", help="also write class probability maps")
    p.add_argument("--overwrite", action="store_true", help="predict again inputs whose output already exists")
    p.add_argument("--shard", type=_shard, default=None, metavar="i/n", help="process only part i of n (several machines)")
    p.add_argument("--dry-run", action="store_true",
                   help="list the inputs and where their outputs would go, then stop (writes nothing)")
    p.add_argument("--quiet", action="store_true", help="no progress bar; print only the final one-line summary")
    return parser


def _run_predict(args: argparse.Namespace) -> int:
    """Everything after argument parsing: the heavy imports happen here."""
    from monai_unetzoo.predict.workflow import run_predict_command

    return run_predict_command(args)


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
