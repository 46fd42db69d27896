"""The TSF-Seq2Seq bundle: layered on a trained Seq2Seq, trained briefly, inference from any
available subset, evaluation with the weight table and TSEM maps."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest
import torch

from bundle_utils import TINY, run_bundle
from mrsynth.engines import TSFTrainStep
from mrsynth.networks import Seq2Seq, TSFSeq2Seq

B = "tsf_seq2seq"


@pytest.fixture(scope="module")
def trained_tsf(trained_seq2seq, phantom, tmp_path_factory):
    s2s_root, _ = trained_seq2seq
    root = tmp_path_factory.mktemp("tsf_bundle")
    proc = run_bundle(B, ["train", "quick"], "--dataset_dir", phantom, "--bundle_root", root,
                      "--seq2seq_ckpt", s2s_root / "models" / "model.pt", "--max_epochs", 1, "--val_interval", 1, *TINY)
    return root, s2s_root, proc.stdout + proc.stderr


@pytest.mark.slow  # runs a bundle command in a new process
def test_missing_seq2seq_checkpoint_is_a_clear_error(phantom, tmp_path):
    proc = run_bundle(B, ["train", "quick"], "--dataset_dir", phantom, "--bundle_root", tmp_path / "b",
                      "--seq2seq_ckpt", tmp_path / "nowhere.pt", "--max_epochs", 1, check=False)
    assert proc.returncode != 0
    assert "nowhere.pt: no trained weights. TSF-Seq2Seq starts from a trained Seq2Seq" in proc.stderr


def test_short_training_run_starts_from_seq2seq_and_keeps_its_encoder(trained_tsf):
    root, s2s_root, log = trained_tsf
    assert (root / "models" / "model.pt").is_file()
    assert "val_psnr" in log
    tsf = torch.load(root / "models" / "model.pt", weights_only=True)
    s2s = torch.load(s2s_root / "models" / "model.pt", weights_only=True)
    enc = [k for k in s2s if k.startswith("encoder.")]
    assert enc and all(torch.equal(tsf[k], s2s[k]) for k in enc)  # frozen encoder
    dec = [k for k in s2s if k.startswith("decoder.")]
    assert any(not torch.equal(tsf[k], s2s[k]) for k in dec)  # the decoder was tuned
    assert any(k.startswith("fusion.") for k in tsf)


def test_train_step_loss_terms():
    net = TSFSeq2Seq(Seq2Seq(channels=(8, 16, 32), num_res_blocks=1, num_kernels=4, code_dim=8, in_channels=1,
                             out_channels=1), num_sequences=3, num_kernels=4, attention_ratio=4)
    x = torch.randn(2, 3, 16, 16)  # 3 sources, 1 channel each, stacked
    mask = torch.tensor([[1.0, 1, 0], [0, 1, 1]])
    tgt = torch.randn(2, 1, 16, 16)
    step = TSFTrainStep(weight=10)
    out = step.losses(net, x, mask, tgt, torch.tensor([2, 0]), torch.tensor([0, 1]))
    full = net.forward_all(x, mask, torch.tensor([2, 0]))
    sl1 = torch.nn.SmoothL1Loss()
    assert float(out["loss_tsem"]) == pytest.approx(float(sl1(full.image, tgt)), rel=1e-5)
    assert float(out["loss_plain"]) == pytest.approx(float(sl1(full.image_plain, tgt)), rel=1e-5)
    rec = net(x, mask, torch.tensor([0, 1]))
    src = torch.stack([x[0, 0:1], x[1, 1:2]])
    assert float(out["loss_rec"]) == pytest.approx(float(sl1(rec, src)), rel=1e-5)
    assert float(out["loss"]) == pytest.approx(10 * float(out["loss_tsem"] + out["loss_plain"] + out["loss_rec"]), rel=1e-5)
    torch.testing.assert_close(out["weights"].sum(1), torch.ones(2))


def test_inference_from_any_available_subset(trained_tsf, phantom, tmp_path):
    root, _, _ = trained_tsf
    out = tmp_path / "out"
    run_bundle(B, ["inference", "quick"], "--dataset_dir", phantom, "--bundle_root", root, "--output_dir", out,
               "--target", "t2", *TINY[:2])
    for case in sorted(p for p in phantom.iterdir() if p.is_dir()):
        syn = out / case.name / f"{case.name}_t2_syn.nii.gz"
        ref = nib.load(str(next(case.glob(f"{case.name}_t*.nii.gz"))))
        img = nib.load(str(syn))
        assert img.shape == ref.shape and np.allclose(img.affine, ref.affine)
        side = json.loads(syn.with_name(f"{case.name}_t2_syn.json").read_text())
        have = [s for s in ("t1", "t1ce", "flair") if (case / f"{case.name}_{s}.nii.gz").exists()]
        assert side["sources"] == have


def test_evaluation_weight_table_and_maps(trained_tsf, phantom, tmp_path):
    root, s2s_root, _ = trained_tsf
    out = tmp_path / "ev"
    run_bundle(B, ["train", "quick", "evaluate"], "--dataset_dir", phantom, "--bundle_root", root,
               "--seq2seq_ckpt", s2s_root / "models" / "model.pt", "--output_dir", out, *TINY)
    with open(out / "weights.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 4 * 7  # every non-empty subset of the other three, for each target
    for r in table:
        w = {s: float(r[f"w_{s}"]) for s in ("t1", "t1ce", "t2", "flair")}
        used = r["sources"].split("+")
        assert sum(w.values()) == pytest.approx(1.0, abs=1e-5)  # 6 significant digits in the CSV
        assert all(w[s] == 0 for s in w if s not in used) and w[r["target"]] == 0
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert {int(r["n_sources"]) for r in rows} == {1, 2, 3}
    # PSNR inside the lesion and its BraTS sub-regions (evaluate.json), where a case has them
    lesion = {p.name for p in phantom.iterdir() if p.is_dir()
              and (nib.load(str(p / f"{p.name}_seg.nii.gz")).get_fdata() > 0).any()}
    assert lesion and all((r["psnr_tumour"] != "") == (r["case"] in lesion) for r in rows)
    assert all(float(r["psnr_tumour"]) != pytest.approx(float(r["psnr"]), abs=1e-3) for r in rows if r["psnr_tumour"])
    assert {"psnr_enhancing", "psnr_oedema", "psnr_necrotic"} <= set(rows[0])
    summary = json.loads((out / "summary.json").read_text())
    t = next(iter(summary["targets"].values()))
    assert set(t["by_num_sources"]) <= {"1", "2", "3"} and "seq2seq_single" in t and t["limit_psnr"] > 0
    assert t["by_num_sources"]["1"]["psnr_tumour"] is not None
    assert (out / "weights.png").stat().st_size > 1000 and (out / "seq2seq_metrics.csv").is_file()
    maps = list((out / "maps").glob("*_tsem.nii.gz"))
    assert maps and nib.load(str(maps[0])).get_fdata().min() >= 0
    # against the known answer, per number of inputs; the remap baseline is fitted on all the inputs
    for r in rows:
        assert -1 <= float(r["r_brain"]) <= 1 and float(r["limit_rician_psnr"]) > float(r["limit_psnr"])
    by_n = {n: [float(r["affine_r_brain"]) for r in rows if r["n_sources"] == n and r["target"] == "t2"] for n in "123"}
    assert np.mean(by_n["3"]) >= np.mean(by_n["1"])  # a linear fit on more sources never fits worse
    assert "checks" in t["by_num_sources"]["1"] and t["limit_rician_psnr"] > t["limit_psnr"]
    assert len(list((out / "grids").glob("*.png"))) >= 1
