"""Dynamic series (DCE): frames as images, and 2.5D samples of a whole series.

A dynamic series is loaded frames-first, ``(F, X, Y, Z)``
(:class:`~mrsynth.transforms.LoadSequencesd` with ``series=``). :class:`SplitFramesd` cuts it
into named parts (``dce`` -> ``dce_pre``, its pre-contrast frame, and ``dce_post``, the
post-contrast frames), so that the parts scale and serve as inputs or targets like any sequence
(the post-contrast frames scaled with the pre-contrast frame's range:
``ScalePercentiled(ref_keys=...)``, the range a user's pre-contrast image gives at inference).

A 4D synthesis maps a stack of input frames (``T_in``: e.g. the pre-contrast frame and T2) to a
stack of output frames (``T_out``: the post-contrast frames) with one target code.
:class:`RandSeriesSlabd` / :class:`SeriesSlabsd` stack them and cut 2.5D slabs, flattened
frame-major into channels: ``image`` ``(T_in * k, H, W)``, ``label`` ``(T_out * k, H, W)`` (for
``k`` slices per slab), so MONAI's spatial transforms, losses and metrics apply unchanged;
:class:`~mrsynth.networks.FlatSeries` unflattens them for :class:`~mrsynth.networks.Seq2Seq4D`.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import MapTransform, Randomizable

from ..errors import DataError
from .sampling import _slice_window, slab_indices

__all__ = ["parse_frames", "SplitFramesd", "stack_frames", "RandSeriesSlabd", "SeriesSlabsd"]


def parse_frames(spec) -> slice:
    """A frame selection: ``"0"`` (one frame), ``"1:"``, ``"2:5"``, ``":3"`` (Python slices), or an int."""
    if isinstance(spec, int):
        return slice(spec, spec + 1 if spec != -1 else None)
    text = str(spec).strip()
    try:
        if ":" not in text:
            i = int(text)
            return slice(i, i + 1 if i != -1 else None)
        parts = [int(p) if p.strip() else None for p in text.split(":")]
    except ValueError:
        raise ValueError(f"frames must be an index or a slice such as '1:', got {spec!r}") from None
    if len(parts) > 3:
        raise ValueError(f"frames must be an index or a slice such as '1:', got {spec!r}")
    return slice(*parts)


def _part_name(key: str, suffix: str) -> str:
    """``dce`` + ``_pre`` -> ``dce_pre``; ``dce_noiseless`` + ``_pre`` -> ``dce_pre_noiseless``."""
    if key.endswith("_noiseless"):
        return f"{key[: -len('_noiseless')]}{suffix}_noiseless"
    return f"{key}{suffix}"


class SplitFramesd(MapTransform):
    """Cut frames-first series ``(F, X, Y, Z)`` into named parts, each ``(F_part, X, Y, Z)``.

    Args:
        keys: the series (e.g. ``["dce", "dce_noiseless"]``); absent keys are skipped.
        parts: suffix -> frames (:func:`parse_frames`), e.g. ``{"_pre": "0", "_post": "1:"}``:
            ``dce`` gives ``dce_pre`` and ``dce_post``, ``dce_noiseless`` gives
            ``dce_pre_noiseless`` and ``dce_post_noiseless``. A part with no frame (a series of
            one frame has no ``1:``) is left out: a pre-contrast image alone is a valid input.
        keep: keep the whole series under its key (default: drop it, the parts hold the frames).
    """

    def __init__(self, keys, parts: Mapping[str, object], keep: bool = False, allow_missing_keys: bool = True) -> None:
        super().__init__(keys, allow_missing_keys)
        self.parts = {str(k): parse_frames(v) for k, v in parts.items()}
        self.keep = keep

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            x = d[key]
            for suffix, frames in self.parts.items():
                part = x[frames]
                if part.shape[0] == 0:
                    continue
                if isinstance(x, MetaTensor) and not isinstance(part, MetaTensor):
                    part = MetaTensor(part, meta=dict(x.meta))
                d[_part_name(str(key), suffix)] = part
            if not self.keep:
                del d[key]
        return d


def stack_frames(d: Mapping, names: Sequence[str], case=None) -> torch.Tensor:
    """The frames of ``names`` stacked in order: ``(sum of frames, X, Y, Z)``."""
    missing = [n for n in names if n not in d]
    if missing:
        raise DataError(f"the case has no {', '.join(missing)} (the series synthesis needs {', '.join(names)})", case)
    return torch.cat([torch.as_tensor(d[n]) for n in names], dim=0)


def _slabs(frames: torch.Tensor, center: int, k: int) -> torch.Tensor:
    """``(T, H, W, D)`` -> ``(T * k, H, W)``: the ``k`` slices around ``center`` of every frame, frame-major."""
    idx = slab_indices(center, k, frames.shape[-1])
    return frames[..., idx].permute(0, 3, 1, 2).reshape(-1, *frames.shape[1:3]).contiguous()


class _SeriesBase(MapTransform):
    def __init__(self, inputs: Sequence[str], targets: Sequence[str], code: int, num_slices: int = 3,
                 central_slices: int | None = None, extra=()) -> None:
        super().__init__(list(inputs) + list(targets), allow_missing_keys=True)
        if num_slices < 1:
            raise ValueError(f"num_slices must be >= 1 for series slabs, got {num_slices}")
        self.inputs, self.targets = [str(s) for s in inputs], [str(s) for s in targets]
        self.code, self.num_slices, self.central_slices = int(code), int(num_slices), central_slices
        self.extra = tuple(extra)

    def _stacks(self, d):
        case = d.get("case")
        x, y = stack_frames(d, self.inputs, case), stack_frames(d, self.targets, case)
        extra = {}
        for suffix in self.extra:  # e.g. the targets' noiseless twins
            names = [f"{n}_{suffix}" for n in self.targets]
            if all(n in d for n in names):
                extra[f"label_{suffix}"] = stack_frames(d, names, case)
        return x, y, extra

    def _sample(self, d, x, y, extra, center: int) -> dict:
        k = self.num_slices
        out = {"image": _slabs(x, center, k), "label": _slabs(y, center, k),
               "tgt_code": torch.tensor(self.code, dtype=torch.long), "slice": center, "case": d.get("case", "")}
        out.update({key: _slabs(v, center, k) for key, v in extra.items()})
        return out


class RandSeriesSlabd(Randomizable, _SeriesBase):
    """``num_samples`` random 2.5D samples of a series synthesis from one case: the frames of
    ``inputs`` -> the frames of ``targets`` at a random axial slice (among the central
    ``central_slices``), with the target ``code``. Returns a list of dicts: ``image``
    ``(T_in * k, H, W)``, ``label`` ``(T_out * k, H, W)``, ``tgt_code``, ``slice``, ``case``.

    Args:
        inputs, targets: image names (3D images are one frame, parts of
            :class:`SplitFramesd` their frames), stacked in order.
        code: the target code the network is given.
        num_slices: slices per slab ``k``.
        num_samples: samples per case.
        central_slices: restrict the slices to the central N (``None``: all).
        extra: suffixes of the targets' twins cut alongside (``"noiseless"`` -> ``label_noiseless``).
    """

    def __init__(self, inputs, targets, code: int, num_slices: int = 3, num_samples: int = 1,
                 central_slices: int | None = None, extra=()) -> None:
        _SeriesBase.__init__(self, inputs, targets, code, num_slices, central_slices, extra)
        self.num_samples = int(num_samples)

    def randomize(self, data=None) -> None:
        pass

    def __call__(self, data: Mapping[Hashable, object]) -> list[dict]:
        d = dict(data)
        x, y, extra = self._stacks(d)
        lo, hi = _slice_window(x.shape[-1], self.central_slices)
        return [self._sample(d, x, y, extra, int(self.R.randint(lo, hi))) for _ in range(self.num_samples)]


class SeriesSlabsd(_SeriesBase):
    """``slices_per_case`` evenly spaced 2.5D samples of a series synthesis (validation); as
    :class:`RandSeriesSlabd` otherwise."""

    def __init__(self, inputs, targets, code: int, num_slices: int = 3, slices_per_case: int = 4,
                 central_slices: int | None = None, extra=()) -> None:
        super().__init__(inputs, targets, code, num_slices, central_slices, extra)
        self.slices_per_case = int(slices_per_case)

    def __call__(self, data: Mapping[Hashable, object]) -> list[dict]:
        d = dict(data)
        x, y, extra = self._stacks(d)
        lo, hi = _slice_window(x.shape[-1], self.central_slices)
        centers = np.linspace(lo, hi - 1, self.slices_per_case + 2)[1:-1].round().astype(int).tolist()
        return [self._sample(d, x, y, extra, c) for c in centers]
