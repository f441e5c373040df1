"""``python -m monai.bundle run inferring`` on the same per-case code as ``unetzoo predict``.

A bundle's ``inference.json`` keeps MONAI's infer-workflow layout (``network_def``, ``preprocessing``, ``dataset``,
``inferer``, ``evaluator`` with a ``CheckpointLoader`` handler) and hands each case to :class:`BundleCaseStep` as
the ``iteration_update`` of its ``SupervisedEvaluator``. The step builds the :class:`~.case.CasePipeline` from the
engine's own network (weights loaded by the handler) and inferer, through the same constructor and settings
resolution as the CLI, so both commands write byte-identical segmentations with equal headers::

    "dataset": {"_target_": "Dataset", "data": "$monai_unetzoo.predict.bundle_cases(@input_dir, @infer_dir)"},
    "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1,
                   "collate_fn": "$monai_unetzoo.predict.collate_cases"},
    "case_step": {"_target_": "monai_unetzoo.predict.BundleCaseStep", "bundle_root": "@bundle_root",
                  "metadata": "@_meta_", "preprocessing": "@preprocessing", ...},
    "evaluator": {"_target_": "SupervisedEvaluator", ..., "iteration_update": "@case_step"}
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..volume_io import ScanReadError
from .bundle import prediction_bundle_from_parts
from .case import CaseError, CasePipeline
from .discovery import PredictionCase, discover_prediction_cases
from .settings import PredictionSettings

__all__ = ["BundleCaseStep", "bundle_cases", "collate_cases"]

_LOG = logging.getLogger("monai_unetzoo.predict")


def bundle_cases(input_dir: str | os.PathLike, infer_dir: str | os.PathLike) -> list[PredictionCase]:
    """The cases ``unetzoo predict --input input_dir --output infer_dir`` would run (same discovery, same output
    names); inputs that are not images are logged and left out."""
    cases, _ = discover_prediction_cases([str(input_dir)], infer_dir)
    for case in cases:
        if case.problem is not None:
            _LOG.warning("%s: %s", case.problem_status, case.problem)
    return [c for c in cases if c.problem is None]


def collate_cases(batch: Sequence[PredictionCase]) -> list[PredictionCase]:
    """DataLoader ``collate_fn`` keeping the cases as they are (each is read by the step itself)."""
    return list(batch)


class BundleCaseStep:
    """``iteration_update`` of a bundle's inference evaluator: predict and write each case of the batch.

    Args:
        bundle_root: the bundle folder.
        metadata: the parsed ``metadata.json`` (``"@_meta_"`` in a config run by ``monai.bundle``).
        preprocessing: the bundle's preprocessing ``Compose`` (its leading loader is dropped, as in the CLI).
        threshold, tta_axes, mirror_axes, postprocess: the bundle's label step, default mirroring, allowed mirror
            axes and label post-processing (the ids the CLI reads from the same file).
        threads: torch intra-op threads (None: the cores available, as the CLI).
        checkpoint: the weights the ``CheckpointLoader`` loaded (for the log).
    """

    def __init__(
        self,
        bundle_root: str | os.PathLike,
        metadata: Mapping[str, Any],
        preprocessing: Any,
        threshold: float = 0.5,
        tta_axes: Any = None,
        mirror_axes: Any = None,
        postprocess: Any = None,
        threads: int | None = None,
        checkpoint: str | os.PathLike | None = None,
    ) -> None:
        self.bundle_root, self.metadata, self.preprocessing = Path(bundle_root), metadata, preprocessing
        self.label_step = {"threshold": threshold, "tta_axes": tta_axes, "mirror_axes": mirror_axes,
                           "postprocess": postprocess}
        self.threads, self.checkpoint = threads, checkpoint
        self.pipeline: CasePipeline | None = None
        self.written: list[Path] = []
        self.failed: list[str] = []

    def _make_pipeline(self, engine: Any) -> CasePipeline:
        ckpt = self.checkpoint if self.checkpoint is not None and Path(self.checkpoint).is_file() else None
        bundle = prediction_bundle_from_parts(
            self.bundle_root, self.metadata, engine.network, self.preprocessing, engine.inferer,
            checkpoint=ckpt, **self.label_step,
        )
        settings = PredictionSettings(device=str(engine.state.device), threads=self.threads)
        return CasePipeline(bundle, settings.resolve(bundle))

    def __call__(self, engine: Any, batch: Sequence[PredictionCase]) -> dict[str, Any]:
        if self.pipeline is None:  # after the CheckpointLoader handler (Events.STARTED) loaded the weights
            self.pipeline = self._make_pipeline(engine)
        for case in batch:
            try:
                self.pipeline.write(case, self.pipeline.predict(case))
            except (ScanReadError, CaseError) as exc:
                _LOG.error("failed: %s", exc)
                self.failed.append(str(exc))
                continue
            self.written.append(case.output)
        return {"outputs": [str(c.output) for c in batch]}

    def report(self, logger_name: str = "monai_unetzoo.predict") -> None:
        """Log what was written; raise ``RuntimeError`` (a non-zero exit of ``run inferring``) if a case failed."""
        folder = self.written[0].parent if self.written else "(nothing written)"
        logging.getLogger(logger_name).info("wrote %d segmentation(s) to %s", len(self.written), folder)
        if self.failed:
            raise RuntimeError(f"{len(self.failed)} case(s) failed: " + "; ".join(self.failed))
