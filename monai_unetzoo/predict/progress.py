"""Progress inside one case: a bar over the sliding-window network calls, shown under the batch bar.

Why a wrapper module rather than MONAI's ``progress=True``: MONAI's bar is created per call without a position
and stays on screen (one line per case in a 200-case batch). :class:`WindowProgressNetwork` wraps the bundle's
network as a submodule (parameters, devices and eval mode are the network's own) and advances a ``tqdm`` bar at
position 1, cleared when the case ends, appearing only after :data:`SHOW_AFTER_SECONDS` (short cases stay quiet).
"""

from __future__ import annotations

import math
import sys
from typing import Any, Sequence

import torch

__all__ = ["WindowProgressNetwork", "count_window_batches", "case_window_progress", "SHOW_AFTER_SECONDS"]

SHOW_AFTER_SECONDS = 2.0


def count_window_batches(spatial_shape: Sequence[int], roi_size: Sequence[int], overlap: float, sw_batch_size: int,
                         passes: int = 1) -> int:
    """Network calls MONAI's ``sliding_window_inference`` makes for one image: windows (its own scan grid over the
    image padded to at least ``roi_size``; non-positive ROI entries = whole axis) in batches of ``sw_batch_size``,
    times ``passes`` (TTA mirrorings)."""
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval
    from monai.utils import fall_back_tuple

    shape = tuple(int(s) for s in spatial_shape)
    roi = fall_back_tuple(tuple(int(r) for r in roi_size), shape)
    padded = tuple(max(s, r) for s, r in zip(shape, roi))
    interval = _get_scan_interval(padded, roi, len(shape), (overlap,) * len(shape))
    windows = len(dense_patch_slices(padded, roi, interval))
    return math.ceil(windows / max(1, sw_batch_size)) * max(1, passes)


class WindowProgressNetwork(torch.nn.Module):
    """``network`` with a progress bar: ``forward`` runs it and advances the bar by one call.

    Use as a context manager around one case (the bar is closed and cleared on exit)::

        with WindowProgressNetwork(net, total, desc=case_id) as counted:
            scores = predictor(batch, counted)
    """

    def __init__(self, network: torch.nn.Module, total: int, desc: str = "", disable: bool = False):
        super().__init__()
        self.network = network
        self.total, self.desc, self.disable = total, desc, disable
        self.bar: Any = None

    def __enter__(self) -> "WindowProgressNetwork":
        from tqdm.auto import tqdm

        self.bar = tqdm(total=self.total, unit="win-batch", desc=self.desc[-40:] or "windows", position=1,
                        leave=False, disable=self.disable, file=sys.stderr, delay=SHOW_AFTER_SECONDS,
                        dynamic_ncols=True)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        out = self.network(x, *args, **kwargs)
        if self.bar is not None:
            self.bar.update(1)
        return out


def case_window_progress(network: torch.nn.Module, predictor: Any, batch: torch.Tensor, desc: str, enabled: bool):
    """A context giving the network to call for one case: ``network`` itself when ``enabled`` is false, else a
    :class:`WindowProgressNetwork` sized for ``predictor`` (a ``SlidingWindowPredictor``) on ``batch`` (1, C, *S)."""
    import contextlib

    from ..inference import mirror_axis_combinations

    if not enabled:
        return contextlib.nullcontext(network)
    spatial = tuple(batch.shape[2:])
    passes = len(mirror_axis_combinations(predictor.tta_axes, len(spatial)))
    total = count_window_batches(spatial, predictor.roi_size, float(predictor.overlap), predictor.sw_batch_size, passes)
    return WindowProgressNetwork(network, total, desc=desc)
