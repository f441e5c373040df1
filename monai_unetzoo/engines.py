"""Glue that brings the ROI of a batch to the loss and to the metrics inside MONAI's engines.

Training: ``SupervisedTrainer`` calls ``loss_function(pred, label)`` with exactly two arguments, so the ROI must
travel inside the label. :class:`PrepareBatchWithROI` writes ``ignore_index`` (default 255, as in the DRIVE recipe)
into the label outside the ROI; :class:`monai_unetzoo.losses.MaskedDiceCELoss` with the same ``ignore_index``
then scores exactly the ROI pixels. We chose this over packing the ROI as an extra label channel because the
label keeps its shape and meaning: inferers, ``MaskedDeepSupervisionLoss`` (nearest-neighbour down-sampling keeps
255 in place) and any code that reads ``engine.state.output["label"]`` still see a (B, 1 or C, ...) label, and the
same loss also serves data sets whose label files already carry an ignore value. Bundle config::

    "prepare_batch": {"_target_": "PrepareBatchWithROI", "roi_key": "roi", "ignore_index": 255},
    "loss": {"_target_": "MaskedDiceCELoss", "to_onehot_y": true, "softmax": true, "ignore_index": 255},
    "trainer": {"_target_": "SupervisedTrainer", ..., "prepare_batch": "@prepare_batch", "loss_function": "@loss"}

(With deep supervision: ``"loss": {"_target_": "MaskedDeepSupervisionLoss", "loss": {...MaskedDiceCELoss...}}``.)
The trainer's ``output["label"]`` then holds 255 outside the ROI: score training with the handlers below
(reading the ROI from the batch) on a label without the sentinel, or evaluate with a ``SupervisedEvaluator`` that
uses the default prepare_batch.

Evaluation: MONAI's ``IgniteMetricHandler.update`` passes only ``(y_pred, y)``. :class:`ROIMetricHandler` also
passes ``roi``, taken either as a third item of ``output_transform`` (e.g. ``from_engine(["pred", "label",
"pred_roi"])`` after a postprocessing ``CopyItemsd(keys="roi", names="pred_roi")``; MONAI's
``engine_apply_transform`` puts keys *created* by postprocessing into the output, while keys already in the batch
stay in ``engine.state.batch``), or, when ``output_transform`` yields two items, straight from
``engine.state.batch[roi_key]`` (a dict, or the list of dicts after decollation). When postprocessing resamples
``pred`` (e.g. ``Invertd`` back to the original grid), take the first route and treat the copied ROI like ``pred``
so that both stay on the same grid. Bundle config::

    "key_val_metric": {"val_dice": {"_target_": "ROIConfusionHandler", "metric_name": "dice",
                                     "include_background": false,
                                     "output_transform": "$monai.handlers.from_engine(['pred', 'label'])"}},
    "additional_metrics": {"val_acc": {"_target_": "ROIConfusionHandler", "metric_name": "accuracy", ...},
                           "val_auc": {"_target_": "ROIAUCHandler",
                                       "output_transform": "$monai.handlers.from_engine(['prob', 'label'])"}},
    "val_handlers": [{"_target_": "ROICaseTableSaver", "save_dir": "eval",
                      "batch_transform": "$lambda x: [xx['image'].meta for xx in x]"}]
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from ignite.engine import Engine
from ignite.metrics.metric import reinit__is_reduced
from monai.engines.utils import PrepareBatch
from monai.handlers import IgniteMetricHandler, MetricsSaver, from_engine
from monai.inferers import Inferer
from monai.utils import ensure_tuple, string_list_all_gather

from .inference import resolve_autocast_dtype
from .metrics import ROIAUCMetric, ROIConfusionMetric, write_case_table
from .numerics import bf16_backward_is_safe

logger = logging.getLogger(__name__)

__all__ = [
    "AutocastForwardInferer",
    "PrepareBatchWithROI",
    "ROIMetricHandler",
    "ROIConfusionHandler",
    "ROIAUCHandler",
    "ROICaseTableSaver",
]


class AutocastForwardInferer(Inferer):
    """Training-time forward pass under bf16 autocast on any device, with channels-last inputs.

    Why not MONAI's: ``SupervisedTrainer(amp=True)`` wraps the forward in ``torch.autocast("cuda")`` only (MONAI
    1.6.1, ``trainer.py``), so on a CPU it does nothing; with ``SimpleInferer`` the forward runs in fp32. On CPUs
    with native bf16 (AVX512-BF16/AMX) oneDNN runs bf16 convolutions several times faster than fp32 (measured for
    the DRIVE recipe, 2 cores: 176 ms -> 84 ms per step of 8 x 96 x 96 patches; a 32..512 UNet on 128 x 128
    patches 795 -> 312 ms; ``benchmarks/training_throughput.py``). Autocast follows PyTorch's recipe
    (https://pytorch.org/docs/stable/amp.html): convolutions and matrix products in bf16, reductions and the loss in
    fp32; weights, gradients and the optimizer stay fp32. bf16 keeps fp32's exponent range, so no gradient scaler
    is needed (fp16 would need one: for fp16 on CUDA use ``SupervisedTrainer(amp=True)`` instead).

    Training on a CPU with ``amp="auto"``: before the first training forward of each input shape, a one-time check
    (:func:`monai_unetzoo.numerics.bf16_backward_is_safe`, on a copy of the network) decides whether bf16 backward
    is reliable there; if not, this shape trains in fp32 and a warning says why. On AVX512-BF16 CPUs without AMX the
    bf16 weight gradient of a convolution whose input is smaller than its kernel (a 2^3 bottleneck: 16^3 patches
    through a 4-level ResUNet) is garbage that changes from run to run (benchmarks/RESULTS.md); the real hippocampus
    patch 40x56x40 (bottleneck 5x7x5) passes and keeps bf16. Forward-only calls (``torch.no_grad``, eval mode) are
    not checked: the defect is in the backward pass.

    Args:
        amp: ``"auto"`` (bf16 where the device computes it natively: CUDA with ``is_bf16_supported()``, CPUs with
            AVX512-BF16/AMX, and on CPUs only where the check above passes; otherwise fp32), ``"bf16"`` (always,
            unchecked), ``None``/``"fp32"`` (off: same as ``SimpleInferer``).
        channels_last: pass 4D/5D inputs in channels-last layout (NHWC/NDHWC), the layout oneDNN and cuDNN
            prefer; convert the network too (``network.to(memory_format=torch.channels_last)``) for full effect.
            The numbers are the same, only the memory layout changes.

    ``__call__(inputs, network)``: inputs (B, C_in, *spatial) -> network output as fp32 (a tensor, or a list/tuple
    of tensors for deep-supervision networks), shapes unchanged. ``last_dtype`` is the autocast dtype of the latest
    call (None: fp32), for error messages (:func:`monai_unetzoo.numerics.describe_engine_precision`).
    """

    def __init__(self, amp: str | bool | None = "auto", channels_last: bool = True) -> None:
        super().__init__()
        if isinstance(amp, str) and amp.lower() in ("fp16", "float16", "half"):
            raise ValueError("AutocastForwardInferer does bf16 only: fp16 training needs a gradient scaler "
                             "(use SupervisedTrainer(amp=True) on CUDA).")
        self.amp = amp
        self.channels_last = channels_last
        self.last_dtype: torch.dtype | None = None
        self._bf16_verdicts: dict[tuple[int, ...], bool] = {}

    def _memory_format(self, ndim: int) -> torch.memory_format | None:
        if not self.channels_last or ndim not in (4, 5):
            return None
        return torch.channels_last if ndim == 4 else torch.channels_last_3d

    def _checked_dtype(self, inputs: torch.Tensor, network: Any) -> torch.dtype | None:
        """``resolve_autocast_dtype``, then for ``amp="auto"`` bf16 training on a CPU the one-time bf16 check."""
        dtype = resolve_autocast_dtype(self.amp, inputs.device)
        auto = self.amp is True or (isinstance(self.amp, str) and self.amp.lower() == "auto")
        training = torch.is_grad_enabled() and getattr(network, "training", False)
        if not (auto and training and dtype == torch.bfloat16 and inputs.device.type == "cpu"):
            return dtype
        key = tuple(inputs.shape)
        if key not in self._bf16_verdicts:
            safe, reason = bf16_backward_is_safe(network, key, memory_format=self._memory_format(inputs.ndim))
            self._bf16_verdicts[key] = safe
            if not safe:
                warnings.warn(f"AutocastForwardInferer(amp='auto'): training on input {key} in fp32, not bf16: "
                              f"{reason} (bf16 backward would give garbage gradients on this CPU; see "
                              "benchmarks/RESULTS.md).", stacklevel=3)
            else:
                logger.info("AutocastForwardInferer(amp='auto'): bf16 backward checked for input %s: reproducible.",
                            key)
        return dtype if self._bf16_verdicts[key] else None

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        dtype = self._checked_dtype(inputs, network)
        self.last_dtype = dtype
        memory_format = self._memory_format(inputs.ndim)
        if memory_format is not None:
            inputs = inputs.contiguous(memory_format=memory_format)
        with torch.autocast(device_type=inputs.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            outputs = network(inputs, *args, **kwargs)
        if isinstance(outputs, (list, tuple)):
            return type(outputs)(o.float() for o in outputs)
        return outputs.float()



class PrepareBatchWithROI(PrepareBatch):
    """``prepare_batch`` for ``SupervisedTrainer``/``SupervisedEvaluator`` that encodes the ROI in the label.

    Returns ``(image, label)`` on ``device`` with ``label = ignore_index`` wherever ``batch[roi_key] <= 0.5``
    (every channel for one-hot labels). Use with a loss constructed with the same ``ignore_index``
    (:class:`monai_unetzoo.losses.MaskedDiceCELoss`); see the module docstring for why the ROI travels this way.

    Args:
        roi_key: batch key of the ROI (B, 1, *spatial), inside where ``> 0.5``.
        ignore_index: value written into the label outside the ROI (default 255).
        image_key, label_key: batch keys of image and label.
    """

    def __init__(
        self, roi_key: str = "roi", ignore_index: int = 255, image_key: str = "image", label_key: str = "label"
    ) -> None:
        self.roi_key = roi_key
        self.ignore_index = ignore_index
        self.image_key = image_key
        self.label_key = label_key

    def __call__(
        self,
        batchdata: dict[str, torch.Tensor],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(batchdata, Mapping):
            raise TypeError(f"PrepareBatchWithROI needs a dict batch, got {type(batchdata).__name__}.")
        for key in (self.image_key, self.label_key, self.roi_key):
            if key not in batchdata:
                raise KeyError(f"PrepareBatchWithROI: batch has no {key!r} (keys: {sorted(batchdata)}).")
        image = batchdata[self.image_key].to(device=device, non_blocking=non_blocking, **kwargs)
        label = batchdata[self.label_key].to(device=device, non_blocking=non_blocking, **kwargs)
        roi = batchdata[self.roi_key].to(device=device, non_blocking=non_blocking, **kwargs)
        if roi.dim() != label.dim() or roi.shape[1] != 1 or roi.shape[0] != label.shape[0] or (
            roi.shape[2:] != label.shape[2:]
        ):
            raise ValueError(
                f"PrepareBatchWithROI: {self.roi_key!r} must be (B, 1, *spatial) matching {self.label_key!r} "
                f"{tuple(label.shape)}, got {tuple(roi.shape)}."
            )
        if not torch.is_floating_point(label):
            label = label.long()  # uint8 labels could not hold e.g. -1
        fill = torch.full((), self.ignore_index, dtype=label.dtype, device=label.device)
        label = torch.where(roi > 0.5, label, fill)
        return image, label


class ROIMetricHandler(IgniteMetricHandler):
    """``IgniteMetricHandler`` that passes the ROI on: ``metric_fn(y_pred, y, roi=roi)``.

    Args:
        metric_fn: a metric taking ``roi=`` (:class:`~monai_unetzoo.metrics.ROIConfusionMetric`,
            :class:`~monai_unetzoo.metrics.ROIAUCMetric`).
        output_transform: gives ``(y_pred, y)`` (the ROI is then read from ``engine.state.batch[roi_key]``) or
            ``(y_pred, y, roi)``. Default ``from_engine(["pred", "label"])``.
        roi_key: batch key of the ROI; None scores whole images.
        save_details: store per-case values (N, C) in ``engine.state.metric_details[name]`` (for ``MetricsSaver``
            or :class:`ROICaseTableSaver`); for our metrics these are the metric values, not the raw buffer.
    """

    def __init__(
        self,
        metric_fn: Any,
        output_transform: Callable = from_engine(["pred", "label"]),
        roi_key: str | None = "roi",
        save_details: bool = True,
    ) -> None:
        super().__init__(metric_fn=metric_fn, output_transform=output_transform, save_details=save_details)
        self.roi_key = roi_key

    def _roi_from_batch(self) -> Any:
        if self.roi_key is None:
            return None
        if self._engine is None:
            raise RuntimeError("ROIMetricHandler: call attach() before use (the ROI is read from engine.state.batch).")
        batch = self._engine.state.batch
        if isinstance(batch, Mapping):
            if self.roi_key not in batch:
                raise KeyError(f"ROIMetricHandler: batch has no {self.roi_key!r} (keys: {sorted(batch)}).")
            return batch[self.roi_key]
        if isinstance(batch, (list, tuple)) and all(isinstance(b, Mapping) for b in batch):
            missing = [i for i, b in enumerate(batch) if self.roi_key not in b]
            if missing:
                raise KeyError(f"ROIMetricHandler: batch items {missing} have no {self.roi_key!r}.")
            return [b[self.roi_key] for b in batch]
        raise TypeError(f"ROIMetricHandler: cannot read {self.roi_key!r} from a batch of type {type(batch).__name__}.")

    @torch.no_grad()
    def iteration_completed(self, engine: Engine) -> None:
        """Hand the whole transformed output to ``update``: ignite (>= 0.4.5) would otherwise unroll lists of
        decollated items into per-item calls with two arguments only, losing the pairing with the batch's ROI."""
        output = self._output_transform(engine.state.output)
        if isinstance(output, Mapping):
            raise TypeError(f"{type(self).__name__}: output_transform must give a tuple, got {type(output).__name__}.")
        self.update(output)

    @reinit__is_reduced
    def update(self, output: Sequence[Any]) -> None:
        if len(output) == 3:
            y_pred, y, roi = output
        elif len(output) == 2:
            y_pred, y = output
            roi = self._roi_from_batch()
        else:
            raise ValueError(f"output_transform must give (y_pred, y) or (y_pred, y, roi), got {len(output)} items.")
        self.metric_fn(y_pred, y, roi=roi)

    def compute(self) -> Any:
        result = super().compute()
        if self.save_details and hasattr(self.metric_fn, "per_case") and self._engine is not None:
            self._engine.state.metric_details[self._name] = self.metric_fn.per_case()  # type: ignore[attr-defined]
        return result


class ROIConfusionHandler(ROIMetricHandler):
    """Handler for an ROI confusion-matrix metric (Dice, IoU, sensitivity, specificity, precision, accuracy).

    Arguments as :class:`~monai_unetzoo.metrics.ROIConfusionMetric` plus those of :class:`ROIMetricHandler`.
    Expects binarised one-hot ``pred`` and ``label`` (postprocessing ``AsDiscreted``).
    """

    def __init__(
        self,
        metric_name: str = "dice",
        include_background: bool = True,
        aggregation: str = "mean",
        reduction: str = "mean",
        output_transform: Callable = from_engine(["pred", "label"]),
        roi_key: str | None = "roi",
        save_details: bool = True,
    ) -> None:
        metric = ROIConfusionMetric(
            metric_name=metric_name, include_background=include_background, aggregation=aggregation, reduction=reduction
        )
        super().__init__(metric, output_transform=output_transform, roi_key=roi_key, save_details=save_details)


class ROIAUCHandler(ROIMetricHandler):
    """Handler for the ROI ROC AUC of the foreground probability (:class:`~monai_unetzoo.metrics.ROIAUCMetric`).

    ``output_transform`` must give the *probabilities* (e.g. a ``prob`` key made in postprocessing by
    ``CopyItemsd(keys="pred", names="prob")`` after the activation and before ``AsDiscreted``) and the label.
    """

    def __init__(
        self,
        aggregation: str = "mean",
        channel: int | None = None,
        output_transform: Callable = from_engine(["prob", "label"]),
        roi_key: str | None = "roi",
        save_details: bool = True,
    ) -> None:
        super().__init__(
            ROIAUCMetric(aggregation=aggregation, channel=channel),
            output_transform=output_transform,
            roi_key=roi_key,
            save_details=save_details,
        )


class ROICaseTableSaver(MetricsSaver):
    """Write one CSV with a row per case and a column per metric (and class) from ``engine.state.metric_details``.

    ``MetricsSaver`` writes a separate ``<metric>_raw.csv`` per metric; this reuses its file-name collection
    (``batch_transform`` as in ``MetricsSaver``, e.g. ``lambda x: [xx["image"].meta for xx in x]``) and rank
    handling, and writes all per-case details side by side with
    :func:`~monai_unetzoo.metrics.write_case_table`: our ROI metrics, and MONAI's per-case HD95
    (``HausdorffDistance(percentile=95)``) or surface Dice (``IgniteMetricHandler(SurfaceDiceMetric(...))``)
    handlers attached to the same engine.

    Args:
        save_dir: output folder; the file is ``save_dir/filename``.
        filename: CSV file name (default ``case_metrics.csv``).
        metric_details: names of the metrics to include, or ``"*"`` for all.
        batch_transform: extracts the meta data (with ``filename_or_obj``) from ``engine.state.batch``.
        class_labels: column labels for the class dimension (default ``class0``, ``class1``, ...).
        save_rank: rank that writes in multi-process evaluation.
        delimiter: CSV delimiter.
    """

    def __init__(
        self,
        save_dir: str,
        filename: str = "case_metrics.csv",
        metric_details: str | Sequence[str] = "*",
        batch_transform: Callable = lambda x: x,
        class_labels: Sequence[str] | None = None,
        save_rank: int = 0,
        delimiter: str = ",",
    ) -> None:
        super().__init__(
            save_dir=save_dir,
            metrics=None,
            metric_details=metric_details,
            batch_transform=batch_transform,
            summary_ops=None,
            save_rank=save_rank,
            delimiter=delimiter,
        )
        self.filename = filename
        self.class_labels = list(class_labels) if class_labels is not None else None

    def __call__(self, engine: Engine) -> None:
        import ignite.distributed as idist

        ws = idist.get_world_size()
        names = string_list_all_gather(strings=self._filenames) if ws > 1 else self._filenames
        if idist.get_rank() != self.save_rank:
            return
        wanted = ensure_tuple(self.metric_details)
        details = {
            k: v for k, v in getattr(engine.state, "metric_details", {}).items() if "*" in wanted or k in wanted
        }
        if not details:
            raise RuntimeError(
                "ROICaseTableSaver: engine.state.metric_details holds none of "
                f"{list(wanted)}; attach metric handlers with save_details=True to the same engine."
            )
        n_cases = len(next(iter(details.values())))
        case_names = names if len(names) == n_cases and all(n != "None" for n in names) else None
        write_case_table(
            details,
            os.path.join(self.save_dir, self.filename),
            case_names=case_names,
            class_labels=self.class_labels,
            delimiter=self.deli,
        )
