"""The phantom's physics (tissue contrast, CSF nulling, contrast enhancement, noise at the asked
SNR), determinism, and both on-disk layouts read back by the data layer."""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from bundle_utils import REPO, env
from mrsynth.data import list_cases
from mrsynth.data.phantom import simulate_subject, write_dataset

SEQS = ("t1", "t1ce", "t2", "flair")


@pytest.fixture(scope="module")
def subject():
    return simulate_subject(3, spacing=2.0, snr=30.0, n_tumours=1)


def _pure(sub, tissue, thr=0.9):
    return sub.fractions[tissue] > thr


def _mean(sub, seq, tissue, clean=True):
    img = (sub.noiseless if clean else sub.images)[seq]
    return float(img[_pure(sub, tissue)].mean())


def test_tissue_contrast_follows_relaxation(subject):
    # T1w: long-T1 CSF is dark, WM (shortest T1) brightest; T2w: long-T2 CSF is bright
    assert _mean(subject, "t1", "csf") < 0.5 * _mean(subject, "t1", "wm")
    assert _mean(subject, "t1", "gm") < _mean(subject, "t1", "wm")
    assert _mean(subject, "t2", "csf") > 1.5 * _mean(subject, "t2", "wm")
    assert _mean(subject, "t2", "gm") > _mean(subject, "t2", "wm")


def test_flair_nulls_csf(subject):
    assert _mean(subject, "flair", "csf") < 0.25 * _mean(subject, "flair", "wm")


def test_enhancing_rim_brighter_after_gadolinium(subject):
    rim = subject.label == 4
    assert rim.sum() > 5
    before = subject.noiseless["t1"][rim].mean() / _mean(subject, "t1", "wm")
    after = subject.noiseless["t1ce"][rim].mean() / _mean(subject, "t1ce", "wm")
    assert after > 1.3 * before
    # elsewhere gadolinium changes nothing: normal tissue ratios agree
    assert _mean(subject, "t1ce", "gm") / _mean(subject, "t1ce", "wm") == pytest.approx(
        _mean(subject, "t1", "gm") / _mean(subject, "t1", "wm"), rel=0.2)


def test_labels_hold_all_tumour_classes(subject):
    assert set(np.unique(subject.label)) == {0, 1, 2, 4}


@pytest.mark.parametrize("seq", SEQS)
def test_noise_matches_the_snr(subject, seq):
    wm = _pure(subject, "wm")
    sigma = subject.noise_sigma[seq]
    assert sigma == pytest.approx(_mean(subject, seq, "wm") / 30.0, rel=0.15)
    diff = subject.images[seq][wm] - subject.noiseless[seq][wm]
    assert float(diff.std()) == pytest.approx(sigma, rel=0.15)  # high signal: Rician ~ Gaussian


def test_deterministic_by_seed():
    a, b = simulate_subject(11, spacing=4.0), simulate_subject(11, spacing=4.0)
    for s in SEQS:
        np.testing.assert_array_equal(a.images[s], b.images[s])
    np.testing.assert_array_equal(a.label, b.label)
    c = simulate_subject(12, spacing=4.0)
    assert not np.array_equal(a.fractions["wm"] > 0.5, c.fractions["wm"] > 0.5)  # different anatomy


def test_sidecars_have_the_prompt_fields(subject):
    for s in SEQS:
        side = subject.sidecars[s]
        for key in ("age", "sex", "field_strength", "vendor", "modality", "voxel_size", "TR", "TE", "TI", "FA"):
            assert key in side, (s, key)
    assert subject.sidecars["flair"]["TI"] is not None and subject.sidecars["t2"]["TI"] is None


def test_cli_writes_both_layouts_and_the_data_layer_reads_them(tmp_path):
    for layout in ("brats", "nnseq2seq"):
        out = tmp_path / layout
        proc = subprocess.run([sys.executable, str(REPO / "tools" / "phantom.py"), "--out", str(out), "--subjects", "3",
                               "--spacing", "4", "--seed", "5", "--layout", layout, "--drop-max", "2", "--quiet"],
                              env=env(), capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        cases = list_cases(out)
        assert len(cases) == 3
        for c in cases:
            present = [s for s in SEQS if s in c]
            assert 2 <= len(present) <= 4 and sum(c["available"]) == len(present)  # never all dropped
            imgs = [nib.load(c[s]) for s in present] + [nib.load(c["seg"])]
            assert len({i.shape for i in imgs}) == 1
            assert all(np.allclose(i.affine, imgs[0].affine) for i in imgs)
            for s in present:
                assert f"{s}_noiseless" in c and f"{s}_meta" in c
                assert json.loads(open(c[f"{s}_meta"]).read())["modality"]
    assert (tmp_path / "nnseq2seq" / "dataset.json").is_file()


def test_drop_max_drops_some_sequences(tmp_path):
    write_dataset(tmp_path, subjects=8, spacing=4.0, seed=2, drop_max=3, progress=False)
    cases = list_cases(tmp_path)
    counts = [sum(c["available"]) for c in cases]
    assert min(counts) >= 1 and min(counts) < 4
