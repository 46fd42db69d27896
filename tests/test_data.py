"""Data layer: readers of both layouts, loading checks, normalisation and its inverse, sampling."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose

from conftest import write_case
from mrsynth import DataError, sequence_index
from mrsynth.data import list_brats_cases, list_cases, list_nnseq2seq_cases
from mrsynth.io import save_nifti
from mrsynth.transforms import (
    PAPER,
    LoadSequencesd,
    RandSequencePaird,
    ScalePercentiled,
    SequencePairsd,
    extract_slab,
    slab_indices,
)

SEQS = ["t1", "t1ce", "t2", "flair"]


def test_brats_reader_availability(brats_dir):
    cases = list_brats_cases(brats_dir)
    assert [c["case"] for c in cases] == ["C0", "C1", "C2"]
    assert [c["available"] for c in cases] == [[1, 1, 1, 1], [1, 0, 1, 0], [0, 0, 1, 0]]
    assert "t1ce" not in cases[1] and cases[1]["t2"].endswith("C1_t2.nii.gz")
    assert all("seg" in c for c in cases)


def test_case_without_sequences_is_skipped_with_warning(brats_dir):
    (brats_dir / "EMPTY").mkdir()
    with pytest.warns(UserWarning, match="EMPTY: no usable sequence"):
        cases = list_brats_cases(brats_dir)
    assert len(cases) == 3


def test_no_cases_and_missing_folder(tmp_path):
    with pytest.raises(DataError, match="dataset folder not found"):
        list_brats_cases(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no case"):
        list_brats_cases(tmp_path / "empty")


def test_shape_mismatch_names_the_file(tmp_path):
    write_case(tmp_path, "C0")
    save_nifti(np.ones((16, 20, 11), np.float32), np.diag([2.0, 2, 2, 1]), tmp_path / "C0" / "C0_flair.nii.gz")
    with pytest.raises(DataError, match=r"C0_flair\.nii\.gz.*shape \(16, 20, 11\) differs"):
        list_brats_cases(tmp_path)


def test_affine_mismatch_names_the_file(tmp_path):
    write_case(tmp_path, "C0")
    save_nifti(np.ones((16, 20, 12), np.float32), np.diag([1.0, 2, 2, 1]), tmp_path / "C0" / "C0_t2.nii.gz")
    with pytest.raises(DataError, match=r"C0_t2\.nii\.gz.*affine differs"):
        list_brats_cases(tmp_path)


def test_unreadable_file_names_the_file(tmp_path):
    write_case(tmp_path, "C0")
    bad = tmp_path / "C0" / "C0_t1.nii.gz"
    bad.write_bytes(b"this is not a nifti file")
    with pytest.raises(DataError, match=r"C0_t1\.nii\.gz: cannot read"):
        list_brats_cases(tmp_path)
    with pytest.raises(DataError, match=r"C0_t1\.nii\.gz: cannot read image"):
        LoadSequencesd(SEQS)({"case": "C0", "t1": str(bad)})


def test_nan_voxels_name_the_file(tmp_path):
    arr = np.ones((8, 8, 4), np.float32)
    arr[1, 2, 3] = np.nan
    arr[0, 0, 0] = np.inf
    f = save_nifti(arr, np.eye(4), tmp_path / "X_t1.nii.gz")
    with pytest.raises(DataError, match=r"X_t1\.nii\.gz: 2 NaN/Inf voxel"):
        LoadSequencesd(SEQS)({"t1": str(f)})


def test_load_refuses_4d_and_constant_sequences_but_not_labels(tmp_path):
    rng = np.random.default_rng(0)
    four = save_nifti(rng.random((6, 7, 5, 3), np.float32), np.eye(4), tmp_path / "X_t1.nii.gz")
    with pytest.raises(DataError, match=r"X_t1\.nii\.gz: 't1' is 4D \(shape \(6, 7, 5, 3\)\) where one 3D volume"):
        LoadSequencesd(SEQS)({"t1": str(four)})
    zero = save_nifti(np.zeros((6, 7, 5), np.float32), np.eye(4), tmp_path / "X_t2.nii.gz")
    with pytest.raises(DataError, match=r"X_t2\.nii\.gz: 't2' is constant \(every voxel 0\)"):
        LoadSequencesd(SEQS)({"t2": str(zero)})
    good = save_nifti(rng.random((6, 7, 5), np.float32), np.eye(4), tmp_path / "X_flair.nii.gz")
    d = LoadSequencesd([*SEQS, "seg"])({"flair": str(good), "seg": str(zero)})  # an empty label map is fine
    assert d["seg"].shape == (1, 6, 7, 5) and float(d["seg"].max()) == 0
    assert LoadSequencesd(SEQS, check_volume=False)({"t2": str(zero)})["t2"].shape == (1, 6, 7, 5)


def test_unknown_sequence_name():
    assert sequence_index("FLAIR") == 3
    with pytest.raises(DataError, match="unknown sequence 'dwi'"):
        sequence_index("dwi")


def test_load_checks_geometry_across_keys(tmp_path):
    rng = np.random.default_rng(0)
    a = save_nifti(rng.random((8, 8, 4), np.float32), np.eye(4), tmp_path / "a.nii.gz")
    b = save_nifti(rng.random((8, 8, 5), np.float32), np.eye(4), tmp_path / "b.nii.gz")
    with pytest.raises(DataError, match=r"b\.nii\.gz: 't2' has spatial shape \(8, 8, 5\)"):
        LoadSequencesd(SEQS)({"t1": str(a), "t2": str(b)})


def _nnseq2seq(root, missing=()):
    (root / "imagesTr").mkdir(parents=True)
    spec = {"channel_names": {"0": "T1", "1": "T1CE", "2": "T2", "3": "FLAIR"}, "file_ending": ".nii.gz",
            "numTraining": 2, "labels": {"background": 0}}
    (root / "dataset.json").write_text(json.dumps(spec))
    for case in ("P0", "P1"):
        for ch in range(4):
            if (case, ch) in missing:
                continue
            ramp = np.linspace(-0.5, 0.5, 8, dtype=np.float32)[:, None, None]  # mean 0: channel ch averages ch + 1
            save_nifti(np.broadcast_to(ch + 1.0 + ramp, (8, 8, 4)), np.eye(4), root / "imagesTr" / f"{case}_{ch:04d}.nii.gz")
    return root


def test_nnseq2seq_reader(tmp_path):
    root = _nnseq2seq(tmp_path / "Dataset001_X", missing={("P1", 1), ("P1", 3)})
    cases = list_cases(root)  # layout auto-detected
    assert [c["case"] for c in cases] == ["P0", "P1"]
    assert cases[1]["available"] == [1, 0, 1, 0]
    assert cases[1]["t2"].endswith("P1_0002.nii.gz")
    loaded = LoadSequencesd(SEQS)(cases[1])
    assert float(loaded["t2"].mean()) == pytest.approx(3.0) and "t1ce" not in loaded


def test_nnseq2seq_unknown_channel(tmp_path):
    root = _nnseq2seq(tmp_path / "D")
    with pytest.raises(DataError, match=r"dataset\.json: channel name\(s\) \['flair'\] not among"):
        list_nnseq2seq_cases(root, sequences=["t1", "t1ce", "t2"])
    (root / "dataset.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        list_nnseq2seq_cases(root)


def test_paper_normalisation_known_answer():
    x = torch.arange(1, 101, dtype=torch.float32).reshape(1, 10, 10, 1)
    x = MetaTensor(x, affine=torch.eye(4))
    out = ScalePercentiled("t1", **PAPER)({"t1": x})
    p99 = np.percentile(np.arange(1, 101), 99)  # 99.01
    lo, hi, b0, b1 = out["t1_scale"]
    assert lo == 0 and hi == pytest.approx(2 * p99)
    # x -> x / p99 - 1 inside the range
    np.testing.assert_allclose(out["t1"].numpy().ravel(), np.arange(1, 101) / p99 - 1, atol=1e-6)
    assert out["t1"].max() <= 1 and out["t1"].min() >= -1


def test_nnseq2seq_normalisation_range_and_clip():
    v = np.concatenate([np.linspace(0, 100, 1000), [1e6]]).astype(np.float32)
    t = ScalePercentiled("x", lower_percentile=0.5, upper_percentile=99.5, upper_factor=1.25, b_min=0, b_max=1)
    y = t({"x": torch.as_tensor(v)})["x"]
    assert float(y.min()) == 0.0 and float(y.max()) == 1.0  # the outlier is clipped
    # known answer: lo = p0.5, hi = 1.25 x p99.5 of the non-zero voxels, mapped linearly in between
    nz = v[v != 0]
    lo, hi = np.percentile(nz, 0.5), 1.25 * np.percentile(nz, 99.5)
    expected = np.clip((v - lo) / (hi - lo), 0, 1)
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-5, atol=1e-6)
    assert float(y[500]) == pytest.approx((v[500] - lo) / (hi - lo), rel=1e-5)  # 50.05 -> inside the range


def test_signed_normalisation_keeps_zero_and_sign():
    """A difference map (DCE wash-out) is scaled on (-h, h): h = 2 x p99 of |x|, 0 -> 0, the sign
    kept; its noiseless twin follows it; a signed image scaled with an unsigned reference gets
    (-hi, hi) of the reference; the inverse is exact inside the range."""
    v = np.concatenate([np.linspace(-40, 40, 801), np.zeros(99)]).astype(np.float32)
    ref = np.linspace(0, 200, 900).astype(np.float32)
    t = ScalePercentiled(["w", "w_noiseless", "u", "c"], ref_keys=[None, "w", "r", None], signed_keys=["w", "u"], **PAPER)
    d = t({"w": MetaTensor(torch.as_tensor(v)), "w_noiseless": torch.as_tensor(v / 2), "u": torch.as_tensor(v),
           "r": torch.as_tensor(ref), "c": torch.as_tensor(np.abs(v))})
    h = 2 * np.percentile(np.abs(v[v != 0]), 99)
    assert d["w_scale"][:2] == (pytest.approx(-h), pytest.approx(h))
    np.testing.assert_allclose(d["w"].numpy(), v / h, atol=1e-6)  # 0 -> 0, -x -> -(x / h)
    np.testing.assert_allclose(d["w_noiseless"].numpy(), v / 2 / h, atol=1e-6)  # the twin: the same range
    hr = 2 * np.percentile(ref[ref != 0], 99)
    assert d["u_scale"][:2] == (pytest.approx(-hr), pytest.approx(hr))
    np.testing.assert_allclose(d["u"].numpy(), v / hr, atol=1e-6)
    assert d["c_scale"][0] == 0 and float(d["c"].min()) == -1.0  # unsigned keys unchanged
    back = t.inverse({"w": d["w"]})["w"]
    np.testing.assert_allclose(np.asarray(back), v, atol=1e-4)


def test_normalisation_inverse_round_trip(tmp_path):
    arr = np.random.default_rng(0).uniform(0, 500, (8, 8, 4)).astype(np.float32)
    f = save_nifti(arr, np.eye(4), tmp_path / "C_t1.nii.gz")
    pre = Compose([LoadSequencesd(["t1"]), ScalePercentiled(["t1"], **PAPER)])
    d = pre({"t1": str(f)})
    back = pre.inverse(d)["t1"]
    lo, hi = d["t1_scale"][:2]
    np.testing.assert_allclose(back[0].numpy(), np.clip(arr, lo, hi), rtol=1e-5, atol=1e-3)


def test_ref_keys_share_statistics():
    noisy = torch.linspace(1, 100, 200)
    clean = noisy * 0.5
    out = ScalePercentiled(["t1", "t1_noiseless"], ref_keys=[None, "t1"])({"t1": noisy, "t1_noiseless": clean})
    assert out["t1_scale"] == out["t1_noiseless_scale"]


def test_slab_extraction():
    vol = torch.arange(4 * 5 * 6, dtype=torch.float32).reshape(1, 4, 5, 6)
    assert slab_indices(0, 3, 6) == [0, 0, 1] and slab_indices(5, 3, 6) == [4, 5, 5]
    slab = extract_slab(vol, 2, 3)
    assert slab.shape == (3, 4, 5)
    torch.testing.assert_close(slab[1], vol[0, :, :, 2])
    assert extract_slab(vol, -1, 0).shape == (1, 4, 5, 6)


def test_random_pairs_use_only_available_sequences(brats_dir):
    case = LoadSequencesd(SEQS)(list_brats_cases(brats_dir)[1])  # t1 and t2 only
    t = RandSequencePaird(SEQS, num_slices=3, num_samples=64, central_slices=4)
    t.set_random_state(0)
    samples = t(case)
    assert len(samples) == 64
    codes = {(int(s["src_code"]), int(s["tgt_code"])) for s in samples}
    assert codes == {(0, 0), (0, 2), (2, 0), (2, 2)}  # all four combinations of t1/t2 occur
    assert all(4 <= s["slice"] < 8 for s in samples)  # central 4 of 12 slices
    s = samples[0]
    assert s["image"].shape == (3, 16, 20)
    k = s["slice"]
    # sequence i of the fixture is base * (i + 1): the target slab is the source slab scaled
    ratio = (int(s["tgt_code"]) + 1) / (int(s["src_code"]) + 1)
    torch.testing.assert_close(s["label"], s["image"] * ratio)
    torch.testing.assert_close(s["image"][1], case[s["src_name"]][0, :, :, k].as_tensor())


def test_random_pairs_are_reproducible(brats_dir):
    case = LoadSequencesd(SEQS)(list_brats_cases(brats_dir)[0])
    draws = []
    for _ in range(2):
        t = RandSequencePaird(SEQS, num_slices=1, num_samples=8)
        t.set_random_state(42)
        draws.append([(int(s["src_code"]), int(s["tgt_code"]), s["slice"]) for s in t(case)])
    assert draws[0] == draws[1]


def test_validation_pairs_and_3d(brats_dir):
    case = LoadSequencesd(SEQS)(list_brats_cases(brats_dir)[0])
    pairs = SequencePairsd(SEQS, num_slices=3, slices_per_case=2)(case)
    assert len(pairs) == 2 * 12  # 2 slices x 4 x 3 ordered pairs
    vol = SequencePairsd(SEQS, num_slices=0, include_identity=True)(case)
    assert len(vol) == 16 and vol[0]["image"].shape == (1, 16, 20, 12) and vol[0]["slice"] == -1


def test_missing_everything_raises():
    with pytest.raises(DataError, match="none of the sequences"):
        RandSequencePaird(SEQS)({"case": "X"})


def test_written_nifti_reads_back(tmp_path):
    arr = np.random.default_rng(1).normal(size=(5, 6, 7)).astype(np.float32)
    aff = np.diag([1.5, 1.5, 3.0, 1.0])
    f = save_nifti(arr, aff, tmp_path / "sub" / "x.nii.gz")
    img = nib.load(str(f))
    np.testing.assert_array_equal(img.get_fdata(dtype=np.float32), arr)
    np.testing.assert_allclose(img.affine, aff)
    assert not list((tmp_path / "sub").glob(".x.nii.gz*"))  # no temporary left behind


def test_split_cases_is_deterministic_and_disjoint():
    from mrsynth.data import split_cases

    cases = [{"case": f"C{i}"} for i in range(10)]
    tr, va = split_cases(cases, 0.2, seed=3)
    assert len(va) == 2 and len(tr) == 8
    assert not {c["case"] for c in tr} & {c["case"] for c in va}
    assert split_cases(cases, 0.2, seed=3) == (tr, va)
    tr2, va2 = split_cases(cases[:2], 0.01)
    assert len(tr2) == 1 and len(va2) == 1


def test_random_source_subsets(brats_dir):
    from mrsynth.transforms import RandSourceSubsetd

    case = LoadSequencesd(SEQS)(list_brats_cases(brats_dir)[0])  # all four present
    t = RandSourceSubsetd(SEQS, num_slices=3, num_samples=200)
    t.set_random_state(0)
    samples = t(case)
    sizes = set()
    for s in samples:
        m = s["mask"]
        assert s["image"].shape == (12, 16, 20) and m.shape == (4,)
        assert m.sum() >= 1 and m[int(s["tgt_code"])] == 0  # target outside the subset
        assert m[int(s["rec_code"])] == 1
        for i in range(4):
            block = s["image"][3 * i : 3 * i + 3]
            if m[i]:
                torch.testing.assert_close(block, extract_slab(case[SEQS[i]], s["slice"], 3))
            else:
                assert float(block.abs().max()) == 0.0
        sizes.add(int(m.sum()))
    assert sizes == {1, 2, 3}


def test_deterministic_source_subsets(brats_dir):
    from mrsynth.transforms import SourceSubsetsd

    case = LoadSequencesd(SEQS)(list_brats_cases(brats_dir)[1])  # t1 and t2 only
    largest = SourceSubsetsd(SEQS, num_slices=1)(case)
    assert [(s["src_name"], s["tgt_name"]) for s in largest] == [("t2", "t1"), ("t1", "t2")]
    full = LoadSequencesd(SEQS)(list_brats_cases(brats_dir)[0])
    every = SourceSubsetsd(SEQS, num_slices=1, all_subsets=True)(full)
    assert len(every) == 4 * 7  # 4 targets x 7 non-empty subsets of the other three


def test_identity_prob_controls_how_often_target_equals_source(brats_dir):
    case = LoadSequencesd(SEQS)(list_brats_cases(brats_dir)[0])  # all four sequences
    for prob, expected in ((0.0, 0.0), (1.0, 1.0), (0.25, 0.25)):
        t = RandSequencePaird(SEQS, num_slices=1, num_samples=800, identity_prob=prob)
        t.set_random_state(3)
        same = np.mean([int(s["src_code"]) == int(s["tgt_code"]) for s in t(case)])
        assert same == pytest.approx(expected, abs=0.05)
    single = LoadSequencesd(SEQS)(list_brats_cases(brats_dir)[2])  # t2 only: the identity is all there is
    t = RandSequencePaird(SEQS, num_slices=1, num_samples=8, identity_prob=0.0)
    assert all(int(s["src_code"]) == int(s["tgt_code"]) == 2 for s in t(single))
    with pytest.raises(ValueError, match="identity_prob"):
        RandSequencePaird(SEQS, identity_prob=1.5)


def test_bad_input_error_line_and_hook(capsys):
    import sys

    from mrsynth.errors import input_error_line, install_error_hook

    try:
        try:
            raise DataError("3 NaN/Inf voxel(s) in 't1'\nclean the image", "/data/C0/C0_t1.nii.gz")
        except DataError as e:
            raise RuntimeError("Failed to evaluate ConfigExpression") from e
    except RuntimeError as wrapped:
        exc = wrapped
    assert input_error_line(exc) == "error: /data/C0/C0_t1.nii.gz: 3 NaN/Inf voxel(s) in 't1' clean the image"
    assert input_error_line(RuntimeError("x")) is None
    assert input_error_line(FileNotFoundError(2, "No such file", "/m/model.pt")).startswith("error: ")

    calls = []
    saved = sys.excepthook
    try:
        sys.excepthook = lambda *a: calls.append(a[0])
        install_error_hook()
        hook = sys.excepthook
        install_error_hook()  # twice: the same hook, the line printed once
        assert sys.excepthook is hook
        hook(type(exc), exc, None)
        hook(ValueError, ValueError("other"), None)
    finally:
        sys.excepthook = saved
    assert calls == [RuntimeError, ValueError]  # the usual traceback first, for both
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: /data/C0/C0_t1.nii.gz: 3 NaN/Inf voxel(s) in 't1' clean the image"]


def test_written_files_get_the_usual_permissions_not_a_temporary_files(tmp_path):
    """Atomic writes go through a temporary file (owner-only, 0600); the result is readable as a
    plain ``open`` would leave it (0666 less the umask), so that another user (a server) can read it."""
    import os
    import stat

    from mrsynth.metrics import save_pair_grid

    old = os.umask(0o022)
    try:
        f = save_nifti(np.ones((4, 4, 4), np.float32), np.eye(4), tmp_path / "X_t1.nii.gz")
        png = save_pair_grid([("t1 -> t2", np.zeros((8, 8)), np.zeros((8, 8)), np.ones((8, 8)))], tmp_path / "g.png")
        assert stat.S_IMODE(f.stat().st_mode) == stat.S_IMODE(png.stat().st_mode) == 0o644
    finally:
        os.umask(old)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left
