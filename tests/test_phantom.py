"""The phantom simulator: MR physics (contrasts, contrast agent, noise level), the label map,
determinism, and the files written by ``tools/phantom.py`` in both layouts, read back with
nibabel and with the data layer (:func:`mrsynth.data.list_cases`)."""

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
    GD_RELAXIVITY,
    TISSUE_PARAMETERS,
    PhantomSubject,
    _csf_null_ti,
    _signal,
    simulate_subject,
    subject_seed,
    write_dataset,
)

SEED = 7
SNR = 30.0
SIDECAR_FIELDS = ("age", "sex", "field_strength", "vendor", "scanner", "modality", "voxel_size", "TR", "TE", "TI", "FA", "snr")


@pytest.fixture(scope="module")
def subject() -> PhantomSubject:
    """One 2 mm subject with exactly one tumour, all five sequences."""
    return simulate_subject(SEED, spacing=2.0, snr=SNR, sequences=("t1", "t1ce", "t2", "flair", "pd"), n_tumours=1)


def _tissue_means(subj, seq, threshold=0.9):
    """Mean noiseless signal in nearly pure CSF, GM and WM voxels."""
    img = subj.noiseless[seq]
    return {t: float(img[subj.fractions[t] >= threshold].mean()) for t in ("csf", "gm", "wm")}


def test_shapes_and_types(subject):
    shape = subject.label.shape
    assert len(shape) == 3 and subject.affine.shape == (4, 4)
    assert np.allclose(np.diag(subject.affine)[:3], 2.0)
    for seq in ("t1", "t1ce", "t2", "flair", "pd"):
        assert subject.images[seq].shape == shape and subject.images[seq].dtype == np.float32
        assert subject.noiseless[seq].shape == shape and subject.noiseless[seq].dtype == np.float32
        assert (subject.images[seq] >= 0).all()  # magnitude (Rician) images
    assert subject.label.dtype == np.uint8 and subject.brain_mask.dtype == bool
    assert 0.1 < subject.brain_mask.mean() < 0.6


def test_t1_and_t2_contrast(subject):
    t1, t2 = _tissue_means(subject, "t1"), _tissue_means(subject, "t2")
    assert t1["csf"] < 0.6 * t1["wm"]  # CSF dark on T1w
    assert t1["gm"] < t1["wm"]  # GM darker than WM on T1w
    assert t2["csf"] > 2.0 * t2["wm"]  # CSF bright on T2w
    assert t2["gm"] > t2["wm"]


def test_flair_nulls_csf(subject):
    flair, t2 = _tissue_means(subject, "flair"), _tissue_means(subject, "t2")
    assert flair["csf"] < 0.35 * flair["wm"]
    # Oedema is bright on FLAIR, unlike CSF: the point of the sequence.
    oedema = float(subject.noiseless["flair"][subject.label == 2].mean())
    assert oedema > 1.2 * flair["wm"]
    # The protocol's TI sits at the nominal CSF null point within a few percent.
    sc = subject.sidecars["flair"]
    t1_csf = TISSUE_PARAMETERS["csf"][sc["field_strength"]]["T1"]
    assert sc["TI"] == pytest.approx(_csf_null_ti(t1_csf, sc["TR"]), rel=0.02)
    assert _csf_null_ti(t1_csf, 1e9) == pytest.approx(math.log(2) * t1_csf)


def test_gadolinium_enhances_rim(subject):
    rim = subject.label == 4
    core = subject.label == 1
    wm = subject.fractions["wm"] >= 0.9
    ratio = {s: float(subject.noiseless[s][rim].mean() / subject.noiseless[s][wm].mean()) for s in ("t1", "t1ce")}
    assert ratio["t1ce"] > 1.2 * ratio["t1"]
    assert ratio["t1ce"] > 1.1  # the rim outshines white matter after contrast
    # Gadolinium, not the protocol, makes the difference: the same T1Gd protocol without
    # contrast would leave the rim far less bright.
    params, protocol = subject.info["tissue_parameters"], subject.sidecars["t1ce"]
    t1_post = 1 / (1 / params["enhancing"]["T1"] + GD_RELAXIVITY[protocol["field_strength"]] / 1000 * subject.info["gd_concentration_mM"])
    pre = _signal("t1ce", params["enhancing"], protocol)
    post = _signal("t1ce", {**params["enhancing"], "T1": t1_post}, protocol)
    assert post > 1.3 * pre
    # The necrotic core does not enhance: it stays darker than the rim on T1Gd.
    assert subject.noiseless["t1ce"][core].mean() < 0.8 * subject.noiseless["t1ce"][rim].mean()


def test_label_map(subject):
    values = set(np.unique(subject.label).tolist())
    assert values == {0, 1, 2, 4}
    assert not subject.label[~subject.brain_mask].any()
    assert len(subject.info["tumours"]) == 1
    # The enhancing rim encloses the core: the core's centroid lies within the rim's extent.
    core = np.argwhere(subject.label == 1).mean(0)
    rim = np.argwhere(subject.label == 4)
    assert (rim.min(0) <= core).all() and (core <= rim.max(0)).all()


def test_noise_matches_snr(subject):
    wm = subject.fractions["wm"] >= 0.9
    for seq in ("t1", "t2"):
        clean = subject.noiseless[seq]
        expected = clean[wm].mean() / SNR
        measured = (subject.images[seq] - clean)[wm].std()
        assert measured == pytest.approx(expected, rel=0.15)
        assert subject.noise_sigma[seq] == pytest.approx(expected, rel=1e-4)
    # Background is pure Rician (Rayleigh) noise: mean sigma * sqrt(pi / 2).
    outside = (subject.noiseless["t1"] == 0)
    assert subject.images["t1"][outside].mean() == pytest.approx(subject.noise_sigma["t1"] * math.sqrt(math.pi / 2), rel=0.05)


def test_sidecars(subject):
    for seq, sc in subject.sidecars.items():
        for key in SIDECAR_FIELDS:
            assert key in sc, (seq, key)
        assert sc["voxel_size"] == [2.0, 2.0, 2.0]
        assert sc["scanner"] == f"{sc['field_strength']:.1f} {sc['vendor']}"
        assert sc["sex"] in ("M", "F") and 18 <= sc["age"] <= 85
        assert sc["snr"] == SNR
    assert subject.sidecars["t1"]["TI"] is None and subject.sidecars["t2"]["TI"] is None
    assert subject.sidecars["flair"]["TI"] > 0
    assert subject.sidecars["t1ce"]["contrast_agent"] and not subject.sidecars["t1"]["contrast_agent"]
    assert subject.sidecars["t1"]["TR"] < subject.sidecars["t2"]["TR"]  # T1 weighting: short TR
    assert subject.sidecars["pd"]["TE"] < subject.sidecars["t2"]["TE"]
    assert subject.sidecars["pd"]["modality"] == "PDw"
    json.dumps(subject.sidecars)  # plain JSON types


def test_deterministic_and_seed_dependent(subject):
    again = simulate_subject(SEED, spacing=2.0, snr=SNR, sequences=("t2",), n_tumours=1)
    # Same seed: identical arrays, also when only a subset of sequences is simulated.
    assert np.array_equal(again.images["t2"], subject.images["t2"])
    assert np.array_equal(again.label, subject.label)
    other = simulate_subject(SEED + 1, spacing=2.0, snr=SNR, sequences=("t2",), n_tumours=1)
    assert not np.array_equal(other.label, subject.label)
    diff = np.abs(other.fractions["wm"] - subject.fractions["wm"]).mean()
    assert diff > 0.01  # different anatomy, not only different noise


def test_thick_slices_average_the_high_resolution_subject(subject):
    thick = simulate_subject(SEED, spacing=2.0, snr=SNR, sequences=("t1",), slice_thickness=4.0, n_tumours=1)
    hr = subject.noiseless["t1"]
    nz = thick.noiseless["t1"].shape[2]
    assert thick.noiseless["t1"].shape[:2] == hr.shape[:2] and nz == hr.shape[2] // 2
    expected = hr[:, :, : 2 * nz].reshape(hr.shape[0], hr.shape[1], nz, 2).mean(-1)
    assert np.allclose(thick.noiseless["t1"], expected, rtol=1e-4, atol=1e-3)
    assert thick.sidecars["t1"]["voxel_size"] == [2.0, 2.0, 4.0]
    assert thick.affine[2, 2] == 4.0 and thick.affine[2, 3] == pytest.approx(subject.affine[2, 3] + 1.0)


def test_drop_max_never_drops_everything(tmp_path):
    cases = write_dataset(tmp_path, subjects=6, spacing=4.0, seed=3, sequences=("t1", "t2", "flair"), drop_max=3, progress=False)
    meta = json.loads((tmp_path / "phantom.json").read_text())
    assert meta["cases"] == cases == [f"PHANTOM_{i:04d}" for i in range(6)]
    assert any(meta["missing"][c] for c in cases)
    for c in cases:
        present = [s for s in ("t1", "t2", "flair") if (tmp_path / c / f"{c}_{s}.nii.gz").exists()]
        assert present and sorted(present + meta["missing"][c]) == sorted(["t1", "t2", "flair"])
        for s in meta["missing"][c]:
            assert not (tmp_path / c / f"{c}_{s}_noiseless.nii.gz").exists()
    assert meta["subject_seeds"][cases[1]] == subject_seed(3, 1)



def test_workers_write_the_same_cases(tmp_path):
    """Cases written by worker processes are the files of a serial run, byte for byte."""
    kw = dict(subjects=3, spacing=4.0, seed=5, sequences=("t1", "t2"), drop_max=1, progress=False)
    assert write_dataset(tmp_path / "serial", **kw) == write_dataset(tmp_path / "pool", workers=2, **kw)
    serial = sorted(p.relative_to(tmp_path / "serial") for p in (tmp_path / "serial").rglob("*") if p.is_file())
    pool = sorted(p.relative_to(tmp_path / "pool") for p in (tmp_path / "pool").rglob("*") if p.is_file())
    assert serial == pool and len(serial) > 10
    for rel in serial:
        if rel.suffix == ".gz":  # gzip headers may carry a time stamp: compare the voxels
            a, b = nib.load(tmp_path / "serial" / rel), nib.load(tmp_path / "pool" / rel)
            assert np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj)) and np.array_equal(a.affine, b.affine)
        else:
            assert (tmp_path / "serial" / rel).read_bytes() == (tmp_path / "pool" / rel).read_bytes(), rel

def _run_cli(*args):
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "phantom.py"), *args, "--quiet"], cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_cli_brats_layout(tmp_path):
    out = tmp_path / "brats"
    stdout = _run_cli("--out", str(out), "--subjects", "2", "--spacing", "4", "--seed", "1", "--layout", "brats", "--pd")
    assert str(out) in stdout
    for case in ("PHANTOM_0000", "PHANTOM_0001"):
        seg = nib.load(out / case / f"{case}_seg.nii.gz")
        assert seg.get_data_dtype() == np.uint8
        assert set(np.unique(np.asarray(seg.dataobj)).tolist()) <= {0, 1, 2, 4}
        for seq in ("t1", "t1ce", "t2", "flair", "pd"):
            for suffix in ("", "_noiseless"):
                img = nib.load(out / case / f"{case}_{seq}{suffix}.nii.gz")
                assert img.shape == seg.shape and np.allclose(img.affine, seg.affine)
            sidecar = json.loads((out / case / f"{case}_{seq}.json").read_text())
            assert all(k in sidecar for k in SIDECAR_FIELDS) and sidecar["voxel_size"] == [4.0, 4.0, 4.0]
    assert np.allclose(np.diag(seg.affine)[:3], 4.0)
    meta = json.loads((out / "phantom.json").read_text())
    assert meta["sequences"] == ["t1", "t1ce", "t2", "flair", "pd"] and meta["spacing"] == 4.0
    cases = list_cases(out)  # the data layer reads it
    assert [c["case"] for c in cases] == ["PHANTOM_0000", "PHANTOM_0001"]
    assert all(sum(c["available"]) == 4 for c in cases)  # BraTS sequences by default


def test_cli_nnseq2seq_layout(tmp_path):
    out = tmp_path / "nn"
    _run_cli("--out", str(out), "--subjects", "3", "--spacing", "4", "--seed", "2", "--layout", "nnseq2seq", "--drop-max", "2")
    ds = json.loads((out / "dataset.json").read_text())
    assert ds["channel_names"] == {"0": "t1", "1": "t1ce", "2": "t2", "3": "flair"}
    assert ds["labels"] == {"background": 0, "necrotic": 1, "oedema": 2, "enhancing": 4}
    assert ds["numTraining"] == 3 and ds["file_ending"] == ".nii.gz"
    for case, absent in ds["missing"].items():
        assert len(absent) <= 2
        label = nib.load(out / "labelsTr" / f"{case}.nii.gz")
        for ch in range(4):
            image = out / "imagesTr" / f"{case}_{ch:04d}.nii.gz"
            assert image.exists() == (ch not in absent)
            assert (out / "noiselessTr" / f"{case}_{ch:04d}.nii.gz").exists() == (ch not in absent)
            if image.exists():
                img = nib.load(image)
                assert img.shape == label.shape and np.allclose(img.affine, label.affine)
                assert json.loads(image.with_name(f"{case}_{ch:04d}.json").read_text())["modality"]
    cases = list_cases(out)  # the data layer reads it, availability mask included
    assert len(cases) == 3
    for c in cases:
        present = [s for s in ("t1", "t1ce", "t2", "flair") if s in c]
        assert 2 <= len(present) <= 4 and sum(c["available"]) == len(present)
        for s in present:
            assert f"{s}_noiseless" in c and f"{s}_meta" in c


def test_tissue_map_is_the_dominant_compartment(subject):
    from mrsynth.data.phantom import TISSUE_CODES, TISSUES

    tissue = subject.tissue
    assert tissue.dtype == np.uint8 and tissue.shape == subject.label.shape
    assert set(np.unique(tissue).tolist()) <= {0, *TISSUE_CODES.values()}
    assert not tissue[~subject.brain_mask].any() and tissue[subject.brain_mask].all()
    frac = np.stack([subject.fractions[k] for k in TISSUES])
    inside = subject.brain_mask
    np.testing.assert_array_equal(tissue[inside], frac.argmax(0)[inside] + 1)
    # the label map's lesion classes agree with the tissue map where a voxel is mostly lesion
    assert (tissue[subject.label == 4] == TISSUE_CODES["enhancing"]).mean() > 0.9
    # known contrast on the tissue map: in T2, CSF > GM > WM
    t2 = subject.noiseless["t2"]
    csf, gm, wm = (t2[tissue == TISSUE_CODES[k]].mean() for k in ("csf", "gm", "wm"))
    assert csf > gm > wm


def test_tissue_and_fraction_files_read_back(tmp_path):
    from mrsynth.data.phantom import TISSUES

    write_dataset(tmp_path / "b", subjects=1, spacing=4.0, seed=5, progress=False)
    write_dataset(tmp_path / "n", subjects=1, spacing=4.0, seed=5, layout="nnseq2seq", progress=False)
    subj = simulate_subject(subject_seed(5, 0), spacing=4.0)
    for root in (tmp_path / "b", tmp_path / "n"):
        (case,) = list_cases(root)
        tissue = np.asarray(nib.load(case["tissue"]).dataobj)
        np.testing.assert_array_equal(tissue, subj.tissue)
        frac = np.asarray(nib.load(case["fractions"]).dataobj)  # uint8 on disk, scaled back to [0, 1]
        assert frac.shape == (*subj.label.shape, len(TISSUES))
        expected = np.stack([subj.fractions[k] for k in TISSUES], -1)
        assert np.abs(frac - expected).max() <= 0.5 / 255 + 1e-6


def test_cli_writes_a_dce_series(tmp_path):
    out = tmp_path / "dce"
    stdout = _run_cli("--out", str(out), "--subjects", "1", "--spacing", "8", "--dce", "3", "--dce-interval", "20")
    assert "DCE (3 post-contrast frames every 20 s)" in stdout
    img = nib.load(out / "PHANTOM_0000" / "PHANTOM_0000_dce.nii.gz")
    assert img.shape[3] == 4 and img.header.get_zooms()[3] == 20.0
