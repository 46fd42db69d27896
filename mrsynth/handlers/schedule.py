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

__all__ = ["ScaleCurriculum", "ScheduleHorizon"]

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


class ScaleCurriculum:
    """Widen a random-scale sampler's range over training: a curriculum for implicit synthesis.

    For the first ``warmup_epochs`` epochs every training cube of ``transform`` (a
    :class:`mrsynth.transforms.RandImplicitPaird`, whose range is shared with DataLoader workers) is
    drawn at scale ``min`` of ``scale_range`` (the source's own voxel size: contrast only); then the
    upper bound grows linearly to ``max`` over ``ramp_epochs`` epochs (0: at once) and stays there.
    On the TUMSyn phantom study, super-resolution in the same steps as contrast from the start held
    the translated contrast back (``bundles/tumsyn/docs``). ``warmup_epochs`` 0 and ``ramp_epochs`` 0
    leave the range as it is. The range follows the trainer's epoch, so a resumed run picks up
    where it stopped.
    """

    def __init__(self, transform, scale_range, warmup_epochs: int = 0, ramp_epochs: int = 0) -> None:
        lo, hi = (float(v) for v in scale_range)
        if not 1.0 <= lo <= hi:
            raise ValueError(f"scale_range must satisfy 1 <= min <= max, got {scale_range!r}")
        if int(warmup_epochs) < 0 or int(ramp_epochs) < 0:
            raise ValueError(f"warmup_epochs and ramp_epochs must be >= 0, got {warmup_epochs}, {ramp_epochs}")
        if not hasattr(transform, "scale_range"):
            raise TypeError(f"{type(transform).__name__} has no scale_range to schedule")
        self.transform, self.lo, self.hi = transform, lo, hi
        self.warmup_epochs, self.ramp_epochs = int(warmup_epochs), int(ramp_epochs)

    def range_at(self, epoch: int) -> tuple[float, float]:
        """The range of (1-based) ``epoch``."""
        done = epoch - 1 - self.warmup_epochs  # epochs finished since the warm-up ended
        if done < 0:
            return self.lo, self.lo
        if self.ramp_epochs == 0 or done >= self.ramp_epochs:
            return self.lo, self.hi
        return self.lo, self.lo + (self.hi - self.lo) * (done + 1) / (self.ramp_epochs + 1)

    def attach(self, engine: Engine) -> None:
        if self.warmup_epochs or self.ramp_epochs:
            engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        new = self.range_at(int(engine.state.epoch))
        if tuple(self.transform.scale_range) != new:
            self.transform.scale_range = new
            logger.info("epoch %d: training scale range %.2f-%.2f", engine.state.epoch, *new)
