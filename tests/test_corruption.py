"""The graded corruption set: identity at strength 0, monotone damage, determinism, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from mrsynth.metrics import psnr
from mrsynth.transforms import (CORRUPTION_LEVELS, CORRUPTIONS, STRENGTHS, RandMotionGhosting, corrupt,
                                corruption_levels)

RANDOM_KINDS = ("noise", "bias", "ghosting", "spike")


def head(shape=(32, 32, 8)) -> np.ndarray:
    """A smooth head: an ellipsoid (0.2) around a brighter core (0.8) on a -1 background."""
    g = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    outer = (g[0] / 0.8) ** 2 + (g[1] / 0.7) ** 2 + (g[2] / 1.2) ** 2 < 1
    inner = (g[0] / 0.5) ** 2 + (g[1] / 0.4) ** 2 + (g[2] / 1.0) ** 2 < 1
    v = np.where(inner, 0.8, np.where(outer, 0.2, -1.0))
    return gaussian_filter(v, 0.7).astype(np.float32)


@pytest.fixture(scope="module")
def vol():
    return head()


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_strength_zero_is_identity_copy(vol, kind):
    out = corrupt(vol, kind, 0, seed=3)
    np.testing.assert_array_equal(out, vol)
    assert out is not vol
    out[0, 0, 0] = 5.0
    assert vol[0, 0, 0] != 5.0


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_damage_grows_with_strength(vol, kind):
    scores = [psnr(corrupt(vol, kind, s, seed=1), vol, data_range=2) for s in (1, 2, 3)]
    assert scores[0] > scores[1] > scores[2], scores
    assert scores[2] < 35, scores  # strength 3 is a visible corruption


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_shape_dtype_and_torch_input(vol, kind):
    out = corrupt(torch.from_numpy(vol.astype(np.float64)), kind, 2, seed=0)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == vol.shape
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, corrupt(vol, kind, 2, seed=0), atol=1e-5)


@pytest.mark.parametrize("kind", RANDOM_KINDS)
def test_seeded(vol, kind):
    a, b, c = (corrupt(vol, kind, 2, seed=s) for s in (4, 4, 5))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3


def test_gibbs_is_deterministic(vol):
    np.testing.assert_array_equal(corrupt(vol, "gibbs", 2, seed=0), corrupt(vol, "gibbs", 2, seed=9))


def test_ghosting_puts_energy_outside_the_head(vol):
    background = vol < -0.99
    means = [corrupt(vol, "ghosting", s, seed=0)[background].mean() for s in (0, 1, 3)]
    assert means[0] < means[1] < means[2], means
    assert means[2] > -0.98


def test_k_space_kinds_are_magnitude_images(vol):
    for kind in ("ghosting", "spike", "gibbs"):
        assert corrupt(vol, kind, 3).min() >= -1.0 - 1e-6


def test_motion_ghosting_shift():
    """A single bright line becomes ghosts ``H / period`` apart, of amplitude ``intensity``."""
    img = np.zeros((1, 16, 8), np.float32)
    img[0, 2, :] = 1.0
    t = RandMotionGhosting(prob=1.0, intensity=0.1, period=4).set_random_state(seed=0)
    out = t(img)[0, :, 0]
    np.testing.assert_allclose(out[[6, 10, 14]], 0.1, atol=1e-5)
    assert np.abs(np.delete(out, [2, 6, 10, 14])).max() < 1e-5


def test_levels_described():
    for kind in CORRUPTIONS:
        levels = corruption_levels(kind)
        assert len(levels) == len(STRENGTHS) == len(CORRUPTION_LEVELS[kind]) + 1 and levels[0] == "none"
    with pytest.raises(ValueError, match="noise"):
        corruption_levels("blur")


def test_invalid_arguments(vol):
    with pytest.raises(ValueError, match="ghosting"):
        corrupt(vol, "blur", 1)
    for bad in (4, -1, 1.5, True):
        with pytest.raises(ValueError, match=r"\(0, 1, 2, 3\)"):
            corrupt(vol, "noise", bad)
    nan = vol.copy()
    nan[1, 1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        corrupt(nan, "noise", 1)
    with pytest.raises(ValueError, match="H, W, D"):
        corrupt(vol[None], "noise", 1)
