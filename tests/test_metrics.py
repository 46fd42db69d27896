"""Tests of mrsynth.metrics against answers computed by hand."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from mrsynth.errors import DataError
from mrsynth.metrics import (
    LPIPS,
    check_lpips_weights,
    contribution_matrix,
    contribution_ranking,
    differentiation_map,
    lpips_backbone_path,
    noise_floor_psnr,
    normalize_like_paper,
    per_slice,
    psnr,
    save_map_preview,
    ssim,
    write_contribution,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- PSNR


def test_psnr_constant_error_by_hand():
    # MSE = 0.1^2 = 0.01; PSNR = 10 log10(2^2 / 0.01) = 10 log10(400) = 26.0206 dB
    pred = np.zeros((8, 8, 4))
    target = np.full((8, 8, 4), 0.1)
    assert psnr(pred, target) == pytest.approx(10 * math.log10(400), abs=1e-9)
    assert psnr(pred, target) == pytest.approx(26.0206, abs=1e-4)


def test_psnr_accepts_torch_and_identical_is_inf():
    a = torch.linspace(-1, 1, 64).reshape(8, 8)
    assert psnr(a, a.clone()) == math.inf
    assert psnr(torch.zeros(4, 4), torch.full((4, 4), 0.1)) == pytest.approx(26.0206, abs=1e-4)


def test_masked_psnr_ignores_errors_outside_mask():
    pred = np.zeros((6, 6))
    target = np.full((6, 6), 0.1)
    mask = np.zeros((6, 6), bool)
    mask[1:4, 1:4] = True
    target[~mask] = 0.9  # large errors outside the mask only
    assert psnr(pred, target, mask=mask) == pytest.approx(26.0206, abs=1e-4)
    # unmasked: MSE = (9 * 0.01 + 27 * 0.81) / 36 = 0.61; 10 log10(4 / 0.61) = 8.1673 dB
    assert psnr(pred, target) == pytest.approx(10 * math.log10(4 / 0.61), abs=1e-9)
    # a channel-first mask (1, H, W) also fits
    assert psnr(pred, target, mask=mask[None]) == pytest.approx(26.0206, abs=1e-4)


def test_psnr_errors():
    with pytest.raises(DataError, match="shape"):
        psnr(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(DataError, match="no voxel"):
        psnr(np.zeros((4, 4)), np.ones((4, 4)), mask=np.zeros((4, 4), bool))


def test_noise_floor_psnr_by_hand():
    # noise of +-0.05 everywhere: MSE = 0.0025, limit = 10 log10(4 / 0.0025) = 10 log10(1600) = 32.0412 dB
    noiseless = np.linspace(-0.8, 0.8, 100).reshape(10, 10)
    sign = np.where(np.arange(100).reshape(10, 10) % 2 == 0, 1.0, -1.0)
    noisy = noiseless + 0.05 * sign
    assert noise_floor_psnr(noiseless, noisy) == pytest.approx(10 * math.log10(1600), abs=1e-9)
    assert noise_floor_psnr(noiseless, noisy) == pytest.approx(psnr(noiseless, noisy))


# ----------------------------------------------------------------------------- SSIM and slices


def _random_pair(shape, seed=0):
    rng = np.random.default_rng(seed)
    target = np.clip(rng.normal(0, 0.4, shape), -1, 1)
    pred = np.clip(target + rng.normal(0, 0.1, shape), -1, 1)
    return pred, target


def test_ssim_identical_is_one():
    _, target = _random_pair((16, 16, 8))
    assert ssim(target, target.copy()) == pytest.approx(1.0)
    assert ssim(target, target.copy(), axis=-1) == pytest.approx(1.0)


def test_ssim_per_slice_equals_skimage_on_each_slice():
    pred, target = _random_pair((16, 12, 8))
    expected = [
        structural_similarity(pred[..., k], target[..., k], data_range=2.0, win_size=7) for k in range(8)
    ]
    values = per_slice(ssim, pred, target, axis=-1)
    assert values.shape == (8,)
    np.testing.assert_allclose(values, expected, rtol=1e-12)
    assert ssim(pred, target, axis=-1) == pytest.approx(np.mean(expected))
    # the papers' tables sum the per-slice values
    assert values.sum() == pytest.approx(np.sum(expected))
    # n-D SSIM when axis is None
    assert ssim(pred, target) == pytest.approx(structural_similarity(pred, target, data_range=2.0, win_size=7))
    # a MONAI channel-first (1, H, W, D) tensor gives the same answer
    assert ssim(torch.from_numpy(pred)[None], torch.from_numpy(target)[None], axis=-1) == pytest.approx(np.mean(expected))
    # a side smaller than the window is a clear error, not a skimage traceback
    with pytest.raises(DataError, match="win_size"):
        ssim(pred[..., :5], target[..., :5])


def test_per_slice_psnr_with_mask():
    pred = np.zeros((4, 4, 3))
    target = np.zeros((4, 4, 3))
    target[..., 0] = 0.1  # slice 0: MSE 0.01 -> 26.0206 dB
    target[..., 1] = 0.2  # slice 1: MSE 0.04 -> 10 log10(100) = 20 dB
    values = per_slice(psnr, pred, target, axis=-1)
    assert values[0] == pytest.approx(26.0206, abs=1e-4)
    assert values[1] == pytest.approx(20.0)
    assert values[2] == math.inf
    mask = np.ones((4, 4, 3), bool)
    mask[..., 2] = False  # empty slice -> NaN
    masked = per_slice(psnr, pred, target, axis=-1, mask=mask)
    assert np.isnan(masked[2]) and masked[1] == pytest.approx(20.0)


def test_normalize_like_paper_by_hand():
    ref = np.concatenate([np.zeros(50), np.arange(1, 101, dtype=float)])
    # p99 of the non-zero voxels 1..100 (linear interpolation): position 0.99 * 99 = 98.01,
    # so 99 + 0.01 * (100 - 99) = 99.01
    p99 = 99.01
    x = np.array([0.0, p99, 2 * p99, 500.0, -3.0])
    out = normalize_like_paper(x, ref=ref)
    np.testing.assert_allclose(out, [-1.0, 0.0, 1.0, 1.0, -1.0], atol=1e-12)
    # default reference is x itself
    np.testing.assert_allclose(normalize_like_paper(ref)[-1], 100 / p99 - 1)
    assert normalize_like_paper(ref.astype(np.float32)).dtype == np.float32
    with pytest.raises(DataError):
        normalize_like_paper(np.zeros(5))


# ----------------------------------------------------------------------------- LPIPS


def test_lpips_unavailable_reports_path_and_returns_none(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache, whatever this machine has
    expected = tmp_path / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    assert lpips_backbone_path("alex") == expected
    ok, reason = check_lpips_weights("alex")
    assert not ok and str(expected) in reason
    metric = LPIPS(net="alex", device="cpu")
    assert metric.available is False
    assert metric.reason.startswith("LPIPS unavailable: AlexNet ImageNet weights not found at")
    assert str(expected) in metric.reason
    pred, target = _random_pair((16, 16, 2))
    assert metric(pred, target) is None


def test_lpips_corrupt_checkpoint_is_unavailable_not_random(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = lpips_backbone_path("alex")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a checkpoint")
    assert check_lpips_weights("alex")[0] is True
    metric = LPIPS(net="alex")
    assert metric.available is False and "building the alex network failed" in metric.reason
    assert metric(np.zeros((16, 16)), np.zeros((16, 16))) is None


class _FakeBackbone(torch.nn.Module):
    """Stands in for the lpips network: mean |a - b| per sample, shape (B, 1, 1, 1)."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, a, b):
        self.seen.append(tuple(a.shape))
        return (a - b).abs().mean(dim=(1, 2, 3), keepdim=True)


def test_lpips_available_path_slices_and_averages(monkeypatch):
    fake = _FakeBackbone()
    monkeypatch.setattr(LPIPS, "_check", lambda self: (True, ""))
    monkeypatch.setattr(LPIPS, "_build", lambda self: fake)
    metric = LPIPS(batch_size=2)
    assert metric.available and metric.reason == ""
    pred = np.zeros((8, 8, 3))
    target = np.zeros((8, 8, 3))
    target[..., 0] = 0.3  # per-slice mean |diff| = 0.3, 0.0, 0.6
    target[..., 2] = -0.6
    assert metric(pred, target) == pytest.approx((0.3 + 0.0 + 0.6) / 3)
    assert metric(pred, target, reduction="sum") == pytest.approx(0.9)
    np.testing.assert_allclose(metric(pred, target, reduction="none"), [0.3, 0.0, 0.6], rtol=1e-6)
    # grey repeated to 3 channels, batches of 2 slices: (2, 3, 8, 8) then (1, 3, 8, 8)
    assert fake.seen[:2] == [(2, 3, 8, 8), (1, 3, 8, 8)]
    # slicing along the first axis
    assert metric(pred, target, axis=0) == pytest.approx((0.3 + 0.0 + 0.6) / 3)


# ----------------------------------------------------------------------------- contribution

# Three sequences a, b, c; the six off-diagonal pairs in this order:
PAIRS = [("a", "b"), ("a", "c"), ("b", "a"), ("b", "c"), ("c", "a"), ("c", "b")]
# Values built as mean + std * z with z = +-1 (three of each), so population z-scores are exact:
#   PSNR  = 30   + 2    * zP, zP = (+1, +1, +1, -1, -1, -1)  -> 32 32 32 28 28 28 (mean 30, std 2)
#   SSIM  = 0.85 + 0.05 * zS, zS = (+1, +1, -1, +1, -1, -1)  -> .90 .90 .80 .90 .80 .80
#   LPIPS = 0.10 + 0.02 * zL, zL = (-1, +1, -1, -1, +1, +1)  -> .08 .12 .08 .08 .12 .12
Z_P = [1, 1, 1, -1, -1, -1]
Z_S = [1, 1, -1, 1, -1, -1]
Z_L = [-1, 1, -1, -1, 1, 1]


def _records(with_lpips=True):
    recs = []
    for (s, t), zp, zs, zl in zip(PAIRS, Z_P, Z_S, Z_L):
        r = {"source": s, "target": t, "psnr": 30 + 2 * zp, "ssim": 0.85 + 0.05 * zs}
        if with_lpips:
            r["lpips"] = 0.10 + 0.02 * zl
        recs.append(r)
    return recs


def test_contribution_ranking_by_hand():
    # A = zP + zS - zL per pair:
    #   a->b: 1 + 1 - (-1) =  3     a->c: 1 + 1 - 1 =  1
    #   b->a: 1 - 1 - (-1) =  1     b->c: -1 + 1 - (-1) = 1
    #   c->a: -1 - 1 - 1   = -3     c->b: -1 - 1 - 1 = -3
    expected_a = np.array([[0, 3, 1], [1, 0, 1], [-3, -3, 0]], float)
    # C_t(i) = row sum / 3:      a = 4/3, b = 2/3, c = -6/3 = -2
    # C_d(i) = -column sum / 3:  a = -(1 - 3)/3 = 2/3, b = -(3 - 3)/3 = 0, c = -(1 + 1)/3 = -2/3
    res = contribution_ranking(_records(), ["a", "b", "c"])
    np.testing.assert_allclose(res["A"], expected_a, atol=1e-9)
    np.testing.assert_allclose(res["C_t"], [4 / 3, 2 / 3, -2], atol=1e-9)
    np.testing.assert_allclose(res["C_d"], [2 / 3, 0, -2 / 3], atol=1e-9)
    assert res["rank_t"] == ["a", "b", "c"]
    assert res["rank_d"] == ["a", "b", "c"]
    assert res["metrics_used"] == ("psnr", "ssim", "lpips")
    np.testing.assert_allclose(contribution_matrix(_records(), ["a", "b", "c"]), expected_a, atol=1e-9)


def test_contribution_averages_records_ignores_diagonal_and_drops_missing_lpips():
    recs = _records()
    # split a->b (PSNR 32, SSIM .90, LPIPS .08) into two records with the same means
    ab = recs.pop(0)
    recs.append({**ab, "psnr": 31.0, "ssim": 0.95, "lpips": 0.06})
    recs.append({**ab, "psnr": 33.0, "ssim": 0.85, "lpips": 0.10})
    recs.append({"source": "a", "target": "a", "psnr": 60.0, "ssim": 1.0, "lpips": 0.0})  # ignored
    res = contribution_ranking(recs, ["a", "b", "c"])
    np.testing.assert_allclose(res["A"], [[0, 3, 1], [1, 0, 1], [-3, -3, 0]], atol=1e-9)
    assert res["pairs"][("a", "b")]["n"] == 2

    # one LPIPS missing -> LPIPS dropped everywhere: A = zP + zS
    #   a->b 2, a->c 2, b->a 0, b->c 0, c->a -2, c->b -2
    #   C_t = (4/3, 0, -4/3); C_d = -(col sums)/3 = (-(0 - 2), -(2 - 2), -(2 + 0))/3 = (2/3, 0, -2/3)
    recs = _records()
    recs[3]["lpips"] = None
    res = contribution_ranking(recs, ["a", "b", "c"])
    assert res["metrics_used"] == ("psnr", "ssim")
    np.testing.assert_allclose(res["A"], [[0, 2, 2], [0, 0, 0], [-2, -2, 0]], atol=1e-9)
    np.testing.assert_allclose(res["C_t"], [4 / 3, 0, -4 / 3], atol=1e-9)
    np.testing.assert_allclose(res["C_d"], [2 / 3, 0, -2 / 3], atol=1e-9)
    assert contribution_ranking(_records(with_lpips=False), ["a", "b", "c"])["metrics_used"] == ("psnr", "ssim")


def test_hard_to_generate_sequence_ranks_first_in_c_d():
    seqs = ["t1", "t1ce", "t2", "flair"]
    rng = np.random.default_rng(1)
    recs = []
    for s in seqs:
        for t in seqs:
            if s == t:
                continue
            hard = t == "t1ce"  # nothing else shows the contrast agent: low scores as a target
            recs.append({
                "source": s,
                "target": t,
                "psnr": (22.0 if hard else 28.0) + rng.uniform(-0.5, 0.5),
                "ssim": (0.75 if hard else 0.88) + rng.uniform(-0.01, 0.01),
                "lpips": (0.20 if hard else 0.10) + rng.uniform(-0.01, 0.01),
            })
    res = contribution_ranking(recs)  # sequences taken from the records, in SEQUENCES order
    assert res["sequences"] == seqs
    assert res["rank_d"][0] == "t1ce"
    assert res["C_d"][1] > 0 > max(res["C_d"][[0, 2, 3]])


def test_contribution_errors():
    with pytest.raises(DataError, match="not one of"):
        contribution_ranking(_records(), ["a", "b"])
    with pytest.raises(DataError, match="appear in no record"):
        contribution_ranking(_records(), ["a", "b", "c", "d"])
    with pytest.raises(DataError, match="off-diagonal"):
        contribution_ranking([{"source": "a", "target": "a", "psnr": 30, "ssim": 0.9}], ["a"])
    with pytest.raises(DataError, match="needs keys"):
        contribution_ranking([{"source": "a", "target": "b", "psnr": 30}], ["a", "b"])


def test_write_contribution_files_read_back(tmp_path):
    res = contribution_ranking(_records(), ["a", "b", "c"])
    csv_path, png_path = write_contribution(res, tmp_path / "out" / "contribution.csv", tmp_path / "out" / "c.png")
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["sequence"] for r in rows] == ["a", "b", "c"]
    assert list(rows[0]) == ["sequence", "C_t", "C_d", "rank_t", "rank_d"]
    np.testing.assert_allclose([float(r["C_t"]) for r in rows], [4 / 3, 2 / 3, -2], atol=1e-8)
    np.testing.assert_allclose([float(r["C_d"]) for r in rows], [2 / 3, 0, -2 / 3], atol=1e-8)
    assert [int(r["rank_t"]) for r in rows] == [1, 2, 3]
    assert [int(r["rank_d"]) for r in rows] == [1, 2, 3]
    assert png_path.read_bytes()[:8] == PNG_MAGIC
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["c.png", "contribution.csv"]  # no temp files left


# ----------------------------------------------------------------------------- maps


def test_differentiation_map_by_hand(tmp_path):
    target = np.linspace(-1, 1, 24).reshape(2, 3, 4)
    from_t2 = target + 0.2  # |error| 0.2 everywhere
    from_flair = target.copy()  # the target's own reconstruction: perfect ...
    from_flair[1, 2, 3] -= 0.6  # ... except one voxel, |error| 0.6
    md = differentiation_map({"t2": from_t2, "flair": torch.from_numpy(from_flair)}, target)
    expected = np.full((2, 3, 4), (0.2 + 0.0) / 2)  # 0.1
    expected[1, 2, 3] = (0.2 + 0.6) / 2  # 0.4
    assert md.shape == (2, 3, 4) and md.dtype == np.float32
    np.testing.assert_allclose(md, expected, atol=1e-6)
    mask = np.zeros((2, 3, 4), bool)
    mask[1] = True
    md_masked = differentiation_map({"t2": from_t2, "flair": from_flair}, target, mask=mask)
    np.testing.assert_allclose(md_masked[0], 0.0)
    np.testing.assert_allclose(md_masked[1], expected[1], atol=1e-6)
    with pytest.raises(DataError, match="t2"):
        differentiation_map({"t2": np.zeros((2, 3, 5))}, target)
    with pytest.raises(DataError):
        differentiation_map({}, target)


def test_save_map_preview_writes_png(tmp_path):
    vol = np.random.default_rng(0).random((20, 24, 16)).astype(np.float32)
    out = save_map_preview(vol, tmp_path / "maps" / "md_flair.png", title="M_d flair")
    assert out.is_file() and out.read_bytes()[:8] == PNG_MAGIC
    out2 = save_map_preview(torch.from_numpy(vol[..., 0])[None], tmp_path / "slice.png")
    assert out2.read_bytes()[:8] == PNG_MAGIC


def test_masked_ssim_averages_the_ssim_map_inside_the_mask():
    rng = np.random.default_rng(3)
    a = rng.uniform(-1, 1, (20, 18, 4))
    b = a.copy()
    b[10:, :, :] += rng.normal(0, 0.3, (10, 18, 4))  # only the lower half differs
    m = np.zeros(a.shape, bool)
    m[12:18, 4:14, :] = True
    maps = [structural_similarity(a[..., z], b[..., z], data_range=2, win_size=7, full=True)[1] for z in range(4)]
    expected = np.stack(maps, -1)[m].mean()
    assert ssim(b, a, axis=-1, mask=m) == pytest.approx(expected, rel=1e-9)
    top = np.zeros(a.shape, bool)
    top[:3] = True  # a region whose windows see no change
    assert ssim(b, a, axis=-1, mask=top) == pytest.approx(1.0)
    assert ssim(b, a, axis=-1, mask=m) < ssim(b, a, axis=-1) < 1.0
    with pytest.raises(DataError, match="selects no voxel"):
        ssim(b, a, axis=-1, mask=np.zeros(a.shape, bool))
