"""A synthesis network with its conditioning fixed: ``forward(image) -> image``.

The networks of this package take the image and what to synthesize (a target code, an
availability mask, a text prompt). Tools that know only ``network(image)`` (MONAI's
``verify_net_in_out``, a plain :class:`~monai.inferers.SlidingWindowInferer`, a serving
framework's model call) get one of these: the same weights (``state_dict`` and
``load_state_dict`` go straight to the wrapped network, so a bundle's ``models/model.pt`` loads
as it is) with the conditioning bound at construction. The bundles' inference configs name one
``deployable_network_def``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

__all__ = ["Conditioned", "PromptConditioned", "FlatSeries", "availability_mask", "as_conditions"]


def as_conditions(conditions: Sequence) -> list[torch.Tensor]:
    """A network's extra inputs as tensors: ints become ``(1,)`` int64 target codes, tensors stay."""
    return [c if isinstance(c, torch.Tensor) else torch.tensor([int(c)]) for c in conditions]


def availability_mask(sequences: Sequence[str], absent: Sequence[str] = ()) -> torch.Tensor:
    """``(1, N)`` float mask over ``sequences``: 1 for a sequence given to the network, 0 for ``absent``."""
    absent = {str(s).lower() for s in ([absent] if isinstance(absent, str) else absent)}
    return torch.tensor([[0.0 if str(s).lower() in absent else 1.0 for s in sequences]])


class _Bound(nn.Module):
    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def state_dict(self, *args, **kwargs):
        return self.network.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.network.load_state_dict(state_dict, strict=strict, assign=assign)

    @staticmethod
    def _batched(t: torch.Tensor, batch: int, device) -> torch.Tensor:
        t = t.to(device)
        return t.expand(batch, *t.shape[1:]) if t.shape[0] == 1 else t


class Conditioned(_Bound):
    """``network(image, *conditions)`` as ``forward(image)``; e.g. ``Conditioned(seq2seq, [3])``.

    Args:
        network: e.g. :class:`~mrsynth.networks.Seq2Seq` (conditions: the target code ``(1,)``) or
            :class:`~mrsynth.networks.TSFSeq2Seq` (the availability mask ``(1, N)`` and the code).
        conditions: tensors with a batch dimension of 1 (expanded to the image's batch) or of the
            batch size; ints become ``(1,)`` int64 tensors.
    """

    def __init__(self, network: nn.Module, conditions: Sequence = ()) -> None:
        super().__init__(network)
        self.conditions = as_conditions(conditions)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.network(image, *(self._batched(c, image.shape[0], image.device) for c in self.conditions))


class PromptConditioned(_Bound):
    """:class:`~mrsynth.networks.TUMSyn` for one prompt, as a dense network: ``forward(image (B, 1, X, Y, Z))``
    -> ``(B, 1, X, Y, Z)``, the prompted contrast on the image's own grid (every voxel centre
    queried, in the window coordinates :class:`~mrsynth.inferers.ImplicitSlidingWindowInferer`
    uses, so a MONAI :class:`~monai.inferers.SlidingWindowInferer` over it gives TUMSyn's
    windowed inference at the input resolution).

    Args:
        network: a :class:`~mrsynth.networks.TUMSyn`.
        tokens: the prompt's tokens ``(1, L)`` (:class:`~mrsynth.transforms.PromptTokenizer`).
        acquisition: the prompt's :func:`~mrsynth.transforms.acquisition_features` ``(1, A)``, for a
            network built with ``acquisition_features``.
    """

    def __init__(self, network: nn.Module, tokens: torch.Tensor, acquisition: torch.Tensor | None = None) -> None:
        super().__init__(network)
        self.tokens = torch.as_tensor(tokens).reshape(1, -1)
        self.acquisition = None if acquisition is None else torch.as_tensor(acquisition, dtype=torch.float32).reshape(1, -1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        b, dev, shape = image.shape[0], image.device, image.shape[2:]
        text = self.network.encode_text(self._batched(self.tokens, b, dev),
                                        None if self.acquisition is None else self._batched(self.acquisition, b, dev))
        axes = [(2 * torch.arange(n, device=dev, dtype=torch.float32) + 1) / n - 1 for n in shape]
        coords = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(1, -1, 3).expand(b, -1, -1)
        return self.network.query(self.network.encode(image, text), coords).reshape(b, 1, *shape)


class FlatSeries(_Bound):
    """A series network (:class:`~mrsynth.networks.Seq2Seq4D`: ``(B, T, C, *spatial)`` ->
    ``(B, T_out, C, *spatial)``) on frame-major flattened channels: ``forward(x (B, T * C,
    *spatial), code)`` -> ``(B, T_out * C, *spatial)``, so that the 2.5D machinery (slab samples,
    MONAI's spatial transforms and metrics, :class:`~mrsynth.inferers.SlabInferer`) serves 4D
    synthesis unchanged. ``state_dict`` is the wrapped network's.

    Args:
        network: the series network.
        channels: channels per frame ``C`` (the slices of a 2.5D slab).
        residual_frame: the index of an input frame that every output frame adds to (``None``:
            none). With the pre-contrast frame, the network predicts the change the contrast agent
            makes, and a network that predicts no change is the copy baseline.
    """

    def __init__(self, network: nn.Module, channels: int, residual_frame: int | None = None) -> None:
        super().__init__(network)
        self.channels = int(channels)
        self.residual_frame = None if residual_frame is None else int(residual_frame)

    def forward(self, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        b, tc = x.shape[0], x.shape[1]
        if tc % self.channels:
            raise ValueError(f"{tc} channels are not frames of {self.channels} channels each")
        frames = x.reshape(b, tc // self.channels, self.channels, *x.shape[2:])
        y = self.network(frames, code)
        if self.residual_frame is not None:
            y = y + frames[:, self.residual_frame : self.residual_frame + 1]
        return y.reshape(b, -1, *y.shape[3:])
