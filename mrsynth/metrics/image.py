"""Image-quality metrics of the papers: PSNR, SSIM, per-slice evaluation and the noise-floor limit.

Conventions (Seq2Seq, TSF-Seq2Seq and VQ-Seq2Seq papers):

* images are on the ``[-1, 1]`` scale, so ``data_range = 2``;
* PSNR and SSIM are computed on the whole crop (background included); the
  *foreground-masked PSNR* restricts the mean squared error to a boolean mask;
* SSIM is :func:`skimage.metrics.structural_similarity` with a 7-voxel uniform window,
  computed per axial slice (2D) and averaged over slices (``axis=-1``);
* the papers' tables **sum** per-slice values over the slices of a volume: use
  :func:`per_slice` and take ``.sum()`` (or ``.mean()``) of what it returns.

Inputs may be numpy arrays or torch tensors (moved to the CPU and converted to float64).
Leading size-1 (batch / channel) dimensions are dropped where slices are taken, so a MONAI
``(1, H, W, D)`` channel-first volume can be passed as it is.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
from skimage.metrics import structural_similarity

from ..errors import DataError

__all__ = ["psnr", "ssim", "ssim_map", "per_slice", "noise_floor_psnr", "normalize_like_paper", "to_numpy"]


def to_numpy(x, dtype=np.float64) -> np.ndarray:
    """Return ``x`` (numpy array, torch tensor or nested sequence) as a numpy array of ``dtype``.

    Torch tensors are detached and copied to the CPU first. Shape is unchanged.
    """
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor without importing torch
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _drop_leading_singletons(x: np.ndarray, min_ndim: int = 2) -> np.ndarray:
    """Drop leading size-1 dimensions while more than ``min_ndim`` dimensions remain.

    ``(1, 1, H, W, D) -> (H, W, D)``; ``(1, H, W) -> (H, W)``; ``(H, W, 1)`` is unchanged.
    """
    while x.ndim > min_ndim and x.shape[0] == 1:
        x = x[0]
    return x


def _pair(pred, target) -> tuple[np.ndarray, np.ndarray]:
    """Both images as float64 arrays of one shape; :class:`DataError` when the shapes differ."""
    p, t = to_numpy(pred), to_numpy(target)
    if p.shape != t.shape:
        raise DataError(f"prediction shape {p.shape} differs from target shape {t.shape}")
    return p, t


def _mask_like(mask, shape) -> np.ndarray:
    """``mask`` as a boolean array broadcast to ``shape`` (non-zero means inside)."""
    m = to_numpy(mask, dtype=bool)
    try:
        return np.broadcast_to(m, shape)
    except ValueError:
        m = _drop_leading_singletons(m, min_ndim=1)
        try:
            return np.broadcast_to(m, shape)
        except ValueError:
            raise DataError(f"mask shape {tuple(np.shape(mask))} does not fit image shape {tuple(shape)}") from None


def psnr(pred, target, data_range: float = 2.0, mask=None) -> float:
    """Peak signal-to-noise ratio in dB: ``10 * log10(data_range**2 / MSE)``.

    Args:
        pred: predicted image, any shape ``S`` (numpy array or torch tensor), ``[-1, 1]`` scale.
        target: reference image of shape ``S``.
        data_range: the peak-to-peak range of the scale; 2 for ``[-1, 1]`` (the papers).
        mask: optional boolean array broadcastable to ``S``. When given, the MSE is taken over
            the voxels inside the mask only: the *foreground-masked PSNR*.

    Returns:
        PSNR as a Python float; ``+inf`` when the images are identical (inside the mask).

    Raises:
        DataError: shapes differ, the mask does not fit, or the mask selects no voxel.
    """
    if not data_range > 0:
        raise ValueError(f"data_range must be positive, got {data_range}")
    p, t = _pair(pred, target)
    sq = (p - t) ** 2
    if mask is not None:
        m = _mask_like(mask, p.shape)
        if not m.any():
            raise DataError("PSNR mask selects no voxel")
        sq = sq[m]
    if sq.size == 0:
        raise DataError("PSNR of an empty image")
    mse = float(sq.mean())
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(data_range**2 / mse)


def noise_floor_psnr(noiseless, noisy, data_range: float = 2.0, mask=None) -> float:
    """The noise-floor limit: PSNR of the phantom's noiseless image against the noisy target.

    A model is scored against the *noisy* acquired target; predicting the noiseless anatomy leaves
    exactly the acquisition noise as error. It is *not* the highest PSNR a model can reach: a
    magnitude image's noise is Rician, biased upwards where the signal is low (the background), and
    the expected magnitude (:func:`mrsynth.metrics.rician_mean`) predicts the noisy target better;
    the evaluations report that limit beside this one (``limit_rician_psnr``). It is the same
    formula as :func:`psnr` (``noiseless`` plays ``pred``).

    Args:
        noiseless: noiseless image, shape ``S``, on the same ``[-1, 1]`` scale as ``noisy``
            (see :func:`normalize_like_paper` with ``ref=noisy_raw``).
        noisy: the noisy target, shape ``S``.
        data_range: 2 for ``[-1, 1]``.
        mask: optional boolean foreground mask broadcastable to ``S``.

    Returns:
        The limit in dB (``+inf`` only for a noise-free target).
    """
    return psnr(noiseless, noisy, data_range=data_range, mask=mask)


def ssim(pred, target, data_range: float = 2.0, win_size: int = 7, axis: int | None = None, mask=None) -> float:
    """Structural similarity, the papers' definition (skimage, uniform window, ``data_range`` 2).

    Args:
        pred: predicted image, shape ``(H, W)`` or ``(H, W, D)`` (leading size-1 dims dropped).
        target: reference image of the same shape.
        data_range: 2 for ``[-1, 1]``.
        win_size: side of the uniform window (odd); every SSIM dimension must be at least this.
        axis: ``None`` computes n-D SSIM over the whole array; an integer (``-1`` = the last,
            axial, axis in the BraTS RAS layout) computes 2D SSIM on every slice along that axis
            and returns their mean, as the papers do. Ignored for 2D inputs.
        mask: optional boolean array broadcastable to the image: the SSIM map (computed as
            above, on the whole image or slice by slice) is averaged over the voxels inside the
            mask only, e.g. a tumour region.

    Returns:
        SSIM as a Python float (1.0 for identical images).

    Raises:
        DataError: shapes differ, an image side is below ``win_size``, or the mask does not fit
            or selects no voxel.
    """
    p, t = _pair(pred, target)
    p, t = _drop_leading_singletons(p), _drop_leading_singletons(t)
    if mask is not None:
        return _masked_ssim(p, t, _mask_like(mask, p.shape), data_range, win_size, axis)
    if axis is None or p.ndim <= 2:
        if min(p.shape) < win_size:
            raise DataError(f"SSIM needs every image side >= win_size {win_size}; got shape {p.shape}")
        return float(structural_similarity(p, t, data_range=data_range, win_size=win_size))
    return float(np.mean(per_slice(ssim, p, t, axis=axis, data_range=data_range, win_size=win_size)))


def ssim_map(pred, target, data_range: float = 2.0, win_size: int = 7, axis: int | None = -1) -> np.ndarray:
    """The local SSIM map behind :func:`ssim` (same definition), shape of the (squeezed) images:
    n-D over the whole array with ``axis=None``, else 2D slice by slice along ``axis``. Average it
    over any region (e.g. a tumour label) to score that region; computing it once serves every
    region of a pair.

    Raises:
        DataError: shapes differ or an image side is below ``win_size``.
    """
    p, t = _pair(pred, target)
    p, t = _drop_leading_singletons(p), _drop_leading_singletons(t)
    sides = p.shape if axis is None or p.ndim <= 2 else np.delete(p.shape, axis)
    if min(sides) < win_size:
        raise DataError(f"SSIM needs every image side >= win_size {win_size}; got shape {p.shape}")
    kw = dict(data_range=data_range, win_size=win_size, full=True)
    if axis is None or p.ndim <= 2:
        return structural_similarity(p, t, **kw)[1]
    pairs = zip(np.moveaxis(p, axis, 0), np.moveaxis(t, axis, 0))
    return np.moveaxis(np.stack([structural_similarity(a, b, **kw)[1] for a, b in pairs]), 0, axis)


def _masked_ssim(p, t, m, data_range, win_size, axis) -> float:
    if not m.any():
        raise DataError("SSIM mask selects no voxel")
    return float(ssim_map(p, t, data_range, win_size, axis)[m].mean())


def per_slice(metric_fn: Callable[..., float], pred, target, axis: int = -1, **kw) -> np.ndarray:
    """Apply ``metric_fn(pred_slice, target_slice, **kw)`` to every 2D slice along ``axis``.

    Args:
        metric_fn: a metric taking two 2D arrays, e.g. :func:`psnr` or :func:`ssim`.
        pred: volume of shape ``(H, W, D)`` (leading size-1 dims dropped). A 2D image is one slice.
        target: volume of the same shape.
        axis: the slicing axis (``-1``: axial slices of a RAS volume).
        **kw: passed to ``metric_fn``. A ``mask`` keyword with the volume's shape is sliced
            along with the images; slices whose mask is empty get ``NaN`` (use ``np.nanmean`` /
            ``np.nansum``).

    Returns:
        Float array of shape ``(n_slices,)``. The papers' tables report ``values.sum()``.
    """
    p, t = _pair(pred, target)
    p, t = _drop_leading_singletons(p), _drop_leading_singletons(t)
    mask = kw.pop("mask", None)
    if mask is not None:
        mask = _mask_like(mask, p.shape)
    if p.ndim == 2:
        ps, ts, ms = p[None], t[None], None if mask is None else mask[None]
    elif p.ndim == 3:
        ps, ts = np.moveaxis(p, axis, 0), np.moveaxis(t, axis, 0)
        ms = None if mask is None else np.moveaxis(mask, axis, 0)
    else:
        raise DataError(f"per-slice metrics need a 2D image or a 3D volume, got shape {p.shape}")
    out = np.empty(ps.shape[0], dtype=np.float64)
    for k in range(ps.shape[0]):
        if ms is None:
            out[k] = metric_fn(ps[k], ts[k], **kw)
        elif not ms[k].any():
            out[k] = np.nan
        else:
            out[k] = metric_fn(ps[k], ts[k], mask=ms[k], **kw)
    return out


def normalize_like_paper(x, ref=None) -> np.ndarray:
    """Map a raw intensity image to ``[-1, 1]`` the way the Seq2Seq papers do.

    ``p99`` is the 99th percentile of the non-zero voxels of ``ref`` (default: of ``x``); the
    result is ``clip(x, 0, 2 * p99) / p99 - 1``. Pass the noisy acquired image as ``ref`` when
    normalising the phantom's noiseless image, so both share one scale.

    Args:
        x: raw image, any shape ``S``.
        ref: image whose percentile sets the scale; default ``x``.

    Returns:
        float array of shape ``S`` (float32 for float32 input, else float64) in ``[-1, 1]``.

    Raises:
        DataError: ``ref`` has no positive non-zero voxel.
    """
    single = str(getattr(x, "dtype", "")).endswith("float32")  # numpy or torch float32
    xa = to_numpy(x, dtype=np.float32 if single else np.float64)
    r = xa if ref is None else to_numpy(ref)
    nz = r[r != 0]
    if nz.size == 0:
        raise DataError("cannot normalise: the reference image has no non-zero voxel")
    p99 = float(np.percentile(nz, 99))
    if not p99 > 0:
        raise DataError(f"cannot normalise: 99th percentile of non-zero voxels is {p99} (must be > 0)")
    return (np.clip(xa, 0.0, 2.0 * p99) / p99 - 1.0).astype(xa.dtype, copy=False)
