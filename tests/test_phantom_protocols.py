"""Phantom images under arbitrary protocols (spin echo, spoiled gradient echo, inversion
recovery): validation, modality names, random draws, the physics of the images, determinism
(named sequences untouched), and the files written by ``write_dataset`` and ``tools/phantom.py``.

Physics checks run on a 3 mm subject (the coarsest grid that still has voxels of nearly pure CSF
and GM); the rest on 6-8 mm grids."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from bundle_utils import REPO, env
from mrsynth.data import list_cases
from mrsynth.data.phantom import (
    PROTOCOL_KINDS,
    PROTOCOL_MODALITIES,
    PROTOCOL_PRESETS,
    TISSUE_PARAMETERS,
    TISSUES,
    _csf_null_ti,
    _signal,
    check_protocol,
    modality_of,
    nominal_signals,
    preset_image_name,
    protocol_signal,
    random_protocol,
    simulate_subject,
    subject_field_strength,
    subject_seed,
    write_dataset,
)

SEED = 0  # 1.5 T, one tumour when forced
SIDECAR_FIELDS = (
    "age", "sex", "field_strength", "vendor", "scanner", "modality", "sequence", "acquisition",
    "voxel_size", "TR", "TE", "TI", "FA", "snr", "contrast_agent",
)  # fmt: skip
PURE = 0.95


@pytest.fixture(scope="module")
def named_t2():
    """The subject's drawn t2 protocol (protocol draws do not depend on the grid)."""
    sc = simulate_subject(SEED, spacing=8.0, sequences=("t2",), n_tumours=1).sidecars["t2"]
    return {"kind": "se", "TR": sc["TR"], "TE": sc["TE"], "TI": None, "FA": 90.0}


@pytest.fixture(scope="module")
def subject(named_t2):
    """A 3 mm subject with one tumour: t1, t2 and every preset, plus the t2 protocol again and a
    post-contrast spoiled gradient echo."""
    protocols = {preset_image_name(k): p for k, p in PROTOCOL_PRESETS.items()}
    protocols["t2_again"] = named_t2
    protocols["spgr_fa30_gd"] = {**PROTOCOL_PRESETS["spgr_fa30"], "contrast_agent": True}
    return simulate_subject(SEED, spacing=3.0, sequences=("t1", "t2"), n_tumours=1, protocols=protocols)


def _means(subj, name, tissues=("csf", "gm", "wm")):
    img = subj.noiseless[name]
    return {t: float(img[subj.fractions[t] >= PURE].mean()) for t in tissues}


# ---------------------------------------------------------------------------------------------
# check_protocol, modality_of, presets
# ---------------------------------------------------------------------------------------------
def test_check_protocol_normalises():
    p = check_protocol({"kind": "SE", "TR": 500, "TE": 10, "extra": "ignored"})
    assert p == {"kind": "se", "TR": 500.0, "TE": 10.0, "TI": None, "FA": 90.0, "contrast_agent": False}
    assert all(isinstance(p[k], float) for k in ("TR", "TE", "FA"))
    ir = check_protocol({"kind": "ir", "TR": 9000, "TE": 100, "TI": 2500, "FA": 90, "contrast_agent": True})
    assert ir["TI"] == 2500.0 and ir["contrast_agent"] is True
    assert check_protocol(ir) == ir  # idempotent
    assert check_protocol({"kind": "spgr", "TR": 15, "TE": 4, "FA": 180})["FA"] == 180.0


@pytest.mark.parametrize(
    "protocol, key",
    [
        ({"kind": "fse", "TR": 500, "TE": 10}, "kind"),
        ({"TR": 500, "TE": 10}, "kind"),
        ({"kind": "se", "TR": -1, "TE": 10}, "TR"),
        ({"kind": "se", "TE": 10}, "TR"),
        ({"kind": "se", "TR": 500, "TE": 0}, "TE"),
        ({"kind": "se", "TR": 500, "TE": 600}, "TE"),
        ({"kind": "se", "TR": 500, "TE": 10, "TI": 300}, "TI"),
        ({"kind": "spgr", "TR": 15, "TE": 4, "TI": 5, "FA": 10}, "TI"),
        ({"kind": "ir", "TR": 9000, "TE": 100}, "TI"),
        ({"kind": "ir", "TR": 9000, "TE": 100, "TI": 9500}, "TI"),
        ({"kind": "ir", "TR": 9000, "TE": 100, "TI": 0}, "TI"),
        ({"kind": "spgr", "TR": 15, "TE": 4}, "FA"),
        ({"kind": "spgr", "TR": 15, "TE": 4, "FA": 0}, "FA"),
        ({"kind": "spgr", "TR": 15, "TE": 4, "FA": 181}, "FA"),
        ({"kind": "se", "TR": 500, "TE": 10, "FA": 30}, "FA"),
        ({"kind": "ir", "TR": 9000, "TE": 100, "TI": 2500, "FA": 120}, "FA"),
        ({"kind": "se", "TR": "500", "TE": 10}, "TR"),
        ({"kind": "se", "TR": math.nan, "TE": 10}, "TR"),
        ({"kind": "se", "TR": 500, "TE": 10, "contrast_agent": "yes"}, "contrast_agent"),
    ],
)
def test_check_protocol_errors_name_the_key(protocol, key):
    with pytest.raises(ValueError, match=f"'{key}'"):
        check_protocol(protocol)


@pytest.mark.parametrize(
    "protocol, modality",
    [
        ({"kind": "se", "TR": 500, "TE": 10}, "T1w"),
        ({"kind": "se", "TR": 500, "TE": 10, "contrast_agent": True}, "T1Gd"),
        ({"kind": "se", "TR": 500, "TE": 120}, "mixed"),  # T2 decay undoes the T1 weighting
        ({"kind": "se", "TR": 1500, "TE": 20}, "mixed"),
        ({"kind": "se", "TR": 4000, "TE": 100}, "T2w"),
        ({"kind": "se", "TR": 4000, "TE": 20}, "PDw"),
        ({"kind": "se", "TR": 4000, "TE": 50}, "mixed"),
        ({"kind": "ir", "TR": 9000, "TE": 100, "TI": 2500}, "FLAIR"),
        ({"kind": "ir", "TR": 2000, "TE": 10, "TI": 800}, "T1w"),
        ({"kind": "ir", "TR": 2000, "TE": 10, "TI": 800, "contrast_agent": True}, "T1Gd"),
        ({"kind": "spgr", "TR": 15, "TE": 4, "FA": 30}, "T1w"),
        ({"kind": "spgr", "TR": 15, "TE": 4, "FA": 30, "contrast_agent": True}, "T1Gd"),
        ({"kind": "spgr", "TR": 15, "TE": 4, "FA": 5}, "PDw"),
    ],
)
def test_modality_of(protocol, modality):
    assert modality_of(protocol) == modality
    assert modality in PROTOCOL_MODALITIES


def test_presets():
    expected = {
        "t1_se": ("se", 500, 10, "T1w"),
        "pd_se": ("se", 3000, 12, "PDw"),
        "t2_se_te60": ("se", 4000, 60, "T2w"),
        "t2_se_te120": ("se", 4000, 120, "T2w"),
        "flair": ("ir", 9000, 110, "FLAIR"),
        "t1_ir": ("ir", 2000, 10, "T1w"),
        "spgr_fa5": ("spgr", 15, 4, "PDw"),
        "spgr_fa30": ("spgr", 15, 4, "T1w"),
    }
    for name, (kind, tr, te, modality) in expected.items():
        p = PROTOCOL_PRESETS[name]
        assert check_protocol(p) == p
        assert (p["kind"], p["TR"], p["TE"], modality_of(p)) == (kind, tr, te, modality), name
    assert PROTOCOL_PRESETS["flair"]["TI"] == round(_csf_null_ti(TISSUE_PARAMETERS["csf"][3.0]["T1"], 9000.0))
    assert PROTOCOL_PRESETS["t1_ir"]["TI"] == 800
    assert (PROTOCOL_PRESETS["spgr_fa5"]["FA"], PROTOCOL_PRESETS["spgr_fa30"]["FA"]) == (5, 30)
    assert preset_image_name("flair") == "preset_flair" and preset_image_name("t1_se") == "t1_se"


# ---------------------------------------------------------------------------------------------
# Signals
# ---------------------------------------------------------------------------------------------
def test_protocol_signal_matches_the_named_sequences():
    params = TISSUE_PARAMETERS["gm"][3.0]
    t1, t2, pd = params["T1"], params["T2"], params["PD"]
    se = {"kind": "se", "TR": 500, "TE": 10}
    assert protocol_signal(se, params) == pytest.approx(pd * (1 - math.exp(-500 / t1)) * math.exp(-10 / t2))
    assert protocol_signal(se, params) == _signal("t1", params, {"TR": 500.0, "TE": 10.0, "TI": None, "FA": 90.0})
    ir = {"kind": "ir", "TR": 9000, "TE": 100, "TI": 2500}
    assert protocol_signal(ir, params) == _signal("flair", params, {**ir, "FA": 90.0})
    spgr = {"kind": "spgr", "TR": 15, "TE": 4, "FA": 30}
    assert protocol_signal(spgr, params) == _signal("t1ce", params, {**spgr, "TI": None})
    with pytest.raises(ValueError):
        _signal("dwi", params, se)


def test_nominal_signals():
    sig = nominal_signals(PROTOCOL_PRESETS["t2_se_te120"], 3.0)
    assert set(sig) == set(TISSUES)
    assert sig["csf"] > sig["gm"] > sig["wm"]  # T2 weighting
    t1w = nominal_signals(PROTOCOL_PRESETS["t1_se"], 1.5)
    assert t1w["wm"] > t1w["gm"] > t1w["csf"]
    assert nominal_signals(PROTOCOL_PRESETS["flair"], 3.0)["csf"] < 0.01 * sig["wm"]  # at the null
    gd = nominal_signals({**PROTOCOL_PRESETS["spgr_fa30"], "contrast_agent": True}, 3.0)
    pre = nominal_signals(PROTOCOL_PRESETS["spgr_fa30"], 3.0)
    assert gd["enhancing"] > 1.3 * pre["enhancing"]
    assert {k: v for k, v in gd.items() if k != "enhancing"} == {k: v for k, v in pre.items() if k != "enhancing"}
    with pytest.raises(ValueError, match="field_strength"):
        nominal_signals(PROTOCOL_PRESETS["t1_se"], 7.0)


# ---------------------------------------------------------------------------------------------
# Random protocols
# ---------------------------------------------------------------------------------------------
def test_random_protocol_ranges_and_kinds():
    rng = np.random.default_rng(1)
    draws = [random_protocol(rng, 3.0) for _ in range(300)]
    assert {p["kind"] for p in draws} == set(PROTOCOL_KINDS)
    assert {modality_of(p) for p in draws} >= {"T1w", "T2w", "PDw", "FLAIR"}
    flair_like = 0
    for p in draws:
        assert check_protocol(p) == p and not p["contrast_agent"]
        for k in ("TR", "TE", "TI", "FA"):
            assert p[k] is None or round(p[k], 2) == p[k]
        if p["kind"] == "se":
            assert 300 <= p["TR"] <= 8000 and 8 <= p["TE"] <= 150 and p["TI"] is None
        elif p["kind"] == "spgr":
            assert 5 <= p["TR"] <= 30 and 2 <= p["TE"] <= 8 and p["TE"] < p["TR"] and 3 <= p["FA"] <= 40
        elif p["TR"] >= 6000:  # FLAIR-like
            flair_like += 1
            null = _csf_null_ti(TISSUE_PARAMETERS["csf"][3.0]["T1"], p["TR"])
            assert 0.9 * null - 0.01 <= p["TI"] <= 1.1 * null + 0.01 and 80 <= p["TE"] <= 140
            assert modality_of(p) == "FLAIR"
        else:  # T1-weighted IR
            assert 1500 <= p["TR"] <= 3000 and 400 <= p["TI"] <= 1100 and 8 <= p["TE"] <= 20
            assert modality_of(p) == "T1w"
    n_ir = sum(p["kind"] == "ir" for p in draws)
    assert 0.25 * n_ir < flair_like < 0.75 * n_ir
    # deterministic given the generator; the field strength moves the FLAIR inversion time
    a = [random_protocol(np.random.default_rng(5), 1.5, kinds=("ir",)) for _ in range(2)]
    assert a[0] == a[1]
    assert random_protocol(np.random.default_rng(2), kinds=("spgr",))["kind"] == "spgr"


def test_random_protocol_exclude():
    rng = np.random.default_rng(2)
    draws = [random_protocol(rng, 1.5, exclude=("PDw", "FLAIR")) for _ in range(200)]
    assert not {modality_of(p) for p in draws} & {"PDw", "FLAIR"}
    assert {p["kind"] for p in draws} == set(PROTOCOL_KINDS)
    with pytest.raises(ValueError, match="1000"):
        random_protocol(rng, kinds=("spgr",), exclude=("T1w", "PDw"))
    with pytest.raises(ValueError, match="unknown modalities"):
        random_protocol(rng, exclude=("PD",))
    with pytest.raises(ValueError, match="kinds"):
        random_protocol(rng, kinds=("fse",))


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------
def test_protocol_images_and_sidecars(subject):
    shape = subject.label.shape
    for name in (*(preset_image_name(k) for k in PROTOCOL_PRESETS), "t2_again", "spgr_fa30_gd"):
        assert subject.images[name].shape == shape and subject.images[name].dtype == np.float32
        assert subject.noiseless[name].dtype == np.float32 and (subject.images[name] >= 0).all()
        sc = subject.sidecars[name]
        assert set(sc) == set(subject.sidecars["t1"]) | {"kind"}
        for key in ("age", "sex", "field_strength", "vendor", "scanner", "voxel_size", "snr"):
            assert sc[key] == subject.sidecars["t1"][key]
        assert sc["sequence"] == name and sc["modality"] == modality_of(sc)
        wm = subject.fractions["wm"] >= 0.9
        assert subject.noise_sigma[name] == pytest.approx(subject.noiseless[name][wm].mean() / sc["snr"], rel=1e-4)
    sc = subject.sidecars["preset_flair"]
    assert (sc["kind"], sc["modality"], sc["acquisition"]) == ("ir", "FLAIR", "inversion recovery spin echo")
    assert (sc["TR"], sc["TE"], sc["TI"], sc["FA"]) == (9000.0, 110.0, PROTOCOL_PRESETS["flair"]["TI"], 90.0)
    assert subject.sidecars["spgr_fa30_gd"]["modality"] == "T1Gd" and subject.sidecars["spgr_fa30_gd"]["contrast_agent"]
    assert "post-contrast" in subject.sidecars["spgr_fa30_gd"]["acquisition"]
    assert subject.sidecars["t1_se"]["acquisition"] == "spin echo" and subject.sidecars["t1_se"]["TI"] is None
    assert subject.info["protocols"]["t1_ir"] == PROTOCOL_PRESETS["t1_ir"]
    json.dumps(subject.sidecars)  # plain JSON types


def test_same_protocol_same_physics_as_named_t2(subject):
    """The t2 protocol as an extra protocol gives the named t2 image up to the per-image bias
    field and scaling: a smooth, nearly constant voxelwise ratio and the same tissue ratios."""
    a, b = subject.noiseless["t2_again"], subject.noiseless["t2"]
    inside = subject.brain_mask & (b > 0)
    log_ratio = np.log(a[inside] / b[inside])
    assert log_ratio.std() < 0.1
    ma, mb = _means(subject, "t2_again"), _means(subject, "t2")
    for t in ("csf", "gm"):
        assert ma[t] / ma["wm"] == pytest.approx(mb[t] / mb["wm"], rel=0.05)
    # and the preset at TE 120 is T2-weighted like the named t2
    m = _means(subject, "t2_se_te120")
    assert m["csf"] > 2 * m["wm"] and m["gm"] > m["wm"]


def test_flair_preset_nulls_csf(subject):
    m = _means(subject, "preset_flair")
    assert m["csf"] < 0.3 * m["wm"]
    oedema = float(subject.noiseless["preset_flair"][subject.label == 2].mean())
    assert oedema > 1.2 * m["wm"]


def test_longer_te_lowers_wm_relative_to_csf(subject):
    m60, m120 = _means(subject, "t2_se_te60"), _means(subject, "t2_se_te120")
    assert m120["wm"] / m120["csf"] < 0.8 * (m60["wm"] / m60["csf"])
    assert m120["gm"] / m120["csf"] < m60["gm"] / m60["csf"]


def test_flip_angle_sets_t1_weighting(subject):
    lo, hi = _means(subject, "spgr_fa5"), _means(subject, "spgr_fa30")
    assert hi["csf"] / hi["wm"] < 0.6 * (lo["csf"] / lo["wm"])  # long-T1 CSF saturates at 30 degrees


def test_contrast_agent_enhances_rim(subject):
    rim, wm = subject.label == 4, subject.fractions["wm"] >= 0.9
    ratio = {n: subject.noiseless[n][rim].mean() / subject.noiseless[n][wm].mean() for n in ("spgr_fa30", "spgr_fa30_gd")}
    assert ratio["spgr_fa30_gd"] > 1.2 * ratio["spgr_fa30"]


@pytest.mark.parametrize("name", ["t1_se", "pd_se", "t2_se_te60", "t2_se_te120", "spgr_fa5", "spgr_fa30", "t1_ir"])
def test_nominal_signals_predict_tissue_ratios(subject, name):
    """Tissue ratios measured in nearly pure voxels agree with the nominal prediction within
    10 % for this subject (per-subject jitter of the tissue parameters and the bias field make
    up the difference; across subjects it reaches ~20 %). Not for CSF near an inversion null."""
    nominal = nominal_signals(PROTOCOL_PRESETS[name], subject.info["field_strength"])
    measured = _means(subject, name)
    tissues = ("gm",) if name == "t1_ir" else ("csf", "gm")
    for t in tissues:
        assert measured[t] / measured["wm"] == pytest.approx(nominal[t] / nominal["wm"], rel=0.10), t
    # and with the subject's own (jittered) parameters, through protocol_signal
    params = subject.info["tissue_parameters"]
    own = {t: protocol_signal(PROTOCOL_PRESETS[name], params[t]) for t in ("csf", "gm", "wm")}
    for t in tissues:
        assert measured[t] / measured["wm"] == pytest.approx(own[t] / own["wm"], rel=0.10), t


# ---------------------------------------------------------------------------------------------
# Determinism and names
# ---------------------------------------------------------------------------------------------
def test_deterministic_and_named_sequences_unchanged():
    protocols = {"a": PROTOCOL_PRESETS["t1_ir"], "b": {**PROTOCOL_PRESETS["spgr_fa30"], "contrast_agent": True}}
    plain = simulate_subject(3, spacing=6.0, sequences=("t1", "flair"))
    with_p = simulate_subject(3, spacing=6.0, sequences=("t1", "flair"), protocols=protocols)
    again = simulate_subject(3, spacing=6.0, sequences=("t1", "flair"), protocols=protocols)
    for s in ("t1", "flair"):
        assert np.array_equal(plain.images[s], with_p.images[s])
        assert np.array_equal(plain.noiseless[s], with_p.noiseless[s])
        assert plain.sidecars[s] == with_p.sidecars[s]
    for n in protocols:
        assert np.array_equal(with_p.images[n], again.images[n])
        assert np.array_equal(with_p.noiseless[n], again.noiseless[n])
    # a protocol's image depends on its name and parameters, not on the other protocols
    alone = simulate_subject(3, spacing=6.0, sequences=("t1",), protocols={"b": protocols["b"]})
    assert np.array_equal(alone.images["b"], with_p.images["b"])
    # another name: the same physics, another bias field, scaling and noise
    renamed = simulate_subject(3, spacing=6.0, sequences=("t1",), protocols={"c": protocols["b"]})
    assert not np.array_equal(renamed.images["c"], with_p.images["b"])


def test_thick_slices_apply_to_protocols():
    p = {"x": PROTOCOL_PRESETS["t1_se"]}
    hr = simulate_subject(4, spacing=6.0, sequences=("t1",), protocols=p)
    thick = simulate_subject(4, spacing=6.0, sequences=("t1",), protocols=p, slice_thickness=12.0)
    nz = thick.noiseless["x"].shape[2]
    assert thick.noiseless["x"].shape == thick.noiseless["t1"].shape == thick.images["x"].shape
    expected = hr.noiseless["x"][:, :, : 2 * nz].reshape(*hr.noiseless["x"].shape[:2], nz, 2).mean(-1)
    assert np.allclose(thick.noiseless["x"], expected, rtol=1e-4, atol=1e-3)
    assert thick.sidecars["x"]["voxel_size"] == [6.0, 6.0, 12.0]


@pytest.mark.parametrize("name", ["t1", "T1", "bad-name", "a.b", "", "seg", "x_noiseless", 3])
def test_bad_protocol_names(name):
    with pytest.raises(ValueError, match="protocol name"):
        simulate_subject(0, spacing=8.0, sequences=("t1",), protocols={name: PROTOCOL_PRESETS["t1_se"]})


def test_bad_protocol_names_case_and_parameters():
    with pytest.raises(ValueError, match="differ only in case"):
        simulate_subject(0, spacing=8.0, sequences=("t1",), protocols={"a": PROTOCOL_PRESETS["t1_se"], "A": PROTOCOL_PRESETS["t1_se"]})
    with pytest.raises(ValueError, match="protocol 'x'.*'TE'"):
        simulate_subject(0, spacing=8.0, sequences=("t1",), protocols={"x": {"kind": "se", "TR": 100, "TE": 200}})


def test_subject_field_strength():
    for seed in range(6):
        assert subject_field_strength(seed) == simulate_subject(seed, spacing=8.0, sequences=("t1",)).info["field_strength"]


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------
def test_write_dataset_with_protocols(tmp_path):
    out = tmp_path / "b"
    cases = write_dataset(out, subjects=2, spacing=8.0, seed=4, protocols=2, presets=["flair", "t1_se"], drop_max=1, progress=False)
    meta = json.loads((out / "phantom.json").read_text())
    names = ["p00", "p01", "preset_flair", "t1_se"]
    assert meta["protocols"] == {c: names for c in cases}
    assert meta["presets"] == {"flair": "preset_flair", "t1_se": "t1_se"} and meta["random_protocols"] == 2
    for i, case in enumerate(cases):
        sub_seed = subject_seed(4, i)
        rng = np.random.default_rng([sub_seed, 5])
        drawn = [random_protocol(rng, subject_field_strength(sub_seed)) for _ in range(2)]
        folder = out / case
        seg = nib.load(folder / f"{case}_seg.nii.gz")
        for name in names:
            img = nib.load(folder / f"{case}_{name}.nii.gz")
            clean = nib.load(folder / f"{case}_{name}_noiseless.nii.gz")
            assert img.shape == clean.shape == seg.shape and np.allclose(img.affine, seg.affine)
            sc = json.loads((folder / f"{case}_{name}.json").read_text())
            assert all(k in sc for k in SIDECAR_FIELDS) and sc["sequence"] == name
            assert sc["modality"] == modality_of(sc)
        for name, p in zip(("p00", "p01"), drawn):
            sc = json.loads((folder / f"{case}_{name}.json").read_text())
            assert {k: sc[k] for k in p} == p
        assert json.loads((folder / f"{case}_preset_flair.json").read_text())["modality"] == "FLAIR"
        assert json.loads((folder / f"{case}_t1_se.json").read_text())["TR"] == 500.0
        # the named FLAIR, when kept, is the subject's own protocol, not the preset
        if "flair" not in meta["missing"][case]:
            assert json.loads((folder / f"{case}_flair.json").read_text())["TR"] != 9000.0
    # the written image is the simulated one
    kept = [s for s in ("t1", "t1ce", "t2", "flair") if s not in meta["missing"][cases[1]]]
    sub_seed = subject_seed(4, 1)
    rng = np.random.default_rng([sub_seed, 5])
    protocols = {f"p{j:02d}": random_protocol(rng, subject_field_strength(sub_seed)) for j in range(2)}
    subj = simulate_subject(sub_seed, spacing=8.0, sequences=kept, protocols=protocols)
    on_disk = np.asarray(nib.load(out / cases[1] / f"{cases[1]}_p01.nii.gz").dataobj)
    np.testing.assert_array_equal(on_disk, subj.images["p01"])
    # the data layer reads protocol images like sequences
    listed = list_cases(out, sequences=["p00", "t1_se"])
    assert [c["case"] for c in listed] == cases and all("p00_meta" in c and "t1_se_noiseless" in c for c in listed)


def test_write_dataset_protocol_errors(tmp_path):
    with pytest.raises(ValueError, match="brats layout only"):
        write_dataset(tmp_path / "n", subjects=1, spacing=8.0, layout="nnseq2seq", protocols=1, progress=False)
    with pytest.raises(ValueError, match="brats layout only"):
        write_dataset(tmp_path / "n", subjects=1, spacing=8.0, layout="nnseq2seq", presets=["t1_se"], progress=False)
    with pytest.raises(ValueError, match="unknown presets"):
        write_dataset(tmp_path / "b", subjects=1, spacing=8.0, presets=["t3"], progress=False)
    with pytest.raises(ValueError, match="unknown modalities"):
        write_dataset(tmp_path / "b", subjects=1, spacing=8.0, protocols=1, exclude_modalities=("PD",), progress=False)
    assert not (tmp_path / "n").exists() and not (tmp_path / "b").exists()  # nothing written


def test_write_dataset_without_protocols_is_unchanged(tmp_path):
    write_dataset(tmp_path / "a", subjects=1, spacing=8.0, seed=2, sequences=("t1",), progress=False)
    write_dataset(tmp_path / "b", subjects=1, spacing=8.0, seed=2, sequences=("t1",), protocols=1, progress=False)
    a = np.asarray(nib.load(tmp_path / "a" / "PHANTOM_0000" / "PHANTOM_0000_t1.nii.gz").dataobj)
    b = np.asarray(nib.load(tmp_path / "b" / "PHANTOM_0000" / "PHANTOM_0000_t1.nii.gz").dataobj)
    np.testing.assert_array_equal(a, b)
    assert json.loads((tmp_path / "a" / "phantom.json").read_text())["protocols"] == {"PHANTOM_0000": []}


def test_cli_protocols(tmp_path):
    out = tmp_path / "cli"
    args = ["--out", str(out), "--subjects", "1", "--spacing", "8", "--protocols", "3", "--exclude-modalities", "PDw", "FLAIR"]
    args += ["--protocol-kinds", "se", "ir", "--presets", "t2_se_te60", "flair", "--quiet"]
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "phantom.py"), *args], cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((out / "phantom.json").read_text())
    assert meta["protocols"]["PHANTOM_0000"] == ["p00", "p01", "p02", "t2_se_te60", "preset_flair"]
    assert meta["exclude_modalities"] == ["PDw", "FLAIR"] and meta["protocol_kinds"] == ["se", "ir"]
    for name in ("p00", "p01", "p02"):
        sc = json.loads((out / "PHANTOM_0000" / f"PHANTOM_0000_{name}.json").read_text())
        assert sc["kind"] in ("se", "ir") and sc["modality"] not in ("PDw", "FLAIR")
    bad = subprocess.run(
        [sys.executable, str(REPO / "tools" / "phantom.py"), "--out", str(tmp_path / "n"), "--layout", "nnseq2seq", "--protocols", "1"],
        cwd=REPO, env=env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert bad.returncode != 0 and "brats layout only" in bad.stderr
