"""Ignite handlers and helpers that MONAI does not provide (MLflow extras, checkpoint lookup, a
DDP replica check, one console line per epoch: :mod:`mrsynth.handlers.progress`, a learning-rate
schedule that follows a resumed run's ``max_epochs``: :class:`ScheduleHorizon`; a widening
random-scale range: :class:`ScaleCurriculum`; snapshots at fixed
training times and a time budget: :class:`TimeSnapshots`)."""

from __future__ import annotations

import re
from pathlib import Path

from .distributed import check_ranks_in_sync, shutdown_distributed
from .budget import TimeSnapshots
from .schedule import ScaleCurriculum, ScheduleHorizon

__all__ = ["latest_checkpoint", "check_ranks_in_sync", "shutdown_distributed", "ScaleCurriculum", "ScheduleHorizon", "TimeSnapshots"]


def latest_checkpoint(ckpt_dir, prefix: str = "checkpoint") -> str | None:
    """Path of the newest epoch checkpoint written by MONAI's ``CheckpointSaver`` (files named
    ``<prefix>_*epoch=<N>.pt``) in ``ckpt_dir``, or ``None`` when there is none: training
    resumes from it after an interruption."""
    best, best_epoch = None, -1
    for p in Path(ckpt_dir).glob(f"{prefix}*epoch=*.pt"):
        m = re.search(r"epoch=(\d+)\.pt$", p.name)
        if m and int(m.group(1)) > best_epoch:
            best, best_epoch = str(p), int(m.group(1))
    return best
