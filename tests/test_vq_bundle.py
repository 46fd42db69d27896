"""The VQ-Seq2Seq bundle run as users run it: a short training (MLflow logs the codebook), inference
from any available sequence, the evaluation with the translation study beside a trained Seq2Seq,
TorchScript export and multi-GPU training with gloo."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest
import torch

from bundle_utils import TINY, run_bundle
from test_export import bundle_copy, exported_and_eager, quick_export_command, run_in
from test_multi_gpu import assert_ranks_identical, load_model_pt, train_ddp

B = "vq_seq2seq"

pytestmark = [pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")]


@pytest.fixture(scope="module")
def trained_vq(phantom, tmp_path_factory):
    """Two tiny epochs; the contrastive term and the model's own translations switched on in the second."""
    root = tmp_path_factory.mktemp("vq_bundle")
    proc = run_bundle(B, ["train", "quick"], "--dataset_dir", phantom, "--bundle_root", root, "--max_epochs", 2,
                      "--val_interval", 1, "--contrastive_start_epoch", 2, "--translate_start_epoch", 2,
                      "--translate_prob", 0.5, *TINY)
    return root, proc.stdout + proc.stderr


def test_short_training_run_tracks_the_codebook(trained_vq):
    root, log = trained_vq
    assert (root / "models" / "model.pt").is_file() and "val_psnr" in log
    state = torch.load(root / "models" / "model.pt", weights_only=True)
    assert state["quantizer.embedding.weight"].shape == (256, 3)
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'eval' / 'mlruns.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("vq_seq2seq").experiment_id])
    perplexity = [m.value for m in client.get_metric_history(run.info.run_id, "codebook_perplexity")]
    usage = [m.value for m in client.get_metric_history(run.info.run_id, "codebook_usage")]
    assert perplexity and min(perplexity) > 1.0 and usage and 0 < max(usage) <= 1
    assert client.get_metric_history(run.info.run_id, "train_loss_latent")
    assert run.data.params["codebook_size"] == "256" and run.data.params["pairs"] == "per_case"


def test_inference_from_any_available_sequence(trained_vq, phantom, tmp_path):
    root, _ = trained_vq
    out = tmp_path / "out"
    run_bundle(B, ["inference", "quick"], "--dataset_dir", phantom, "--bundle_root", root, "--output_dir", out,
               "--target", "t2", "--source", "t1")
    for case in sorted(p for p in phantom.iterdir() if p.is_dir()):
        src = case / f"{case.name}_t1.nii.gz"
        if not src.exists():
            continue
        img = nib.load(str(out / case.name / f"{case.name}_t2_syn.nii.gz"))
        ref = nib.load(str(src))
        data = np.asarray(img.dataobj)
        assert data.shape == ref.shape and np.isfinite(data).all() and data.std() > 0
        np.testing.assert_allclose(img.affine, ref.affine, atol=1e-5)


def test_evaluation_with_the_translation_study(trained_vq, trained_seq2seq, phantom, tmp_path):
    root, _ = trained_vq
    s2s_root, _ = trained_seq2seq
    out = tmp_path / "eval"
    run_bundle(B, ["train", "quick", "evaluate"], "--dataset_dir", phantom, "--bundle_root", root, "--output_dir", out,
               "--seq2seq_ckpt", s2s_root / "models" / "model.pt", "--study_cases", 1, *TINY[:2], timeout=900)
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert rows and all(r["source"] != r["target"] for r in rows) and all(r["r_brain"] for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pairs"] and "contribution" in summary
    study = out / "study"
    robust = list(csv.DictReader(open(study / "robustness.csv")))
    assert {r["model"] for r in robust} == {"vq_seq2seq", "seq2seq"}
    assert {int(r["strength"]) for r in robust} == {0, 1, 2, 3}
    assert (study / "multistep.csv").is_file() and (study / "latent.csv").is_file()
    latents = sorted((study / "latents" / "vq_seq2seq").glob("*_latent.nii.gz"))
    assert latents and nib.load(str(latents[0])).shape[-1] == 3  # the 3 channels of the quantized latent
    assert (study / "robustness.png").is_file()


def test_torchscript_export_matches_checkpoint(trained_vq, tmp_path):
    root, _ = trained_vq
    bundle = bundle_copy(B, root, tmp_path / B)
    run_in(bundle, quick_export_command(B))
    ts, meta, _, net = exported_and_eager(bundle)
    assert meta["version"] == json.loads((bundle / "configs" / "metadata.json").read_text())["version"]
    image = torch.rand(3, 3, 48, 40, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        for code in (torch.tensor([0, 3, 2]), torch.tensor([1])):
            torch.testing.assert_close(ts(image, code), net(image, code), atol=1e-5, rtol=0)
        torch.testing.assert_close(ts.encode(image), net.encode(image), atol=1e-5, rtol=0)


@pytest.mark.slow  # two processes train
def test_multi_gpu_training_keeps_ranks_and_codebooks_in_sync(phantom, tmp_path):
    root = tmp_path / "vq_ddp"
    log = train_ddp(B, phantom, root)
    final = assert_ranks_identical(root, log)  # the EMA codebook too: it is in the state dict
    assert "quantizer.embedding.weight" in final
    best = load_model_pt(B, root)
    assert best.keys() == final.keys()
