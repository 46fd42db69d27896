"""Training steps (ignite iteration functions) of each method, for MONAI's trainers."""

from .base import TrainStep, run_as_forward, unwrap
from .seq2seq import Seq2SeqTrainStep, build_perceptual_loss
from .series import SeriesTrainStep
from .tsf import TSFTrainStep
from .tumsyn import CLIPTrainStep, TUMSynTrainStep, clip_loss, retrieval_output, same_prompts
from .vq import VQSeq2SeqTrainStep, info_nce, masked_consistency

__all__ = ["TrainStep", "run_as_forward", "unwrap", "Seq2SeqTrainStep", "TSFTrainStep", "SeriesTrainStep", "VQSeq2SeqTrainStep",
           "CLIPTrainStep", "TUMSynTrainStep", "build_perceptual_loss", "clip_loss", "info_nce", "masked_consistency",
           "retrieval_output", "same_prompts"]
