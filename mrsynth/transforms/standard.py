"""Transforms of MONAI's standard inference path (the ``dataset`` / ``preprocessing`` /
``inferer`` / ``postprocessing`` / ``evaluator`` ids of every ``inference.json``): one source image
under the key ``image`` in, the synthesized sequence under ``pred`` out.

This is the path that MONAI's :func:`~monai.bundle.create_workflow` (``workflow_type="infer"``),
MONAI Deploy's ``MonaiBundleInferenceOperator`` and MONAI Label's ``BundleInferTask`` drive: they
load one image, run ``preprocessing``, call ``inferer(image, network)`` and run ``postprocessing``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from ..errors import DataError
from .intensity import invert_range
from .io import check_finite, check_one_volume

__all__ = ["CheckVolumed", "PlaceInSlotd", "AsSynthesisd"]


class CheckVolumed(MapTransform):
    """Refuse what a synthesis cannot use, with the file named (``DataError``): NaN/Inf voxels, a 4D
    series or a 2D image where one channel-first 3D volume is expected, a constant image. The
    checks of :class:`~mrsynth.transforms.LoadSequencesd`, for images loaded by MONAI's
    ``LoadImaged`` + ``EnsureChannelFirstd`` (or handed over in memory, as the serving tools do)."""

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            path = _filename(img)
            check_finite(img, key, path)
            check_one_volume(img, key, path)
        return d


class PlaceInSlotd(MapTransform):
    """Put a one-channel image into channel ``slot`` of ``num_slots`` channels filled with ``fill``:
    ``(1, *spatial)`` -> ``(num_slots, *spatial)``. A many-to-one network (TSF-Seq2Seq) takes one
    channel per sequence of the bundle, zeros where a sequence is absent; this places the one
    source of the standard path in its sequence's channel (the availability mask is the inferer's
    ``conditions``). The image's metadata (affine, file name) is kept."""

    def __init__(self, keys: KeysCollection, slot: int, num_slots: int, fill: float = 0.0,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if not 0 <= int(slot) < int(num_slots):
            raise ValueError(f"slot must be in [0, {num_slots}), got {slot}")
        self.slot, self.num_slots, self.fill = int(slot), int(num_slots), float(fill)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            x = d[key]
            if x.shape[0] != 1:
                raise DataError(f"{key!r}: expected one channel to place in slot {self.slot}, got shape {tuple(x.shape)}",
                                _filename(x))
            out = torch.full((self.num_slots, *x.shape[1:]), self.fill, dtype=x.dtype, device=x.device)
            out[self.slot] = x[0]
            if isinstance(x, MetaTensor):
                out = MetaTensor(out, meta=dict(x.meta), applied_operations=list(x.applied_operations))
            d[key] = out
        return d


def _filename(x):
    return x.meta.get("filename_or_obj") if isinstance(x, MetaTensor) else None


class AsSynthesisd(MapTransform):
    """The network's output as an image of the source: mapped back to the source's intensity scale
    (the inverse of its :class:`~mrsynth.transforms.ScalePercentiled`, read from
    ``<source_key>_scale``) and carrying the source's metadata (affine, file name), so that MONAI's
    ``SaveImaged`` writes it on the source's grid.

    Args:
        keys: the prediction(s), ``(1, *spatial)`` each.
        source_key: the preprocessed source image (``image``).
    """

    def __init__(self, keys: KeysCollection = "pred", source_key: str = "image", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.source_key = source_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        scale = d.get(f"{self.source_key}_scale")
        if scale is None:
            raise DataError(f"no {self.source_key}_scale in the data: the source was not scaled by ScalePercentiled")
        lo, hi, b_min, b_max = (float(torch.as_tensor(v).reshape(-1)[0]) for v in scale)
        src = d.get(self.source_key)
        for key in self.key_iterator(d):
            pred = torch.as_tensor(d[key]).float()
            if pred.ndim == (src.ndim if src is not None else pred.ndim) + 1:
                pred = pred[0]  # a batch of one
            out = invert_range(pred, lo, hi, b_min, b_max)
            meta = dict(src.meta) if isinstance(src, MetaTensor) else {}
            d[key] = MetaTensor(out.detach(), meta=meta)
        return d
