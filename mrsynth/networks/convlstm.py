"""Convolutional LSTM (Shi et al., NeurIPS 2015) for any number of spatial dimensions.

Seq2Seq uses two of them for dynamic (4D) series: one summarises the encoded frames, one
unrolls the requested number of output frames (see :class:`mrsynth.networks.Seq2Seq4D`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import List, Tuple

import torch
import torch.nn as nn
from monai.networks.layers.factories import Conv
from monai.utils import ensure_tuple_rep

__all__ = ["ConvLSTMCell", "ConvLSTM"]


class ConvLSTMCell(nn.Module):
    """One ConvLSTM step: the four gates are one convolution over ``[x, h]``.

    ``i, f, o = sigmoid(.)``, ``g = tanh(.)``, ``c' = f * c + i * g``, ``h' = o * tanh(c')``.
    The forget-gate bias starts at 1 (the usual LSTM initialisation).

    Args:
        spatial_dims: 1, 2 or 3.
        in_channels: channels of ``x``.
        hidden_channels: channels of ``h`` and ``c``.
        kernel_size: odd kernel size of the gate convolution ("same" zero padding).
        bias: whether the gate convolution has a bias.

    Shapes: x ``(B, C_in, *spatial)``, h and c ``(B, C_h, *spatial)`` -> (h', c'), each
    ``(B, C_h, *spatial)``.
    """

    def __init__(
        self, spatial_dims: int, in_channels: int, hidden_channels: int, kernel_size: Sequence[int] | int = 3, bias: bool = True
    ) -> None:
        super().__init__()
        ks = ensure_tuple_rep(kernel_size, spatial_dims)
        if any(k % 2 == 0 for k in ks):
            raise ValueError(f"ConvLSTM kernel sizes must be odd, got {ks}")
        self.in_channels = in_channels
        self.hidden_channels = hidden_channels
        self.conv = Conv[Conv.CONV, spatial_dims](
            in_channels + hidden_channels, 4 * hidden_channels, kernel_size=ks, padding=tuple((k - 1) // 2 for k in ks), bias=bias
        )
        if bias:
            with torch.no_grad():
                self.conv.bias.zero_()
                self.conv.bias[hidden_channels : 2 * hidden_channels].fill_(1.0)

    def forward(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        i, f, o, g = torch.chunk(self.conv(torch.cat([x, h], dim=1)), 4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c


class ConvLSTM(nn.Module):
    """A stack of :class:`ConvLSTMCell` run over the time axis, starting from zero states.

    Args:
        spatial_dims: 1, 2 or 3.
        in_channels: channels of each input frame.
        hidden_channels: hidden channels, one int for all layers or one per layer.
        num_layers: number of stacked layers (3 in Seq2Seq).
        kernel_size: odd kernel size of the gate convolutions.

    Shapes: ``(B, T, in_channels, *spatial)`` -> the last layer's hidden states
    ``(B, T, hidden_channels[-1], *spatial)``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        hidden_channels: Sequence[int] | int,
        num_layers: int = 3,
        kernel_size: Sequence[int] | int = 3,
    ) -> None:
        super().__init__()
        hidden = list(ensure_tuple_rep(hidden_channels, num_layers))
        if num_layers < 1 or len(hidden) != num_layers:
            raise ValueError(f"need num_layers >= 1 and one hidden width per layer, got {num_layers} and {hidden_channels}")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = hidden[-1]
        cells = []
        c_prev = in_channels
        for c in hidden:
            cells.append(ConvLSTMCell(spatial_dims, c_prev, c, kernel_size))
            c_prev = c
        self.cells = nn.ModuleList(cells)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != self.spatial_dims + 3 or x.shape[2] != self.in_channels:
            raise ValueError(
                f"ConvLSTM expects input of shape (B, T, {self.in_channels}, <{self.spatial_dims} spatial dims>), "
                f"got {list(x.shape)}"
            )
        b, t = x.shape[0], x.shape[1]
        spatial = list(x.shape[3:])
        seq = x
        for cell in self.cells:
            h = torch.zeros([b, cell.hidden_channels] + spatial, dtype=x.dtype, device=x.device)
            c = torch.zeros_like(h)
            outs: List[torch.Tensor] = []
            for step in range(t):
                h, c = cell(seq[:, step], h, c)
                outs.append(h)
            seq = torch.stack(outs, dim=1)
        return seq
