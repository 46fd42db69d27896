"""Whole-volume inference for slice-wise (2D / 2.5D) synthesis networks.

MONAI's :class:`~monai.inferers.SliceInferer` runs a 2D network slice by slice, but a 2.5D
network takes ``k`` adjacent slices as channels and returns ``k`` slices. :class:`SlabInferer`
cuts those slabs along the last spatial axis, runs them in batches, and averages the
overlapping predictions of each slice. 3D networks use MONAI's
:class:`~monai.inferers.SlidingWindowInferer`, inside :class:`PerSampleInferer` where the
samples of a batch carry their own target codes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.inferers import Inferer

from .amp import as_bool, autocast
from .transforms.sampling import slab_indices

__all__ = ["PerSampleInferer", "SlabInferer"]


def sample_args(args, i: int, batch: int) -> list:
    """The extra inputs of sample ``i``: every tensor whose first dimension is the batch cut to
    ``[i : i + 1]``; anything else (a ``(1,)`` code for the whole batch, a flag) as it is."""
    return [a[i : i + 1] if isinstance(a, torch.Tensor) and a.ndim and a.shape[0] == batch else a for a in args]


class SlabInferer(Inferer):
    """Run a 2D/2.5D network over 3D volumes, slab by slab along the last axis.

    Args:
        num_slices: slices per slab (3 for 2.5D, 1 for 2D); the network maps ``num_slices``
            channels to ``num_slices`` channels.
        batch_size: slabs per network call.
        divisible_by: in-plane sizes are padded up to a multiple of this (the network's
            down-sampling factor) with ``pad_value``, and cropped back after.
        pad_value: value of the padding (-1 is background on the papers' [-1, 1] scale).
        amp: run the network in mixed precision where the device does it natively
            (:func:`mrsynth.amp.autocast`: float16 on CUDA, bfloat16 on CPUs with AVX512-BF16 /
            AMX, float32 elsewhere), with the slabs in ``channels_last`` layout; the result is
            float32 either way. On such a CPU this is several times faster, and the synthesis
            differs from float32 by about 0.005 on the [-1, 1] scale (``tools/bench_speed.py``).

    Call: ``inferer(inputs, network, *args)`` with ``inputs`` ``(B, C, H, W, D)`` and per-sample
    extra inputs (a target code ``(B,)``, an availability mask ``(B, N)``, ...) indexed along
    dim 0. Each of the ``C`` input volumes (``C`` sources for a many-to-one network) is cut into
    slabs and the slabs are stacked source-major: the network sees ``(n, C * num_slices, H, W)``.
    Returns ``(B, 1, H, W, D)``; every slice is the mean of the ``num_slices`` slabs that
    predicted it.
    """

    def __init__(self, num_slices: int = 3, batch_size: int = 8, divisible_by: int = 4, pad_value: float = -1.0,
                 amp: bool = False):
        super().__init__()
        self.amp = as_bool(amp, "amp")
        if num_slices < 1:
            raise ValueError(f"num_slices must be >= 1, got {num_slices}")
        self.num_slices, self.batch_size = int(num_slices), int(batch_size)
        self.divisible_by, self.pad_value = int(divisible_by), float(pad_value)

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs) -> torch.Tensor:
        if inputs.ndim != 5:
            raise ValueError(f"SlabInferer expects (B, C, H, W, D) volumes, got shape {tuple(inputs.shape)}")
        x = torch.as_tensor(inputs)
        b, _, h, w, depth = x.shape
        ph, pw = (-h) % self.divisible_by, (-w) % self.divisible_by
        out = torch.zeros((b, 1, h, w, depth), dtype=x.dtype, device=x.device)
        count = torch.zeros(depth, dtype=x.dtype, device=x.device)
        centers = list(range(depth))
        for i in range(b):
            vol = x[i]  # (C, H, W, D)
            extra = sample_args(args, i, b)
            for start in range(0, depth, self.batch_size):
                chunk = centers[start : start + self.batch_size]
                idx = [slab_indices(c, self.num_slices, depth) for c in chunk]
                # (n, C * k, H, W): per slab, the k slices of source 0, then of source 1, ...
                slabs = torch.stack([vol[..., j].permute(0, 3, 1, 2).reshape(-1, h, w) for j in idx])
                if ph or pw:
                    slabs = F.pad(slabs, (0, pw, 0, ph), value=self.pad_value)
                n = slabs.shape[0]
                rep = [a.expand(n, *a.shape[1:]) if isinstance(a, torch.Tensor) else a for a in extra]
                if self.amp:
                    slabs = slabs.contiguous(memory_format=torch.channels_last)
                with autocast(slabs.device, enabled=self.amp):
                    pred = network(slabs, *rep, **kwargs)
                pred = pred[..., :h, :w].to(out.dtype)
                for p, j in zip(pred, idx):
                    for ch, z in enumerate(j):
                        if i == 0:
                            count[z] += 1
                        out[i, 0, :, :, z] += p[ch]
        return out / count.clamp_min(1)


class PerSampleInferer(Inferer):
    """Run ``inferer`` one sample of the batch at a time, each with its own extra inputs.

    MONAI's :class:`~monai.inferers.SlidingWindowInferer` gathers windows from all samples of a
    batch into its window batches and hands the extra inputs (``*args``) to the network
    unchanged, which is right for inputs shared by the whole batch but not for per-sample ones
    such as a synthesis network's target code ``(B,)``. This wrapper calls ``inferer`` on
    ``inputs[i : i + 1]`` with its own extra inputs (:func:`sample_args`: a ``(1,)`` code, which
    the networks broadcast over the windows), and concatenates the results.

    Args:
        inferer: any MONAI :class:`~monai.inferers.Inferer`.
        amp: run it in the device's native mixed precision (as :class:`SlabInferer`); the result
            is float32 either way.
    """

    def __init__(self, inferer: Inferer, amp: bool = False) -> None:
        super().__init__()
        self.inferer, self.amp = inferer, as_bool(amp, "amp")

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs) -> torch.Tensor:
        b = inputs.shape[0]
        outs = []
        for i in range(b):
            extra = sample_args(args, i, b)
            with autocast(inputs.device, enabled=self.amp):
                outs.append(self.inferer(inputs[i : i + 1], network, *extra, **kwargs).float())
        return torch.cat(outs)
