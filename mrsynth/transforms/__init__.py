"""MONAI map transforms: loading with validation, the papers' normalisation, pair sampling,
TUMSyn's text prompts."""

from .augment import RandDomainAugmentd
from .corruption import (CORRUPTION_LEVELS, CORRUPTIONS, STRENGTHS, RandMotionGhosting, corrupt, corruption_levels,
                         reference_level)
from .intensity import NNSEQ2SEQ, PAPER, ScalePercentiled, apply_range, invert_range, percentile_range, scaled_signed, signed_range
from .implicit import RandImplicitPaird, scaled_prompt
from .io import LoadSequencesd
from .prompt import (ACQUISITION_FEATURES, DEFAULT_CONTEXT_LENGTH, NUMBER_FEATURES, SIGNAL_FEATURES, AcquisitionFeaturesd,
                     Prompt, PromptError, PromptFromSidecard, PromptTokenizer, TokenizePromptd, acquisition_features,
                     format_prompt, sequence_kind, signal_features)
from .series import RandSeriesSlabd, SeriesSlabsd, SplitFramesd, parse_frames, stack_frames
from .standard import AsSynthesisd, CheckVolumed, PlaceInSlotd
from .sampling import RandSequencePaird, RandSourceSubsetd, SequencePairsd, SourceSubsetsd, extract_slab, slab_indices

__all__ = [
    "RandSeriesSlabd",
    "SeriesSlabsd",
    "SplitFramesd",
    "parse_frames",
    "stack_frames",
    "AsSynthesisd",
    "CheckVolumed",
    "PlaceInSlotd",
    "LoadSequencesd",
    "RandImplicitPaird",
    "scaled_prompt",
    "RandDomainAugmentd",
    "ScalePercentiled",
    "PAPER",
    "NNSEQ2SEQ",
    "percentile_range",
    "signed_range",
    "scaled_signed",
    "apply_range",
    "invert_range",
    "RandSequencePaird",
    "SequencePairsd",
    "RandSourceSubsetd",
    "SourceSubsetsd",
    "extract_slab",
    "slab_indices",
    "CORRUPTIONS",
    "STRENGTHS",
    "CORRUPTION_LEVELS",
    "RandMotionGhosting",
    "corrupt",
    "corruption_levels",
    "reference_level",
    "Prompt",
    "PromptError",
    "PromptTokenizer",
    "PromptFromSidecard",
    "TokenizePromptd",
    "AcquisitionFeaturesd",
    "acquisition_features",
    "ACQUISITION_FEATURES",
    "NUMBER_FEATURES",
    "SIGNAL_FEATURES",
    "signal_features",
    "sequence_kind",
    "format_prompt",
    "DEFAULT_CONTEXT_LENGTH",
]
