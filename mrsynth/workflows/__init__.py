"""Runners that the bundles' inference and evaluation configs call: whole-volume synthesis for
every case of a folder, and the pairwise evaluation with contribution ranking and maps."""

from .conditioning import (NAMED_PROTOCOLS, Conditioning, TargetCode, TargetCodeFusion, TargetPrompt, named_protocol,
                           resampled_geometry)
from .evaluation import PairwiseEvaluation, foreground_mask, format_table
from .prompted import PromptedEvaluation
from .series import SeriesEvaluation, SeriesInference, curve_metrics
from .study import TranslationStudy, encode_volume
from .subsets import SubsetEvaluation, weight_table
from .synthesis import SynthesisInference, load_weights, synthesize, synthesize_volume

__all__ = ["SynthesisInference", "PairwiseEvaluation", "SubsetEvaluation", "weight_table", "load_weights", "synthesize_volume", "foreground_mask",
           "format_table", "TranslationStudy", "encode_volume", "synthesize", "Conditioning", "TargetCode", "TargetCodeFusion",
           "TargetPrompt", "NAMED_PROTOCOLS", "named_protocol", "resampled_geometry", "PromptedEvaluation",
           "SeriesInference", "SeriesEvaluation", "curve_metrics"]
