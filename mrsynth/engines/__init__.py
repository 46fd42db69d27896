"""Training steps (ignite iteration functions) of each method, for MONAI's trainers."""

from .seq2seq import Seq2SeqTrainStep, build_perceptual_loss

__all__ = ["Seq2SeqTrainStep", "build_perceptual_loss"]
