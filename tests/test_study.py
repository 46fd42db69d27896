"""TranslationStudy: multi-step translation, robustness to corruption and the common latent, on the
phantom with tiny untrained networks and an identity network whose answers are known."""

from __future__ import annotations

import csv
import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from mrsynth.data import list_cases
from mrsynth.inferers import SlabInferer
from mrsynth.metrics import psnr
from mrsynth.networks import Seq2Seq
from mrsynth.workflows import TranslationStudy, encode_volume, synthesize_volume
from mrsynth.workflows.study import (ROBUSTNESS_PAIRS, downsample_mask, format_latent, format_multistep,
                                     format_robustness, latent_affine, relative_latent_distance)

SEQS = ["t1", "t1ce", "t2", "flair"]
KINDS = ["noise", "ghosting"]
STRENGTHS = (0, 2)


class Identity(nn.Module):
    """A 'synthesis' network that returns its input; its latent is the input too."""

    def forward(self, x, code):
        return x

    def encode(self, x):
        return x


def tiny_seq2seq(seed: int) -> Seq2Seq:
    torch.manual_seed(seed)
    return Seq2Seq(spatial_dims=2, in_channels=3, out_channels=3, channels=(8, 16), num_res_blocks=1, num_kernels=2,
                   code_dim=8)


def inferer() -> SlabInferer:
    return SlabInferer(num_slices=3, batch_size=8, divisible_by=2)


def read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def cases(phantom):
    return list_cases(phantom, SEQS)


@pytest.fixture(scope="module")
def study(cases, tmp_path_factory):
    """One run on the first (complete) case: two tiny Seq2Seq and the identity."""
    assert all(s in cases[0] for s in SEQS)
    nets = {"a": tiny_seq2seq(0), "b": tiny_seq2seq(1), "identity": Identity()}
    st = TranslationStudy(nets, inferer(), SEQS, cases, tmp_path_factory.mktemp("study"), max_cases=1,
                          corruptions=KINDS, strengths=STRENGTHS)
    return st, st.run()


@pytest.fixture(scope="module")
def loaded(study, cases):
    """The first case as the study loads it: (d, avail, vols, clean)."""
    st, _ = study
    d, avail, vols, clean, _ = st.load(cases[0])
    return d, avail, vols, clean


def test_files_and_row_counts(study):
    st, summary = study
    out = st.output_dir
    for name in ("multistep.csv", "robustness.csv", "latent.csv", "study.json", "robustness.png"):
        assert (out / name).is_file(), name
    models = ["a", "b", "identity"]
    rob = read_csv(out / "robustness.csv")
    assert len(rob) == len(models) * len(ROBUSTNESS_PAIRS) * len(KINDS) * len(STRENGTHS)
    assert {(r["source"], r["target"]) for r in rob} == set(ROBUSTNESS_PAIRS)
    assert all(r["psnr_clean_brain"] and r["input_psnr"] for r in rob)
    assert len(read_csv(out / "latent.csv")) == len(models) * 6  # pairs of 4 sequences
    assert json.loads((out / "study.json").read_text())["models"] == models
    assert summary["cases"] == 1 and set(summary["robustness"]) == set(models)
    for m in models:
        assert summary["robustness"][m]["noise"]["0"]["drop_db"] == 0
        assert summary["latent"][m]["distance"] is not None


def test_latent_nifti(study, loaded):
    st, _ = study
    d, *_ = loaded
    h, w, depth = d["t1"].shape[1:]
    src = np.asarray(d["t1"].affine)
    img = nib.load(st.output_dir / "latents" / "a" / "PHANTOM_0000_t2_latent.nii.gz")
    assert img.shape == (math.ceil(h / 2), math.ceil(w / 2), depth, 16)  # channels (8, 16): one 2x down-sampling
    np.testing.assert_allclose(img.affine[:3, :2], 2 * src[:3, :2], atol=1e-5)
    np.testing.assert_allclose(img.affine[:3, 2:], src[:3, 2:], atol=1e-5)
    ident = nib.load(st.output_dir / "latents" / "identity" / "PHANTOM_0000_t2_latent.nii.gz")
    assert ident.shape == (h, w, depth, 3)
    np.testing.assert_allclose(ident.affine, src, atol=1e-5)
    np.testing.assert_allclose(ident.get_fdata()[..., 1], d["t2"][0].numpy(), atol=1e-6)


def test_strength_zero_is_the_uncorrupted_synthesis(study, loaded):
    st, _ = study
    d, _, _, clean = loaded
    rows = [r for r in read_csv(st.output_dir / "robustness.csv")
            if r["model"] == "a" and (r["source"], r["target"]) == ("t2", "flair")]
    pred = synthesize_volume(st.networks["a"], st.inferer, d["t2"], SEQS.index("flair"), "cpu")[0].numpy()
    expected = psnr(pred, clean["flair"], mask=d["brain"])
    zero = [float(r["psnr_clean_brain"]) for r in rows if r["strength"] == "0"]
    assert len(zero) == len(KINDS)
    assert zero == pytest.approx([expected] * len(KINDS), rel=1e-5)
    # the corrupted input is further from its noiseless twin than the clean one
    by = {(r["kind"], r["strength"]): float(r["input_psnr"]) for r in rows}
    for kind in KINDS:
        assert by[(kind, "2")] < by[(kind, "0")]


def test_multistep(study, loaded):
    st, summary = study
    d, _, vols, clean = loaded
    rows = read_csv(st.output_dir / "multistep.csv")
    for m in ("a", "b", "identity"):
        rs = [r for r in rows if r["model"] == m]
        assert [int(r["step"]) for r in rs] == [1, 2, 3]
        assert [r["source"] for r in rs] == ["t1", "t1>t1ce", "t1>t1ce>t2"]
        assert [r["target"] for r in rs] == ["t1ce", "t2", "flair"]
        assert rs[0]["psnr_clean_brain"] == rs[0]["direct_psnr_clean_brain"]  # one step is the direct translation
    for r in (r for r in rows if r["model"] == "identity"):  # the identity's every synthesis is the t1 itself
        expected = psnr(vols["t1"], clean[r["target"]], mask=d["brain"])
        assert float(r["psnr_clean_brain"]) == pytest.approx(expected, rel=1e-5)
        assert float(r["direct_psnr_clean_brain"]) == pytest.approx(expected, rel=1e-5)
        limit = psnr(clean[r["target"]], vols[r["target"]], mask=d["brain"])
        assert float(r["limit"]) == pytest.approx(limit, rel=1e-5)
    assert [s["step"] for s in summary["multistep"]["a"]] == [1, 2, 3]


def test_identity_chain_returns_the_source(study, loaded):
    st, _ = study
    d, *_ = loaded
    for out in st.translate_chain(Identity(), d["t1"], ["t1ce", "t2", "flair"]):
        np.testing.assert_allclose(out, d["t1"][0].numpy(), atol=1e-6)


def test_identity_latent_distance(study, loaded):
    st, _ = study
    d, *_ = loaded
    za = encode_volume(Identity(), d["t1"], 3, "cpu")
    zb = encode_volume(Identity(), d["flair"], 3, "cpu")
    assert za.shape == (3, *d["t1"].shape[1:])
    np.testing.assert_array_equal(za[1], d["t1"][0].numpy())
    assert relative_latent_distance(za, za, d["brain"]) == 0.0
    row = [r for r in read_csv(st.output_dir / "latent.csv")
           if (r["model"], r["seq_a"], r["seq_b"]) == ("identity", "t1", "flair")]
    assert float(row[0]["distance"]) == pytest.approx(relative_latent_distance(za, zb, d["brain"]), rel=1e-5)


def test_relative_latent_distance_known_values():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 40, 40, 4))
    a -= a.mean(axis=(1, 2, 3), keepdims=True)  # zero mean per channel
    assert relative_latent_distance(a, a) == 0.0
    assert relative_latent_distance(a, -a) == pytest.approx(4.0)  # 4 var / var
    assert relative_latent_distance(a, 2 * a) == pytest.approx(0.4)  # var / (0.5 * (1 + 4) var)
    assert relative_latent_distance(10 * a, -10 * a) == pytest.approx(4.0)  # scale-free
    assert relative_latent_distance(a, rng.normal(size=a.shape)) == pytest.approx(2.0, abs=0.05)  # unrelated
    mask = np.zeros(a.shape[1:], bool)
    mask[:20] = True
    b = a.copy()
    b[:, 20:] = 0.0  # differs only outside the mask
    assert relative_latent_distance(a, b, mask) == 0.0
    assert math.isnan(relative_latent_distance(a, b, np.zeros_like(mask)))
    with pytest.raises(ValueError, match="shapes differ"):
        relative_latent_distance(a, a[:2])


def test_encode_volume_pads_and_crops_2d_and_3d():
    vol = torch.rand(1, 10, 11, 5) * 2 - 1
    torch.manual_seed(0)
    net2d = Seq2Seq(spatial_dims=2, in_channels=1, out_channels=1, channels=(4, 8, 8), num_res_blocks=1,
                    num_kernels=2, code_dim=4).eval()
    assert encode_volume(net2d, vol, 1, "cpu", batch_size=2, divisible_by=4).shape == (8, 3, 3, 5)
    net3d = Seq2Seq(spatial_dims=3, in_channels=1, out_channels=1, channels=(4, 8), num_res_blocks=1,
                    num_kernels=2, code_dim=4).eval()
    assert encode_volume(net3d, vol, 0, "cpu", divisible_by=2).shape == (8, 5, 6, 3)
    np.testing.assert_allclose(latent_affine(np.diag([1.0, 2.0, 3.0, 1.0]), (2, 2, 1)), np.diag([2.0, 4.0, 3.0, 1.0]))
    m = np.zeros((5, 5, 2), bool)
    m[4, 0, 1] = True
    assert downsample_mask(m, (2, 2, 1)).shape == (3, 3, 2) and downsample_mask(m, (2, 2, 1))[2, 0, 1]
    with pytest.raises(ValueError):  # not padded to the network's down-sampling factor
        encode_volume(net2d, vol, 1, "cpu", divisible_by=1)


def test_tables(study):
    _, summary = study
    ms, rob, lat = format_multistep(summary), format_robustness(summary), format_latent(summary)
    assert "| a | 3 | t1>t1ce>t2 | flair |" in ms
    assert "| ghosting | 2 | motion ghosts" in rob and "identity PSNRc" in rob
    assert lat.count("\n| ") == 4  # header + 3 models
    assert "no case" in format_multistep({"multistep": {}})


def test_case_with_missing_sequences(cases, tmp_path):
    """A case without FLAIR: no step or pair that needs it, no crash."""
    partial = [c for c in cases if "flair" not in c]
    assert partial, "the phantom fixture drops a sequence somewhere"
    st = TranslationStudy({"identity": Identity()}, inferer(), SEQS, partial[:1], tmp_path, corruptions=["gibbs"],
                          strengths=(0, 1))
    summary = st.run()
    ms = read_csv(tmp_path / "multistep.csv")
    assert [int(r["step"]) for r in ms] == [1, 2]
    assert {(r["source"], r["target"]) for r in read_csv(tmp_path / "robustness.csv")} == {("t1", "t2"), ("t1ce", "t2")}
    assert len(read_csv(tmp_path / "latent.csv")) == 3
    assert summary["latent"]["identity"]["distance"] > 0


def test_checkpoints(cases, tmp_path):
    net = tiny_seq2seq(0)
    kw = dict(inferer=inferer(), sequences=SEQS, cases=cases[:1], output_dir=tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        TranslationStudy({"a": net}, ckpt_paths={"a": str(tmp_path / "missing.pt")}, **kw).prepare()
    trained = tiny_seq2seq(5)
    torch.save(trained.state_dict(), tmp_path / "model.pt")
    TranslationStudy({"a": net}, ckpt_paths={"a": str(tmp_path / "model.pt")}, **kw).prepare()
    for p, q in zip(net.parameters(), trained.parameters()):
        assert torch.equal(p, q)
    assert not net.training


@pytest.mark.parametrize("bad", [dict(chain=("t1", "pd")), dict(corruptions=["blur"]), dict(strengths=(0, 4)),
                                 dict(robustness_pairs=[("t1", "dwi")]), dict(ckpt_paths={"c": None}),
                                 dict(networks={}), dict(networks={"a/b": Identity()})])
def test_invalid_arguments(bad, tmp_path):
    kw = dict(networks={"a": Identity()}, inferer=inferer(), sequences=SEQS, cases=[], output_dir=tmp_path)
    kw.update(bad)
    with pytest.raises(ValueError):
        TranslationStudy(**kw)
