"""Does a synthesis show the *target's* contrast? Measures that a denoiser cannot pass.

Whole-volume PSNR against a noisy target rewards smoothing and an intensity shift: a blurred
copy of the source can score well while showing the source's contrast (dark CSF in a "T2").
These measures look at what the image shows, tissue by tissue, against the phantom's known
answer (its noiseless image and tissue map):

- :func:`pearson_r`: correlation with the truth inside the brain;
- :func:`tissue_means` / :func:`contrast_ratios`: the mean of each tissue class, as ratios to
  white matter (CSF/WM, GM/WM, lesion/WM), in the synthesis beside the truth. Ratios are taken
  on the signal scale (``[-1, 1]`` images are shifted by +1, so that 0 is no signal);
- :func:`affine_remap_baseline`: the strongest prediction a model that only denoises and
  rescales could make: the source, Gaussian-smoothed with the best width, then mapped by the
  best affine ``a * source + b`` fitted on the target itself (inside the head). A negative ``a``
  inverts contrast, so it is a far stronger baseline than copying the source;
- :func:`tissue_oracle`: each voxel's tissue mixture painted with the target's tissue means
  (least-squares fit on the truth): what knowing the tissues, and nothing of the bias field or
  texture, can reach. It bounds the correlation the phantom's physics allows;
- :func:`rician_mean` / :func:`rician_sigma`: the expected magnitude of a noisy Rician target
  given its noiseless signal, the prediction that defines the noise-floor limit (the noiseless
  image itself is *not* the best predictor of a noisy magnitude image).

Tissue codes of the phantom's ``_tissue`` map are :data:`TISSUE_CLASSES`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage, special

from .image import to_numpy

__all__ = [
    "TISSUE_CLASSES",
    "LESION_CLASSES",
    "RATIOS",
    "pearson_r",
    "tissue_means",
    "contrast_ratios",
    "affine_remap_baseline",
    "tissue_oracle",
    "fit_tissue_means",
    "tissue_contrast",
    "rician_mean",
    "rician_sigma",
    "synthesis_checks",
    "worst_ratio",
]

#: code -> name of the phantom's tissue map (``<case>_tissue.nii.gz``); 0 is background
TISSUE_CLASSES: dict[int, str] = {1: "csf", 2: "gm", 3: "wm", 4: "necrotic", 5: "enhancing", 6: "oedema"}
LESION_CLASSES = ("necrotic", "enhancing", "oedema")
#: the contrast ratios reported, each a tissue class over white matter
RATIOS: tuple[str, ...] = ("csf", "gm", "necrotic", "enhancing", "oedema")


def pearson_r(pred, target, mask=None) -> float:
    """Pearson correlation of ``pred`` and ``target`` over ``mask`` (all voxels when ``None``);
    NaN when either is constant there."""
    p, t = to_numpy(pred), to_numpy(target)
    if mask is not None:
        m = np.asarray(mask, bool)
        p, t = p[m], t[m]
    p, t = p.ravel() - p.mean(), t.ravel() - t.mean()
    den = np.sqrt((p * p).sum() * (t * t).sum())
    return float((p * t).sum() / den) if den > 0 else float("nan")


def tissue_means(image, tissue, classes: Mapping[int, str] = TISSUE_CLASSES, offset: float = 1.0,
                 min_voxels: int = 10) -> dict[str, float]:
    """Mean signal of every tissue class present with at least ``min_voxels`` voxels.

    Args:
        image: the image, ``[-1, 1]`` scale by default (``offset`` 1 makes 0 "no signal").
        tissue: integer tissue map of the same shape (codes of ``classes``).
        offset: added to the image before averaging.
    """
    img, tis = to_numpy(image), np.asarray(tissue)
    if img.shape != tis.shape:
        raise ValueError(f"image shape {img.shape} and tissue map shape {tis.shape} differ")
    out = {}
    for code, name in classes.items():
        m = tis == code
        if m.sum() >= min_voxels:
            out[name] = float(img[m].mean() + offset)
    return out


def contrast_ratios(pred, target, tissue, classes: Mapping[int, str] = TISSUE_CLASSES,
                    ratios: Sequence[str] = RATIOS, offset: float = 1.0) -> dict[str, dict[str, float]]:
    """Tissue / white-matter contrast ratios of ``pred`` beside those of ``target``.

    Returns:
        ``{"csf/wm": {"pred": r_p, "true": r_t, "error": r_p / r_t - 1, "same_side": bool}, ...}``
        for every class of ``ratios`` present in ``tissue``; ``same_side`` is whether both
        ratios lie on the same side of 1 (brighter, or darker, than white matter).
    """
    mp = tissue_means(pred, tissue, classes, offset)
    mt = tissue_means(target, tissue, classes, offset)
    out = {}
    if "wm" not in mt or "wm" not in mp or mt["wm"] <= 0 or mp["wm"] <= 0:
        return out
    for name in ratios:
        if name in mt and name in mp:
            rp, rt = mp[name] / mp["wm"], mt[name] / mt["wm"]
            out[f"{name}/wm"] = {"pred": rp, "true": rt, "error": rp / rt - 1.0,
                                 "same_side": _same_side(rp, rt)}
    return out


def _same_side(pred_ratio: float, true_ratio: float) -> bool:
    """Both ratios brighter, or both darker, than white matter."""
    return (pred_ratio - 1.0) * (true_ratio - 1.0) > 0


def worst_ratio(pair: Mapping, ratios: Sequence[str] = RATIOS) -> tuple[str, float] | None:
    """``(class, synthesis / truth - 1)`` of the contrast ratio furthest from the truth among the
    ``<c>_wm`` / ``<c>_wm_true`` entries of ``pair`` (``None`` when there are none)."""
    errs = {c: pair[f"{c}_wm"] / pair[f"{c}_wm_true"] - 1.0 for c in ratios
            if pair.get(f"{c}_wm") is not None and pair.get(f"{c}_wm_true")}
    if not errs:
        return None
    c = max(errs, key=lambda k: abs(errs[k]))
    return c, errs[c]


def _fit_linear(xs: list[np.ndarray], y: np.ndarray) -> tuple[np.ndarray, float]:
    """Least squares ``y ~ sum_i a_i x_i + b``; returns ``(a, b)``."""
    design = np.stack(xs + [np.ones_like(y)], axis=1)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    return coef[:-1], float(coef[-1])


def affine_remap_baseline(source, target, mask, sigmas: Sequence[float] = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0),
                          background: float = -1.0) -> tuple[np.ndarray, dict]:
    """The source's best affine intensity map after its best Gaussian denoising.

    For each smoothing width (voxels, 3D Gaussian), ``a * smooth(source) + b`` is fitted by least
    squares to ``target`` inside ``mask``; the width with the smallest squared error there wins.
    Outside ``mask`` the prediction is ``background``. The fit uses the target, so this is an
    upper bound for any model that denoises and rescales the source without changing its contrast
    (a negative ``a`` even inverts it).

    Args:
        source: one image, or a list of images (several sources: ``sum_i a_i smooth(s_i) + b``,
            the baseline of a many-to-one synthesis).
        target: the image fitted, same shape.
        mask: where to fit and predict.

    Returns:
        ``(prediction, {"sigma": s, "a": [a_i], "b": b})``, the prediction clipped to ``[-1, 1]``.
    """
    srcs = [to_numpy(x, np.float32) for x in (source if isinstance(source, (list, tuple)) else [source])]
    tgt = to_numpy(target, np.float32)
    m = np.asarray(mask, bool)
    if not m.any():
        raise ValueError("affine_remap_baseline: empty mask")
    if any(x.shape != tgt.shape for x in srcs) or m.shape != tgt.shape:
        raise ValueError(f"affine_remap_baseline: shapes differ ({[x.shape for x in srcs]}, {tgt.shape}, {m.shape})")
    y = tgt[m].astype(np.float64)
    best = None
    for s in sigmas:
        sm = [ndimage.gaussian_filter(x, s) if s > 0 else x for x in srcs]
        xs = [x[m].astype(np.float64) for x in sm]
        a, b = _fit_linear(xs, y)
        err = float(((sum(ai * xi for ai, xi in zip(a, xs)) + b - y) ** 2).mean())
        if best is None or err < best[0]:
            best = (err, s, a, b, sm)
    _, s, a, b, sm = best
    pred = np.full_like(tgt, background)
    pred[m] = sum(ai * x[m] for ai, x in zip(a, sm)) + b
    return np.clip(pred, -1.0, 1.0), {"sigma": float(s), "a": [float(v) for v in a], "b": b}


def fit_tissue_means(fractions, target, mask) -> np.ndarray:
    """The least-squares solution of ``target ~ sum_k f_k * mu_k + offset`` inside ``mask``:
    ``(K + 1,)``, the K tissue means then the offset (the signal of no tissue).

    Args:
        fractions: ``(K, *spatial)`` partial-volume fractions of the K tissue compartments.
        target: the (noiseless) target image.
        mask: where to fit.
    """
    f = to_numpy(fractions, np.float64)
    tgt = to_numpy(target, np.float64)
    m = np.asarray(mask, bool)
    if f.shape[1:] != tgt.shape:
        raise ValueError(f"fractions shape {f.shape} does not match target shape {tgt.shape}")
    design = np.concatenate([f[:, m].T, np.ones((int(m.sum()), 1))], axis=1)
    coef, *_ = np.linalg.lstsq(design, tgt[m], rcond=None)
    return coef


def tissue_contrast(fractions, target, mask) -> np.ndarray:
    """The target's fitted tissue means (:func:`fit_tissue_means`, offset dropped), z-scored over
    the tissues: its contrast, free of the volume's intensity scale and offset."""
    mu = fit_tissue_means(fractions, target, mask)[:-1]
    return (mu - mu.mean()) / max(float(mu.std()), 1e-12)


def tissue_oracle(fractions, target, mask, background: float = -1.0) -> np.ndarray:
    """Each voxel's tissue mixture painted with the target's tissue means.

    Args:
        fractions: ``(K, *spatial)`` partial-volume fractions of the K tissue compartments.
        target: the (noiseless) target image, ``[-1, 1]`` scale.
        mask: where to fit and predict (the head); ``background`` elsewhere.

    The means are the least-squares solution of ``target ~ offset + sum_k f_k * mu_k`` inside
    ``mask`` (:func:`fit_tissue_means`; the offset is the signal of no tissue), so partial-volume
    voxels are painted with their mixture. Bias field and texture are unknown to the oracle.
    """
    coef = fit_tissue_means(fractions, target, mask)
    f = to_numpy(fractions, np.float64)
    m = np.asarray(mask, bool)
    pred = np.full(f.shape[1:], background, dtype=np.float32)
    pred[m] = f[:, m].T @ coef[:-1] + coef[-1]
    return np.clip(pred, -1.0, 1.0)


def rician_sigma(noisy, noiseless, offset: float = 1.0) -> float:
    """The Gaussian noise level of a Rician magnitude image from its noiseless twin:
    ``E[M^2] = A^2 + 2 sigma^2`` at every voxel, so ``sigma^2 = mean(M^2 - A^2) / 2``.

    Both images on one linear scale; ``offset`` is added first (1 for the ``[-1, 1]`` scale,
    where -1 is zero signal)."""
    m, a = to_numpy(noisy) + offset, to_numpy(noiseless) + offset
    return float(np.sqrt(max(np.mean(m * m - a * a) / 2.0, 0.0)))


def rician_mean(noiseless, sigma: float, offset: float = 1.0) -> np.ndarray:
    """Expected magnitude ``E[M]`` of a Rician variable with signal ``A`` and noise ``sigma``:
    ``sigma sqrt(pi/2) L_1/2(-A^2 / 2 sigma^2)`` (Laguerre polynomial, written with exponentially
    scaled Bessel functions so that it does not overflow). On the ``[-1, 1]`` scale (``offset``
    1) the result is returned on the same scale."""
    a = to_numpy(noiseless) + offset
    if sigma <= 0:
        return a - offset
    nu = a * a / (4.0 * sigma * sigma)  # the Bessel argument, A^2 / (4 sigma^2)
    lag = (1.0 + 2.0 * nu) * special.ive(0, nu) + 2.0 * nu * special.ive(1, nu)
    return sigma * np.sqrt(np.pi / 2.0) * lag - offset


def synthesis_checks(pair: Mapping[str, float | None], r_min: float = 0.9, oracle_margin: float = 0.05,
                     ratio_tolerance: float = 0.15, ratios: Sequence[str] = RATIOS) -> dict:
    """The bars a synthesis must clear for one (source, target) pair, from its mean scores.

    ``pair`` holds (as the evaluations' summaries do) ``r_brain``, ``oracle_r_brain``,
    ``psnr_clean_brain``, ``affine_psnr_clean_brain``, ``affine_r_brain`` and, per tissue class
    ``c``, ``<c>_wm`` (synthesis) and ``<c>_wm_true``. Missing entries are skipped.

    Returns:
        ``{"r": bool, "ratios": bool, "beats_affine": bool, "all": bool, "failed_ratios": [...]}``:
        ``r``: correlation at least ``r_min``, or within ``oracle_margin`` of the tissue oracle
        where the phantom's physics caps it lower; ``ratios``: every contrast ratio on the same
        side of 1 as the truth's and within ``ratio_tolerance`` of it; ``beats_affine``: higher
        PSNR against the noiseless target in the brain *and* higher correlation than the
        denoise-and-remap baseline.
    """
    def get(k):
        v = pair.get(k)
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)

    out: dict = {}
    r, oracle = get("r_brain"), get("oracle_r_brain")
    if r is not None:
        bar = r_min if oracle is None else min(r_min, oracle - oracle_margin)
        out["r"] = r >= bar
    failed = []
    for c in ratios:
        p, t = get(f"{c}_wm"), get(f"{c}_wm_true")
        if p is None or t is None:
            continue
        if not (_same_side(p, t) and abs(p / t - 1.0) <= ratio_tolerance):
            failed.append(c)
    out["ratios"] = not failed
    out["failed_ratios"] = failed
    pc, pa, ra = get("psnr_clean_brain"), get("affine_psnr_clean_brain"), get("affine_r_brain")
    if pc is not None and pa is not None and r is not None and ra is not None:
        out["beats_affine"] = pc > pa and r > ra
    out["all"] = all(v for k, v in out.items() if k in ("r", "ratios", "beats_affine"))
    return out
