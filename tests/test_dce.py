"""The phantom's DCE series (#15 item 1): extended Tofts curves against their closed form and a
direct integral, the simulated series against the signal equation, the derived maps, the files."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from scipy import integrate

from mrsynth.data.dce import (DCE_DEFAULTS, DCE_PARAMETERS, POPULATION_AIF, dce_maps, frame_times, population_aif,
                              spgr_signal, tissue_curves, tofts_closed_form, tofts_concentration)
from mrsynth.data.phantom import GD_RELAXIVITY, TISSUE_PARAMETERS, simulate_subject, write_dataset


def test_population_aif_starts_at_the_bolus():
    t = np.array([0.0, 0.49, 0.5, 1.5])
    cp = population_aif(t, t0=0.5)
    assert cp[0] == cp[1] == 0.0
    assert cp[2] == pytest.approx(POPULATION_AIF["D"] * sum(POPULATION_AIF["a"]))
    assert cp[3] == pytest.approx(0.1 * (3.99 * np.exp(-0.144) + 4.78 * np.exp(-0.0111)))


@pytest.mark.parametrize("tissue", sorted(DCE_PARAMETERS))
def test_numerical_tofts_equals_the_closed_form(tissue):
    p = DCE_PARAMETERS[tissue]
    t = np.linspace(0, 8, 97)
    num = tofts_concentration(t, p["Ktrans"], p["ve"], p["vp"], t0=0.25)
    exact = tofts_closed_form(t, p["Ktrans"], p["ve"], p["vp"], t0=0.25)
    np.testing.assert_allclose(num, exact, atol=1e-7, rtol=0)


def test_closed_form_equals_a_direct_integral():
    """The closed form against scipy's quadrature of the model's definition (it can fail: a wrong
    sign or rate in either shows here)."""
    ktrans, ve, vp, t0 = 0.3, 0.2, 0.04, 0.4
    kep = ktrans / ve
    for t in (0.3, 0.5, 1.0, 2.7, 6.0):
        integral, _ = integrate.quad(lambda s: population_aif(s, t0) * np.exp(-kep * (t - s)), t0, max(t, t0))
        direct = vp * population_aif(t, t0) + ktrans * (integral if t > t0 else 0.0)
        assert tofts_closed_form(t, ktrans, ve, vp, t0) == pytest.approx(direct, rel=1e-9, abs=1e-12)
    # kep equal to an input rate: the limit form
    m = POPULATION_AIF["m"][0]
    near = tofts_closed_form(2.0, m * 0.2 * (1 + 1e-7), 0.2, 0.0)
    assert tofts_closed_form(2.0, m * 0.2, 0.2, 0.0) == pytest.approx(near, rel=1e-5)


def test_tissue_curves_have_the_promised_shapes():
    params = {k: v[3.0] for k, v in TISSUE_PARAMETERS.items()}
    t, conc, sig = tissue_curves(params, GD_RELAXIVITY[3.0])
    assert t.size == DCE_DEFAULTS["baseline"] + DCE_DEFAULTS["frames"]
    assert all(c[0] == 0 for c in conc.values())  # pre-contrast frame
    enh = sig["enhancing"]
    peak = int(enh.argmax())
    assert 1 <= peak <= 4 and t[peak] <= 2.0  # the tumour rim peaks within 2 minutes...
    assert enh[-1] < 0.97 * enh[peak]  # ...and washes out
    for k in ("necrosis", "oedema"):  # slow leak: persistent enhancement
        assert np.all(np.diff(sig[k]) > 0), k
    assert np.all(conc["csf"] == 0)
    # intact barrier: blood volume only, the concentration is vp times the input
    _, t0 = frame_times(DCE_DEFAULTS["frames"], DCE_DEFAULTS["interval_s"], DCE_DEFAULTS["baseline"])
    np.testing.assert_allclose(conc["wm"], DCE_PARAMETERS["wm"]["vp"] * population_aif(t, t0))
    # the signal is the SPGR equation at the shortened T1
    r1 = GD_RELAXIVITY[3.0] / 1000
    p = params["enhancing"]
    expected = spgr_signal(p["PD"], 1 / (1 / p["T1"] + r1 * conc["enhancing"]), p["T2"], 5.0, 2.0, 15.0)
    np.testing.assert_allclose(enh, expected, rtol=1e-12)


def test_dce_maps_of_a_known_series():
    t, _ = frame_times(6, 30.0, 1)  # 0, 0.5, ..., 3 min
    s0, up, down = 100.0, 40.0, -8.0
    curve = np.where(t <= 1.0, s0 + up * t, s0 + up + down * (t - 1.0)).astype(np.float32)
    series = np.broadcast_to(curve, (2, 3, 2, t.size)).copy()
    washin, washout, early = dce_maps(series, t, baseline=1, early_minutes=1.0)
    assert t[early] == 1.0
    np.testing.assert_allclose(washin, up, rtol=1e-5)
    np.testing.assert_allclose(washout, down, rtol=1e-5)
    with pytest.raises(ValueError, match="series"):
        dce_maps(series[..., :2], t[:2])


def test_simulated_series_follows_the_signal_equation():
    plain = simulate_subject(5, spacing=4.0, n_tumours=1)
    sub = simulate_subject(5, spacing=4.0, n_tumours=1, dce=True)
    for k in plain.images:  # nothing else changes
        np.testing.assert_array_equal(plain.images[k], sub.images[k])
    series, clean = sub.images["dce"], sub.noiseless["dce"]
    frames = DCE_DEFAULTS["baseline"] + DCE_DEFAULTS["frames"]
    assert series.shape == (*plain.images["t1"].shape, frames) and clean.shape == series.shape
    assert sub.images["dce_washin"].shape == plain.images["t1"].shape
    assert sub.sidecars["dce"]["frame_times_s"] == [30.0 * i for i in range(frames)]
    assert sub.sidecars["dce"]["bolus_arrival_s"] == 15.0
    # in voxels of one compartment, bias, scaling and texture cancel in S(t) / S(0): the model's curve
    params = sub.info["tissue_parameters"]
    _, _, sig = tissue_curves(params, GD_RELAXIVITY[sub.info["field_strength"]])
    checked = 0
    for k, frac in sub.fractions.items():
        pure = frac > 0.999
        if pure.sum() < 3:
            continue
        ratio = clean[pure] / clean[pure][:, :1]
        np.testing.assert_allclose(ratio, np.broadcast_to(sig[k] / sig[k][0], ratio.shape), rtol=1e-4, err_msg=k)
        checked += 1
    assert checked >= 2
    # noise: one sigma for all frames, Rician around the noiseless series
    assert 0.5 < np.std(series - clean) / sub.noise_sigma["dce"] < 1.5
    with pytest.raises(ValueError, match="unknown dce settings"):
        simulate_subject(5, spacing=4.0, dce={"frame": 3})


def test_write_dataset_writes_a_4d_series_with_its_timing(tmp_path):
    write_dataset(tmp_path, subjects=1, spacing=6.0, seed=2, progress=False, sequences=("t1", "t2"),
                  dce={"frames": 4, "interval_s": 20.0})
    case = tmp_path / "PHANTOM_0000"
    img = nib.load(str(case / "PHANTOM_0000_dce.nii.gz"))
    t1 = nib.load(str(case / "PHANTOM_0000_t1.nii.gz"))
    assert img.shape == (*t1.shape, 5)
    assert img.header.get_zooms()[3] == pytest.approx(20.0) and img.header.get_xyzt_units() == ("mm", "sec")
    np.testing.assert_allclose(img.affine, t1.affine)
    side = json.loads((case / "PHANTOM_0000_dce.json").read_text())
    assert side["frame_times_s"] == [0.0, 20.0, 40.0, 60.0, 80.0] and side["modality"] == "DCE"
    for name in ("dce_noiseless", "dce_washin", "dce_washin_noiseless", "dce_washout"):
        assert (case / f"PHANTOM_0000_{name}.nii.gz").is_file(), name
    assert json.loads((case / "PHANTOM_0000_dce_washin.json").read_text())["derived_from"] == "dce"
    assert json.loads((tmp_path / "phantom.json").read_text())["dce"] == {"frames": 4, "interval_s": 20.0}
    with pytest.raises(ValueError, match="brats layout only"):
        write_dataset(tmp_path / "nn", subjects=1, layout="nnseq2seq", dce=True, progress=False)
