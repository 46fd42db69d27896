"""Snapshots of a network at fixed training times: training for a time budget, and the trend of
a metric with training time from one run."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from ..io import atomic_path

logger = logging.getLogger(__name__)


class TimeSnapshots:
    """Save the network's weights when the training's wall time passes each of ``times_s``, and
    stop the trainer after the last one.

    Time is counted from the trainer's ``STARTED`` event (data caching and model building
    before it are not counted) and checked after every iteration, so a snapshot is taken at the
    end of the first iteration at or past its mark. Each snapshot is a plain state dict (a DDP
    wrapper is unwrapped), ``<save_dir>/<prefix><mark>s.pt``, loadable wherever ``models/model.pt``
    is (``--ckpt_path``). ``<save_dir>/<prefix>snapshots.json`` lists, per snapshot, the mark,
    the wall time, the iteration, the epoch and the training samples seen (the sum of the batch
    sizes).

    Args:
        network: the trained module.
        save_dir: folder of the snapshots.
        times_s: training times in seconds (any order; sorted).
        terminate: stop the trainer once the last snapshot is written.
        prefix: file-name prefix.

    Example (a one-hour budget with snapshots after 15 and 30 minutes), in a config stacked on
    ``train.json``::

        {"_target_": "mrsynth.handlers.TimeSnapshots", "network": "@network",
         "save_dir": "@ckpt_dir", "times_s": [900, 1800, 3600]}
    """

    def __init__(self, network: torch.nn.Module, save_dir, times_s, terminate: bool = True, prefix: str = "model_t"):
        marks = sorted(float(t) for t in times_s)
        if not marks or marks[0] <= 0:
            raise ValueError(f"times_s must be positive seconds, got {times_s}")
        self.network, self.save_dir, self.marks = network, Path(save_dir), marks
        self.terminate, self.prefix = bool(terminate), prefix
        self.records: list[dict] = []
        self._t0 = None
        self._samples = 0

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)

    def path(self, mark: float) -> Path:
        """The snapshot file of ``mark`` seconds."""
        return self.save_dir / f"{self.prefix}{mark:g}s.pt"

    def _started(self, engine) -> None:
        self._t0 = time.perf_counter()

    def _iteration(self, engine) -> None:
        self._samples += _batch_size(engine.state.batch)
        if len(self.records) >= len(self.marks):
            return
        elapsed = time.perf_counter() - self._t0
        passed = [m for m in self.marks[len(self.records):] if m <= elapsed]
        if not passed:
            return
        net = self.network.module if hasattr(self.network, "module") else self.network
        state = net.state_dict()
        for m in passed:  # several marks passed in one iteration: the same weights for each
            with atomic_path(self.path(m)) as tmp:
                torch.save(state, tmp)
            self.records.append({"mark_s": m, "elapsed_s": round(elapsed, 3), "iteration": engine.state.iteration,
                                 "epoch": engine.state.epoch, "samples": self._samples, "path": str(self.path(m))})
        with atomic_path(self.save_dir / f"{self.prefix}snapshots.json") as tmp:
            Path(tmp).write_text(json.dumps(self.records, indent=1))
        logger.info(f"snapshot at {elapsed:.1f} s of training (iteration {engine.state.iteration}): {self.path(passed[-1])}")
        if self.terminate and len(self.records) >= len(self.marks):
            engine.terminate()


def _batch_size(batch) -> int:
    """Samples in a training batch: the first dimension of its ``"image"`` (else of its first
    tensor); a list of per-sample dicts counts its items."""
    if isinstance(batch, (list, tuple)):
        return len(batch) if batch and isinstance(batch[0], dict) else _batch_size(batch[0]) if batch else 0
    if isinstance(batch, dict):
        batch = batch.get("image", next((v for v in batch.values() if isinstance(v, torch.Tensor)), None))
    return int(batch.shape[0]) if isinstance(batch, torch.Tensor) and batch.ndim > 0 else 1
