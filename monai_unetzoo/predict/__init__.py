"""Batch prediction: a folder of scans in, segmentations on the scans' own grids and a summary out, nothing lost.

Modules, one concept each: :mod:`.bundle` (the contract below, resolved into a ``PredictionBundle``),
:mod:`.settings` (user choices resolved against the bundle, in one place), :mod:`.discovery` (inputs -> cases and
output names), :mod:`.case` (one case: read -> preprocess -> predict -> invert -> labels -> write),
:mod:`.postprocess` (declared label post-processing), :mod:`.batch` (summary, provenance, signals) and
:mod:`.bundle_step` (the same per-case code inside a bundle's own ``run inferring``); DICOM outputs and a PACS:
:mod:`.dicom_output` (``--output-format``, the pipeline writing them), :mod:`.dicom_series` (series header checks),
:mod:`.dicom_seg` (DICOM SEG, highdicom), :mod:`.rtstruct` (RT-STRUCT, rt-utils), :mod:`.dicomweb` (QIDO/WADO/STOW);
the review of a batch: :mod:`.qc` (QC flags against the bundle's ``label_stats.json``), :mod:`.preview` (per-case
PNGs), :mod:`.report` (``report.html``), :mod:`.review` (what :mod:`.batch` calls for them) and :mod:`.progress`
(the window bar).

This is the engine behind ``unetzoo predict`` (see :mod:`monai_unetzoo.cli`); it can also be driven from Python:
``load_prediction_bundle`` + ``PredictionSettings(...).resolve(bundle)`` + ``CasePipeline`` +
``discover_prediction_cases`` + ``run_batch_prediction``.

A bundle the CLI can run
========================
A MONAI bundle in the flat layout ``<bundle>/{metadata.json, inference.json, ...}``. Nothing about a particular
bundle is hard-coded; the CLI reads:

``metadata.json``
    ``name`` and ``version`` (provenance), and ``network_data_format``:

    * ``inputs.image.num_channels``: channels the network takes (1 for MRI/CT, 3 for RGB fundus photographs);
    * ``inputs.image.spatial_shape``: only its length is used, as the number of spatial dims (2 or 3);
    * ``outputs.pred.num_channels`` and ``outputs.pred.channel_def`` (``{"0": "background", "1": "vessel"}``):
      the label names of the summary. With C >= 2 channels the label value is the argmax channel and channel 0 is
      background; with one channel (sigmoid) the label is 1 where the probability exceeds 0.5 and is named by
      ``channel_def["0"]``.

``inference.json`` (parsed with :class:`monai.bundle.ConfigParser`, ``bundle_root`` set to the bundle folder, the
bundle folder put on ``sys.path`` as MONAI's own bundle runner does, and ``imports`` evaluated first). When it is
written to be layered over ``train.json`` (it uses MONAI's ``"+key"`` merge syntax, or has no ``network_def`` of its
own) it is read as ``--config_file "['train.json', 'inference.json']"`` would read it. Resolution is lazy: only the
items below and what they reference are built (no datalists, no dataset downloads). Ids looked up:

    * ``network_def`` (required): the network; ``(B, C_in, *spatial) -> (B, C, *spatial)`` logits (a list/tuple of
      deep-supervision outputs is fine: the first is used).
    * ``preprocessing``, else ``infer#preprocessing`` (optional): a MONAI ``Compose`` of dictionary transforms on
      key ``"image"``. Its leading ``LoadImaged``/``EnsureChannelFirstd`` are dropped: the CLI loads every input
      itself (all formats, DICOM series included) with the reader MONAI's ``LoadImage`` auto-selection uses for that
      file type (see :mod:`monai_unetzoo.volume_io`), channel first, float32, so the remaining transforms see what
      a default ``LoadImaged`` + ``EnsureChannelFirstd`` would give them. One exception, for 2D photographs: when
      the bundle's ``LoadImaged`` names a ``PILReader`` (with options, e.g. ``reverse_indexing=False`` for
      ``(C, H, W)`` arrays), that reader reads PNG/JPEG/GIF/BMP and single-page TIFF inputs, as in training. Other
      reader options that change the array layout are refused. The remaining spatial transforms must be
      invertible (Orientationd, Spacingd, crops, pads, resizes: all of MONAI's are) and keep MetaTensor tracking
      on; intensity transforms are free. Only ``"image"`` is given (no label, no mask); transforms that create
      other keys from it are fine (``allow_missing_keys`` on multi-key transforms).
    * ``roi`` (optional, an item the preprocessing may create, e.g. an estimated fundus field of view, on the
      preprocessed image's grid): everything outside it is background, as a bundle's ``MaskIntensityd``
      post-processing would do.
    * ``inferer``, else ``infer#inferer`` (optional): the keys ``roi_size``, ``sw_batch_size``, ``overlap``,
      ``mode``, ``activation`` and ``amp`` (the precision: ``"auto"`` = bf16 where the device computes it natively)
      of its definition (whatever the ``_target_``) are the defaults of the
      :class:`monai_unetzoo.inference.SlidingWindowPredictor` prediction builds; the command line overrides
      overlap, batch size, TTA and precision. Without ``roi_size`` (nor integer ``spatial_shape`` in the metadata) the whole image is one window.
      ``activation`` defaults to ``"softmax"`` (C >= 2) or ``"sigmoid"`` (C == 1); multi-label sigmoid outputs with
      C >= 2 are not supported.
    * ``threshold`` (optional, 0.5): sigmoid outputs are foreground above it.
    * ``tta_axes`` (optional, null = off): the default test-time mirroring; ``mirror_axes`` (optional): the axes the
      network was trained to be mirrored over, used by ``--tta`` (without it ``--tta`` is refused: mirroring other
      axes can swap lateral structures, e.g. anterior and posterior hippocampus).
    * ``postprocess`` (optional, off): ``{"keep_largest": true, "min_size": 50}`` or ``"largest,min-size=50"``
      (:mod:`.postprocess`).
    * the bundle's ``postprocessing``, ``evaluator``, datalists etc. are not used by the CLI; the repository's
      bundles run this same per-case code from their ``evaluator`` (:mod:`.bundle_step`).

Per case
========
``load_scan`` (MONAI reader) -> checks (dims, channels, NaN/Inf) -> bundle preprocessing -> sliding-window
probabilities -> ``monai.transforms.Invertd`` of the preprocessing on the probabilities (linear interpolation) ->
argmax/threshold on the input's own grid (``scores_to_labels``) -> declared post-processing -> ``write_scan_like``
(atomic; one-class 2D masks as 0/255 PNG/TIFF) -> voxel counts, volumes, intensity mean/std per structure.

Outputs under ``--output``, mirroring the input folders: ``<stem>_seg<suffix>`` (labels, uint8/uint16) and, with
``--save-probabilities``, ``<stem>_prob<suffix>``; ``summary.csv`` and ``provenance.json`` (with ``--shard i/n``:
``summary.shard-i-of-n.csv``, ``provenance.shard-i-of-n.json``), ``errors.log`` with tracebacks of unexpected
errors. A case is done when its outputs exist and its record (:mod:`.records`) shows they were written by this
bundle, checkpoint and settings and are unchanged; running again skips those unless ``--overwrite`` and predicts
every other case (again). One run at a time per output folder and shard (:mod:`.lock`).
"""

from __future__ import annotations

from .batch import BASE_COLUMNS, EXIT_FAILED, EXIT_OK, EXIT_USAGE, run_batch_prediction, summary_file_names
from .bundle import BundleConfigError, PredictionBundle, load_prediction_bundle, prediction_bundle_from_parts
from .bundle_step import BundleCaseStep, bundle_cases, collate_cases
from .case import CaseError, CasePipeline, CaseResult
from .discovery import PredictionCase, check_output_writable, discover_prediction_cases, select_shard
from .postprocess import LabelPostprocess, parse_postprocess
from .settings import PredictionSettings, ResolvedSettings, available_cores
from .signals import PredictionInterrupted

__all__ = [
    "BundleConfigError", "PredictionBundle", "load_prediction_bundle", "prediction_bundle_from_parts",
    "PredictionSettings", "ResolvedSettings", "available_cores", "PredictionCase", "discover_prediction_cases", "select_shard",
    "check_output_writable", "CaseError", "CaseResult", "CasePipeline", "LabelPostprocess", "parse_postprocess",
    "BundleCaseStep", "bundle_cases", "collate_cases", "PredictionInterrupted", "run_batch_prediction",
    "summary_file_names", "BASE_COLUMNS", "EXIT_OK", "EXIT_FAILED", "EXIT_USAGE",
]
