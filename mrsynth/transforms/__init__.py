"""MONAI map transforms: loading with validation, the papers' normalisation, pair sampling."""

from .intensity import NNSEQ2SEQ, PAPER, ScalePercentiled, apply_range, invert_range, percentile_range
from .io import LoadSequencesd
from .sampling import RandSequencePaird, RandSourceSubsetd, SequencePairsd, SourceSubsetsd, extract_slab, slab_indices

__all__ = [
    "LoadSequencesd",
    "ScalePercentiled",
    "PAPER",
    "NNSEQ2SEQ",
    "percentile_range",
    "apply_range",
    "invert_range",
    "RandSequencePaird",
    "SequencePairsd",
    "RandSourceSubsetd",
    "SourceSubsetsd",
    "extract_slab",
    "slab_indices",
]
