"""One console line per training epoch; the per-iteration log goes to a file.

MONAI's :class:`~monai.handlers.StatsHandler` writes a line per iteration through the engine's
logger, and ignite, the learning-rate and checkpoint handlers add several more per epoch. That is
the record a run should keep, but not what a person should have to read. :class:`EpochProgress`
moves the trainer's and the validator's loggers to ``log_file`` (everything they wrote before,
nothing lost) and prints instead, per epoch::

    epoch 3/200  loss 0.0812  val_psnr 21.43 (best 21.43 at 3)  2.4 it/s  6.1 s/epoch  eta 20m10s
"""

from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path

from ignite.engine import Engine, Events
from monai.handlers import from_engine

__all__ = ["EpochProgress", "CaseProgress", "format_duration"]


def format_duration(seconds: float) -> str:
    """``75`` -> ``"1m15s"``, ``3725`` -> ``"1h02m"``, ``4.2`` -> ``"4s"``."""
    if not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


class EpochProgress:
    """Attach to a trainer: one line per epoch (mean loss, the validator's metrics when it ran,
    iterations per second, seconds per epoch, time left), on the logger ``name`` (the console
    through the root logger); the trainer's and validator's own loggers write to ``log_file``.

    Args:
        log_file: where the engines' loggers write (appended); ``None`` leaves them on the console.
        validator: the evaluator whose ``state.metrics`` are reported (its key metric's best too).
        output_transform: the loss from the trainer's output (default: ``output["loss"]``).
        name: the logger of the epoch lines.
        loggers: other loggers moved to ``log_file`` with the engines' (MONAI's ``StatsHandler``
            writes to its own logger, ``"monai.handlers.StatsHandler"``, unless given a ``name``).
    """

    def __init__(self, log_file=None, validator: Engine | None = None, output_transform=None,
                 name: str = "mrsynth.progress", loggers=("monai.handlers.StatsHandler",)) -> None:
        self.log_file = None if log_file is None else Path(log_file)
        self.loggers = tuple(loggers)
        self.validator = validator
        self.output_transform = output_transform or from_engine(["loss"], first=True)
        self.logger = logging.getLogger(name)
        self._losses: list[float] = []
        self._epoch_times: list[float] = []
        self._t0 = 0.0
        self._validated_at = -1
        self._trainer_epoch = 0

    def attach(self, engine: Engine) -> None:
        if self.log_file is not None:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            for eng in (engine, self.validator):
                if eng is not None:
                    self._to_file(eng.logger)
            for name in self.loggers:
                self._to_file(logging.getLogger(name))
        if self.logger.getEffectiveLevel() > logging.INFO:
            self.logger.setLevel(logging.INFO)
        if not self.logger.handlers and not logging.getLogger().handlers:  # no logging configured: still print
            h = logging.StreamHandler(sys.stdout)
            h.setFormatter(logging.Formatter("%(asctime)s - %(message)s"))
            self.logger.addHandler(h)
        engine.add_event_handler(Events.EPOCH_STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch)
        if self.validator is not None:
            self.validator.add_event_handler(Events.COMPLETED, self._validated)

    def _to_file(self, logger: logging.Logger) -> None:
        for h in list(logger.handlers):
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                logger.removeHandler(h)
        if not any(isinstance(h, logging.FileHandler) and Path(h.baseFilename) == self.log_file.resolve()
                   for h in logger.handlers):
            fh = logging.FileHandler(self.log_file, mode="a")
            fh.setFormatter(logging.Formatter("%(asctime)s - %(name)s - %(levelname)s - %(message)s"))
            logger.addHandler(fh)
        logger.propagate = False
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)

    def _start(self, engine: Engine) -> None:
        self._trainer_epoch = engine.state.epoch  # ignite counts the epoch before EPOCH_STARTED
        self._losses = []
        self._t0 = time.perf_counter()

    def _iteration(self, engine: Engine) -> None:
        try:
            value = self.output_transform(engine.state.output)
            while isinstance(value, (list, tuple)) and len(value) == 1:  # from_engine returns a 1-tuple
                value = value[0]
            self._losses.append(float(value))
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError):
            pass  # an output without a scalar loss: the line goes without it

    def _validated(self, validator: Engine) -> None:
        self._validated_at = self._trainer_epoch

    def _epoch(self, engine: Engine) -> None:
        dt = time.perf_counter() - self._t0
        self._epoch_times.append(dt)
        parts = [f"epoch {engine.state.epoch}/{engine.state.max_epochs}"]
        if self._losses:
            parts.append(f"loss {sum(self._losses) / len(self._losses):.4f}")
        v = self.validator
        if v is not None and self._validated_at == engine.state.epoch and v.state.metrics:
            key = getattr(v.state, "key_metric_name", None)
            best, best_epoch = getattr(v.state, "best_metric", None), getattr(v.state, "best_metric_epoch", -1)
            for k, val in v.state.metrics.items():
                try:
                    text = f"{k} {float(val):.4g}"
                except (TypeError, ValueError):
                    continue
                if k == key and best is not None and best_epoch != -1:
                    text += f" (best {float(best):.4g} at {best_epoch})"
                parts.append(text)
        iters = engine.state.epoch_length or len(self._losses)
        if dt > 0 and iters:
            parts.append(f"{iters / dt:.3g} it/s")
        parts.append(f"{dt:.3g} s/epoch")
        recent = self._epoch_times[-5:]
        left = (engine.state.max_epochs - engine.state.epoch) * sum(recent) / len(recent)
        parts.append(f"eta {format_duration(left)}")
        self.logger.info("  ".join(parts))


class CaseProgress:
    """One line per case for the case-by-case runners (inference, evaluation, studies)::

        case 2/12 C0001: 12 pairs  3.9 s  eta 39s

    Args:
        total: number of cases.
        name: the logger (the console through the root logger).
    """

    def __init__(self, total: int, name: str = "mrsynth.progress") -> None:
        self.total, self.done = int(total), 0
        self.logger = logging.getLogger(name)
        if self.logger.getEffectiveLevel() > logging.INFO:
            self.logger.setLevel(logging.INFO)
        self._t0 = self._last = time.perf_counter()

    def step(self, case: str, detail: str = "") -> str:
        """Count one case (done or skipped) and log its line; returns the line."""
        now = time.perf_counter()
        self.done += 1
        dt, self._last = now - self._last, now
        left = (self.total - self.done) * (now - self._t0) / self.done
        line = f"case {self.done}/{self.total} {case}" + (f": {detail}" if detail else "") + \
            f"  {dt:.3g} s  eta {format_duration(left)}"
        self.logger.info(line)
        return line
