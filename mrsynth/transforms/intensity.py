"""Per-image intensity normalisation of the papers, invertible.

- Seq2Seq family: clip to ``[0, 2 x p99]`` and map to ``[-1, 1]``  (:data:`PAPER`).
- nnSeq2Seq: clip to ``[p0.5, 1.25 x p99.5]`` and map to ``[0, 1]`` (:data:`NNSEQ2SEQ`).
- Signed images (difference maps such as a DCE series' wash-in and wash-out, whose sign is the
  information): clip to ``[-h, h]``, ``h`` = factor x the upper percentile of ``|x|``, so that 0
  maps to the middle of the output range.

The mapping's parameters are recorded with MONAI's transform tracing, so
:class:`monai.transforms.Invertd` (or :meth:`ScalePercentiled.inverse`) brings a network's
output back to the input's intensity scale.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import InvertibleTransform, MapTransform

from ..errors import DataError

__all__ = ["ScalePercentiled", "percentile_range", "signed_range", "scaled_signed", "apply_range", "invert_range", "PAPER", "NNSEQ2SEQ"]

#: (lower_percentile, upper_percentile, upper_factor, b_min, b_max) presets
PAPER = dict(lower_percentile=None, upper_percentile=99.0, upper_factor=2.0, b_min=-1.0, b_max=1.0)
NNSEQ2SEQ = dict(lower_percentile=0.5, upper_percentile=99.5, upper_factor=1.25, b_min=0.0, b_max=1.0)


def percentile_range(x, lower_percentile=None, upper_percentile=99.0, upper_factor=2.0, nonzero=True, signed=False):
    """Return ``(lo, hi)``: ``lo`` = the lower percentile (0 when None), ``hi`` = factor x upper percentile;
    ``signed``: ``(-h, h)`` with ``h`` = factor x the upper percentile of ``|x|`` (the lower percentile unused).

    Percentiles are taken over non-zero voxels when ``nonzero`` (zero-filled background and
    padding do not count), over all voxels otherwise.
    """
    v = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    v = v.ravel()
    if nonzero:
        v = v[v != 0]
    if v.size == 0:
        return (-1.0, 1.0) if signed else (0.0, 1.0)
    if signed:
        h = upper_factor * float(np.percentile(np.abs(v), upper_percentile))
        return (-h, h) if h > 0 else (-1.0, 1.0)
    lo = 0.0 if lower_percentile is None else float(np.percentile(v, lower_percentile))
    hi = upper_factor * float(np.percentile(v, upper_percentile))
    if not hi > lo:
        hi = lo + 1.0
    return lo, hi


def signed_range(lo, hi) -> tuple[float, float]:
    """``(lo, hi)`` made symmetric about 0: ``(-h, h)``, ``h = max(|lo|, |hi|)`` (a signed map on
    an unsigned image's scale, e.g. a wash-in map on its pre-contrast frame's)."""
    h = max(abs(float(lo)), abs(float(hi)))
    return -h, h


def apply_range(x, lo, hi, b_min=-1.0, b_max=1.0):
    """Clip ``x`` to ``[lo, hi]`` and map linearly onto ``[b_min, b_max]``."""
    x = x.clamp(lo, hi) if isinstance(x, torch.Tensor) else np.clip(x, lo, hi)
    return (x - lo) / (hi - lo) * (b_max - b_min) + b_min


def invert_range(y, lo, hi, b_min=-1.0, b_max=1.0):
    """Inverse of :func:`apply_range` (exact inside the clipping range)."""
    return (y - b_min) / (b_max - b_min) * (hi - lo) + lo


class ScalePercentiled(MapTransform, InvertibleTransform):
    """Clip each image to a percentile range and map it to ``[b_min, b_max]``, per image.

    Args:
        keys: images to normalise, each with its own statistics...
        ref_keys: ...unless a reference key is given per key: the statistics of ``ref_keys[i]``
            are applied to ``keys[i]`` (the phantom's noiseless image is scaled with its noisy
            twin's range, so the two stay comparable). ``None`` entries mean "itself".
        lower_percentile: lower clip percentile; ``None`` clips at 0 (the Seq2Seq papers).
        upper_percentile, upper_factor: upper clip = factor x percentile.
        b_min, b_max: output range.
        nonzero: compute percentiles over non-zero voxels only.
        signed_keys: images whose range is symmetric about 0, ``(-h, h)``: difference maps such
            as ``dce_washout``. With its own statistics ``h`` comes from ``|x|``
            (:func:`percentile_range` ``signed``); with a reference key, ``h`` is the reference's
            upper bound. A key's ``_noiseless`` twin follows the key.

    The parameters used are kept (``<key>_scale`` = ``(lo, hi, b_min, b_max)``) and traced for
    :meth:`inverse`.
    """

    def __init__(
        self,
        keys: KeysCollection,
        ref_keys=None,
        lower_percentile: float | None = None,
        upper_percentile: float = 99.0,
        upper_factor: float = 2.0,
        b_min: float = -1.0,
        b_max: float = 1.0,
        nonzero: bool = True,
        allow_missing_keys: bool = True,
        signed_keys=(),
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        n = len(self.keys)
        self.ref_keys = [None] * n if ref_keys is None else list(ref_keys)
        if len(self.ref_keys) != n:
            raise ValueError(f"ref_keys has {len(self.ref_keys)} entries for {n} keys")
        self.lower_percentile, self.upper_percentile = lower_percentile, upper_percentile
        self.upper_factor, self.nonzero = upper_factor, nonzero
        self.b_min, self.b_max = float(b_min), float(b_max)
        self.signed_keys = {str(k) for k in ([signed_keys] if isinstance(signed_keys, str) else signed_keys or ())}

    def is_signed(self, key) -> bool:
        key = str(key)
        return key in self.signed_keys or (key.endswith("_noiseless") and key[: -len("_noiseless")] in self.signed_keys)

    def _range(self, x, key=None):
        return percentile_range(x, self.lower_percentile, self.upper_percentile, self.upper_factor, self.nonzero,
                                signed=self.is_signed(key))

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        ranges = {}
        for key, ref in self.key_iterator(d, self.ref_keys):
            src = key if ref is None else ref
            if src not in d:
                raise DataError(f"reference key {src!r} for {key!r} is missing from the case")
            if src not in ranges:
                ranges[src] = self._range(d[src], src)
        for key, ref in self.key_iterator(d, self.ref_keys):
            lo, hi = ranges[key if ref is None else ref]
            if self.is_signed(key):  # (unchanged when the range is already symmetric: its own, or a signed reference's)
                lo, hi = signed_range(lo, hi)
            x = d[key]
            d[key] = apply_range(x, lo, hi, self.b_min, self.b_max)
            d[f"{key}_scale"] = (lo, hi, self.b_min, self.b_max)
            if isinstance(d[key], MetaTensor):
                self.push_transform(d[key], extra_info={"lo": lo, "hi": hi, "b_min": self.b_min, "b_max": self.b_max})
        return d

    def inverse(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            info = self.pop_transform(d[key])["extra_info"]
            d[key] = invert_range(d[key], info["lo"], info["hi"], info["b_min"], info["b_max"])
        return d


def scaled_signed(preprocessing, key) -> bool:
    """Whether ``preprocessing`` (a transform or a ``Compose``) scales ``key`` as a signed map
    (a :class:`ScalePercentiled` with ``key`` among its ``signed_keys``): its synthesis is mapped
    back on a symmetric range."""
    transforms = getattr(preprocessing, "transforms", None) or [preprocessing]
    return any(isinstance(t, ScalePercentiled) and t.is_signed(key) for t in transforms)
