"""Networks: Seq2Seq (hyper-convolution decoder) and the parts TSF-Seq2Seq and VQ-Seq2Seq reuse."""

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

__all__ = [
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
]
