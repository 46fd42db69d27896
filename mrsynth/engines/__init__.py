"""Training steps (ignite iteration functions) of each method, for MONAI's trainers."""

from .base import TrainStep, run_as_forward, unwrap
from .seq2seq import Seq2SeqTrainStep, build_perceptual_loss
from .tsf import TSFTrainStep
from .vq import VQSeq2SeqTrainStep, info_nce, masked_consistency

__all__ = ["TrainStep", "run_as_forward", "unwrap", "Seq2SeqTrainStep", "TSFTrainStep", "VQSeq2SeqTrainStep",
           "build_perceptual_loss", "info_nce", "masked_consistency"]
