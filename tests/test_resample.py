"""Sequences of one case on different grids: the clear error by default, resampling onto one grid on
request (--resample_to), and the synthesis written on the grid of any input (--output_grid)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bundle_utils import TINY, run_bundle
from mrsynth.errors import DataError
from mrsynth.transforms import LoadSequencesd

SEQS = ["t1", "t1ce", "t2", "flair"]


@pytest.fixture
def mixed_case(phantom, tmp_path):
    """One phantom case with its FLAIR as thick slices (every other slice, twice the z spacing) and
    its T2 stored left-right flipped (another orientation, same anatomy)."""
    src = sorted(p for p in Path(phantom).iterdir() if p.is_dir())[0]
    cid = src.name
    case = tmp_path / "data" / cid
    case.mkdir(parents=True)
    shutil.copyfile(src / f"{cid}_t1.nii.gz", case / f"{cid}_t1.nii.gz")
    t2 = nib.load(str(src / f"{cid}_t2.nii.gz"))
    a = t2.affine.copy()
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1, t2.shape[0] - 1
    nib.save(nib.Nifti1Image(np.asarray(t2.dataobj)[::-1].copy(), a @ flip), str(case / f"{cid}_t2.nii.gz"))
    fl = nib.load(str(src / f"{cid}_flair.nii.gz"))
    thick = fl.affine.copy()
    thick[:3, 2] *= 2
    nib.save(nib.Nifti1Image(np.asarray(fl.dataobj)[:, :, ::2].copy(), thick), str(case / f"{cid}_flair.nii.gz"))
    return case, src


def test_different_grids_error_by_default_and_resample_on_request(mixed_case):
    case, src = mixed_case
    cid = case.name
    files = {s: str(case / f"{cid}_{s}.nii.gz") for s in ("t1", "t2", "flair")}
    with pytest.raises(DataError, match=r"--resample_to t1 resamples the case onto one grid"):
        LoadSequencesd(SEQS)(files)
    d = LoadSequencesd(SEQS, resample_to="t1")(files)
    ref = nib.load(files["t1"])
    for s in ("t2", "flair"):
        assert tuple(d[s].shape[1:]) == ref.shape
        np.testing.assert_allclose(np.asarray(d[s].affine), ref.affine, atol=1e-4)
    t2 = np.asarray(nib.load(str(src / f"{cid}_t2.nii.gz")).dataobj, dtype=np.float32)
    np.testing.assert_allclose(d["t2"][0].numpy(), t2, rtol=1e-4, atol=1e-3)  # a flip is resampled exactly
    fl = np.asarray(nib.load(str(src / f"{cid}_flair.nii.gz")).dataobj, dtype=np.float32)
    got = d["flair"][0].numpy()[:, :, :-1]  # the last slice lies beyond the thick stack
    assert np.corrcoef(got.ravel(), fl[:, :, :-1].ravel())[0, 1] > 0.97  # interpolated between thick slices


@pytest.mark.slow
def test_inference_resamples_and_writes_on_the_grid_asked(trained_seq2seq, mixed_case, tmp_path):
    root, _ = trained_seq2seq
    case, _ = mixed_case
    cid = case.name
    out = tmp_path / "out"
    proc = run_bundle("seq2seq", ["inference", "quick"], "--dataset_dir", case.parent, "--output_dir", out,
                      "--ckpt_path", root / "models" / "model.pt", "--target", "t1ce", "--resample_to", "t1",
                      "--output_grid", "flair", *TINY[:2], check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    img, fl = nib.load(str(out / cid / f"{cid}_t1ce_syn.nii.gz")), nib.load(str(case / f"{cid}_flair.nii.gz"))
    assert img.shape == fl.shape
    np.testing.assert_allclose(img.affine, fl.affine, atol=1e-4)
    assert np.isfinite(img.get_fdata()).all() and img.get_fdata().std() > 0
    side = json.loads((out / cid / f"{cid}_t1ce_syn.json").read_text())
    assert side["grid_of"] == "flair" and side["sources"] == ["t1", "t2", "flair"]
    # without --resample_to, the sources on other grids are left out, named, with the way out
    out2 = tmp_path / "o2"
    proc = run_bundle("seq2seq", ["inference", "quick"], "--dataset_dir", case.parent, "--output_dir", out2,
                      "--ckpt_path", root / "models" / "model.pt", "--target", "t1ce", *TINY[:2])
    side = json.loads((out2 / cid / f"{cid}_t1ce_syn.json").read_text())
    assert side["sources"] == ["t1"] and len(side["left_out"]) == 2
    assert all("--resample_to t1" in why for why in side["left_out"])
    assert f"{cid}_flair.nii.gz" in proc.stdout + proc.stderr
