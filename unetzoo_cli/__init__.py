"""Command line: ``unetzoo predict`` and ``unetzoo plan`` (also ``python -m monai_unetzoo predict`` and ``python -m unetzoo_cli``).

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
  unetzoo predict --bundle bundles/hippocampus --input dicomweb+http://pacs:8042/dicom-web --study 1.2.3 --output seg --push

What it writes under --output (input sub-folders are mirrored, inputs are never modified):
  <name>_seg.<ext>     the segmentation, on exactly the input's grid (same shape, spacing, origin, direction);
                       NIfTI -> NIfTI, NRRD/MHA -> NRRD/MHA, TIFF -> TIFF, PNG/JPEG/GIF -> PNG,
                       a DICOM series (a folder of slices) -> NIfTI (.nii.gz) and a DICOM SEG <name>_seg.dcm
                       (--output-format nifti: NIfTI only; dicom-seg: SEG only; rtstruct: <name>_rtstruct.dcm)
  <name>_prob.<ext>    class probabilities, with --save-probabilities (PNG/JPEG/GIF inputs: a float TIFF)
  summary.csv          one row per input: status (ok / skipped / failed / interrupted), reason, seconds, shape,
                       spacing, post-processing, and per label the voxel count, the volume in mL (pixels and
                       mm2 for 2D bundles) and the mean/std image intensity inside it
                       (one-class 2D bundles write 0/255 PNG/TIFF masks; label maps keep values 0..C-1)
                       and the QC: qc (ok / flagged), qc_flags, qc_reasons, mean_top_probability, ...
  <name>_preview.png   the segmentation over the image (3 planes through the structures for 3D), unless --no-preview
  report.html          one self-contained page: sortable table, thumbnails, QC flags, provenance (rewritten after
                       every case: open it while the batch runs)
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


def _checked_number(text: str, convert, valid, what: str):
    """``convert(text)`` if it parses and ``valid`` accepts it, else an argparse error naming ``what`` was expected."""
    try:
        v = convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not valid(v):
        raise argparse.ArgumentTypeError(f"expected {what}, got {v}")
    return v


def _positive_int(text: str) -> int:
    return _checked_number(text, int, lambda v: v >= 1, "a positive integer")


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


def _subcommand(sub: argparse._SubParsersAction, name: str, summary: str, description: str,
                epilog: str) -> argparse.ArgumentParser:
    """A sub-command parser whose epilog keeps its line breaks."""
    return sub.add_parser(name, help=summary, description=description, epilog=epilog,
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unetzoo", description="monai-unetzoo: UNet-family segmentation on MONAI.")
    parser.add_argument("--version", action="version", version=f"monai-unetzoo {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    p = _subcommand(
        sub, "predict", "segment a folder of scans with a trained bundle",
        "Segment every scan found in --input with a trained bundle; write the segmentations on the scans'"
        " own grids, a summary.csv and a provenance.json to --output.", _PREDICT_EPILOG,
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
        " such as \"scans/**/*.nii.gz\"; several may be given; or a DICOMweb server:"
        " dicomweb+http://HOST:PORT/dicom-web (with --study/--query)",
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
                   "SHA-256 under ~/.cache/monai-unetzoo ($UNETZOO_CACHE_DIR); auto = the fastest of eager/openvino/onnxruntime "
                   "measured for this checkpoint on this machine (once; remembered in that cache)")
    p.add_argument("--amp", action="store_const", const="auto", dest="precision", help="same as --precision auto")
    p.add_argument("--postprocess", default=None, metavar="SPEC",
                   help="label post-processing: none, largest (largest connected component per structure), "
                   "min-size=MM3 (remove smaller components), or both comma-separated (default: the bundle's)")
    p.add_argument("--save-probabilities", action="store_true", help="also write class probability maps")
    p.add_argument("--overwrite", action="store_true", help="predict again inputs whose output already exists")
    p.add_argument("--shard", type=_shard, default=None, metavar="i/n", help="process only part i of n (several machines)")
    p.add_argument("--dry-run", action="store_true",
                   help="list the inputs and where their outputs would go, then stop (writes nothing)")
    p.add_argument("--output-format", choices=("auto", "nifti", "dicom-seg", "rtstruct"), default="auto",
                   help="auto: a DICOM series gets a DICOM SEG (<name>_seg.dcm) next to its NIfTI, other inputs their"
                   " usual output; nifti: no DICOM output; dicom-seg / rtstruct: only the DICOM SEG / RT-STRUCT "
                   "(DICOM series inputs only)")
    p.add_argument("--study", action="append", default=None, metavar="UID",
                   help="with a DICOMweb --input: a Study Instance UID to predict (repeatable; default: all studies)")
    p.add_argument("--query", action="append", default=None, metavar="KEY=VALUE",
                   help="with a DICOMweb --input: a QIDO-RS study search filter such as PatientID=123 (repeatable)")
    p.add_argument("--push", action="store_true",
                   help="with a DICOMweb --input: store each DICOM SEG/RT-STRUCT into the study it came from "
                   "(STOW-RS); series already holding our SEG of the same checkpoint are skipped")
    p.add_argument("--preview", action=argparse.BooleanOptionalAction, default=True,
                   help="write a preview PNG per case (segmentation over the image) shown in report.html (default: on)")
    p.add_argument("--read-ahead", action=argparse.BooleanOptionalAction, default=None,
                   help="read and preprocess the next case on a second thread while this one runs (default: on when "
                   "the network runs on a GPU)")
    p.add_argument("--quiet", action="store_true", help="no progress bars; print only the final one-line summary")
    _add_plan_parser(sub)
    return parser


def _positive_float(text: str) -> float:
    return _checked_number(text, float, lambda v: v > 0, "a positive number")


_PLAN_EPILOG = """\
example:
  unetzoo plan --dataset ../shared/data/Task04_Hippocampus --output bundles/hippo_planned --budget-minutes 15

--dataset is an MSD-style folder: dataset.json ("modality", "labels", "training": [{"image", "label"}]),
imagesTr/, labelsTr/ (NIfTI, NRRD, MHA; PNG/TIFF for 2D). Writes metadata.json (with the fingerprint and the
plan), train.json, evaluate.json, inference.json, multi_gpu_train.json, onnx_export.json, logging.conf, LICENSE
and a README.md giving every planning rule's value and reason.
Exit code: 0 written, 2 the data set cannot be planned (the reason names the files) or a usage error.
"""


def _add_plan_parser(sub: argparse._SubParsersAction) -> None:
    p = _subcommand(
        sub, "plan", "plan a bundle from a labelled data set's fingerprint",
        "Fingerprint an MSD-style data set (shapes, spacings, orientations, foreground intensities, class volumes) "
        "and write a bundle planned from it (nnU-Net's heuristics).", _PLAN_EPILOG,
    )
    p.add_argument("--dataset", required=True, metavar="DIR", help="MSD-style folder holding dataset.json")
    p.add_argument("--output", required=True, metavar="DIR", help="bundle folder to write, e.g. bundles/mytask")
    p.add_argument("--budget-minutes", type=_positive_float, default=15.0, metavar="M",
                   help="training time budget; epochs are planned from a timing run on this machine (default 15)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="device the bundle is planned for (memory budget, features, timing run; default cpu)")
    p.add_argument("--network", choices=("resunet", "unet", "unetpp"), default="resunet", help="default resunet")
    p.add_argument("--max-cases", type=_positive_int, default=None, metavar="N",
                   help="fingerprint N randomly chosen cases (seed 0) instead of all, for a quick plan")
    p.add_argument("--name", default=None, help="bundle name for logs and metadata (default: the output's name)")


def _run_plan(args: argparse.Namespace) -> int:
    """``unetzoo plan`` after parsing: the heavy imports happen here."""
    from monai_unetzoo.planning.workflow import run_plan_command

    return run_plan_command(args)


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
    if args.command == "plan":
        return _run_plan(args)
    parser.error(f"unknown command {args.command}")  # pragma: no cover - argparse rejects it first
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
