"""Training step of a series (4D) synthesis: input frames -> output frames, one target code."""

from __future__ import annotations

from monai.utils import CommonKeys as Keys

from .base import TrainStep, run_as_forward

__all__ = ["SeriesTrainStep"]


class SeriesTrainStep(TrainStep):
    """``pred = network(image, tgt_code)`` on frame-major flattened series
    (:class:`~mrsynth.networks.FlatSeries` around :class:`~mrsynth.networks.Seq2Seq4D`), one loss
    term ``target`` = ``L(pred, label)`` (the trainer's ``loss_function``) over every output frame.

    The 3D steps' self-reconstruction and cycle terms need a code for the source; the inputs of a
    series synthesis are a stack of different images (e.g. a pre-contrast frame and a T2) with
    no single code, so they are not used.

    Args:
        rec_weight: weight of the term.
    """

    def __init__(self, rec_weight: float = 1.0) -> None:
        self.rec_weight = float(rec_weight)

    @staticmethod
    def passes(module, image, code):
        return module(image, code)

    def outputs(self, network, batch: dict) -> dict:
        return {"pred": run_as_forward(network, self.passes, batch[Keys.IMAGE], batch["tgt_code"])}

    def terms(self, out: dict, batch: dict) -> dict:
        return {"target": (self.rec_weight, self.criterion()(out["pred"], batch[Keys.LABEL]))}
