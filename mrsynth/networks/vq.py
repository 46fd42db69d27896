"""VQ-Seq2Seq: Seq2Seq with a vector-quantized common latent space (papers.md section 3).

The Seq2Seq encoder's features are projected (1 x 1 convolution) to a small latent
(``latent_channels``, 3 in the paper), snapped to the nearest of ``codebook_size`` code vectors
(256 in the paper) by MONAI's :class:`~monai.networks.layers.vector_quantizer.EMAQuantizer`
(straight-through gradients, commitment cost 0.25, codebook learnt by exponential moving
averages), projected back and decoded by the Seq2Seq hyper-decoder for the target code. Every
sequence of a case is meant to land on the same quantized latent: a noisy, biased or ghosted
input that still lands on its clean image's codes decodes as the clean image.

.. code-block:: python

    net = VQSeq2Seq(spatial_dims=2, in_channels=3, out_channels=3)   # paper size, 2.5D
    z = net.encode(x)                       # quantized latent (B, 3, H/4, W/4)
    y = net.decode(z, code)                 # (B, 3, H, W)
    y = net(x, code)                        # the same in one call
    z_e = net.encode_continuous(x)          # before quantization
    z_q, vq_loss, indices = net.quantize(z_e)

The encoder and hyper-decoder are :class:`~mrsynth.networks.Seq2Seq`'s (this class is one), so
a Seq2Seq checkpoint loads into it with ``strict=False`` (the projections and codebook are new).
"""


from typing import Tuple

import torch
from monai.networks.layers.factories import Conv
from monai.networks.layers.vector_quantizer import EMAQuantizer

from .seq2seq import Seq2Seq, _norm

__all__ = ["VQSeq2Seq", "codebook_stats"]


def codebook_stats(indices: torch.Tensor, codebook_size: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(perplexity, usage)`` of code ``indices`` (any shape): the exponential of the entropy of
    the code histogram (1 when one code is used, ``codebook_size`` when all are used equally)
    and the fraction of the codebook used at least once."""
    counts = torch.bincount(indices.reshape(-1).long(), minlength=codebook_size).float()
    p = counts / counts.sum().clamp_min(1.0)
    perplexity = torch.exp(-(p * torch.log(p + 1e-10)).sum())
    return perplexity, (counts > 0).float().mean()


class _EMAQuantizer(EMAQuantizer):
    """MONAI's EMA quantizer, scriptable: its codebook all-reduce (training under
    ``torch.distributed`` only) is left out of TorchScript, which cannot compile it."""

    @torch.jit.unused
    def distributed_synchronization(self, encodings_sum: torch.Tensor, dw: torch.Tensor) -> None:
        super().distributed_synchronization(encodings_sum, dw)


class VQSeq2Seq(Seq2Seq):
    """Seq2Seq with a vector-quantized bottleneck shared by all sequences.

    Args:
        spatial_dims, in_channels, out_channels: as :class:`~mrsynth.networks.Seq2Seq`.
        latent_channels: dimension of the quantized latent and of each code vector (paper: 3).
        codebook_size: number of code vectors (paper: 256).
        commitment_cost: weight of ``||z_e - sg(z_q)||^2`` in the quantizer's loss (paper: 0.25).
        decay: EMA decay of the codebook updates.
        ddp_sync: all-reduce the codebook statistics across ranks under
            ``torch.distributed`` (the quantizer updates its codebook in the forward pass).
        latent_norm: a MONAI norm applied to the latent before quantization (e.g. ``"instance"``:
            zero mean and unit variance per channel and image, the scale of the codebook's
            initialisation, so that neither the latent-consistency pull nor the commitment can
            shrink the latents onto a few codes); ``None`` (default, the paper): none.
        kwargs: the other arguments of :class:`~mrsynth.networks.Seq2Seq` (``num_codes``,
            ``channels``, ``num_res_blocks``, ``num_kernels``, ``code_dim``, ``norm``, ``act``,
            ``upsample``, ``final_act``), the paper's size by default.

    Shapes:
        - x: ``(B, in_channels, *spatial)``, every spatial size a multiple of ``2 ** (len(channels) - 1)``.
        - code: as :class:`~mrsynth.networks.Seq2Seq`.
        - :meth:`encode`: ``(B, latent_channels, *spatial / 2 ** (len(channels) - 1))``;
          :meth:`quantize` also returns the code indices ``(B, *latent_spatial)``.
        - output: ``(B, out_channels, *spatial)``.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 1,
        *,
        latent_channels: int = 3,
        codebook_size: int = 256,
        commitment_cost: float = 0.25,
        decay: float = 0.99,
        ddp_sync: bool = True,
        latent_norm=None,
        **kwargs,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels, **kwargs)
        conv = Conv[Conv.CONV, spatial_dims]
        width = self.encoder.out_channels
        self.latent_channels, self.codebook_size = int(latent_channels), int(codebook_size)
        self.to_latent = conv(width, latent_channels, kernel_size=1)
        self.latent_norm = _norm(latent_norm, spatial_dims, latent_channels)
        self.from_latent = conv(latent_channels, width, kernel_size=1)
        self.quantizer = _EMAQuantizer(spatial_dims, codebook_size, latent_channels, commitment_cost=commitment_cost,
                                       decay=decay, ddp_sync=ddp_sync)

    @torch.jit.export
    def encode_continuous(self, x: torch.Tensor) -> torch.Tensor:
        """Image -> the latent before quantization ``z_e`` ``(B, latent_channels, *s)``."""
        return self.latent_norm(self.to_latent(self.encode_features(x)))

    @torch.jit.export
    def quantize(self, z_e: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(z_q, vq_loss, indices)``: the nearest code vectors (straight-through: the gradient
        of ``z_q`` reaches ``z_e``), ``commitment_cost * ||z_e - sg(z_q)||^2`` and the code index
        of every latent position. In training mode the codebook moves towards the latents (EMA)."""
        z_q, loss, indices = self.quantizer(z_e)
        return z_q.to(z_e.dtype), loss, indices

    @torch.jit.export
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Image -> the quantized common latent ``z_q`` ``(B, latent_channels, *s)``."""
        return self.quantize(self.encode_continuous(x))[0]

    @torch.jit.export
    def decode(self, features: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        """Quantized latent ``(B, latent_channels, *s)`` and target code -> image."""
        return self.decode_features(self.from_latent(features), code)

    def forward(self, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x), code)
