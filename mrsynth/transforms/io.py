"""Loading a case's sequences with errors that name the file."""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import LoadImage, MapTransform, ResampleToMatch

from ..errors import DataError
from ..sequences import LABEL_KEYS


def unreadable_reason(path, exc: BaseException) -> str:
    """A one-line reason why ``path`` could not be loaded. MONAI's ``LoadImage`` error holds the
    traceback of every reader it tried; for NIfTI the reason is what nibabel says about the file
    (``File ... is not a gzip file``), otherwise the first line of the error."""
    p = str(path)
    if not os.path.exists(p):
        return "file not found"
    if p.lower().endswith((".nii", ".nii.gz")):
        try:
            import nibabel as nib

            np.asarray(nib.load(p).dataobj)
        except Exception as e:  # the reader's own words
            return f"{type(e).__name__}: {' '.join(str(e).split())}"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}"

__all__ = ["LoadSequencesd", "LABEL_KEYS", "check_finite", "check_one_volume"]


def check_finite(img, key, path) -> None:
    """Raise :class:`DataError` naming ``path`` when ``img`` has NaN or Inf voxels."""
    if not torch.isfinite(torch.as_tensor(img)).all():
        n = int((~torch.isfinite(torch.as_tensor(img))).sum())
        raise DataError(f"{n} NaN/Inf voxel(s) in {key!r}; clean the image or drop this sequence", path)


def check_one_volume(img, key, path, series: bool = False) -> None:
    """Raise :class:`DataError` naming ``path`` unless ``img`` is one channel-first 3D volume
    ``(1, X, Y, Z)`` that is not constant (a 4D series, a 2D image or an empty export).
    ``series``: ``(F, X, Y, Z)`` frames are allowed (a dynamic series)."""
    if img.ndim != 4 or (img.shape[0] != 1 and not series):
        shape = tuple(img.shape[1:]) + ((img.shape[0],) if img.ndim == 4 else ())
        raise DataError(f"{key!r} is {'4D' if img.ndim == 4 else f'{img.ndim - 1}D'} (shape {shape}) where one "
                        "3D volume is expected; extract the volume to use (e.g. the first) into its own file", path)
    lo, hi = float(img.min()), float(img.max())
    if lo == hi:
        raise DataError(f"{key!r} is constant (every voxel {lo:g}): an empty or failed export, not an image", path)


class LoadSequencesd(MapTransform):
    """Load every present key with MONAI's :class:`~monai.transforms.LoadImage` (channel first),
    then check what MONAI does not: finite voxels and one grid for the whole case.

    Missing keys are allowed by default (a case holds only the sequences it has).

    A sequence (any key but the label-like ``seg``, ``tissue`` and ``fractions``) must be one 3D
    volume: a 4D file (several volumes) and a constant image (all zeros from a failed export, or
    one value everywhere) are refused, since neither can be translated and both would silently
    pass as a source.

    Args:
        keys: the sequence keys (and e.g. ``seg`` or ``<seq>_noiseless``) to load.
        allow_missing_keys: keep going when a key is absent (default True).
        check_finite: fail on NaN/Inf voxels.
        check_geometry: fail when the loaded images differ in spatial shape or affine.
        check_volume: fail on a sequence that is not a single 3D volume or is constant.
        series: keys that may be dynamic series (a 4D file, e.g. a DCE series): loaded as
            ``(F, X, Y, Z)`` (frames first; a 3D file gives one frame), refused only when constant.
        resample_to: a key (e.g. ``"t1"``) or ``"first"``: images on other grids (voxel size,
            orientation, field of view) are resampled onto that image's grid (the first loaded
            one where the case lacks it) with MONAI's ``ResampleToMatch``, trilinear (nearest for
            label maps), instead of the grid check's error. ``None`` (default) keeps the check.
        dtype: voxel type of the loaded tensors.

    Raises:
        DataError: naming the file, for an unreadable file, NaN/Inf voxels, a 4D or constant
        sequence (``check_volume``), or a geometry that differs from the case's first loaded key.
    """

    def __init__(
        self,
        keys: KeysCollection,
        allow_missing_keys: bool = True,
        check_finite: bool = True,
        check_geometry: bool = True,
        dtype=np.float32,
        atol: float = 1e-3,
        check_volume: bool = True,
        resample_to: str | None = None,
        series=(),
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.series = {str(k) for k in ([series] if isinstance(series, str) else series or ())}
        self.check_volume = check_volume
        self.resample_to = None if resample_to in (None, "", "none") else str(resample_to).lower()
        self.loader = LoadImage(reader="NibabelReader", image_only=True, ensure_channel_first=True, dtype=dtype)
        self.check_finite = check_finite
        self.check_geometry = check_geometry
        self.atol = atol

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        ref_key = None
        for key in self.key_iterator(d):
            path = d[key]
            if isinstance(path, (torch.Tensor, np.ndarray)):  # already loaded
                continue
            try:
                img = self.loader(path)
            except Exception as e:
                raise DataError(f"cannot read image for {key!r} ({unreadable_reason(path, e)})", path) from e
            if self.check_finite:
                check_finite(img, key, path)
            if self.check_volume and str(key) not in LABEL_KEYS:
                check_one_volume(img, key, path, series=str(key) in self.series)
            if self.check_geometry and self.resample_to is None:
                if ref_key is None:
                    ref_key = key
                else:
                    self._check_same_grid(d[ref_key], img, ref_key, key, path)
            d[key] = img
        if self.resample_to is not None:
            self._resample(d)
        return d

    def _resample(self, d: dict) -> None:
        loaded = [k for k in self.key_iterator(d) if isinstance(d[k], MetaTensor)]
        if not loaded:
            return
        ref_key = self.resample_to if self.resample_to in loaded else loaded[0]
        ref = d[ref_key]
        for key in loaded:
            img = d[key]
            if key == ref_key or (tuple(img.shape[1:]) == tuple(ref.shape[1:])
                                  and np.allclose(np.asarray(img.affine), np.asarray(ref.affine), atol=self.atol)):
                continue
            mode = "nearest" if str(key) in LABEL_KEYS else "bilinear"
            out = ResampleToMatch(mode=mode, padding_mode="zeros")(img, ref)
            out.meta["filename_or_obj"] = img.meta.get("filename_or_obj")
            d[key] = out

    def _check_same_grid(self, ref: MetaTensor, img: MetaTensor, ref_key, key, path) -> None:
        if tuple(ref.shape[1:]) != tuple(img.shape[1:]):
            raise DataError(
                f"{key!r} has spatial shape {tuple(img.shape[1:])}, {ref_key!r} has {tuple(ref.shape[1:])} "
                f"(--resample_to {ref_key} resamples the case onto one grid)", path
            )
        a, b = np.asarray(ref.affine), np.asarray(img.affine)
        if not np.allclose(a, b, atol=self.atol):
            raise DataError(f"{key!r} affine differs from {ref_key!r} (max difference {np.abs(a - b).max():.4g}; "
                            f"--resample_to {ref_key} resamples the case onto one grid)", path)
