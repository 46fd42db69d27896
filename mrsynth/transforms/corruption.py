"""Graded MR corruptions, to measure how robust a synthesis model is to a degraded source.

:func:`corrupt` applies one of :data:`CORRUPTIONS` at a strength of :data:`STRENGTHS` (0 is the
identity, 1 to 3 increasingly strong) to a normalised volume ``(H, W, D)`` on the ``[-1, 1]``
scale (background -1). Every corruption works on the *offset* image ``x + 1`` (background 0), so
that multiplicative and k-space corruptions behave as they do on magnitude images, and the
result is shifted back by -1. Intensities are not re-normalised afterwards.

The levels (:data:`CORRUPTION_LEVELS`, strengths 1, 2, 3), with ``ref`` the 99th percentile of
the foreground of ``x + 1`` (:func:`reference_level`):

============  =================================================================  ==================
kind          what (MONAI transform)                                             levels
============  =================================================================  ==================
``noise``     Rician noise, ``sigma = level * ref``                              0.03, 0.06, 0.12
              (:class:`~monai.transforms.RandRicianNoise`)
``bias``      multiplicative field ``exp(sum_i c_i P_i)``, Legendre degree 3,    0.1, 0.2, 0.4
              ``c_i ~ U(-level, level)`` (:class:`~monai.transforms.RandBiasField`),
              scaled to geometric mean 1 over the foreground
``ghosting``  motion ghosts every ``H / 4`` along the phase-encoding axis         0.05, 0.1, 0.2
              (first axis), each of amplitude ``level`` times the image
              (:class:`RandMotionGhosting`)
``spike``     one k-space spike per axial slice: a herringbone of amplitude      0.03, 0.06, 0.12
              ``level * ref`` (:class:`~monai.transforms.KSpaceSpikeNoise`)
``gibbs``     in-plane k-space truncation (ringing), ``alpha = level``           0.5, 0.7, 0.85
              (:class:`~monai.transforms.GibbsNoise`)
============  =================================================================  ==================

Random draws (noise, bias coefficients, ghost phase, spike location) come from ``seed`` alone and
are the same for every strength: with one seed, strength 3 is strength 1's corruption made
stronger, so scores fall monotonically with strength. The k-space corruptions return the
magnitude of the reconstruction, as a scanner does. On the 4 mm phantom, strengths 1, 2, 3 put the
corrupted volume at about 36-41, 30-35 and 22-30 dB PSNR from the input (``tests/test_corruption.py``
checks the order). Gibbs truncation is also a low-pass filter: at strength 1 it can bring a noisy
image *closer* to its noiseless twin.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from monai.transforms import GibbsNoise, KSpaceSpikeNoise, RandBiasField, RandomizableTransform, RandRicianNoise
from monai.utils import convert_to_numpy

__all__ = ["CORRUPTIONS", "STRENGTHS", "CORRUPTION_LEVELS", "RandMotionGhosting", "corrupt", "corruption_levels",
           "reference_level"]

#: the corruption kinds of :func:`corrupt`
CORRUPTIONS = ("noise", "bias", "ghosting", "spike", "gibbs")
#: the strengths of :func:`corrupt` (0: none)
STRENGTHS = (0, 1, 2, 3)
#: per kind, the parameter of strengths 1, 2 and 3 (see the module docstring for its meaning)
CORRUPTION_LEVELS = {
    "noise": (0.03, 0.06, 0.12),
    "bias": (0.1, 0.2, 0.4),
    "ghosting": (0.05, 0.1, 0.2),
    "spike": (0.03, 0.06, 0.12),
    "gibbs": (0.5, 0.7, 0.85),
}
_DESCRIPTIONS = {
    "noise": "Rician noise, sigma {:.0%} of the foreground's 99th percentile",
    "bias": "bias field exp(Legendre degree 3), coefficients in +-{:g}",
    "ghosting": "motion ghosts every H/4, amplitude {:.0%}",
    "spike": "k-space spike, herringbone amplitude {:.0%} of the foreground's 99th percentile",
    "gibbs": "k-space truncation (Gibbs ringing), alpha {:g}",
}
#: ghosts of :func:`corrupt`: every ``GHOST_PERIOD``-th phase-encoding line is modulated
GHOST_PERIOD = 4


def reference_level(x: np.ndarray, threshold: float = 0.1) -> float:
    """The 99th percentile of the foreground of an offset image ``x`` (background 0): the voxels
    above ``threshold`` times its maximum; 1.0 for an empty image. Noise and spike amplitudes are
    fractions of it, so that they do not depend on the intensity scale."""
    peak = float(x.max()) if x.size else 0.0
    if not peak > 0:
        return 1.0
    return float(np.percentile(x[x > threshold * peak], 99))


class RandMotionGhosting(RandomizableTransform):
    """Motion ghosting of a magnitude image, made in k-space.

    Periodic motion (breathing, pulsation) modulates the k-space lines along the phase-encoding
    axis; a modulation of every ``period``-th line makes ghost copies of the image shifted by
    ``N / period`` (``N`` the size along that axis). Here the lines ``j`` with
    ``j % period == offset`` are multiplied by ``1 + period * intensity * exp(i * phase)``, which
    adds ``period - 1`` ghosts (and a faint copy in place) of amplitude ``intensity`` times the
    image; the result is the magnitude of the inverse FFT. ``offset`` and ``phase`` are drawn at
    :meth:`randomize` (uniform), so the ghosts' interference pattern depends on the random state.

    Args:
        prob: probability of applying the transform.
        intensity: amplitude of every ghost relative to the image (0: none).
        period: every ``period``-th line is modulated; ghosts are ``N / period`` apart.
        axis: the phase-encoding axis among the spatial axes (0: ``H``); the FFT is 2D over the
            first two spatial axes, for every channel and every slice of the others.

    Shapes: ``img`` ``(C, H, W)`` or ``(C, H, W, D)`` (numpy or torch), background 0 -> float32
    numpy array of the same shape, non-negative.
    """

    def __init__(self, prob: float = 0.1, intensity: float = 0.1, period: int = 4, axis: int = 0) -> None:
        RandomizableTransform.__init__(self, prob)
        if period < 2:
            raise ValueError(f"period must be >= 2, got {period}")
        if axis not in (0, 1):
            raise ValueError(f"axis must be 0 or 1 (the in-plane axes), got {axis}")
        self.intensity, self.period, self.axis = float(intensity), int(period), int(axis)
        self._offset, self._phase = 0, 0.0

    def randomize(self, data=None) -> None:
        super().randomize(None)
        if self._do_transform:
            self._offset = int(self.R.randint(self.period))
            self._phase = float(self.R.uniform(0.0, 2.0 * math.pi))

    def __call__(self, img, randomize: bool = True) -> np.ndarray:
        x = convert_to_numpy(img, dtype=np.float32)
        if x.ndim < 3:
            raise ValueError(f"RandMotionGhosting expects a channel-first image (C, H, W[, D]), got {x.shape}")
        if randomize:
            self.randomize()
        if not self._do_transform:
            return x
        ax = 1 + self.axis
        k = np.fft.fft2(x, axes=(1, 2))
        lines = (np.arange(x.shape[ax]) % self.period) == self._offset
        shape = [1] * x.ndim
        shape[ax] = x.shape[ax]
        gain = np.where(lines, 1.0 + self.period * self.intensity * np.exp(1j * self._phase), 1.0).reshape(shape)
        return np.abs(np.fft.ifft2(k * gain, axes=(1, 2))).astype(np.float32)


def _check(volume, kind: str, strength: int) -> np.ndarray:
    if kind not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {kind!r}; valid kinds: {', '.join(CORRUPTIONS)}")
    if isinstance(strength, bool) or not isinstance(strength, (int, np.integer)) or int(strength) not in STRENGTHS:
        raise ValueError(f"corruption strength must be one of {STRENGTHS}, got {strength!r}")
    x = convert_to_numpy(volume.detach() if isinstance(volume, torch.Tensor) else volume, dtype=np.float32)
    if x.ndim != 3:
        raise ValueError(f"corrupt expects a volume (H, W, D), got shape {tuple(x.shape)}")
    if not np.isfinite(x).all():
        raise ValueError(f"corrupt: the volume has {int((~np.isfinite(x)).sum())} NaN/Inf voxel(s)")
    return x


def _spike_location(shape: tuple[int, int], rng: np.random.RandomState) -> tuple[int, int]:
    """A k-space location (centred indices) between 1/8 and 3/8 of the half-size from the centre
    on both in-plane axes, sign random: a herringbone of a few to a dozen stripes per field of
    view, away from the contrast-carrying centre."""
    loc = []
    for n in shape:
        half = n // 2
        lo, hi = max(1, n // 8), max(2, (3 * n) // 8)
        off = int(rng.randint(lo, hi)) * (1 if rng.rand() < 0.5 else -1)
        loc.append(int(np.clip(half + off, 0, n - 1)))
    return loc[0], loc[1]


def corrupt(volume, kind: str, strength: int, seed: int = 0) -> np.ndarray:
    """Corrupt a normalised MR volume with ``kind`` at ``strength``.

    Args:
        volume: ``(H, W, D)`` numpy array or torch tensor on the ``[-1, 1]`` scale (background -1).
        kind: one of :data:`CORRUPTIONS`: ``"noise"``, ``"bias"``, ``"ghosting"``, ``"spike"``,
            ``"gibbs"``.
        strength: one of :data:`STRENGTHS`; 0 returns a float32 copy of the input, 1 to 3 use
            the levels of :data:`CORRUPTION_LEVELS` (module docstring).
        seed: the random state of the random kinds (all but ``"gibbs"``); the same seed gives the
            same output, and the same draws at every strength.

    Returns:
        float32 numpy array ``(H, W, D)``, the corrupted volume on the input's scale (not
        re-normalised; minimum -1 for the k-space kinds, which are magnitude images).

    Raises:
        ValueError: an unknown ``kind``, a ``strength`` outside :data:`STRENGTHS`, a volume that is
        not 3D or has NaN/Inf voxels.
    """
    x = _check(volume, kind, strength)
    if int(strength) == 0:
        return x.copy()
    level = CORRUPTION_LEVELS[kind][int(strength) - 1]
    img = x[None] + 1.0  # (1, H, W, D), background 0
    if kind == "noise":
        t = RandRicianNoise(prob=1.0, std=level * reference_level(img), relative=False, sample_std=False)
        out = t.set_random_state(seed=seed)(img)
    elif kind == "bias":
        t = RandBiasField(degree=3, coeff_range=(-level, level), prob=1.0)
        out = convert_to_numpy(t.set_random_state(seed=seed)(img), dtype=np.float32)
        # a bias field changes contrast across the image, not the overall brightness (which the
        # normalisation would undo): scale the field to geometric mean 1 over the foreground
        fg = img > 0.1 * img.max()
        if fg.any():
            out = out / np.exp(np.mean(np.log(out[fg] / img[fg])))
    elif kind == "ghosting":
        t = RandMotionGhosting(prob=1.0, intensity=level, period=GHOST_PERIOD, axis=0)
        out = t.set_random_state(seed=seed)(img)
    elif kind == "spike":
        h, w, _ = x.shape
        loc = _spike_location((h, w), np.random.RandomState(seed))
        # a spike of magnitude A adds a stripe pattern of amplitude A / (H * W) (unnormalised FFT)
        k_intensity = math.log(level * reference_level(img) * h * w)
        slices = np.moveaxis(img[0], -1, 0)  # (D, H, W): every axial slice a channel, 2D FFT each
        out = np.abs(convert_to_numpy(KSpaceSpikeNoise(loc=loc, k_intensity=k_intensity)(slices)))
        out = np.moveaxis(out, 0, -1)[None]
    else:  # gibbs, in-plane: every axial slice truncated in 2D
        slices = np.moveaxis(img[0], -1, 0)
        out = np.abs(convert_to_numpy(GibbsNoise(alpha=level)(slices)))
        out = np.moveaxis(out, 0, -1)[None]
    return (convert_to_numpy(out, dtype=np.float32)[0] - 1.0).astype(np.float32)


def corruption_levels(kind: str) -> list[str]:
    """Human-readable descriptions of strengths 0 to 3 of ``kind`` (for tables)."""
    if kind not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {kind!r}; valid kinds: {', '.join(CORRUPTIONS)}")
    return ["none"] + [_DESCRIPTIONS[kind].format(v) for v in CORRUPTION_LEVELS[kind]]
