"""Keep an epoch-based learning-rate schedule's horizon equal to the trainer's ``max_epochs`` when
training resumes from a checkpoint.

MONAI's ``CheckpointLoader`` keeps the ``max_epochs`` the trainer was built with (so ``--max_epochs
400`` after a 200-epoch run trains 200 more epochs), but the scheduler's state comes back from the
checkpoint with the old horizon: ``PolynomialLR`` has decayed to 0 at epoch 200 and stays there, a
``CosineAnnealingLR`` swings back up. :class:`ScheduleHorizon` sets the horizon to ``max_epochs``
and the learning rate to the schedule's closed form at the resumed epoch.
"""

from __future__ import annotations

import logging
import math

from ignite.engine import Engine, Events
from torch.optim.lr_scheduler import CosineAnnealingLR, PolynomialLR

__all__ = ["ScheduleHorizon"]

logger = logging.getLogger(__name__)


class ScheduleHorizon:
    """At the first epoch a trainer runs (after any checkpoint is loaded), give ``lr_scheduler``
    (stepped once per epoch; ``PolynomialLR`` or ``CosineAnnealingLR``) the horizon
    ``engine.state.max_epochs`` when it has another, and set each group's learning rate to the
    schedule's value at the current epoch. A fresh run is left untouched."""

    def __init__(self, lr_scheduler) -> None:
        self.lr_scheduler = lr_scheduler
        self._done = False

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        if self._done:
            return
        self._done = True
        s, n = self.lr_scheduler, int(engine.state.max_epochs)
        if isinstance(s, PolynomialLR):
            if s.total_iters == n:
                return
            old, s.total_iters = s.total_iters, n
            t = min(s.last_epoch, n)
            lrs = [base * (1.0 - t / n) ** s.power for base in s.base_lrs]
        elif isinstance(s, CosineAnnealingLR):
            if s.T_max == n:
                return
            old, s.T_max = s.T_max, n
            t = s.last_epoch
            lrs = [s.eta_min + (base - s.eta_min) * (1 + math.cos(math.pi * t / n)) / 2 for base in s.base_lrs]
        else:
            return
        for group, lr in zip(s.optimizer.param_groups, lrs):
            group["lr"] = lr
        s._last_lr = lrs
        logger.info("learning-rate schedule: horizon %d -> %d epochs (resumed at epoch %d, lr %.3g)", old, n,
                    s.last_epoch, lrs[0])
