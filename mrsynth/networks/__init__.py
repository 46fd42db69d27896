"""Networks: Seq2Seq (hyper-convolution decoder) and the parts TSF-Seq2Seq and VQ-Seq2Seq reuse."""

from .bound import Conditioned, FlatSeries, PromptConditioned, availability_mask
from .convlstm import ConvLSTM, ConvLSTMCell
from .hyperconv import CodeEmbedding, HyperConv, code_to_onehot
from .seq2seq import (
    HyperResBlock,
    HyperUpBlock,
    ResBlock,
    Seq2Seq,
    Seq2Seq4D,
    Seq2SeqDecoder,
    Seq2SeqEncoder,
)
from .tsf import FusionOutput, TaskSpecificFusion, TSFOutput, TSFSeq2Seq
from .vq import VQSeq2Seq, codebook_stats

__all__ = [
    "FlatSeries",
    "Conditioned",
    "PromptConditioned",
    "availability_mask",
    "CodeEmbedding",
    "ConvLSTM",
    "ConvLSTMCell",
    "HyperConv",
    "HyperResBlock",
    "HyperUpBlock",
    "ResBlock",
    "Seq2Seq",
    "Seq2Seq4D",
    "Seq2SeqDecoder",
    "Seq2SeqEncoder",
    "code_to_onehot",
    "FusionOutput",
    "TaskSpecificFusion",
    "TSFOutput",
    "TSFSeq2Seq",
    "VQSeq2Seq",
    "codebook_stats",
]
from .tumsyn import (AcquisitionEncoder, ImageEncoder, ImplicitDecoder, PatchEncoder, TextConditionedFusion, TextEncoder,
                     TextImageCLIP, TUMSyn, sample_features, voxel_centers)

__all__ += ["ImageEncoder", "ImplicitDecoder", "PatchEncoder", "TextConditionedFusion", "TextEncoder", "TextImageCLIP",
            "TUMSyn", "AcquisitionEncoder", "sample_features", "voxel_centers"]
