"""Seq2Seq: one network that translates any MR sequence into any other (Han et al., MedIA 2023).

An unconditioned encoder maps the source image to features at 1/4 size; a decoder built from
hyper-convolutions (:class:`~mrsynth.networks.hyperconv.HyperConv`) turns the features into the
sequence named by the target code. The encoder and decoder are separate modules with plain
interfaces so that TSF-Seq2Seq (fuse several encoded sources, then decode) and VQ-Seq2Seq
(quantize the features between them) can reuse them:

.. code-block:: python

    net = Seq2Seq(spatial_dims=2, in_channels=3, out_channels=3)   # paper size, 2.5D
    feats = net.encode(x)                  # (B, 256, H/4, W/4)
    y = net.decode(feats, code)            # (B, 3, H, W), code: (B,) ints or (B, 64) one-hot
    y = net(x, code)                       # the same in one call

Variants: 2D is ``spatial_dims=2, in_channels=out_channels=1``; 2.5D is ``spatial_dims=2`` with
3 adjacent slices as channels (``in_channels=out_channels=3``); 3D is ``spatial_dims=3``.
:class:`Seq2Seq4D` adds the ConvLSTMs for dynamic series.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.layers.factories import Conv
from monai.networks.layers.utils import get_act_layer, get_norm_layer

from .convlstm import ConvLSTM
from .hyperconv import CodeEmbedding, HyperConv, memoised_mixing

__all__ = [
    "ResBlock",
    "HyperResBlock",
    "HyperUpBlock",
    "Seq2SeqEncoder",
    "Seq2SeqDecoder",
    "Seq2Seq",
    "Seq2Seq4D",
]

_DEFAULT_ACT = ("leakyrelu", {"negative_slope": 0.2})


def _instance_norm(
    x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], eps: float, batched_dim: int
) -> torch.Tensor:
    """Instance norm without running statistics. On the CPU it is computed as a group norm with
    one channel per group (the same normalisation): ATen's group-norm kernel is several times
    faster there, forward and backward, than instance_norm's batch-norm route."""
    unbatched = x.dim() == batched_dim - 1
    if unbatched:
        x = x.unsqueeze(0)
    if x.device.type == "cpu":
        y = F.group_norm(x, x.shape[1], weight, bias, eps)
    else:
        y = F.instance_norm(x, None, None, weight, bias, True, 0.0, eps)
    return y.squeeze(0) if unbatched else y


class _InstanceNorm1d(nn.InstanceNorm1d):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return _instance_norm(input, self.weight, self.bias, self.eps, 3)


class _InstanceNorm2d(nn.InstanceNorm2d):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return _instance_norm(input, self.weight, self.bias, self.eps, 4)


class _InstanceNorm3d(nn.InstanceNorm3d):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return _instance_norm(input, self.weight, self.bias, self.eps, 5)


_FAST_INSTANCE_NORM = {
    nn.InstanceNorm1d: _InstanceNorm1d,
    nn.InstanceNorm2d: _InstanceNorm2d,
    nn.InstanceNorm3d: _InstanceNorm3d,
}


def _norm(norm: tuple | str | None, spatial_dims: int, channels: int) -> nn.Module:
    """MONAI's norm layer; an instance norm without running statistics (the default) is swapped
    for a subclass that computes the same thing faster on the CPU (same parameters and state)."""
    if norm is None:
        return nn.Identity()
    layer = get_norm_layer(norm, spatial_dims=spatial_dims, channels=channels)
    fast = _FAST_INSTANCE_NORM.get(type(layer))
    if fast is not None and not layer.track_running_stats:
        new = fast(layer.num_features, eps=layer.eps, momentum=layer.momentum, affine=layer.affine)
        new.load_state_dict(layer.state_dict())
        return new
    return layer


def _act(act: tuple | str | None) -> nn.Module:
    return nn.Identity() if act is None else get_act_layer(act)


def _check_channels(channels: Sequence[int]) -> tuple[int, ...]:
    channels = tuple(int(c) for c in channels)
    if len(channels) < 1 or min(channels) < 1:
        raise ValueError(f"channels must be a non-empty sequence of positive widths, got {channels}")
    return channels


class ResBlock(nn.Module):
    """Residual block of the encoder: ``x + N(conv(A(N(conv(x)))))``, 3-wide kernels, reflect padding.

    Args:
        spatial_dims: 2 or 3 (1 works too).
        channels: number of channels ``C`` (unchanged by the block).
        norm: MONAI norm name/tuple (``None``: no normalisation).
        act: MONAI activation name/tuple.

    Shapes: ``(B, C, *spatial)`` -> ``(B, C, *spatial)``.
    """

    def __init__(
        self, spatial_dims: int, channels: int, norm: tuple | str | None = "instance", act: tuple | str | None = _DEFAULT_ACT
    ) -> None:
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]
        self.conv1 = conv(channels, channels, kernel_size=3, padding=1, padding_mode="reflect")
        self.norm1 = _norm(norm, spatial_dims, channels)
        self.act1 = _act(act)
        self.conv2 = conv(channels, channels, kernel_size=3, padding=1, padding_mode="reflect")
        self.norm2 = _norm(norm, spatial_dims, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.norm1(self.conv1(x)))
        return x + self.norm2(self.conv2(y))


class HyperResBlock(nn.Module):
    """Residual block of the decoder: :class:`ResBlock` with both convolutions hyper-convolutions.

    Args:
        spatial_dims: 2 or 3 (1 works too).
        channels: number of channels ``C``.
        code_dim: size of the code embedding the convolutions are conditioned on.
        num_kernels: kernel-bank size of each hyper-convolution.
        norm: MONAI norm name/tuple (``None``: no normalisation).
        act: MONAI activation name/tuple.

    Shapes: x ``(B, C, *spatial)``, embedding ``(B, code_dim)`` -> ``(B, C, *spatial)``.
    """

    def __init__(
        self,
        spatial_dims: int,
        channels: int,
        code_dim: int,
        num_kernels: int = 16,
        norm: tuple | str | None = "instance",
        act: tuple | str | None = _DEFAULT_ACT,
    ) -> None:
        super().__init__()
        self.conv1 = HyperConv(spatial_dims, channels, channels, 3, code_dim, num_kernels, padding_mode="reflect")
        self.norm1 = _norm(norm, spatial_dims, channels)
        self.act1 = _act(act)
        self.conv2 = HyperConv(spatial_dims, channels, channels, 3, code_dim, num_kernels, padding_mode="reflect")
        self.norm2 = _norm(norm, spatial_dims, channels)

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.norm1(self.conv1(x, embedding)))
        return x + self.norm2(self.conv2(y, embedding))


class HyperUpBlock(nn.Module):
    """Decoder up-sampling stage: upsample x2, 3-wide hyper-convolution (reflect padding), norm, act.

    Args:
        spatial_dims: 2 or 3 (1 works too).
        in_channels: input channels.
        out_channels: output channels.
        code_dim: size of the code embedding.
        num_kernels: kernel-bank size.
        norm: MONAI norm name/tuple (``None``: no normalisation).
        act: MONAI activation name/tuple.
        upsample: interpolation mode of :class:`torch.nn.Upsample` (``"nearest"``, ``"linear"``,
            ``"bilinear"``, ``"trilinear"``).

    Shapes: x ``(B, C_in, *spatial)``, embedding ``(B, code_dim)`` -> ``(B, C_out, *(2 * spatial))``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        code_dim: int,
        num_kernels: int = 16,
        norm: tuple | str | None = "instance",
        act: tuple | str | None = _DEFAULT_ACT,
        upsample: str = "bilinear",
    ) -> None:
        super().__init__()
        align = None if upsample == "nearest" else False
        self.up = nn.Upsample(scale_factor=2.0, mode=upsample, align_corners=align)
        self.conv = HyperConv(spatial_dims, in_channels, out_channels, 3, code_dim, num_kernels, padding_mode="reflect")
        self.norm = _norm(norm, spatial_dims, out_channels)
        self.act = _act(act)

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(self.up(x), embedding)))


class Seq2SeqEncoder(nn.Module):
    """The Seq2Seq encoder (not conditioned on the target).

    ``conv k7 -> channels[0]``, then one stride-2 ``conv k3`` per further width, each followed by
    norm + act (all with reflect padding), then ``num_res_blocks`` :class:`ResBlock` at
    ``channels[-1]``. With the default three widths the features are at 1/4 of the input size.

    Args:
        spatial_dims: 2 (2D and 2.5D) or 3.
        in_channels: image channels (1 for 2D/3D, 3 adjacent slices for 2.5D).
        channels: widths, one per stage; ``len(channels) - 1`` stride-2 downsamplings.
        num_res_blocks: residual blocks at the bottleneck.
        norm: MONAI norm name/tuple; default instance norm without affine parameters.
        act: MONAI activation name/tuple; default LeakyReLU(0.2).

    Attributes:
        out_channels: ``channels[-1]``.
        downsample_factor: ``2 ** (len(channels) - 1)``; every input spatial size must be a
            multiple of it.

    Shapes: ``(B, in_channels, *spatial)`` -> ``(B, channels[-1], *(spatial / downsample_factor))``.

    Raises:
        ValueError: in ``forward``, when the input has the wrong number of dimensions or channels
            or a spatial size that is not a multiple of ``downsample_factor``.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        channels: Sequence[int] = (64, 128, 256),
        num_res_blocks: int = 6,
        norm: tuple | str | None = "instance",
        act: tuple | str | None = _DEFAULT_ACT,
    ) -> None:
        super().__init__()
        channels = _check_channels(channels)
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.channels = channels
        self.out_channels = channels[-1]
        self.downsample_factor = 2 ** (len(channels) - 1)
        conv = Conv[Conv.CONV, spatial_dims]
        layers = []
        c_prev = in_channels
        for i, c in enumerate(channels):
            k, s = (7, 1) if i == 0 else (3, 2)
            layers += [
                conv(c_prev, c, kernel_size=k, stride=s, padding=(k - 1) // 2, padding_mode="reflect"),
                _norm(norm, spatial_dims, c),
                _act(act),
            ]
            c_prev = c
        self.stem = nn.Sequential(*layers)
        self.res_blocks = nn.Sequential(*[ResBlock(spatial_dims, c_prev, norm, act) for _ in range(num_res_blocks)])
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal (fan-in, LeakyReLU 0.2) convolution weights, zero biases."""
        for m in self.modules():
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                nn.init.kaiming_normal_(m.weight, a=0.2, mode="fan_in", nonlinearity="leaky_relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` is ``(B, in_channels, *spatial)`` with every spatial
        size a multiple of ``downsample_factor``."""
        if x.dim() != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"Seq2Seq expects input of shape (B, {self.in_channels}, <{self.spatial_dims} spatial dims>), "
                f"got {list(x.shape)}"
            )
        for s in x.shape[2:]:
            if s % self.downsample_factor != 0:
                raise ValueError(
                    f"Seq2Seq input spatial size {list(x.shape[2:])} (input shape {list(x.shape)}) must be "
                    f"divisible by {self.downsample_factor} in every dimension; pad or crop it first "
                    f"(e.g. monai.transforms.DivisiblePad(k={self.downsample_factor}))"
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.res_blocks(self.stem(x))


class Seq2SeqDecoder(nn.Module):
    """The Seq2Seq hyper-decoder: every convolution is conditioned on the target code.

    The mirror of :class:`Seq2SeqEncoder`: ``num_res_blocks`` :class:`HyperResBlock` at
    ``channels[-1]``, one :class:`HyperUpBlock` per encoder downsampling (widths
    ``channels[-2], ..., channels[0]``), then a 7-wide hyper-convolution (reflect padding) to
    ``out_channels`` and ``final_act``. The target code is embedded once per call by a
    :class:`~mrsynth.networks.hyperconv.CodeEmbedding`; each hyper-convolution maps the
    embedding to its own mixing coefficients with its own linear layer.

    Normalisation layers have no affine parameters by default (``"instance"``), so that every
    learned parameter of the decoder that touches the image is target specific; pass e.g.
    ``("instance", {"affine": True})`` for shared affine parameters.

    Args:
        spatial_dims: 2 (2D and 2.5D) or 3.
        out_channels: image channels produced.
        num_codes: length of the one-hot target code (``c_s``, 64 in the paper).
        channels: widths in **encoder order** (the same tuple as the encoder's).
        num_res_blocks: residual blocks at the bottleneck.
        num_kernels: kernel-bank size of every hyper-convolution (``c_w``, 16 in the paper).
        code_dim: size of the code embedding (64 in the reference implementation).
        norm: MONAI norm name/tuple.
        act: MONAI activation name/tuple.
        upsample: interpolation mode; default ``"bilinear"`` for 2D, ``"trilinear"`` for 3D.
        final_act: MONAI activation name/tuple after the last convolution (default ``"tanh"``,
            images in [-1, 1]); ``None`` for none.
        mixture_classes: 0 (default, the paper's output) or ``K``: every output voxel is a softmax
            mixture of ``K`` learned classes, each class one intensity per target (a linear map of
            the code embedding, through ``final_act``). The last hyper-convolution then gives
            ``K`` logits per output channel. A constraint, not the paper's: the output is a
            tissue-like partition of each voxel painted with the target's class intensities
            (``docs/README.md`` of the Seq2Seq bundle measures what it changes).

    Shapes:
        - features: ``(B, channels[-1], *spatial)``.
        - code: ``(B,)`` integer target indices or ``(B, num_codes)`` one-hot / soft code; a
          single code ``(1,)`` / ``(1, num_codes)`` applies to the whole batch.
        - output: ``(B, out_channels, *(spatial * 2 ** (len(channels) - 1)))``.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        out_channels: int = 1,
        num_codes: int = 64,
        channels: Sequence[int] = (64, 128, 256),
        num_res_blocks: int = 6,
        num_kernels: int = 16,
        code_dim: int = 64,
        norm: tuple | str | None = "instance",
        act: tuple | str | None = _DEFAULT_ACT,
        upsample: Optional[str] = None,
        final_act: tuple | str | None = "tanh",
        mixture_classes: int = 0,
    ) -> None:
        super().__init__()
        channels = _check_channels(channels)
        if mixture_classes < 0 or mixture_classes == 1:
            raise ValueError(f"mixture_classes must be 0 (off) or at least 2, got {mixture_classes}")
        if upsample is None:
            upsample = {1: "linear", 2: "bilinear", 3: "trilinear"}[spatial_dims]
        self.spatial_dims = spatial_dims
        self.in_channels = channels[-1]
        self.out_channels = out_channels
        self.num_codes = num_codes
        self.code_dim = code_dim
        self.upsample_factor = 2 ** (len(channels) - 1)
        self.embedding = CodeEmbedding(num_codes, code_dim)
        c = channels[-1]
        self.res_blocks = nn.ModuleList(
            [HyperResBlock(spatial_dims, c, code_dim, num_kernels, norm, act) for _ in range(num_res_blocks)]
        )
        ups = []
        for c_next in reversed(channels[:-1]):
            ups.append(HyperUpBlock(spatial_dims, c, c_next, code_dim, num_kernels, norm, act, upsample))
            c = c_next
        self.up_blocks = nn.ModuleList(ups)
        self.mixture_classes = mixture_classes
        self.final_conv = HyperConv(
            spatial_dims, c, out_channels * max(mixture_classes, 1), 7, code_dim, num_kernels, padding_mode="reflect"
        )
        self.final_act = _act(final_act)
        # the classes' intensities, per target (a placeholder without a mixture, for TorchScript)
        self.levels = nn.Linear(code_dim, mixture_classes) if mixture_classes else nn.Identity()
        if mixture_classes:
            with torch.no_grad():  # classes spread over the output range from the start
                self.levels.bias.copy_(torch.linspace(-2.0, 2.0, mixture_classes))

    @torch.jit.export
    def embed(self, code: torch.Tensor) -> torch.Tensor:
        """Target code ``(B,)`` or ``(B, num_codes)`` -> embedding ``(B, code_dim)``.

        When every sample has the same code the rows are computed once and are bit-identical,
        which lets every hyper-convolution run as one ordinary convolution."""
        return self.embedding(code)

    @torch.jit.export
    def decode_embedded(self, features: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        """Decode with an already computed code embedding ``(B or 1, code_dim)``."""
        x = features
        for block in self.res_blocks:
            x = block(x, embedding)
        for block in self.up_blocks:
            x = block(x, embedding)
        return self.head(x, embedding)

    def head(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        """The last hyper-convolution and the output (``final_act``, or the mixture) from
        full-resolution features ``(B, channels[0], *spatial)``."""
        y = self.final_conv(x, embedding)
        if self.mixture_classes == 0:
            return self.final_act(y)
        k = self.mixture_classes
        weights = y.reshape([y.shape[0], self.out_channels, k] + list(y.shape[2:])).softmax(2)
        levels = self.final_act(self.levels(embedding))  # (B or 1, K)
        levels = levels.reshape([levels.shape[0], 1, k] + [1] * self.spatial_dims)
        return (weights * levels).sum(2)

    def forward(self, features: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        return self.decode_embedded(features, self.embed(code))


class _EncoderDecoder(nn.Module):
    """What :class:`Seq2Seq` and :class:`Seq2Seq4D` have in common: the
    unconditioned ``encoder`` and the hyper-``decoder`` of one configuration (arguments as
    :class:`Seq2Seq`), so that their weights load into one another."""

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 1,
        num_codes: int = 64,
        channels: Sequence[int] = (64, 128, 256),
        num_res_blocks: int = 6,
        num_kernels: int = 16,
        code_dim: int = 64,
        norm: tuple | str | None = "instance",
        act: tuple | str | None = _DEFAULT_ACT,
        upsample: Optional[str] = None,
        final_act: tuple | str | None = "tanh",
        mixture_classes: int = 0,
    ) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.num_codes = num_codes
        self.encoder = Seq2SeqEncoder(spatial_dims, in_channels, channels, num_res_blocks, norm, act)
        self.decoder = Seq2SeqDecoder(
            spatial_dims, out_channels, num_codes, channels, num_res_blocks, num_kernels, code_dim, norm, act, upsample,
            final_act, mixture_classes,
        )


class Seq2Seq(_EncoderDecoder):
    """Seq2Seq generator: unconditioned encoder + hyper-decoder conditioned on the target code.

    The defaults are the paper's size (widths 64/128/256, 6 + 6 residual blocks, ``c_s`` = 64
    codes, ``c_w`` = 16 kernels per hyper-convolution, code embedding 64); use
    :meth:`paper` for the 2.5D configuration of the BraTS experiments. At that size the network
    has 126.8 M parameters (encoder 7.5 M, hyper-decoder 119.4 M: the 16-kernel banks). The
    reference implementation's 155 M also count two 3-layer ConvLSTMs (28.3 M) that it builds
    even for single-frame data; :class:`Seq2Seq4D` has them (155.1 M). 3D at paper size: 380 M.

    CPU inference (no autograd) runs a batch one sample at a time, samples with the same target
    together, each kernel bank mixed once per target: the same result (up to float rounding) and
    faster on the CPU, where a sample's activations stay in the caches and a batch's do not
    (``tools/bench_speed.py`` measures it). ``forward(x, code)`` is ``decode(encode(x), code)``.

    Args:
        spatial_dims: 2 (2D and 2.5D) or 3.
        in_channels: source image channels (3 adjacent slices for 2.5D).
        out_channels: output channels (3 for 2.5D).
        num_codes: length of the one-hot target code (sequence ``i`` is code ``i``).
        channels: encoder widths; the decoder mirrors them.
        num_res_blocks: residual blocks in the encoder and, again, in the decoder.
        num_kernels: kernel-bank size of every hyper-convolution.
        code_dim: size of the code embedding.
        norm: MONAI norm name/tuple (default instance norm without affine).
        act: MONAI activation name/tuple (default LeakyReLU(0.2)).
        upsample: interpolation mode of the decoder; default bilinear (2D) / trilinear (3D).
        final_act: activation of the output (default ``"tanh"``).
        mixture_classes: 0 (the paper's output) or the number of learned classes whose softmax
            mixture paints every output voxel (:class:`Seq2SeqDecoder`).

    Shapes:
        - x: ``(B, in_channels, *spatial)``, every spatial size a multiple of
          ``2 ** (len(channels) - 1)`` (4 by default), else ``ValueError``.
        - code: ``(B,)`` integer target indices or ``(B, num_codes)`` one-hot / soft code
          (``(1,)`` / ``(1, num_codes)`` for the whole batch). Samples may have different targets.
        - output: ``(B, out_channels, *spatial)``.
    """

    @classmethod
    def paper(cls, spatial_dims: int = 2, in_channels: int = 3, out_channels: int = 3, **kwargs) -> "Seq2Seq":
        """The paper's configuration (2.5D: three adjacent slices in and out by default)."""
        return cls(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **kwargs)

    def _per_sample(self, x: torch.Tensor) -> bool:
        # CPU inference of a batch: one sample at a time (see _decode_per_sample)
        return x.shape[0] > 1 and x.device.type == "cpu" and not torch.is_grad_enabled()

    def _embed_batch(self, code: torch.Tensor, batch: int) -> torch.Tensor:
        emb = self.decoder.embed(code)
        if emb.shape[0] == 1:
            return emb.expand(batch, emb.shape[1])
        if emb.shape[0] != batch:
            raise ValueError(
                f"Seq2Seq got {emb.shape[0]} target codes for a batch of {batch}; pass one per sample or one for all"
            )
        return emb

    def _target_order(self, emb: torch.Tensor) -> List[int]:
        # sample indices with equal targets next to each other, so that each bank is mixed once per target
        _, group = torch.unique(emb, dim=0, return_inverse=True)
        return torch.sort(group, stable=True).indices.tolist()

    def _decode_per_sample(self, features: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        """CPU inference one sample at a time; the same result as the batched call.

        A sample's activations fit in the CPU caches where a batch's do not, which makes the
        memory-bound layers (upsampling, padding, normalisation) and the full-resolution
        convolutions faster. Samples with the same target run one after another; in eager mode
        every hyper-convolution mixes its bank once per target and call
        (:func:`~mrsynth.networks.hyperconv.memoised_mixing`).
        """
        emb = self._embed_batch(code, features.shape[0])
        out: List[torch.Tensor] = [features] * features.shape[0]
        for i in self._target_order(emb):
            out[i] = self.decoder.decode_embedded(features[i : i + 1], emb[i : i + 1])
        return torch.cat(out)

    @torch.jit.unused
    def _decode_per_sample_memoised(self, features: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        with memoised_mixing():
            return self._decode_per_sample(features, code)

    @torch.jit.export
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Image ``(B, in_channels, *spatial)`` -> features ``(B, channels[-1], *spatial / 4)``
        (:meth:`encode_features`; a subclass may put a bottleneck after it, as
        :class:`~mrsynth.networks.VQSeq2Seq` does)."""
        return self.encode_features(x)

    @torch.jit.export
    def decode(self, features: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        """Features ``(B, channels[-1], *s)`` and target code -> image ``(B, out_channels, *4s)``
        (:meth:`decode_features`)."""
        return self.decode_features(features, code)

    @torch.jit.export
    def encode_features(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder: image ``(B, in_channels, *spatial)`` -> features ``(B, channels[-1], *spatial / 4)``."""
        if self._per_sample(x):
            self.encoder.check_input(x)
            return torch.cat([self.encoder(x[i : i + 1]) for i in range(x.shape[0])])
        return self.encoder(x)

    @torch.jit.export
    def decode_features(self, features: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        """The hyper-decoder: features ``(B, channels[-1], *s)`` and target code -> image ``(B, out_channels, *4s)``."""
        if self._per_sample(features):
            if torch.jit.is_scripting():
                return self._decode_per_sample(features, code)
            return self._decode_per_sample_memoised(features, code)
        return self.decoder(features, code)

    def forward(self, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x), code)


class Seq2Seq4D(_EncoderDecoder):
    """Seq2Seq for dynamic series (e.g. DCE phases): ConvLSTMs over time around the bottleneck.

    It has the same ``encoder`` and ``decoder`` submodules as :class:`Seq2Seq` (so weights of the
    same configuration load into either with ``strict=False``). Every input frame is encoded by
    the shared :class:`Seq2SeqEncoder`; a ``lstm_layers``-layer
    :class:`~mrsynth.networks.convlstm.ConvLSTM` runs over the frames and its outputs are averaged
    over time into one feature map. A second ConvLSTM, fed that map at every step, unrolls
    ``out_frames`` steps; each step is decoded by the hyper-decoder with the sample's target code.
    With ``T = 1`` and ``out_frames = 1`` this is the reference implementation's BraTS model
    (which always carries the two ConvLSTMs).

    Args:
        out_frames: default number of output frames (``forward`` can override it).
        lstm_layers: layers of each ConvLSTM (3 in the paper).
        lstm_kernel_size: kernel size of the ConvLSTM gates.
        other arguments: as :class:`Seq2Seq`.

    Shapes:
        - x: ``(B, T, in_channels, *spatial)``.
        - code: as :class:`Seq2Seq` (one target per sample, shared by all its output frames).
        - output: ``(B, out_frames, out_channels, *spatial)``.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 1,
        num_codes: int = 64,
        channels: Sequence[int] = (64, 128, 256),
        num_res_blocks: int = 6,
        num_kernels: int = 16,
        code_dim: int = 64,
        norm: tuple | str | None = "instance",
        act: tuple | str | None = _DEFAULT_ACT,
        upsample: Optional[str] = None,
        final_act: tuple | str | None = "tanh",
        out_frames: int = 1,
        lstm_layers: int = 3,
        lstm_kernel_size: int = 3,
        mixture_classes: int = 0,
    ) -> None:
        super().__init__(
            spatial_dims, in_channels, out_channels, num_codes, channels, num_res_blocks, num_kernels, code_dim, norm, act,
            upsample, final_act, mixture_classes,
        )
        c = self.encoder.out_channels
        self.out_frames = out_frames
        self.encoder_lstm = ConvLSTM(spatial_dims, c, c, lstm_layers, lstm_kernel_size)
        self.decoder_lstm = ConvLSTM(spatial_dims, c, c, lstm_layers, lstm_kernel_size)

    @torch.jit.export
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Series ``(B, T, in_channels, *spatial)`` -> time-averaged features ``(B, C, *spatial / 4)``."""
        if x.dim() != self.spatial_dims + 3:
            raise ValueError(
                f"Seq2Seq4D expects input of shape (B, T, {self.in_channels}, <{self.spatial_dims} spatial dims>), "
                f"got {list(x.shape)}"
            )
        b, t = x.shape[0], x.shape[1]
        f = self.encoder(x.reshape([b * t] + list(x.shape[2:])))
        f = self.encoder_lstm(f.reshape([b, t] + list(f.shape[1:])))
        return f.mean(dim=1)

    @torch.jit.export
    def decode(self, features: torch.Tensor, code: torch.Tensor, out_frames: int = -1) -> torch.Tensor:
        """Features ``(B, C, *s)`` -> series ``(B, out_frames, out_channels, *4s)``
        (``out_frames < 1``: the constructor's ``out_frames``)."""
        n = self.out_frames if out_frames < 1 else out_frames
        b = features.shape[0]
        seq = features.unsqueeze(1).expand([b, n] + list(features.shape[1:]))
        f = self.decoder_lstm(seq).reshape([b * n] + list(features.shape[1:]))
        emb = self.decoder.embed(code)
        if emb.shape[0] == b and n > 1:
            emb = emb.repeat_interleave(n, dim=0)
        y = self.decoder.decode_embedded(f, emb)
        return y.reshape([b, n] + list(y.shape[1:]))

    def forward(self, x: torch.Tensor, code: torch.Tensor, out_frames: int = -1) -> torch.Tensor:
        return self.decode(self.encode(x), code, out_frames)
