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
from .networks.bound import as_conditions
from .transforms.sampling import slab_indices

__all__ = ["ImplicitSlidingWindowInferer", "PerSampleInferer", "SlabInferer", "bound_args"]


def sample_args(args, i: int, batch: int) -> list:
    """The extra inputs of sample ``i``: every tensor whose first dimension is the batch cut to
    ``[i : i + 1]``; anything else (a ``(1,)`` code for the whole batch, a flag) as it is."""
    return [a[i : i + 1] if isinstance(a, torch.Tensor) and a.ndim and a.shape[0] == batch else a for a in args]


def _conditions(conditions) -> list | None:
    """``conditions`` as a list of tensors (:func:`~mrsynth.networks.bound.as_conditions`), or ``None``."""
    return None if conditions is None else as_conditions(conditions)


def bound_args(args, conditions, device) -> tuple:
    """The network's extra inputs: ``args`` when the caller gives them (the bundles' own
    workflows), else the inferer's bound ``conditions`` on ``device`` (callers that know only
    ``inferer(inputs, network)``: MONAI's evaluators, MONAI Deploy's and MONAI Label's bundle
    operators)."""
    if args or conditions is None:
        return tuple(args)
    return tuple(c.to(device) for c in conditions)


class SlabInferer(Inferer):
    """Run a 2D/2.5D network over 3D volumes, slab by slab along the last axis.

    Args:
        num_slices: slices per slab (3 for 2.5D, 1 for 2D); the network maps ``num_slices``
            channels to ``num_slices`` channels.
        batch_size: slabs per network call.
        divisible_by: in-plane sizes are padded up to a multiple of this (the network's
            down-sampling factor) with ``pad_value``, and cropped back after.
        min_size: pad in-plane up to at least this size (an int or ``(H, W)``; ``None``: no minimum),
            e.g. the training patch size: a network trained on small images padded into larger
            patches sees the same amount of background at inference (instance normalisation
            depends on it).
        pad_value: value of the padding (-1 is background on the papers' [-1, 1] scale).
        amp: run the network in mixed precision where the device does it natively
            (:func:`mrsynth.amp.autocast`: float16 on CUDA, bfloat16 on CPUs with AVX512-BF16 /
            AMX, float32 elsewhere), with the slabs in ``channels_last`` layout; the result is
            float32 either way. On such a CPU this is several times faster, and the synthesis
            differs from float32 by about 0.005 on the [-1, 1] scale (``tools/bench_speed.py``).
        out_frames: frames the network returns per slab (a series network,
            :class:`~mrsynth.networks.FlatSeries`: ``out_frames * num_slices`` channels, frame-major);
            the result is then ``(B, out_frames, H, W, D)``.
        conditions: the network's extra inputs (a target code, an availability mask ``(1, N)``;
            ints become ``(1,)`` codes) used when a call gives none: MONAI's evaluators and the
            serving tools call ``inferer(inputs, network)`` only.

    Call: ``inferer(inputs, network, *args)`` with ``inputs`` ``(B, C, H, W, D)`` and per-sample
    extra inputs (a target code ``(B,)``, an availability mask ``(B, N)``, ...) indexed along
    dim 0 (default: ``conditions``). Each of the ``C`` input volumes (``C`` sources for a many-to-one network) is cut into
    slabs and the slabs are stacked source-major: the network sees ``(n, C * num_slices, H, W)``.
    Returns ``(B, out_frames, H, W, D)``; every slice is the mean of the ``num_slices`` slabs that
    predicted it.
    """

    def __init__(self, num_slices: int = 3, batch_size: int = 8, divisible_by: int = 4, pad_value: float = -1.0,
                 amp: bool = False, conditions=None, out_frames: int = 1, min_size=None):
        super().__init__()
        if min_size is not None:
            min_size = [int(v) for v in ([min_size] * 2 if isinstance(min_size, (int, float)) else min_size)][-2:]
        self.min_size = min_size
        self.amp = as_bool(amp, "amp")
        self.out_frames = int(out_frames)
        if self.out_frames < 1:
            raise ValueError(f"out_frames must be >= 1, got {out_frames}")
        self.conditions = _conditions(conditions)
        if num_slices < 1:
            raise ValueError(f"num_slices must be >= 1, got {num_slices}")
        self.num_slices, self.batch_size = int(num_slices), int(batch_size)
        self.divisible_by, self.pad_value = int(divisible_by), float(pad_value)

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs) -> torch.Tensor:
        if inputs.ndim != 5:
            raise ValueError(f"SlabInferer expects (B, C, H, W, D) volumes, got shape {tuple(inputs.shape)}")
        # plain tensors: a MetaTensor's per-operation metadata handling costs more than the
        # network itself on a CPU (the result carries no metadata either way)
        x = _plain(torch.as_tensor(inputs))
        args = tuple(_plain(a) for a in bound_args(args, self.conditions, x.device))
        b, _, h, w, depth = x.shape
        th, tw = (h, w) if self.min_size is None else (max(h, self.min_size[0]), max(w, self.min_size[1]))
        ph, pw = th - h + (-th) % self.divisible_by, tw - w + (-tw) % self.divisible_by
        f = self.out_frames
        out = torch.zeros((b, f, h, w, depth), dtype=x.dtype, device=x.device)
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
                pred = pred.reshape(n, f, -1, h, w)  # frame-major channels
                for p, j in zip(pred, idx):
                    for ch, z in enumerate(j):
                        if i == 0:
                            count[z] += 1
                        out[i, :, :, :, z] += p[:, ch]
        return out / count.clamp_min(1)


def _plain(t):
    """``t`` as a plain ``torch.Tensor`` (a MetaTensor without its metadata); other values as they are."""
    return t.as_subclass(torch.Tensor) if isinstance(t, torch.Tensor) and type(t) is not torch.Tensor else t


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
        conditions: the extra inputs used when a call gives none (as :class:`SlabInferer`).
    """

    def __init__(self, inferer: Inferer, amp: bool = False, conditions=None) -> None:
        super().__init__()
        self.inferer, self.amp = inferer, as_bool(amp, "amp")
        self.conditions = _conditions(conditions)

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs) -> torch.Tensor:
        args = bound_args(args, self.conditions, inputs.device)
        b = inputs.shape[0]
        outs = []
        for i in range(b):
            extra = sample_args(args, i, b)
            with autocast(inputs.device, enabled=self.amp):
                outs.append(self.inferer(inputs[i : i + 1], network, *extra, **kwargs).float())
        return torch.cat(outs)


def _window_starts(n: int, roi: int, step: int) -> list[int]:
    """Window starts covering ``n`` voxels with windows of ``roi`` and stride ``step`` (the last
    window flush with the end)."""
    if n <= roi:
        return [0]
    starts = list(range(0, n - roi, step)) + [n - roi]
    return sorted(set(starts))


class ImplicitSlidingWindowInferer(Inferer):
    """Sliding-window inference of a coordinate-query network (:class:`~mrsynth.networks.TUMSyn`)
    onto an output grid of any size.

    The output grid covers the input's field of view: output voxel ``j`` of an axis of ``n'``
    voxels sits at the input's continuous voxel index ``u = (j + 0.5) n / n' - 0.5``. The input
    is cut into ``roi_size`` windows overlapping by ``overlap``; each window is encoded once
    (``network.encode(window, text)``), then the output voxels whose centres fall inside it are
    queried in chunks of ``points_per_chunk`` (``network.query(features, coords)``), and the
    predictions of overlapping windows are blended with a Gaussian weight of the distance to
    the window's centre (``sigma_scale * roi_size``), as MONAI's
    :class:`~monai.inferers.SlidingWindowInferer` does for dense outputs.

    Memory: one window's features (``features x roi^3`` floats and the encoder's activations),
    one chunk of queries (``points_per_chunk x`` the decoder's widest layer), and two
    float32 output-size accumulators, whatever the output size.

    Args:
        roi_size: window edge in input voxels (paper 60).
        overlap: fraction of overlap between neighbouring windows (paper 0.5).
        points_per_chunk: query points per decoder call.
        sigma_scale: Gaussian blending width relative to the window.
        skip_below: windows whose input never exceeds this are not run (background, 0 there).
        amp: mixed precision where the device runs it natively (:func:`mrsynth.amp.autocast`).
        prompt, tokenizer: the target prompt (:class:`~mrsynth.transforms.Prompt`) used when a call
            gives no tokens: MONAI's evaluators and the serving tools call ``inferer(inputs,
            network)`` only, and get the prompted contrast on the input's grid. A prompt without a
            voxel size gets the input's (from its affine, as the bundle's own inference sets it);
            ``tokenizer`` (:class:`~mrsynth.transforms.PromptTokenizer`) tokenizes it.
        source_prompt: the source's protocol (a prompt), for a bound prompt and a network that
            reads it (:class:`~mrsynth.networks.TUMSyn` ``source_protocol``): its acquisition
            vector follows the target's. Such a network without it is an error saying so.

    Call: ``inferer(inputs (1, C, X, Y, Z), network, tokens (1, L), acquisition (1, A) or None,
    output_shape=(X', Y', Z'))`` -> ``(1, 1, X', Y', Z')``; ``acquisition`` is the prompt's
    :func:`~mrsynth.transforms.acquisition_features`, for a network that reads them.
    """

    def __init__(self, roi_size: int = 60, overlap: float = 0.5, points_per_chunk: int = 65536,
                 sigma_scale: float = 0.125, skip_below: float | None = 1e-3, amp: bool = False,
                 prompt=None, tokenizer=None, source_prompt=None) -> None:
        super().__init__()
        self.prompt, self.tokenizer = prompt, tokenizer
        if source_prompt is not None:
            from .transforms.prompt import source_protocol

            source_prompt = source_protocol(source_prompt)
        self.source_prompt = source_prompt
        if not 0 <= overlap < 1:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        self.roi_size, self.overlap = int(roi_size), float(overlap)
        self.points_per_chunk, self.sigma_scale = int(points_per_chunk), float(sigma_scale)
        self.skip_below, self.amp = skip_below, as_bool(amp, "amp")

    @torch.no_grad()
    def __call__(self, inputs: torch.Tensor, network, tokens: torch.Tensor | None = None,
                 acquisition: torch.Tensor | None = None, output_shape=None, **kwargs) -> torch.Tensor:
        if tokens is None:
            tokens, acquisition = self.bound_prompt(inputs)
            if getattr(network, "source_protocol", False):
                from .transforms.prompt import acquisition_features

                if self.source_prompt is None:
                    raise ValueError("this model reads the source's protocol (source_protocol): give the inferer the "
                                     "source's prompt (source_prompt; the bundle's --source_prompt)")
                acquisition = torch.cat([acquisition, acquisition_features(self.source_prompt)[None]], 1)
        if inputs.ndim != 5 or inputs.shape[0] != 1:
            raise ValueError(f"ImplicitSlidingWindowInferer expects one volume (1, C, X, Y, Z), got {tuple(inputs.shape)}")
        x = _plain(torch.as_tensor(inputs)).float()
        dev = x.device
        shape_in = list(x.shape[2:])
        shape_out = [int(v) for v in (output_shape or shape_in)]
        with autocast(dev, enabled=self.amp):
            text = network.encode_text(tokens.to(dev), None if acquisition is None else acquisition.to(dev))
        # input-index position of every output voxel centre, per axis
        u = [(torch.arange(m, device=dev, dtype=torch.float64) + 0.5) * n / m - 0.5 for n, m in zip(shape_in, shape_out)]
        acc = torch.zeros(shape_out, dtype=torch.float32, device=dev)
        wsum = torch.zeros(shape_out, dtype=torch.float32, device=dev)
        rois = [min(self.roi_size, n) for n in shape_in]
        steps = [max(1, int(round(r * (1 - self.overlap)))) for r in rois]
        for s0 in _window_starts(shape_in[0], rois[0], steps[0]):
            for s1 in _window_starts(shape_in[1], rois[1], steps[1]):
                for s2 in _window_starts(shape_in[2], rois[2], steps[2]):
                    starts = (s0, s1, s2)
                    win = x[:, :, s0 : s0 + rois[0], s1 : s1 + rois[1], s2 : s2 + rois[2]]
                    if self.skip_below is not None and float(win.max()) <= self.skip_below:
                        continue
                    self._window(network, win, text, starts, rois, u, acc, wsum)
        return torch.where(wsum > 0, acc / wsum.clamp_min(1e-30), 0.0)[None, None]

    def bound_prompt(self, inputs) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens ``(1, L)`` and acquisition features ``(1, A)`` of the bound prompt, its voxel size
        set from ``inputs``' affine when it has none."""
        from monai.data import MetaTensor
        from monai.data.utils import affine_to_spacing

        from .transforms.prompt import PromptTokenizer, acquisition_features

        if self.prompt is None:
            raise ValueError("no prompt: pass tokens (and acquisition), or build the inferer with a prompt")
        prompt = self.prompt
        if prompt.voxel_size is None and isinstance(inputs, MetaTensor):
            affine = inputs.affine[0] if inputs.affine.ndim == 3 else inputs.affine
            spacing = affine_to_spacing(affine.detach().cpu().double().numpy(), r=3).round(4)  # as TargetPrompt
            prompt = prompt.replace(voxel_size=tuple(float(v) for v in spacing))
        tokenizer = self.tokenizer or PromptTokenizer()
        return tokenizer(prompt.format()), acquisition_features(prompt)[None]

    def _window(self, network, win, text, starts, rois, u, acc, wsum) -> None:
        # output voxels inside this window: input position in [start - 0.5, start + roi - 0.5)
        idx, rel, wts = [], [], []
        for ax in range(3):
            lo, r = starts[ax], rois[ax]
            inside = torch.nonzero((u[ax] >= lo - 0.5) & (u[ax] < lo + r - 0.5)).flatten()
            pos = u[ax][inside] - lo  # position inside the window, voxels
            idx.append(inside)
            rel.append(((2 * pos + 1) / r - 1).float())  # normalised window coordinate
            c, sigma = (r - 1) / 2, self.sigma_scale * r
            wts.append(torch.exp(-0.5 * ((pos - c) / sigma) ** 2).float().clamp_min(1e-2))
        sizes = [len(i) for i in idx]
        total = sizes[0] * sizes[1] * sizes[2]
        if total == 0:
            return
        with autocast(win.device, enabled=self.amp):
            feats = network.encode(win, text)
        sub_acc = torch.empty(total, dtype=torch.float32, device=win.device)
        for a in range(0, total, self.points_per_chunk):
            flat = torch.arange(a, min(a + self.points_per_chunk, total), device=win.device)
            i2 = flat % sizes[2]
            i1 = (flat // sizes[2]) % sizes[1]
            i0 = flat // (sizes[1] * sizes[2])
            coords = torch.stack([rel[0][i0], rel[1][i1], rel[2][i2]], dim=-1)[None]
            with autocast(win.device, enabled=self.amp):
                sub_acc[a : a + len(flat)] = network.query(feats, coords)[0].float()
        w = wts[0][:, None, None] * wts[1][None, :, None] * wts[2][None, None, :]
        block = (idx[0][:, None, None], idx[1][None, :, None], idx[2][None, None, :])
        acc[block] += sub_acc.view(sizes) * w
        wsum[block] += w
