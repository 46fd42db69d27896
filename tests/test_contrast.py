"""Measures against the known answer: Rician mean, contrast ratios, the remap baseline, the oracle."""

from __future__ import annotations

import numpy as np
import pytest

from mrsynth.metrics import (affine_remap_baseline, contrast_ratios, pearson_r, psnr, rician_mean, rician_sigma,
                             synthesis_checks, tissue_means, tissue_oracle)


def test_rician_mean_matches_monte_carlo():
    rng = np.random.default_rng(0)
    sigma = 0.05
    a = np.array([0.0, 0.02, 0.05, 0.1, 0.3, 1.0])
    n = 400_000
    m = np.sqrt((a[:, None] + sigma * rng.standard_normal((6, n))) ** 2 + (sigma * rng.standard_normal((6, n))) ** 2)
    expected = rician_mean(a - 1.0, sigma) + 1.0  # [-1, 1] scale: -1 is zero signal
    np.testing.assert_allclose(expected, m.mean(1), rtol=2e-3, atol=2e-4)
    # zero signal is Rayleigh: sigma sqrt(pi / 2); strong signal tends to sqrt(A^2 + sigma^2)
    assert expected[0] == pytest.approx(sigma * np.sqrt(np.pi / 2), rel=1e-6)
    assert expected[-1] == pytest.approx(np.sqrt(1.0 + sigma**2), rel=1e-4)


def test_rician_mean_is_the_better_predictor_of_a_noisy_magnitude():
    """The noiseless image is not the best prediction of a Rician target; its expected magnitude is."""
    rng = np.random.default_rng(1)
    clean = np.zeros((64, 64, 8), np.float32)
    clean[16:48, 16:48] = 0.3
    sigma = 0.03
    noisy = np.sqrt((clean + sigma * rng.standard_normal(clean.shape)) ** 2 + (sigma * rng.standard_normal(clean.shape)) ** 2)
    to_scale = lambda x: x * 2 - 1  # noqa: E731  (0..1 -> [-1, 1])
    c, y = to_scale(clean), to_scale(noisy)
    s = rician_sigma(y, c)
    assert s == pytest.approx(2 * sigma, rel=0.05)  # on the [-1, 1] scale the noise doubles too
    assert psnr(rician_mean(c, s), y) > psnr(c, y) + 1.0


def test_tissue_means_and_ratios_on_a_known_image():
    tissue = np.zeros((10, 10, 10), np.int16)
    tissue[:5] = 3  # wm
    tissue[5:8] = 1  # csf
    tissue[8:] = 2  # gm
    truth = np.where(tissue == 3, -0.6, np.where(tissue == 1, 0.2, -0.4)).astype(np.float32)  # signal 0.4, 1.2, 0.6
    m = tissue_means(truth, tissue)
    assert m == pytest.approx({"csf": 1.2, "gm": 0.6, "wm": 0.4})
    # a "T2" that still shows T1 contrast: CSF darker than WM
    t1_like = np.where(tissue == 3, -0.2, np.where(tissue == 1, -0.8, -0.4)).astype(np.float32)
    r = contrast_ratios(t1_like, truth, tissue)
    assert r["csf/wm"]["true"] == pytest.approx(3.0)
    assert r["csf/wm"]["pred"] == pytest.approx(0.25)
    assert not r["csf/wm"]["same_side"]
    assert contrast_ratios(truth, truth, tissue)["gm/wm"]["error"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="shape"):
        tissue_means(truth[:5], tissue)


def test_affine_baseline_inverts_contrast_but_cannot_reorder_tissues():
    """a*x+b can invert a monotone contrast exactly, but not one that reorders tissues."""
    rng = np.random.default_rng(2)
    tissue = rng.integers(1, 4, size=(24, 24, 12))
    src_levels = {1: 0.1, 2: 0.5, 3: 0.7}  # T1-like: CSF < GM < WM
    inv_levels = {1: 0.9, 2: 0.5, 3: 0.3}  # exactly inverted
    mixed_levels = {1: 0.9, 2: 0.2, 3: 0.6}  # reordered: no affine map of the source gives it
    img = lambda lv: np.vectorize(lv.get)(tissue).astype(np.float32) * 2 - 1  # noqa: E731
    src = img(src_levels) + 0.05 * rng.standard_normal(tissue.shape).astype(np.float32)
    mask = np.ones(tissue.shape, bool)
    pred, info = affine_remap_baseline(src, img(inv_levels), mask)
    assert info["a"][0] < 0
    assert pearson_r(pred, img(inv_levels)) > 0.95
    pred2, _ = affine_remap_baseline(src, img(mixed_levels), mask)
    assert pearson_r(pred2, img(mixed_levels)) < 0.6
    # several sources: a linear fit of both reproduces the reordered target
    pred3, info3 = affine_remap_baseline([src, img(inv_levels) * 0 + (tissue == 2)], img(mixed_levels), mask)
    assert len(info3["a"]) == 2 and pearson_r(pred3, img(mixed_levels)) > 0.95
    with pytest.raises(ValueError, match="empty mask"):
        affine_remap_baseline(src, src, np.zeros_like(mask))


def test_tissue_oracle_paints_fractions_with_the_target_means():
    rng = np.random.default_rng(3)
    f = rng.dirichlet([1, 1, 1], size=(12, 12, 6)).transpose(3, 0, 1, 2).astype(np.float32)
    mu = np.array([0.8, -0.2, -0.6])
    target = np.tensordot(mu, f, axes=1) + 0.01 * rng.standard_normal(f.shape[1:])
    mask = np.ones(f.shape[1:], bool)
    mask[0] = False
    orc = tissue_oracle(f, target, mask)
    assert pearson_r(orc, target, mask) > 0.99
    assert np.all(orc[0] == -1.0)  # background outside the mask


def test_synthesis_checks():
    good = {"r_brain": 0.93, "oracle_r_brain": 0.97, "psnr_clean_brain": 30.0, "affine_psnr_clean_brain": 25.0,
            "affine_r_brain": 0.6, "csf_wm": 2.3, "csf_wm_true": 2.5, "gm_wm": 1.4, "gm_wm_true": 1.45}
    assert synthesis_checks(good)["all"]
    wrong_side = dict(good, csf_wm=0.8)
    c = synthesis_checks(wrong_side)
    assert not c["ratios"] and c["failed_ratios"] == ["csf"] and not c["all"]
    far = dict(good, gm_wm=1.9)  # right side, 31 % off
    assert synthesis_checks(far)["failed_ratios"] == ["gm"]
    capped = dict(good, r_brain=0.86, oracle_r_brain=0.9)  # physics caps r: within 0.05 of the oracle passes
    assert synthesis_checks(capped)["r"]
    assert not synthesis_checks(dict(good, r_brain=0.84, oracle_r_brain=0.9))["r"]
    denoiser = dict(good, affine_r_brain=0.95)
    assert not synthesis_checks(denoiser)["beats_affine"]


def test_population_oracle_is_leave_one_out_and_never_above_the_tissue_oracle():
    """TissueStats.r equals Pearson r of the painted fractions computed directly; the evaluation's
    population oracle paints each case with the *other* cases' mean contrast of the same target,
    so a case whose contrast differs from the rest scores below its own tissue oracle, and never
    above it (least squares maximises r over every linear painting)."""
    from mrsynth.workflows.evaluation import TissueStats, VolumeEvaluation

    rng = np.random.default_rng(3)
    shape = (10, 12, 8)
    means = {"a": [1.0, 0.2, -0.6], "b": [1.1, 0.1, -0.7], "c": [0.9, 0.25, -0.5], "odd": [-0.5, 0.9, 0.1]}
    ev = VolumeEvaluation.__new__(VolumeEvaluation)
    ev._tissue_stats = {}
    truths = {}
    for case, mu in means.items():
        frac = rng.dirichlet([1, 1, 1], size=shape).transpose(3, 0, 1, 2)
        mask = rng.random(shape) < 0.8
        y = np.tensordot(np.asarray(mu), frac, axes=1) + rng.normal(0, 0.05, shape)
        st = TissueStats(frac, y, mask)
        m = rng.normal(size=3)
        assert st.r(m) == pytest.approx(pearson_r(np.tensordot(m, frac, axes=1), y, mask), abs=1e-9)
        ev._tissue_stats[(case, "t2")] = st
        truths[case] = pearson_r(tissue_oracle(frac, y, mask), y, mask)
    rows = [{"case": c, "target": "t2"} for c in means] + [{"case": "a", "target": "flair"}]
    ev.population_oracle(rows)
    pop = {r["case"]: r["population_oracle_r_brain"] for r in rows[:4]}
    assert "population_oracle_r_brain" not in rows[4]  # no tissue statistics for that target
    assert all(pop[c] <= truths[c] + 1e-9 for c in means)
    st = ev._tissue_stats
    others = np.mean([st[(c, "t2")].means for c in ("b", "c", "odd")], axis=0)  # leave "a" out
    assert pop["a"] == pytest.approx(st[("a", "t2")].r(others), abs=1e-12)
    assert pop["a"] > truths["a"] - 0.2 > 0.7  # most of the others share its contrast
    assert pop["odd"] < truths["odd"] - 0.3  # its own contrast is not the population's
