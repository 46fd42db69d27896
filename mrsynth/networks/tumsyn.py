"""TUMSyn: text-guided universal MR synthesis (papers.md section 4).

Two stages, two models:

- Stage 1, :class:`TextImageCLIP`: a CLIP-style causal :class:`TextEncoder` (BPE tokens of a
  metadata prompt, :class:`~mrsynth.transforms.PromptTokenizer`) trained contrastively against
  a 3D image encoder (MONAI's :class:`~monai.networks.nets.ResNet`) on (volume, prompt) pairs.
- Stage 2, :class:`TUMSyn`: the frozen text encoder embeds the *target* prompt (optionally
  plus an :class:`AcquisitionEncoder` of the prompt's TR/TE/TI/flip angle read as numbers); a 3D residual
  CNN encodes the source patch at its own resolution; :class:`TextConditionedFusion` lets the
  prompt steer the image features; an :class:`ImplicitDecoder` predicts the target intensity
  at any query coordinate, so the output grid (voxel size) is free.

Coordinates: a query point is given in the normalised coordinates of the input patch,
``(B, N, 3)`` in the order of the spatial axes ``(x, y, z)`` of a MONAI ``(B, C, X, Y, Z)``
tensor, ``-1`` / ``+1`` the outer *edges* of the first / last voxel (``align_corners=False``).
Voxel ``i`` of an axis of ``n`` voxels has its centre at ``-1 + (2 i + 1) / n``.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from monai.networks.blocks import TransformerBlock
from monai.networks.layers.utils import get_norm_layer
from monai.networks.nets import ResNet
from torch import nn

from .seq2seq import ResBlock

__all__ = ["TextEncoder", "ImageEncoder", "TextImageCLIP", "AcquisitionEncoder", "PatchEncoder", "TextConditionedFusion",
           "ImplicitDecoder", "TUMSyn", "voxel_centers", "sample_features"]


class TextEncoder(nn.Module):
    """CLIP-style text encoder: token and position embeddings, causal transformer blocks
    (MONAI's :class:`~monai.networks.blocks.TransformerBlock`), final LayerNorm, and a linear
    projection of the end-of-text token's features.

    Args:
        vocab_size: BPE vocabulary size (CLIP's: 49408).
        context_length: tokens per prompt (padded with 0).
        width: transformer width (paper 512).
        heads: attention heads (paper 8).
        layers: transformer blocks (paper 8-12).
        embed_dim: size of the output embedding (paper 768).
        flash: use ``scaled_dot_product_attention`` (fused kernels on GPUs).

    Shapes: tokens ``(B, context_length)`` (long; the end-of-text token has the highest id of a
    row, CLIP's convention) -> ``(B, embed_dim)``.
    """

    def __init__(self, vocab_size: int = 49408, context_length: int = 128, width: int = 512, heads: int = 8,
                 layers: int = 12, embed_dim: int = 768, dropout: float = 0.0, flash: bool = True) -> None:
        super().__init__()
        self.context_length, self.embed_dim = int(context_length), int(embed_dim)
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.randn(context_length, width) * 0.01)
        self.blocks = nn.ModuleList([
            TransformerBlock(width, 4 * width, heads, dropout_rate=dropout, qkv_bias=True, causal=True,
                             sequence_length=context_length, use_flash_attention=flash)
            for _ in range(layers)
        ])
        for block in self.blocks:  # MONAI builds a cross-attention norm even without cross-attention: never used,
            block.norm_cross_attn.requires_grad_(False)  # it must not wait for a gradient under DDP
        self.ln_final = nn.LayerNorm(width)
        self.projection = nn.Linear(width, embed_dim, bias=False)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.projection.weight, std=width**-0.5)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.ndim != 2 or tokens.shape[1] != self.context_length:
            raise ValueError(f"tokens must be (B, {self.context_length}), got shape {tokens.shape}")
        x = self.token_embedding(tokens) + self.positional_embedding
        for block in self.blocks:
            x = block(x)
        x = self.ln_final(x)
        eot = tokens.argmax(dim=-1)
        return self.projection(x[torch.arange(x.shape[0], device=x.device), eot])


class ImageEncoder(nn.Module):
    """Stage 1's 3D image encoder: MONAI's :class:`~monai.networks.nets.ResNet` (basic blocks,
    one-group norm, i.e. layer norm over channels and space, in every layer) ending in a linear projection to ``embed_dim``.

    Shapes: ``(B, in_channels, X, Y, Z)`` -> ``(B, embed_dim)``.
    """

    def __init__(self, in_channels: int = 1, channels=(32, 64, 128, 256), layers=(1, 1, 1, 1), embed_dim: int = 768,
                 norm=("group", {"num_groups": 1})) -> None:
        super().__init__()
        self.net = ResNet("basic", list(layers), list(channels), spatial_dims=3, n_input_channels=in_channels,
                          conv1_t_size=3, conv1_t_stride=1, num_classes=embed_dim, norm=norm)
        # MONAI 1.6's ResNet applies ``norm`` to its stem only (the residual layers get batch norm):
        # put the same norm in the layers, so small batches and DDP ranks do not depend on batch statistics
        for parent in list(self.net.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.BatchNorm3d):
                    setattr(parent, name, get_norm_layer(norm, spatial_dims=3, channels=child.num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TextImageCLIP(nn.Module):
    """Stage 1: text and image encoders with a learnable temperature (CLIP).

    ``forward(image, tokens)`` returns ``(image_embedding, text_embedding, logit_scale)``, the
    embeddings L2-normalised ``(B, E)``, ``logit_scale`` = exp of the learnable log scale,
    initialised at ``1 / temperature`` and clamped at 100 (CLIP). The symmetric InfoNCE loss
    is :class:`mrsynth.engines.CLIPTrainStep`'s.
    """

    def __init__(self, text_encoder: TextEncoder, image_encoder: nn.Module, temperature: float = 0.07) -> None:
        super().__init__()
        self.text_encoder, self.image_encoder = text_encoder, image_encoder
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))

    def forward(self, image: torch.Tensor, tokens: torch.Tensor):
        img = F.normalize(self.image_encoder(image).float(), dim=-1)
        txt = F.normalize(self.text_encoder(tokens).float(), dim=-1)
        return img, txt, self.logit_scale.clamp(max=math.log(100.0)).exp()


class AcquisitionEncoder(nn.Module):
    """An MLP from a prompt's acquisition parameters read as numbers
    (:func:`mrsynth.transforms.acquisition_features`, ``(B, in_features)``) to an embedding
    ``(B, embed_dim)`` that :class:`TUMSyn` adds to the text embedding.

    Not in the paper, where the numbers reach the network only as text tokens: a text encoder
    has to learn to read digits first, which the small CPU-trained models here do not (their
    synthesized contrast ignores TE, TI and the flip angle, ``bundles/tumsyn/docs/README.md``).
    """

    def __init__(self, in_features: int, embed_dim: int, hidden: int = 256) -> None:
        super().__init__()
        self.in_features = int(in_features)
        self.mlp = nn.Sequential(nn.Linear(in_features, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, embed_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"acquisition features must be (B, {self.in_features}), got shape {x.shape}")
        return self.mlp(x)


class PatchEncoder(nn.Module):
    """Stage 2's source encoder: a 3D residual CNN that keeps the input's resolution (a head
    convolution, ``num_blocks`` :class:`~mrsynth.networks.ResBlock` without normalisation, a
    tail convolution and a global skip).

    Shapes: ``(B, in_channels, X, Y, Z)`` -> ``(B, features, X, Y, Z)``.
    """

    def __init__(self, in_channels: int = 1, features: int = 64, num_blocks: int = 8) -> None:
        super().__init__()
        self.head = nn.Conv3d(in_channels, features, 3, padding=1, padding_mode="replicate")
        self.blocks = nn.Sequential(*[ResBlock(3, features, norm=None, act=("leakyrelu", {"negative_slope": 0.1}))
                                      for _ in range(num_blocks)])
        self.tail = nn.Conv3d(features, features, 3, padding=1, padding_mode="replicate")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.head(x)
        return h + self.tail(self.blocks(h))


class TextConditionedFusion(nn.Module):
    """The target prompt's embedding steers the image features.

    1. adapter: the frozen text embedding ``t`` goes through a small residual MLP and a linear
       map to ``q`` of size ``C`` (the only text-side weights that train in stage 2);
    2. attention from the text query over the image positions: ``a = softmax(W_q q . W_k f_i /
       sqrt(C / heads)) W_v f_i`` summed over positions ``i`` (``heads`` heads);
    3. channel gating: ``f <- f * sigmoid(W_g [a, q])``;
    4. gated feed-forward per position: ``f <- f + W_o (GELU(W_1 f) * sigmoid(W_2 f [+ W_t q]))``;
    5. a per-channel scale and shift from the query, ``f <- f (1 + W_s q) + W_b q`` (FiLM; zero
       at initialisation), so that the decoder's input moves with the prompt everywhere, also
       where step 4's gate saturates.

    The reference applies its gate after a reshape that mixes the channel and position axes;
    here every operation keeps ``(B, C, X, Y, Z)`` and acts on the channel axis.

    Shapes: features ``(B, C, X, Y, Z)``, text ``(B, text_dim)`` -> ``(B, C, X, Y, Z)``.
    """

    def __init__(self, channels: int, text_dim: int, heads: int = 4, adapter_hidden: int = 256, ffn_factor: int = 2) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels ({channels}) must be divisible by heads ({heads})")
        self.heads = int(heads)
        self.adapter = nn.Sequential(nn.Linear(text_dim, adapter_hidden), nn.GELU(), nn.Linear(adapter_hidden, text_dim))
        nn.init.zeros_(self.adapter[-1].weight)
        nn.init.zeros_(self.adapter[-1].bias)
        self.to_query = nn.Linear(text_dim, channels)
        self.q = nn.Linear(channels, channels)
        self.kv = nn.Conv3d(channels, 2 * channels, 1)
        self.gate = nn.Linear(2 * channels, channels)
        hidden = ffn_factor * channels
        self.ffn_in = nn.Conv3d(channels, 2 * hidden, 1)
        self.ffn_text = nn.Linear(channels, hidden)
        self.ffn_out = nn.Conv3d(hidden, channels, 1)
        self.film = nn.Linear(channels, 2 * channels)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def text_query(self, text: torch.Tensor) -> torch.Tensor:
        """The adapted text query ``(B, C)``."""
        return self.to_query(text + self.adapter(text))

    def forward(self, f: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        b, c = f.shape[:2]
        q = self.text_query(text)
        k, v = self.kv(f).flatten(2).chunk(2, dim=1)  # (B, C, N) each
        h, d = self.heads, c // self.heads
        qh = self.q(q).view(b, h, 1, d)
        kh = k.view(b, h, d, -1).transpose(2, 3)  # (B, h, N, d)
        vh = v.view(b, h, d, -1).transpose(2, 3)
        a = F.scaled_dot_product_attention(qh, kh, vh).reshape(b, c)  # (B, C)
        g = torch.sigmoid(self.gate(torch.cat([a, q], dim=1)))
        f = f * g.view(b, c, 1, 1, 1)
        u, w = self.ffn_in(f).chunk(2, dim=1)
        w = w + self.ffn_text(q).view(b, -1, 1, 1, 1)
        f = f + self.ffn_out(F.gelu(u) * torch.sigmoid(w))
        scale, shift = self.film(q).view(b, 2 * c, 1, 1, 1).chunk(2, dim=1)
        return f * (1 + scale) + shift


def voxel_centers(shape, device=None, dtype=torch.float32) -> torch.Tensor:
    """Normalised coordinates ``(prod(shape), 3)`` of the voxel centres of a grid ``shape``
    (``(X, Y, Z)`` order, ``align_corners=False``)."""
    axes = [(torch.arange(n, device=device, dtype=dtype) * 2 + 1) / n - 1 for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)


def sample_features(f: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Trilinear samples of ``f`` ``(B, C, X, Y, Z)`` at ``coords`` ``(B, N, 3)`` -> ``(B, N, C)``
    (border values outside the patch)."""
    grid = coords.flip(-1).view(coords.shape[0], -1, 1, 1, 3).to(f.dtype)  # grid_sample wants (z, y, x)
    out = F.grid_sample(f, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.view(f.shape[0], f.shape[1], -1).transpose(1, 2)


class ImplicitDecoder(nn.Module):
    """MLP on the features sampled trilinearly at a query point, plus the point's position.

    The position is given *relative to the nearest input voxel centre*, in input voxels
    (``r`` in ``[-0.5, 0.5]`` per axis, as in local implicit image functions), not as the absolute
    patch coordinate: the decoder is then the same at every place of a patch and for any patch
    size, so a model trained on 20^3 patches runs on 60^3 inference windows unchanged. It enters
    as ``(sin 2 pi r, cos 2 pi r)``, which is continuous where ``r`` jumps from +0.5 to -0.5
    (half-way between two voxel centres), so the output has no seams there.

    With ``signals = K > 0`` the last ``K`` feature channels are the target protocol's
    :func:`~mrsynth.transforms.signal_features` (constant over the patch) and the MLP returns
    ``K + 1`` numbers per point, ``v`` and ``b``: the output is ``softplus(v) . s + b``, the point's
    non-negative mixture of the canonical tissues read out in the target's contrast (a
    signal-equation head).

    With ``source_mixture`` as well, the last ``K + 2`` channels are the signals, a gain ``g`` and an
    offset ``o`` (all constant over the patch) and the MLP sees the other channels only; it returns
    ``K + 1`` numbers per point, composition logits ``v`` and an amplitude ``a``, and the output is
    ``g * softplus(a) * (softmax(v) . s) + o``: a proton-density-like amplitude times a partial-volume
    composition of the canonical tissues, both functions of the image features alone, so the tissue
    mixture cannot depend on the target and the target changes the contrast only as the signal
    equations do. (Unnormalised non-negative weights ``softplus(v)`` drift to large negative ``v`` in
    the background, where every weight must vanish, until the MLP dies: measured on the phantom.)

    ``mixture_scale``: with ``source_mixture``, the composition is ``softmax(mixture_scale * v)``:
    a scale above 1 lets the logits move that much faster under Adam (whose steps do not grow with
    the gradient), so the composition can leave the uniform mixture it starts from; at 1 the CPU
    model's compositions stayed near uniform after 1 800 steps (entropy 3.1-3.4 of ln 36 = 3.58), but
    at 10 it collapsed to a constant output within 600 steps and at 4 (with gradient clipping) it was
    no better over 1 200 steps: keep 1 unless measured otherwise.

    ``constant_inputs = M > 0``: the last ``M`` of the channels the MLP reads are constant over the
    patch (e.g. the source's protocol) and are read once per patch, not interpolated at every point.

    Shapes: features ``(B, C, X, Y, Z)``, coords ``(B, N, 3)`` -> ``(B, N)``.
    """

    def __init__(self, in_channels: int, hidden=(256, 256, 256, 256), signals: int = 0,
                 source_mixture: bool = False, constant_inputs: int = 0, mixture_scale: float = 1.0) -> None:
        super().__init__()
        self.mixture_scale = float(mixture_scale)
        if not self.mixture_scale > 0:
            raise ValueError(f"mixture_scale must be > 0, got {mixture_scale}")
        self.signals = int(signals)
        self.source_mixture = bool(source_mixture)
        if self.source_mixture and self.signals == 0:
            raise ValueError("source_mixture reads the mixture out of the signals: signals must be > 0")
        # the channels the MLP reads: without source_mixture all, with it all but the read-out's
        self.mlp_channels = int(in_channels) - (self.signals + 2 if self.source_mixture else 0)
        self.constant_inputs = int(constant_inputs)
        if not 0 <= self.constant_inputs < self.mlp_channels:
            raise ValueError(f"constant_inputs must be in [0, {self.mlp_channels}), got {constant_inputs}")
        layers, c = [], self.mlp_channels + 6
        for h in hidden:
            layers += [nn.Linear(c, h), nn.ReLU(inplace=True)]
            c = h
        layers.append(nn.Linear(c, self.signals + 1))
        self.mlp = nn.Sequential(*layers)

    @staticmethod
    def relative_position(coords: torch.Tensor, shape: list[int]) -> torch.Tensor:
        n = torch.tensor(shape, device=coords.device, dtype=coords.dtype)
        u = (coords + 1) * n / 2 - 0.5  # continuous voxel index
        return u - u.round()

    def forward(self, f: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        angle = 2 * math.pi * self.relative_position(coords, list(f.shape[2:])).to(f.dtype)
        # only the channels the MLP reads are sampled per point (all of them without source_mixture),
        # and of those only the ones that vary over the patch
        varying = self.mlp_channels - self.constant_inputs
        sampled = sample_features(f[:, :varying], coords)
        inputs = [sampled]
        if self.constant_inputs > 0:
            inputs.append(f[:, varying:self.mlp_channels, 0, 0, 0][:, None, :].expand(-1, coords.shape[1], -1))
        out = self.mlp(torch.cat(inputs + [torch.sin(angle), torch.cos(angle)], dim=-1))
        k = self.signals
        if self.source_mixture:  # the read-out's channels are constant over the patch: read them once
            read = f[:, self.mlp_channels:, 0, 0, 0]
            logits = out[..., :k] * self.mixture_scale
            mix = F.softplus(out[..., k]) * (torch.softmax(logits, dim=-1) * read[:, None, :k]).sum(-1)
            return read[:, k, None] * mix + read[:, k + 1, None]
        if k == 0:
            return out.squeeze(-1)
        return (F.softplus(out[..., :k]) * sampled[..., -k:]).sum(-1) + out[..., k]


class TUMSyn(nn.Module):
    """Stage 2: source patch + target prompt -> target intensity at any query coordinate.

    Args:
        text_encoder: the stage-1 :class:`TextEncoder` (weights from ``text_encoder_ckpt``);
            frozen (no gradients, kept in eval mode) unless ``train_text_encoder``.
        in_channels: source channels (1).
        features: channels of the patch encoder and the fusion (paper 64).
        num_blocks: residual blocks of the patch encoder.
        heads: attention heads of the fusion.
        adapter_hidden: hidden size of the text adapter.
        decoder_channels: hidden sizes of the implicit decoder's MLP.
        acquisition_features: length of the acquisition vector
            (:data:`mrsynth.transforms.ACQUISITION_FEATURES`, 12) read by an
            :class:`AcquisitionEncoder` whose output is added to the text embedding; ``0`` (the
            paper): the prompt reaches the network as tokens only.
        query_to_decoder: also give the implicit decoder the fusion's text query ``q`` (``C``
            more inputs at every point, constant over the patch): the decoder's first layer then
            depends on the prompt directly, not only through the features that the prompt
            modulated. ``False`` (default) is the paper's decoder. On the phantom it helped only
            together with pairs of different images and no super-resolution
            (``tools/tumsyn_loop.py``, ``bundles/tumsyn/docs/README.md``).
        signal_head: the decoder reads the target's intensity out of the prompt's
            :func:`~mrsynth.transforms.signal_features` (the canonical tissues' signals under the
            target protocol, entries ``NUMBER_FEATURES:`` of the acquisition vector, which must then
            be :data:`~mrsynth.transforms.ACQUISITION_FEATURES` long or more):
            ``softplus(v(x)) . s + b(x)`` with ``v``, ``b`` from the decoder's MLP
            (:class:`ImplicitDecoder`), so that the protocol sets the contrast through the signal
            equations. Not the paper's; measured on the phantom in ``bundles/tumsyn/docs/README.md``.
        source_mixture: with ``signal_head``, the tissue mixture ``v(x)`` comes from the source
            patch alone (the patch encoder's features; no fusion is built) and the target prompt
            enters only through the read-out: ``g * softplus(a(x)) * (softmax(v(x)) . s) + o``, with the gain
            ``g > 0`` and offset ``o`` a linear map of the prompt embedding. One mixture then serves
            every target, so a contrast changes with TR, TE, TI and the flip angle exactly as the
            canonical tissues' signal equations say, by construction, and each pair trains the
            mixture for all targets. Not the paper's (its prompt steers the features).
        source_protocol: with ``source_mixture``, the mixture also reads the *source's* protocol:
            the acquisition vector is the target's followed by the source's (``acquisition_features``
            twice :data:`~mrsynth.transforms.ACQUISITION_FEATURES`), and the source's canonical
            signals enter the decoder's MLP beside the image features, so that the network need not
            guess from the patch how the source's protocol shows each tissue. Inference then needs
            the source's protocol too (its sidecar). Not the paper's.
        mixture_scale: with ``source_mixture``, the composition logits are multiplied by this
            (:class:`ImplicitDecoder`); 1 by default.
        source_skip: the source image itself joins the features the decoder samples at each
            query point (``in_channels`` more channels): the decoder then reads the source's
            trilinear interpolation at the point beside the encoder's features, a skip
            connection past the encoder, so that detail the source holds (in plane, for thick
            slices) need not survive the encoder to reach the output. Not the paper's.

    ``forward(image (B, 1, X, Y, Z), tokens (B, L), coords (B, N, 3), acquisition (B, A) or
    None) -> (B, N)``; ``acquisition`` is required when ``acquisition_features > 0``. Inference
    calls the parts: :meth:`encode_text` once per prompt, :meth:`encode` once per window, then
    :meth:`query` in chunks of points (:class:`mrsynth.inferers.ImplicitSlidingWindowInferer`).
    """

    def __init__(self, text_encoder: TextEncoder, in_channels: int = 1, features: int = 64, num_blocks: int = 8,
                 heads: int = 4, adapter_hidden: int = 256, decoder_channels=(256, 256, 256, 256),
                 train_text_encoder: bool = False, acquisition_features: int = 0, query_to_decoder: bool = False,
                 signal_head: bool = False, source_mixture: bool = False, source_protocol: bool = False,
                 mixture_scale: float = 1.0, source_skip: bool = False) -> None:
        super().__init__()
        from ..transforms.prompt import ACQUISITION_FEATURES, NUMBER_FEATURES, SIGNAL_FEATURES

        self.signal_head = bool(signal_head)
        self.source_mixture = bool(source_mixture)
        self.source_protocol = bool(source_protocol)
        if self.source_protocol and not self.source_mixture:
            raise ValueError("source_protocol gives the source's protocol to the tissue mixture: set source_mixture too")
        if self.source_protocol and int(acquisition_features) != 2 * ACQUISITION_FEATURES:
            raise ValueError(f"source_protocol reads the target's and the source's acquisition vectors: "
                             f"acquisition_features must be {2 * ACQUISITION_FEATURES}, got {acquisition_features}")
        # the source's signals in the acquisition vector (with source_protocol)
        self.source_slice = (ACQUISITION_FEATURES + NUMBER_FEATURES, 2 * ACQUISITION_FEATURES)
        if self.source_mixture and not self.signal_head:
            raise ValueError("source_mixture is a form of the signal head: set signal_head too")
        if self.source_mixture and query_to_decoder:
            raise ValueError("source_mixture keeps the prompt out of the decoder's MLP: query_to_decoder must be False")
        if self.signal_head and int(acquisition_features) < NUMBER_FEATURES + SIGNAL_FEATURES:
            raise ValueError(f"signal_head reads the signal features of the acquisition vector: acquisition_features "
                             f"must be at least {NUMBER_FEATURES + SIGNAL_FEATURES}, got {acquisition_features}")
        self.signal_slice = (NUMBER_FEATURES, NUMBER_FEATURES + SIGNAL_FEATURES)
        self.num_signals = SIGNAL_FEATURES if self.signal_head else 0
        self.text_encoder = text_encoder
        self.acquisition_features = int(acquisition_features)
        self.acquisition = (AcquisitionEncoder(self.acquisition_features, text_encoder.embed_dim, adapter_hidden)
                            if self.acquisition_features > 0 else None)
        self.train_text_encoder = bool(train_text_encoder)
        if not self.train_text_encoder:
            self.text_encoder.requires_grad_(False)
        self.encoder = PatchEncoder(in_channels, features, num_blocks)
        self.fusion = (None if self.source_mixture
                       else TextConditionedFusion(features, text_encoder.embed_dim, heads, adapter_hidden))
        self.readout = None
        if self.source_mixture:  # gain (softplus; 2 at initialisation) and offset from the prompt
            self.readout = nn.Linear(text_encoder.embed_dim, 2)
            nn.init.zeros_(self.readout.weight)
            with torch.no_grad():
                self.readout.bias.copy_(torch.tensor([math.log(math.expm1(2.0)), 0.0]))
        self.query_to_decoder = bool(query_to_decoder)
        self.source_skip = bool(source_skip)
        self.embed_dim = text_encoder.embed_dim
        source_signals = SIGNAL_FEATURES if self.source_protocol else 0
        self.decoder = ImplicitDecoder((2 * features if self.query_to_decoder else features) + self.num_signals
                                       + (int(in_channels) if self.source_skip else 0)
                                       + (2 if self.source_mixture else 0) + source_signals,
                                       tuple(decoder_channels), self.num_signals, self.source_mixture, source_signals,
                                       mixture_scale)

    def train(self, mode: bool = True):
        super().train(mode)
        if not self.train_text_encoder:
            self.text_encoder.eval()
        return self

    @torch.jit.export
    def encode_text(self, tokens: torch.Tensor, acquisition: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The prompt embedding ``(B, E)``: the text encoder's, plus the acquisition encoder's
        when the model has one (no graph is built through a frozen text encoder: none of its
        parameters requires a gradient and tokens are integers). With ``signal_head``,
        ``(B, E + 36)``: the signal features appended, which :meth:`encode` passes to the decoder;
        with ``source_protocol`` the source's 36 signal features after them."""
        text = self.text_encoder(tokens)
        acq = self.acquisition
        if acq is not None:
            if acquisition is None:
                raise ValueError("this TUMSyn reads the prompt's acquisition parameters (acquisition_features > 0): "
                                 "pass mrsynth.transforms.acquisition_features(prompt) beside the tokens")
            text = text + acq(acquisition.to(text.dtype))
            if self.signal_head:
                text = torch.cat([text, acquisition[:, self.signal_slice[0]:self.signal_slice[1]].to(text.dtype)], 1)
            if self.source_protocol:
                text = torch.cat([text, acquisition[:, self.source_slice[0]:self.source_slice[1]].to(text.dtype)], 1)
        return text

    @torch.jit.export
    def encode(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Prompt-conditioned features ``(B, C, X, Y, Z)`` of ``image`` for the embedding ``text``
        (``(B, 2C, X, Y, Z)`` with ``query_to_decoder``: the text query appended as constant
        channels, which every query point samples unchanged; with ``signal_head`` the 36 signal
        features after them, constant too; with ``source_mixture`` the unfused features, the
        signals, the gain and the offset; with ``source_protocol`` the source's signals between the
        features and the target's signals; with ``source_skip`` the image itself right after the
        features, before every constant channel)."""
        signals = text[:, self.embed_dim:self.embed_dim + self.num_signals]
        source_signals = text[:, self.embed_dim + self.num_signals:]
        text = text[:, :self.embed_dim]
        f = self.encoder(image)
        constant = []
        skip = image.to(f.dtype) if self.source_skip else None
        if self.source_protocol:  # read by the decoder's MLP (before the read-out's channels)
            constant.append(source_signals.to(f.dtype))
        fusion = self.fusion
        if fusion is not None:
            f = fusion(f, text)
            if self.query_to_decoder:
                constant.append(fusion.text_query(text).to(f.dtype))
        if skip is not None:  # sampled at every point like the features (before the constant channels)
            f = torch.cat([f, skip], 1)
        if self.signal_head:
            constant.append(signals.to(f.dtype))
        readout = self.readout
        if readout is not None:
            gain, offset = readout(text).to(f.dtype).chunk(2, dim=1)
            constant += [F.softplus(gain), offset]
        if len(constant) > 0:
            c = torch.cat(constant, 1)
            f = torch.cat([f, c.view(c.shape[0], c.shape[1], 1, 1, 1).expand(-1, -1, f.shape[2], f.shape[3], f.shape[4])], 1)
        return f

    @torch.jit.export
    def query(self, features: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """Intensities ``(B, N)`` at ``coords`` ``(B, N, 3)``."""
        return self.decoder(features, coords)

    def forward(self, image: torch.Tensor, tokens: torch.Tensor, coords: torch.Tensor,
                acquisition: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.query(self.encode(image, self.encode_text(tokens, acquisition)), coords)
