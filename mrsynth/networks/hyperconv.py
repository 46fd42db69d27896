"""Hyper-convolution: a convolution whose kernel is chosen per sample by a code.

Seq2Seq (Han et al., Medical Image Analysis 2023) makes one decoder serve every target sequence
by replacing each convolution with a *hyper-convolution*: the layer stores a bank of
``num_kernels`` ordinary kernels (``c_w`` = 16 in the paper) and, for every sample, mixes them
with coefficients computed from the target code. The bias is mixed the same way.

The code path is split in two small modules, as in the paper:

* :class:`CodeEmbedding` turns the target code (integer index or one-hot of length ``num_codes``,
  ``c_s`` = 64 in the paper) into an embedding: ``LeakyReLU_0.2(Linear(num_codes, code_dim))``.
  A network computes it once per forward pass and hands it to every layer.
* every :class:`HyperConv` owns its own ``Linear(code_dim, num_kernels)`` that maps the
  embedding to that layer's mixing coefficients. The coefficients are a plain linear function
  of the embedding (no softmax), as in the paper: the mixture may scale and sign-flip kernels,
  and every conv in the decoder is followed by a normalisation (or is the last, tanh-activated
  layer), so an unconstrained scale is harmless.

Unlike the reference implementation (one code per batch), every sample may carry its own code.
When all samples share the same code (checked exactly on the layer's input code, the usual
case at inference) the layer mixes once and runs one ordinary convolution; otherwise it runs a
single grouped convolution with the batch folded into the groups (on the CPU, for speed: one
batch-1 convolution per sample at inference, and ``channels_last`` layout for layers with few
output channels). All paths give the same result (up to float rounding) and the same gradients
for the kernel banks and for everything upstream of the code.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.utils import ensure_tuple_rep

__all__ = ["HyperConv", "CodeEmbedding", "code_to_onehot", "rows_identical", "collapse_rows", "memoised_mixing"]

_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
# one dict per active memoised_mixing() context: id(HyperConv) -> (coefficients, mixture) of its last mix
_MIX_MEMOS: list = []


@contextlib.contextmanager
def memoised_mixing():
    """A context in which every :class:`HyperConv` reuses its last mixture of the kernel bank
    while it is called with equal (single-row) coefficients, instead of mixing again (eager mode,
    without autograd only; the parameters must not change inside it). Seq2Seq uses it while it
    runs a batch one sample at a time, samples with equal targets one after another."""
    _MIX_MEMOS.append({})
    try:
        yield
    finally:
        _MIX_MEMOS.pop()


def _compiling() -> bool:
    """Whether ``torch.compile`` is tracing the caller (never under TorchScript)."""
    if not torch.jit.is_scripting():
        return bool(torch.compiler.is_compiling())
    return False


def rows_identical(t: torch.Tensor, compare_values: bool = True) -> bool:
    """Whether every row ``t[b]`` equals ``t[0]`` exactly (always true for one row).

    A row expanded over the batch (stride 0 along it, as :class:`CodeEmbedding` returns for one
    target) is identical by construction: no values are read. Otherwise the rows are compared
    only with ``compare_values`` and outside ``torch.compile``, since reading the answer back is a
    host synchronisation (and a graph break); without the comparison the answer is ``False``,
    which sends the caller down its general path: the same result, only the shortcut is lost.
    """
    if t.shape[0] <= 1 or t.stride(0) == 0:
        return True
    if not compare_values or _compiling():
        return False
    return bool((t == t[:1]).all())


def collapse_rows(t: torch.Tensor) -> torch.Tensor:
    """Collapse a ``(B, ...)`` tensor whose rows are identical into one row ``(1, ...)``.

    The value is exactly ``t[:1]``; the gradient is shared evenly by the ``B`` rows, so that
    anything upstream that produced the rows identically receives the same total gradient as
    if every row had been used separately.
    """
    if t.shape[0] <= 1:
        return t
    return t.detach()[:1] + (t - t.detach()).mean(dim=0, keepdim=True)


def code_to_onehot(code: torch.Tensor, num_codes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Return the target code as a float tensor of shape ``(B, num_codes)``.

    Args:
        code: either integer indices of shape ``(B,)`` (any integer dtype), or a one-hot / soft
            code of shape ``(B, num_codes)`` (any dtype; it is only cast).
        num_codes: length of the code (``c_s``).
        dtype: floating dtype of the result.

    Raises:
        ValueError: on any other shape, on floating-point indices, or on an index outside
            ``[0, num_codes)`` (of a CPU tensor in eager mode; on an accelerator or under
            ``torch.compile`` an index outside is a device-side assertion instead, which does
            not stop the host to read the indices back).
    """
    if code.dim() == 1:
        if code.is_floating_point() or code.is_complex():
            raise ValueError(
                f"a 1-D target code must hold integer indices, got dtype {code.dtype}; "
                f"pass a (B, {num_codes}) tensor for a one-hot or soft code"
            )
        if code.numel() > 0:
            if code.device.type == "cpu" and not _compiling():
                lo = int(code.min())
                hi = int(code.max())
                if lo < 0 or hi >= num_codes:
                    raise ValueError(f"target code indices must lie in [0, {num_codes}), got values in [{lo}, {hi}]")
            else:  # on an accelerator or under torch.compile: a device-side check, no host synchronisation
                torch._assert_async(((code >= 0) & (code < num_codes)).all(), "target code indices out of range")
        return F.one_hot(code.long(), num_codes).to(dtype)
    if code.dim() == 2 and code.shape[1] == num_codes:
        return code.to(dtype)
    raise ValueError(
        f"target code must be integer indices of shape (B,) or a code of shape (B, {num_codes}), "
        f"got shape {list(code.shape)}"
    )


class CodeEmbedding(nn.Module):
    """Embed a target code: ``LeakyReLU(Linear(num_codes, code_dim))``.

    This is the shared front of the hyper-network; each :class:`HyperConv` then maps the
    embedding to its own mixing coefficients.

    Args:
        num_codes: length of the one-hot target code (``c_s``, 64 in the paper). Sequence ``i``
            is code ``i``; unused codes cost only ``code_dim`` weights each.
        code_dim: size of the embedding (64 in the reference implementation).
        negative_slope: slope of the LeakyReLU.

    Shapes:
        - code: ``(B,)`` integer indices or ``(B, num_codes)`` float one-hot / soft code.
        - output: ``(B, code_dim)``.
    """

    def __init__(self, num_codes: int, code_dim: int, negative_slope: float = 0.2) -> None:
        super().__init__()
        if num_codes < 1 or code_dim < 1:
            raise ValueError(f"num_codes and code_dim must be positive, got {num_codes} and {code_dim}")
        self.num_codes = num_codes
        self.code_dim = code_dim
        self.linear = nn.Linear(num_codes, code_dim)
        self.act = nn.LeakyReLU(negative_slope)

    def onehot(self, code: torch.Tensor) -> torch.Tensor:
        """``code`` as a ``(B, num_codes)`` tensor in the dtype of the layer's weights."""
        return code_to_onehot(code, self.num_codes, self.linear.weight.dtype)

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        onehot = self.onehot(code)
        if onehot.shape[0] > 1 and rows_identical(onehot):
            # one target for the whole batch: embed once and return bit-identical rows, which lets
            # every HyperConv downstream take its single-convolution path
            return self.act(self.linear(collapse_rows(onehot))).expand(onehot.shape[0], self.code_dim)
        return self.act(self.linear(onehot))


class HyperConv(nn.Module):
    """A convolution whose weight and bias are a per-sample mixture of a bank of kernels.

    For sample ``b`` with mixing coefficients ``a_b = Linear(code_b)`` (shape ``(num_kernels,)``):
    ``W_b = sum_n a_b[n] * W[n]`` and ``bias_b = sum_n a_b[n] * bias[n]``, then
    ``y_b = conv(x_b, W_b, bias_b)``.

    Args:
        spatial_dims: 1, 2 or 3.
        in_channels: input channels ``C_in``.
        out_channels: output channels ``C_out``.
        kernel_size: kernel size, an int or one per spatial dimension.
        code_dim: size of the code this layer is conditioned on; the layer owns a
            ``Linear(code_dim, num_kernels)`` that turns it into coefficients. ``None``: no
            linear layer, ``forward`` takes the ``(B, num_kernels)`` coefficients directly.
        num_kernels: size of the kernel bank (``c_w``, 16 in the paper).
        stride: stride, an int or one per spatial dimension.
        padding: padding per side, an int or one per spatial dimension; default
            ``(kernel_size - 1) // 2`` ("same" for odd kernels at stride 1).
        padding_mode: ``"zeros"``, ``"reflect"``, ``"replicate"`` or ``"circular"``
            (as :class:`torch.nn.Conv2d`).
        bias: whether to add a (mixed) bias.

    Parameters:
        weight: the kernel bank, ``(num_kernels, C_out, C_in, *kernel_size)``, each bank member
            initialised like a Kaiming-normal (fan-in, LeakyReLU 0.2) convolution kernel.
        bias: the bias bank, ``(num_kernels, C_out)``, zero at initialisation, or ``None``.

    Shapes:
        - x: ``(B, C_in, *spatial)``.
        - code: ``(B, code_dim)`` (or ``(B, num_kernels)`` coefficients when ``code_dim`` is
          ``None``); a single row ``(1, ...)`` is broadcast over the batch.
        - output: ``(B, C_out, *spatial_out)`` with the usual convolution arithmetic.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: Sequence[int] | int,
        code_dim: Optional[int] = None,
        num_kernels: int = 16,
        stride: Sequence[int] | int = 1,
        padding: Sequence[int] | int | None = None,
        padding_mode: str = "zeros",
        bias: bool = True,
    ) -> None:
        super().__init__()
        if spatial_dims not in (1, 2, 3):
            raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}")
        if padding_mode not in _PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {_PADDING_MODES}, got {padding_mode!r}")
        if num_kernels < 1:
            raise ValueError(f"num_kernels must be positive, got {num_kernels}")
        ks = [int(k) for k in ensure_tuple_rep(kernel_size, spatial_dims)]
        st = [int(s) for s in ensure_tuple_rep(stride, spatial_dims)]
        pd = [(k - 1) // 2 for k in ks] if padding is None else [int(p) for p in ensure_tuple_rep(padding, spatial_dims)]

        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.num_kernels = num_kernels
        self.code_dim = code_dim
        self.kernel_size: List[int] = ks
        self.stride: List[int] = st
        self.padding: List[int] = pd
        self.padding_mode = padding_mode
        # explicit padding for the non-zero modes (F.pad order: last dim first), conv padding otherwise
        self._pad: List[int] = [p for p in reversed(pd) for _ in range(2)]
        self._conv_padding: List[int] = pd if padding_mode == "zeros" else [0] * spatial_dims

        self.to_coeff: nn.Module = nn.Identity() if code_dim is None else nn.Linear(code_dim, num_kernels)
        self.weight = nn.Parameter(torch.empty([num_kernels, out_channels, in_channels] + ks))
        if bias:
            self.bias = nn.Parameter(torch.empty(num_kernels, out_channels))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal (fan-in, LeakyReLU 0.2) for every kernel of the bank, zero biases."""
        fan_in = self.in_channels
        for k in self.kernel_size:
            fan_in *= k
        std = nn.init.calculate_gain("leaky_relu", 0.2) / fan_in**0.5
        with torch.no_grad():
            self.weight.normal_(0.0, std)
            if self.bias is not None:
                self.bias.zero_()

    def extra_repr(self) -> str:
        return (
            f"spatial_dims={self.spatial_dims}, {self.in_channels}, {self.out_channels}, "
            f"kernel_size={tuple(self.kernel_size)}, num_kernels={self.num_kernels}, code_dim={self.code_dim}, "
            f"stride={tuple(self.stride)}, padding={tuple(self.padding)}, padding_mode={self.padding_mode}, "
            f"bias={self.bias is not None}"
        )

    def coefficients(self, code: torch.Tensor) -> torch.Tensor:
        """Mixing coefficients ``(B, num_kernels)`` for a code ``(B, code_dim)``."""
        return self.to_coeff(code)

    def mix(self, coeff: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Mix the bank: coefficients ``(N, num_kernels)`` -> weights ``(N, C_out, C_in, *k)``
        and biases ``(N, C_out)`` (``None`` without bias).

        Inside :func:`memoised_mixing` (eager mode, no autograd) the mixture of a single row is
        reused while the coefficients stay equal."""
        if not torch.jit.is_scripting() and coeff.shape[0] == 1 and not torch.is_grad_enabled():
            return self._mix_memoised(coeff)
        return self._mix(coeff)

    def _mix(self, coeff: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        n = coeff.shape[0]
        weight = torch.matmul(coeff, self.weight.reshape(self.num_kernels, -1))
        weight = weight.reshape([n, self.out_channels, self.in_channels] + self.kernel_size)
        bias: Optional[torch.Tensor] = None
        b = self.bias
        if b is not None:
            bias = torch.matmul(coeff, b)
        return weight, bias

    @torch.jit.unused
    def _mix_memoised(self, coeff: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        if not _MIX_MEMOS:
            return self._mix(coeff)
        memo = _MIX_MEMOS[-1]
        last = memo.get(id(self))
        if last is not None:
            c, mixed = last
            if c.dtype == coeff.dtype and c.device == coeff.device and torch.equal(c, coeff):
                return mixed
        mixed = self._mix(coeff)
        memo[id(self)] = (coeff, mixed)  # only the last: callers run equal targets one after another
        return mixed

    def _conv(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], groups: int) -> torch.Tensor:
        if self.padding_mode != "zeros":
            x = F.pad(x, self._pad, mode=self.padding_mode)
        if self.spatial_dims == 2:
            return F.conv2d(x, weight, bias, self.stride, self._conv_padding, [1, 1], groups)
        if self.spatial_dims == 3:
            return F.conv3d(x, weight, bias, self.stride, self._conv_padding, [1, 1, 1], groups)
        return F.conv1d(x, weight, bias, self.stride, self._conv_padding, [1], groups)

    def conv_shared(self, x: torch.Tensor, coeff: torch.Tensor) -> torch.Tensor:
        """One ordinary convolution with the bank mixed once.

        ``coeff`` is ``(1, num_kernels)`` or ``(B, num_kernels)`` with identical rows (the caller
        guarantees it). The mixture uses the value of the first row exactly; its gradient is
        shared evenly by all rows, so parameters upstream of the coefficients receive the same
        gradient as from :meth:`conv_per_sample`.
        """
        weight, bias = self.mix(collapse_rows(coeff))
        return self._conv(x, weight[0], None if bias is None else bias[0], 1)

    def conv_per_sample(self, x: torch.Tensor, coeff: torch.Tensor) -> torch.Tensor:
        """Convolve sample ``b`` with the bank mixed by ``coeff[b]``.

        Usually one grouped convolution: the batch is folded into the channels,
        ``(1, B * C_in, *spatial)``, and the mixed weights into ``(B * C_out, C_in, *k)`` with
        ``groups=B``. On the CPU two cases run differently, with the same result:

        * without autograd (inference), one batch-1 convolution per sample, which is faster than
          the grouped convolution at every layer size of the paper's network;
        * 2D layers with few output channels (``C_out < 16``, e.g. the final 7-wide layer to the
          image), in ``channels_last`` layout, where the grouped NCHW kernels (the backward pass
          above all) are several times slower.
        """
        b = x.shape[0]
        if coeff.shape[0] != b:
            coeff = coeff.expand(b, self.num_kernels)
        weight, bias = self.mix(coeff)
        if x.device.type == "cpu" and not (x.requires_grad or weight.requires_grad):
            outs: List[torch.Tensor] = []
            for i in range(b):
                bias_i: Optional[torch.Tensor] = None
                if bias is not None:
                    bias_i = bias[i]
                outs.append(self._conv(x[i : i + 1], weight[i], bias_i, 1))
            return torch.cat(outs, 0)
        weight = weight.reshape([b * self.out_channels, self.in_channels] + self.kernel_size)
        if bias is not None:
            bias = bias.reshape(b * self.out_channels)
        xg = x.reshape([1, b * self.in_channels] + list(x.shape[2:]))
        if self.spatial_dims == 2 and self.out_channels < 16 and x.device.type == "cpu":
            xg = xg.contiguous(memory_format=torch.channels_last)
        y = self._conv(xg, weight, bias, b)
        return y.reshape([b, self.out_channels] + list(y.shape[2:]))

    def convolve(self, x: torch.Tensor, coeff: torch.Tensor) -> torch.Tensor:
        """Convolve ``x`` ``(B, C_in, *spatial)`` with the bank mixed by ``coeff``
        ``(B or 1, num_kernels)``, choosing the shared path when all rows are equal."""
        if x.dim() != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"HyperConv expects input of shape (B, {self.in_channels}, <{self.spatial_dims} spatial dims>), "
                f"got {list(x.shape)}"
            )
        if coeff.dim() != 2 or coeff.shape[1] != self.num_kernels or (coeff.shape[0] != 1 and coeff.shape[0] != x.shape[0]):
            raise ValueError(
                f"HyperConv coefficients must have shape (B, {self.num_kernels}) or (1, {self.num_kernels}) "
                f"for a batch of {x.shape[0]}, got {list(coeff.shape)}"
            )
        if rows_identical(coeff, compare_values=coeff.device.type == "cpu"):
            return self.conv_shared(x, coeff)
        return self.conv_per_sample(x, coeff)

    def forward(self, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: ``(B, C_in, *spatial)``.
            code: ``(B, code_dim)`` code embedding (or ``(B, num_kernels)`` coefficients when the
                layer was built with ``code_dim=None``); ``(1, ...)`` applies to the whole batch.

        Returns:
            ``(B, C_out, *spatial_out)``.
        """
        if code.shape[0] > 1 and rows_identical(code, compare_values=code.device.type == "cpu"):
            # decide on the code, not on the coefficients: a matrix product may round identical
            # rows differently, which would needlessly send the batch down the grouped path
            code = collapse_rows(code)
        return self.convolve(x, self.coefficients(code))
