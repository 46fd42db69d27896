"""TSF-Seq2Seq: many MR sequences -> one, by task-specific fusion (Han et al., MICCAI 2023).

A trained :class:`~mrsynth.networks.seq2seq.Seq2Seq` is reused: its (frozen) encoder encodes every
available source sequence separately, :class:`TaskSpecificFusion` fuses the per-source features
into one feature map for the *task* (which sources are present, which target is wanted), and the
Seq2Seq hyper-decoder (trainable) decodes the fused features with the target code.

The task code is ``c = [mask || one_hot(target)]`` (``2 N`` values for ``N`` sequences). The
fusion has two parts:

* a **task-specific weighted average** of the source features, with weights
  ``w_i = m_i p_i / sum_j m_j p_j``, ``p = softmax(Linear(c)) + eps``: the interpretable
  contribution of each sequence to the task (absent sources get exactly 0);
* a **task-specific enhanced map (TSEM)**: a hyper-convolution conditioned on ``c`` over all the
  per-source features, refined by channel and spatial attention, added as a residual. The
  difference between the decoded images with and without it, ``|G(with) - G(without)|``, shows
  where the network refined the plain average.

.. code-block:: python

    s2s = Seq2Seq(spatial_dims=2)                     # trained; sequence i is code i
    net = TSFSeq2Seq(s2s, num_sequences=4)            # encoder frozen, fusion + decoder trainable
    x = torch.randn(B, 4, 1, H, W)                    # all sources; absent ones may hold anything
    mask = torch.tensor([[1, 0, 1, 1]] * B)           # availability
    y = net(x, mask, torch.tensor([1] * B))           # (B, 1, H, W): synthesize T1Gd
    parts = net.forward_all(x, mask, target)          # image, image_plain, weights, tsem_map
"""

from __future__ import annotations

from typing import List, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.layers.factories import Conv

from .hyperconv import HyperConv, code_to_onehot
from .seq2seq import Seq2Seq

__all__ = [
    "FusionOutput",
    "TSFOutput",
    "HyperChannelAttention",
    "SpatialAttention",
    "TaskSpecificFusion",
    "TSFSeq2Seq",
    "check_availability",
]


class FusionOutput(NamedTuple):
    """What :class:`TaskSpecificFusion` returns (a named tuple; by position: 0, 1, 2).

    Attributes:
        fused: fused features with the task-specific enhanced map, ``(B, C, *S)``.
        fused_plain: the task-specific weighted average alone ("without attention"), ``(B, C, *S)``.
        weights: per-sample sequence weights ``(B, N)``; rows sum to 1, absent sources are 0.
    """

    fused: torch.Tensor
    fused_plain: torch.Tensor
    weights: torch.Tensor


class TSFOutput(NamedTuple):
    """What :meth:`TSFSeq2Seq.forward_all` returns (a named tuple; by position: 0, 1, 2, 3).

    Attributes:
        image: synthesized target with the task-specific enhanced map, ``(B, C_out, *S)``.
        image_plain: synthesized target from the weighted average alone, ``(B, C_out, *S)``.
        weights: per-sample sequence weights ``(B, N)`` (the sequence contributions to the task).
        tsem_map: ``|image - image_plain|``, ``(B, C_out, *S)``, non-negative.
    """

    image: torch.Tensor
    image_plain: torch.Tensor
    weights: torch.Tensor
    tsem_map: torch.Tensor


def check_availability(mask: torch.Tensor, batch: int, num_sequences: int) -> torch.Tensor:
    """Validate an availability mask and return it as a boolean ``(B, N)`` tensor.

    Args:
        mask: ``(B, N)``, any dtype; a value ``> 0`` (or ``True``) marks a present source.
        batch: expected ``B``.
        num_sequences: expected ``N``.

    Raises:
        ValueError: on a wrong shape, or when a sample has no present source.
    """
    if mask.dim() != 2 or mask.shape[0] != batch or mask.shape[1] != num_sequences:
        raise ValueError(
            f"the availability mask must have shape (B, N) = ({batch}, {num_sequences}), got {list(mask.shape)}"
        )
    present = mask > 0
    if batch > 0:
        per_sample = present.any(dim=1)
        if not bool(per_sample.all()):
            bad: List[int] = (~per_sample).nonzero().flatten().tolist()
            raise ValueError(
                f"every sample needs at least one available source sequence, but the availability mask "
                f"has no present source for sample(s) {bad} of the batch"
            )
    return present


class HyperChannelAttention(nn.Module):
    """CBAM channel attention whose shared MLP is made of 1x1 hyper-convolutions.

    ``a = sigmoid(MLP(avgpool(x), c) + MLP(maxpool(x), c))``, ``MLP = hconv1x1(C -> C/r), ReLU,
    hconv1x1(C/r -> C)``, both conditioned on the code ``c``; returns ``a * x``.

    Args:
        spatial_dims: 1, 2 or 3.
        channels: ``C``.
        code_dim: size of the conditioning code.
        ratio: reduction ratio ``r`` (hidden width ``max(1, C // r)``).
        num_kernels: kernel-bank size of the hyper-convolutions.

    Shapes: x ``(B, C, *S)``, code ``(B or 1, code_dim)`` -> ``(B, C, *S)``.
    """

    def __init__(self, spatial_dims: int, channels: int, code_dim: int, ratio: int = 16, num_kernels: int = 16) -> None:
        super().__init__()
        if ratio < 1:
            raise ValueError(f"the attention ratio must be positive, got {ratio}")
        hidden = max(1, channels // ratio)
        self.spatial_dims = spatial_dims
        self.fc1 = HyperConv(spatial_dims, channels, hidden, 1, code_dim, num_kernels)
        self.act = nn.ReLU()
        self.fc2 = HyperConv(spatial_dims, hidden, channels, 1, code_dim, num_kernels)

    def mlp(self, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x, code)), code)

    def forward(self, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        dims = list(range(2, x.dim()))
        avg = x.mean(dim=dims, keepdim=True)
        mx = x.amax(dim=dims, keepdim=True)
        return x * torch.sigmoid(self.mlp(avg, code) + self.mlp(mx, code))


class SpatialAttention(nn.Module):
    """CBAM spatial attention: ``x * sigmoid(conv_k([mean_c(x), max_c(x)]))`` (zero padding).

    Args:
        spatial_dims: 1, 2 or 3.
        kernel_size: odd kernel size (7 in CBAM and the paper).

    Shapes: ``(B, C, *S)`` -> ``(B, C, *S)``.
    """

    def __init__(self, spatial_dims: int, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = Conv[Conv.CONV, spatial_dims](2, 1, kernel_size=kernel_size, padding=(kernel_size - 1) // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(pooled))


class TaskSpecificFusion(nn.Module):
    """Task-specific fusion of per-source features (the TSF module of TSF-Seq2Seq).

    For ``N`` source sequences with availability mask ``m`` and target index ``t``:

    1. task code ``c = [m || one_hot(t, N)]``, shape ``(B, 2N)``;
    2. sequence weights ``p = softmax(Linear(c)) + eps``, ``w_i = m_i p_i / sum_j m_j p_j``,
       normalised **per sample** (each row sums to 1, absent sources get exactly 0). The
       reference implementation divides by the sum over the *whole batch*, so a sample's
       weights (and output) depend on the other samples in its batch and do not sum to 1 for
       batches larger than one; we fix that;
    3. ``fused_plain = sum_i w_i f_i`` (the output "without attention");
    4. task-specific enhanced map: absent sources' features are zeroed, the ``N`` feature maps are
       concatenated to ``(B, N*C, *S)`` and a 3-wide hyper-convolution conditioned on ``c`` maps
       them to ``C`` channels, followed by :class:`HyperChannelAttention` (1x1 hyper-convolutions
       conditioned on ``c``, ratio ``attention_ratio``) and :class:`SpatialAttention` (k7);
       ``fused = fused_plain + residual``.

    Absent sources never influence any output: their features are replaced by zeros (with
    ``torch.where``, so even NaN there is harmless) before both the average and the TSEM.

    Args:
        spatial_dims: 1, 2 or 3 (the feature maps' spatial dimensions).
        channels: feature channels ``C`` of one source (the Seq2Seq encoder's ``out_channels``).
        num_sequences: ``N``.
        num_kernels: kernel-bank size of the hyper-convolutions.
        attention_ratio: channel-attention reduction ratio.
        eps: added to the softmax before masking, so that the weights are defined for any
            non-empty mask.

    Shapes (``forward``):
        - features: ``(B, N, C, *S)``; anything for absent sources.
        - mask: ``(B, N)``, ``> 0`` (or ``True``) = present; at least one per sample.
        - target: ``(B,)`` (or ``(1,)``) integer indices in ``[0, N)``, or a ``(B, N)`` one-hot code.
        - returns :class:`FusionOutput` ``(fused (B, C, *S), fused_plain (B, C, *S), weights (B, N))``.

    Raises:
        ValueError: on wrong shapes, a target outside ``[0, N)``, or a sample without any
            present source.
    """

    def __init__(
        self,
        spatial_dims: int,
        channels: int = 256,
        num_sequences: int = 4,
        num_kernels: int = 16,
        attention_ratio: int = 16,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if num_sequences < 1 or channels < 1:
            raise ValueError(f"num_sequences and channels must be positive, got {num_sequences} and {channels}")
        self.spatial_dims = spatial_dims
        self.channels = channels
        self.num_sequences = num_sequences
        self.code_dim = 2 * num_sequences
        self.eps = float(eps)
        self.weight_fc = nn.Linear(self.code_dim, num_sequences)
        self.tsem_conv = HyperConv(spatial_dims, num_sequences * channels, channels, 3, self.code_dim, num_kernels)
        self.channel_attention = HyperChannelAttention(spatial_dims, channels, self.code_dim, attention_ratio, num_kernels)
        self.spatial_attention = SpatialAttention(spatial_dims, 7)

    @torch.jit.export
    def task_code(self, mask: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Task code ``[mask || one_hot(target)]``: mask ``(B, N)``, target ``(B,)``/``(1,)`` or
        ``(B, N)`` -> ``(B, 2N)`` float (mask binarised; it must have a present source per sample)."""
        present = check_availability(mask, mask.shape[0], self.num_sequences)
        dtype = self.weight_fc.weight.dtype
        onehot = code_to_onehot(target, self.num_sequences, dtype)
        b = present.shape[0]
        if onehot.shape[0] == 1 and b != 1:
            onehot = onehot.expand(b, self.num_sequences)
        if onehot.shape[0] != b:
            raise ValueError(f"target has {onehot.shape[0]} rows but the mask has a batch of {b}")
        return torch.cat([present.to(dtype), onehot], dim=1)

    @torch.jit.export
    def weights_from_code(self, code: torch.Tensor) -> torch.Tensor:
        """Sequence weights ``(B, N)`` from a task code ``(B, 2N)`` (its first ``N`` values are the mask)."""
        p = torch.softmax(self.weight_fc(code), dim=1) + self.eps
        p = p * (code[:, : self.num_sequences] > 0).to(p.dtype)
        return p / p.sum(dim=1, keepdim=True)

    @torch.jit.export
    def sequence_weights(self, mask: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The interpretable per-task sequence contributions ``(B, N)`` (no features needed)."""
        return self.weights_from_code(self.task_code(mask, target))

    def _check_features(self, features: torch.Tensor) -> None:
        if (
            features.dim() != self.spatial_dims + 3
            or features.shape[1] != self.num_sequences
            or features.shape[2] != self.channels
        ):
            raise ValueError(
                f"TaskSpecificFusion expects features of shape (B, N={self.num_sequences}, C={self.channels}, "
                f"<{self.spatial_dims} spatial dims>), got {list(features.shape)}"
            )

    def forward(
        self, features: torch.Tensor, mask: torch.Tensor, target: torch.Tensor, use_tsem: bool = True
    ) -> FusionOutput:
        """
        Args:
            features: ``(B, N, C, *S)`` per-source features (anything for absent sources).
            mask: ``(B, N)`` availability.
            target: ``(B,)`` target indices in ``[0, N)`` or ``(B, N)`` one-hot.
            use_tsem: ``False`` skips the enhanced map: ``fused`` is then ``fused_plain`` (the
                paper's "output without attention", at the cost of the average only).

        Returns:
            :class:`FusionOutput` ``(fused, fused_plain, weights)``.
        """
        self._check_features(features)
        if mask.shape[0] != features.shape[0]:
            raise ValueError(f"mask batch {mask.shape[0]} does not match features batch {features.shape[0]}")
        code = self.task_code(mask, target)
        weights = self.weights_from_code(code)
        b = features.shape[0]
        bshape = [b, self.num_sequences] + [1] * (self.spatial_dims + 1)
        present = (mask > 0).reshape(bshape)
        feats = torch.where(present, features, torch.zeros((), dtype=features.dtype, device=features.device))
        fused_plain = (feats * weights.to(features.dtype).reshape(bshape)).sum(dim=1)
        if not use_tsem:
            return FusionOutput(fused_plain, fused_plain, weights)
        residual = self.tsem_conv(feats.reshape([b, self.num_sequences * self.channels] + list(features.shape[3:])), code)
        residual = self.spatial_attention(self.channel_attention(residual, code))
        return FusionOutput(fused_plain + residual, fused_plain, weights)


class TSFSeq2Seq(nn.Module):
    """TSF-Seq2Seq: a trained Seq2Seq turned into a many-to-one synthesis network.

    ``encoder`` and ``decoder`` are the given Seq2Seq's own submodules (shared, not copied), so a
    Seq2Seq state dict (``encoder.*``, ``decoder.*``) loads into this module with
    ``load_state_dict(..., strict=False)``, and this module's state dict adds ``fusion.*``.

    * Encoding (:meth:`encode_sources`): the sources are flattened to ``(B*N, C_in, *S)`` and
      **only the present ones are encoded** (selected with ``index_select``); absent slots are
      filled with zeros. Absent sources' pixels are never read, so they cannot influence the
      output (NaN there is fine). With ``freeze_encoder=True`` (default) the encoder's
      parameters get ``requires_grad=False`` (this also freezes the Seq2Seq passed in, which
      shares them), it runs under ``torch.no_grad()`` and stays in eval mode even after
      ``.train()``.
    * Fusion: :class:`TaskSpecificFusion` (trainable).
    * Decoding: the Seq2Seq hyper-decoder (trainable) with the target code; sequence ``i`` is
      decoder code ``i``, so ``num_sequences`` must not exceed the decoder's ``num_codes``.

    Args:
        seq2seq: a trained :class:`~mrsynth.networks.seq2seq.Seq2Seq` (2D, 2.5D or 3D).
        num_sequences: ``N``, the number of source/target sequences.
        num_kernels: kernel-bank size of the fusion's hyper-convolutions.
        attention_ratio: channel-attention reduction ratio.
        freeze_encoder: freeze the encoder (the paper's setting).
        eps: see :class:`TaskSpecificFusion`.

    Shapes:
        - x: ``(B, N, C_in, *S)``, all sources stacked (anything for absent ones); ``S`` a
          multiple of the encoder's ``downsample_factor``.
        - mask: ``(B, N)`` availability (``> 0`` = present), at least one per sample.
        - target: ``(B,)`` (or ``(1,)``) indices in ``[0, N)`` or ``(B, N)`` one-hot.
        - ``forward`` returns the image with the enhanced map ``(B, C_out, *S)``;
          :meth:`forward_all` returns :class:`TSFOutput`.
    """

    def __init__(
        self,
        seq2seq: Seq2Seq,
        num_sequences: int = 4,
        num_kernels: int = 16,
        attention_ratio: int = 16,
        freeze_encoder: bool = True,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        decoder = seq2seq.decoder
        if num_sequences > decoder.num_codes:
            raise ValueError(
                f"num_sequences ({num_sequences}) exceeds the Seq2Seq decoder's num_codes ({decoder.num_codes})"
            )
        self.spatial_dims = seq2seq.encoder.spatial_dims
        self.in_channels = seq2seq.encoder.in_channels
        self.out_channels = decoder.out_channels
        self.num_sequences = num_sequences
        self.num_codes = decoder.num_codes
        self.freeze_encoder = freeze_encoder
        self.encoder = seq2seq.encoder
        self.decoder = decoder
        self.fusion = TaskSpecificFusion(
            self.spatial_dims, self.encoder.out_channels, num_sequences, num_kernels, attention_ratio, eps
        )
        if freeze_encoder:
            self.encoder.requires_grad_(False)
            self.encoder.eval()

    def train(self, mode: bool = True) -> "TSFSeq2Seq":
        """As :meth:`torch.nn.Module.train`, but a frozen encoder stays in eval mode."""
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()
        return self

    def trainable_parameters(self) -> List[nn.Parameter]:
        """The parameters that require gradients (fusion and decoder when the encoder is frozen)."""
        return [p for p in self.parameters() if p.requires_grad]

    def _check_sources(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if x.dim() != self.spatial_dims + 3 or x.shape[1] != self.num_sequences or x.shape[2] != self.in_channels:
            raise ValueError(
                f"TSFSeq2Seq expects sources of shape (B, N={self.num_sequences}, C_in={self.in_channels}, "
                f"<{self.spatial_dims} spatial dims>), got {list(x.shape)}"
            )
        return check_availability(mask, x.shape[0], self.num_sequences)

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        if self.freeze_encoder:
            with torch.no_grad():
                f = self.encoder(x)
            return f
        return self.encoder(x)

    @torch.jit.export
    def as_sources(self, x: torch.Tensor) -> torch.Tensor:
        """Accept sources stacked along the channels, ``(B, N * C_in, *S)`` (source-major, as the
        data pipeline and :class:`~mrsynth.inferers.SlabInferer` produce them), and return
        ``(B, N, C_in, *S)``; ``(B, N, C_in, *S)`` passes through."""
        if x.dim() == self.spatial_dims + 2:
            b, nc = x.shape[0], x.shape[1]
            if nc % self.num_sequences != 0:
                raise ValueError(f"{nc} channels cannot hold {self.num_sequences} sources of equal channels")
            return x.reshape([b, self.num_sequences, nc // self.num_sequences] + list(x.shape[2:]))
        return x

    @torch.jit.export
    def encode_sources(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Encode the present sources: ``(B, N, C_in, *S)`` (or ``(B, N * C_in, *S)``) ->
        ``(B, N, C, *S / 4)``, zeros for absent ones.

        Only present sources go through the encoder (absent ones are not even read)."""
        x = self.as_sources(x)
        present = self._check_sources(x, mask)
        b, n = x.shape[0], x.shape[1]
        flat = x.reshape([b * n] + list(x.shape[2:]))
        keep = present.reshape(b * n)
        if bool(keep.all()):
            f = self._encode(flat)
            return f.reshape([b, n] + list(f.shape[1:]))
        idx = keep.nonzero().flatten()
        f = self._encode(flat.index_select(0, idx))
        out = torch.zeros([b * n] + list(f.shape[1:]), dtype=f.dtype, device=f.device)
        out = out.index_copy(0, idx, f)
        return out.reshape([b, n] + list(f.shape[1:]))

    def _decoder_code(self, target: torch.Tensor, batch: int) -> torch.Tensor:
        """Target ``(B,)``/``(1,)`` indices or ``(B, N)`` one-hot -> decoder code ``(B or 1, num_codes)``."""
        onehot = code_to_onehot(target, self.num_sequences, self.fusion.weight_fc.weight.dtype)
        if onehot.shape[0] != batch and onehot.shape[0] != 1:
            raise ValueError(f"target has {onehot.shape[0]} rows for a batch of {batch}")
        return F.pad(onehot, [0, self.num_codes - self.num_sequences])

    @torch.jit.export
    def fuse(
        self, x: torch.Tensor, mask: torch.Tensor, target: torch.Tensor, use_tsem: bool = True
    ) -> FusionOutput:
        """Encode the present sources and fuse them: :class:`FusionOutput` at feature resolution."""
        return self.fusion(self.encode_sources(x, mask), mask, target, use_tsem)

    @torch.jit.export
    def sequence_weights(self, mask: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-task sequence contributions ``(B, N)`` (no image needed)."""
        return self.fusion.sequence_weights(mask, target)

    @torch.jit.export
    def forward_all(self, x: torch.Tensor, mask: torch.Tensor, target: torch.Tensor) -> TSFOutput:
        """Everything at once (training and explanation): :class:`TSFOutput`
        ``(image, image_plain, weights, tsem_map)``.

        Both fused feature maps are decoded in one decoder call (batch ``2B``)."""
        fused, fused_plain, weights = self.fuse(x, mask, target, True)
        b = x.shape[0]
        code = self._decoder_code(target, b)
        if code.shape[0] != b:
            code = code.expand(b, self.num_codes)
        both = self.decoder(torch.cat([fused, fused_plain], dim=0), torch.cat([code, code], dim=0))
        image = both[:b]
        image_plain = both[b:]
        return TSFOutput(image, image_plain, weights, (image - image_plain).abs())

    def forward(self, x: torch.Tensor, mask: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Sources ``(B, N, C_in, *S)``, mask ``(B, N)``, target -> synthesized image ``(B, C_out, *S)``."""
        fused = self.fuse(x, mask, target, True).fused
        return self.decoder(fused, self._decoder_code(target, x.shape[0]))
