"""When validation runs during training.

MONAI's ``ValidationHandler`` validates every ``interval`` epochs only, so a run shorter than its validation
interval (``--epochs 1`` with ``val_interval 10``, a quick try a new user makes) never validates, and the best-metric
``CheckpointSaver`` of the validator never writes ``model.pt``, the file inference and ``unetzoo predict`` load.
"""

from __future__ import annotations

from ignite.engine import Engine, Events
from monai.handlers import ValidationHandler

__all__ = ["IntervalAndFinalValidationHandler"]


class IntervalAndFinalValidationHandler(ValidationHandler):
    """``ValidationHandler`` (epoch level) that also validates after the last epoch when the number of epochs is not
    a multiple of ``interval``, so that every training run ends validated and with a ``model.pt``.

    Same arguments as ``monai.handlers.ValidationHandler``; with ``epoch_level=False`` it behaves exactly like it.
    """

    def attach(self, engine: Engine) -> None:
        super().attach(engine)
        if self.epoch_level:
            engine.add_event_handler(Events.EPOCH_COMPLETED(event_filter=self._last_epoch_off_interval), self)

    def _last_epoch_off_interval(self, engine: Engine, epoch: int) -> bool:
        return epoch == engine.state.max_epochs and epoch % self.interval != 0
