"""The Seq2Seq bundle run as users run it: training (and resuming), MLflow tracking, inference
geometry, evaluation outputs and bad input."""

from __future__ import annotations

import csv
import json
import re
import shutil

import mlflow
import nibabel as nib
import numpy as np
import pytest
import torch

from bundle_utils import BUNDLES, TINY, run_bundle
from mrsynth.engines import Seq2SeqTrainStep
from mrsynth.io import save_nifti
from mrsynth.metrics import psnr
from mrsynth.transforms import PAPER, percentile_range, apply_range

B = "seq2seq"


def test_training_writes_best_model_checkpoint_and_tracking(trained_seq2seq, phantom):
    root, log = trained_seq2seq
    assert (root / "models" / "model.pt").is_file()
    assert [p.name for p in (root / "models").glob("checkpoint*.pt")] == ["checkpoint_checkpoint_epoch=2.pt"]
    losses = [float(x) for x in re.findall(r"train_loss: ([0-9.]+)", log)]
    assert losses and all(np.isfinite(losses))
    assert re.search(r"val_psnr: [0-9.]+", log) and re.search(r"val_ssim: [0-9.]+", log)
    # tracked by default, no flag: the sqlite store under output_dir, readable by the MLflow client
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'eval' / 'mlruns.db'}")
    exp = client.get_experiment_by_name("seq2seq")
    (run,) = client.search_runs([exp.experiment_id])
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) >= 2
    assert len(client.get_metric_history(run.info.run_id, "val_psnr")) == 2
    assert float(run.data.params["learning_rate"]) == pytest.approx(0.001)
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    (config,) = [p for p in arts if p.startswith("config_") and p.endswith(".json")]
    executed = json.loads((root / "eval" / config).read_text())  # MONAI's save_execute_config, overrides applied
    assert executed["max_epochs"] == 2 and executed["dataset_dir"] == str(phantom) and executed["_meta_"]["version"]
    assert "samples" in arts


def test_training_resumes_without_losing_finished_epochs(trained_seq2seq, phantom, tmp_path):
    root, _ = trained_seq2seq
    resumed = tmp_path / "resumed"
    shutil.copytree(root, resumed)
    proc = run_bundle(B, ["train", "quick"], "--dataset_dir", phantom, "--bundle_root", resumed, "--max_epochs", 3,
                      *TINY)
    log = proc.stdout + proc.stderr
    assert "Epoch: 3/3" in log and "Epoch: 1/3" not in log and "Epoch: 2/3" not in log
    assert (resumed / "models" / "checkpoint_checkpoint_epoch=3.pt").is_file()


def test_train_step_loss_is_the_papers_combination():
    """With a network that always outputs zeros, every pass predicts 0: the loss is
    10 * (SL1(0, tgt) + SL1(0, src)) + 10 * SL1(0, src)."""
    src, tgt = torch.full((2, 3, 8, 8), 0.5), torch.full((2, 3, 8, 8), 2.0)
    step = Seq2SeqTrainStep(rec_weight=10, cycle_weight=10)
    out = step.losses(lambda x, c: torch.zeros_like(x), src, tgt, torch.tensor([0, 1]), torch.tensor([2, 3]))
    sl1_src = 0.5 * 0.5**2  # |d| < 1: 0.5 d^2
    sl1_tgt = 2.0 - 0.5  # |d| >= 1: |d| - 0.5
    assert float(out["loss"]) == pytest.approx(10 * (sl1_tgt + sl1_src) + 10 * sl1_src)
    assert float(out["loss_cyc"]) == pytest.approx(sl1_src)


def test_train_step_weights_and_skipped_passes():
    """self_weight weighs the self-reconstruction apart from the target term; a term of weight 0 is
    not computed at all (one forward pass instead of three)."""
    src, tgt = torch.full((2, 3, 8, 8), 0.5), torch.full((2, 3, 8, 8), 2.0)
    calls = []

    def net(x, c):
        calls.append(x.shape[0])
        return torch.zeros_like(x)

    out = Seq2SeqTrainStep(rec_weight=10, self_weight=1, cycle_weight=0).losses(
        net, src, tgt, torch.tensor([0, 1]), torch.tensor([2, 3]))
    assert calls == [4]  # target and self passes batched together, no cycle pass
    assert float(out["loss"]) == pytest.approx(10 * 1.5 + 1 * 0.125)
    assert float(out["loss_target"]) == pytest.approx(1.5) and float(out["loss_self"]) == pytest.approx(0.125)
    calls.clear()
    out = Seq2SeqTrainStep(rec_weight=10, self_weight=0, cycle_weight=0).losses(
        net, src, tgt, torch.tensor([0, 1]), torch.tensor([2, 3]))
    assert calls == [2] and float(out["loss"]) == pytest.approx(15.0) and float(out["loss_cyc"]) == 0.0


def test_train_step_trains_the_trainers_loss_function():
    """The bundle's ``train#trainer#loss_function`` is the loss the step minimises: an L1 given to
    MONAI's SupervisedTrainer replaces the default SmoothL1 in every term."""
    from monai.engines import SupervisedTrainer

    class Zero(torch.nn.Module):  # outputs zeros whatever the code; has a parameter for the optimiser
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x, code):
            return x * self.w

    net = Zero()
    batch = {"image": torch.full((2, 3, 8, 8), 0.5), "label": torch.full((2, 3, 8, 8), 2.0),
             "src_code": torch.tensor([0, 1]), "tgt_code": torch.tensor([2, 3])}
    step = Seq2SeqTrainStep(rec_weight=10, self_weight=1, cycle_weight=0)
    trainer = SupervisedTrainer(device=torch.device("cpu"), max_epochs=1, train_data_loader=[batch], network=net,
                                optimizer=torch.optim.SGD(net.parameters(), lr=0.0), loss_function=torch.nn.L1Loss(),
                                iteration_update=step, decollate=False)
    trainer.run()
    assert float(trainer.state.output["loss"]) == pytest.approx(10 * 2.0 + 1 * 0.5)  # L1, not SmoothL1 (15.125)
    assert isinstance(step.criterion(), torch.nn.L1Loss)
    # the bundle passes its loss_beta to the trainer's SmoothL1
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(BUNDLES / B / "configs" / f) for f in ("train.json", "quick.json")])
    assert parser.get_parsed_content("train#trainer#loss_function").beta == pytest.approx(0.05)
    assert "inferer" not in parser["train#trainer"]


def test_perceptual_loss_without_weights_fails_clearly():
    with pytest.raises(RuntimeError, match="perceptual loss .* pretrained ImageNet weights"):
        Seq2SeqTrainStep(perceptual_weight=0.01)


def test_inference_keeps_geometry_and_uses_available_sources(trained_seq2seq, phantom, tmp_path):
    root, _ = trained_seq2seq
    data = tmp_path / "data"
    shutil.copytree(phantom, data)
    # an oblique affine must survive unchanged
    case = sorted(p for p in data.iterdir() if p.is_dir())[0]
    theta = np.deg2rad(12)
    oblique = np.array([[4 * np.cos(theta), -4 * np.sin(theta), 0, -90], [4 * np.sin(theta), 4 * np.cos(theta), 0, -120],
                        [0, 0, 4, -60], [0, 0, 0, 1]])
    for f in case.glob("*.nii.gz"):
        img = nib.load(str(f))
        save_nifti(np.asarray(img.dataobj), oblique, f, dtype=img.get_data_dtype())
    # a case with only the target itself: reconstructed from it
    solo = data / "SOLO"
    solo.mkdir()
    shutil.copy(case / f"{case.name}_flair.nii.gz", solo / "SOLO_flair.nii.gz") if (case / f"{case.name}_flair.nii.gz").exists() \
        else shutil.copy(next(case.glob("*_t2.nii.gz")), solo / "SOLO_flair.nii.gz")
    out = tmp_path / "out"
    run_bundle(B, ["inference", "quick"], "--dataset_dir", data, "--bundle_root", root, "--output_dir", out,
               "--target", "flair", *TINY[:2])
    cases = sorted(p.name for p in data.iterdir() if p.is_dir())
    for cid in cases:
        syn = out / cid / f"{cid}_flair_syn.nii.gz"
        assert syn.is_file(), syn
        ref = nib.load(str(next((data / cid).glob(f"{cid}_*.nii.gz"))))
        img = nib.load(str(syn))
        assert img.shape == ref.shape
        np.testing.assert_allclose(img.affine, ref.affine, atol=1e-5)
        arr = img.get_fdata()
        assert np.isfinite(arr).all() and arr.max() > 0
        side = json.loads(syn.with_name(f"{cid}_flair_syn.json").read_text())
        if cid == "SOLO":
            assert side["sources"] == ["flair"]
        else:
            assert "flair" not in side["sources"] and side["sources"]
    np.testing.assert_allclose(nib.load(str(out / case.name / f"{case.name}_flair_syn.nii.gz")).affine, oblique, atol=1e-5)


def test_inference_bad_input(trained_seq2seq, phantom, tmp_path):
    root, _ = trained_seq2seq
    proc = run_bundle(B, ["inference", "quick"], "--dataset_dir", phantom, "--bundle_root", root, "--output_dir",
                      tmp_path / "o1", "--target", "dwi", check=False)
    assert proc.returncode != 0 and "unknown sequence 'dwi'" in proc.stderr
    # no weights: a clear message naming the missing file
    proc = run_bundle(B, ["inference", "quick"], "--dataset_dir", phantom, "--bundle_root", tmp_path / "empty",
                      "--output_dir", tmp_path / "o2", check=False)
    assert proc.returncode != 0 and "model.pt: no trained weights" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and "model.pt" in proc.stderr.strip().splitlines()[-1]
    # one unreadable file: with every other sequence as a source, its case goes on without it
    data = tmp_path / "data"
    shutil.copytree(phantom, data)
    bad = sorted(data.glob("*/*_t2.nii.gz"))[0]
    bad.write_bytes(b"garbage")
    cases = len([p for p in data.iterdir() if p.is_dir()])
    out = tmp_path / "o3"
    proc = run_bundle(B, ["inference", "quick"], "--dataset_dir", data, "--bundle_root", root, "--output_dir", out,
                      "--target", "t1")
    assert len(list(out.glob("*/*_t1_syn.nii.gz"))) == cases
    side = json.loads((out / bad.parent.name / f"{bad.parent.name}_t1_syn.json").read_text())
    assert "t2" not in side["sources"] and str(bad) in side["left_out"][0] and "not a gzip file" in side["left_out"][0]
    assert f"source t2 left out: {bad}" in proc.stdout + proc.stderr
    # asked for that file alone: its case is skipped, the others are still written, the error names the file
    out = tmp_path / "o4"
    proc = run_bundle(B, ["inference", "quick"], "--dataset_dir", data, "--bundle_root", root, "--output_dir", out,
                      "--target", "t1", "--source", "t2", check=False)
    assert proc.returncode != 0 and f"{bad.name}" in proc.stderr and "cannot read image" in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]  # one plain line at the end: the file and what is wrong with it
    assert last.startswith("error: ") and str(bad) in last and "not a gzip file" in last and "Traceback" not in last
    written = list(out.glob("*/*_t1_syn.nii.gz"))
    assert len(written) == cases - 1
    assert bad.parent.name not in {p.parent.name for p in written}


def test_evaluation_outputs(trained_seq2seq, phantom, tmp_path):
    root, _ = trained_seq2seq
    out = tmp_path / "ev"
    proc = run_bundle(B, ["train", "quick", "evaluate"], "--dataset_dir", phantom, "--bundle_root", root,
                      "--output_dir", out, *TINY)
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    cases = sorted(p for p in phantom.iterdir() if p.is_dir())
    n_avail = {c.name: len([s for s in ("t1", "t1ce", "t2", "flair") if (c / f"{c.name}_{s}.nii.gz").exists()]) for c in cases}
    assert len(rows) == sum(n * (n - 1) for n in n_avail.values())
    assert all(r["source"] != r["target"] for r in rows)
    assert all(r["lpips"] == "" for r in rows)  # no AlexNet weights here: never a made-up number
    r = rows[0]
    # the noise-floor limit, recomputed independently from the files
    cdir = phantom / r["case"]
    noisy = nib.load(str(cdir / f"{r['case']}_{r['target']}.nii.gz")).get_fdata()
    clean = nib.load(str(cdir / f"{r['case']}_{r['target']}_noiseless.nii.gz")).get_fdata()
    lo, hi = percentile_range(noisy, PAPER["lower_percentile"], PAPER["upper_percentile"], PAPER["upper_factor"])
    expected = psnr(apply_range(clean, lo, hi), apply_range(noisy, lo, hi))
    assert float(r["limit_psnr"]) == pytest.approx(expected, abs=1e-3)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cases"] == len(cases) and summary["lpips"].startswith("LPIPS unavailable")
    assert set(summary["contribution"]["rank_d"]) == {"t1", "t1ce", "t2", "flair"}
    with open(out / "contribution.csv") as f:
        assert [row["sequence"] for row in csv.DictReader(f)] == ["t1", "t1ce", "t2", "flair"]
    assert (out / "contribution.png").stat().st_size > 1000
    maps = sorted((out / "maps").glob("*_diffmap.nii.gz"))
    assert len(maps) == sum(n_avail.values())
    m = nib.load(str(maps[0]))
    assert m.shape == nib.load(str(next(cases[0].glob("*_t1*.nii.gz")))).shape and m.get_fdata().min() >= 0
    assert len(list((out / "maps").glob("*.png"))) > 0
    assert "C_d ranking" in proc.stdout + proc.stderr
    # inside the lesion (labels > 0 of the phantom's _seg) and its BraTS sub-regions (evaluate.json): metrics per
    # row where the case has that region, and a ranking from each region alone
    segs = {c.name: nib.load(str(c / f"{c.name}_seg.nii.gz")).get_fdata() for c in cases}
    seg_cases = {k for k, v in segs.items() if (v > 0).any()}
    assert seg_cases, "the test phantom should hold at least one tumour"
    assert all((r["psnr_tumour"] != "") == (r["case"] in seg_cases) for r in rows)
    assert all((r["psnr_enhancing"] != "") == (segs[r["case"]] == 4).any() for r in rows)
    t = next(r for r in rows if r["case"] in seg_cases)
    assert float(t["psnr_tumour"]) != pytest.approx(float(t["psnr"]), abs=1e-3)
    assert -1 <= float(t["ssim_tumour"]) <= 1
    regions = summary["contribution_regions"]
    assert set(regions) <= {"tumour", "enhancing", "oedema", "necrotic"} and "tumour" in regions
    tr = regions["tumour"]
    assert set(tr["rank_d"]) <= {"t1", "t1ce", "t2", "flair"} and tr["metrics_used"] == ["psnr", "ssim"]
    for name in regions:
        assert (out / f"contribution_{name}.csv").is_file() and (out / f"contribution_{name}.png").stat().st_size > 1000
    # scored against the known answer: noiseless target, tissue contrast, remap baseline, oracle, Rician limit
    for r in rows:
        assert -1 <= float(r["r_brain"]) <= 1 and -1 <= float(r["affine_r_brain"]) <= 1
        assert float(r["oracle_r_brain"]) > 0.8  # tissue fractions explain most of a noiseless image (4 mm)
        if len(cases) > 1:  # the other cases' mean contrast: never above the case's own least-squares fit
            assert 0.3 < float(r["population_oracle_r_brain"]) <= float(r["oracle_r_brain"]) + 1e-9
        assert float(r["limit_rician_psnr"]) > float(r["limit_psnr"])
        assert float(r["psnr_clean"]) != pytest.approx(float(r["psnr"]), abs=1e-3)
    t2 = [r for r in rows if r["target"] == "t2"]
    assert t2 and all(float(r["csf_wm_true"]) > 1.5 for r in t2)  # T2: CSF brighter than WM
    t1 = [r for r in rows if r["target"] == "t1"]
    assert t1 and all(float(r["csf_wm_true"]) < 0.8 for r in t1)  # T1: darker
    assert all("checks" in v for v in summary["pairs"].values())
    assert "remapped by the best a*x+b" in proc.stdout + proc.stderr
    grids = sorted((out / "grids").glob("*.png"))
    assert 1 <= len(grids) <= 2 and grids[0].stat().st_size > 5000
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlruns.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("seq2seq").experiment_id],
                                filter_string="tags.mlflow.runName = 'evaluate'")
    assert "eval_r_brain" in run.data.metrics
    logged = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.csv", "summary.json", "grids"} <= logged
    assert (out / "mlruns").is_dir() and not (BUNDLES / B / "mlruns").exists()  # artifacts beside the db, not in the cwd


@pytest.mark.parametrize("bundle", ["seq2seq", "tsf_seq2seq"])
@pytest.mark.parametrize("text, expected", [("false", False), ("True", True), ("0", False)])
def test_amp_text_reaches_the_engines_as_a_bool(bundle, text, expected):
    """``--amp false`` arrives as the string 'false'; MONAI's trainer and evaluator must get False
    (a GradScaler and fp16 validation would otherwise run on CUDA)."""
    from monai.bundle import ConfigParser

    from bundle_utils import BUNDLES

    parser = ConfigParser()
    parser.read_config(str(BUNDLES / bundle / "configs" / "train.json"))
    parser["amp"] = text
    for key in ("train#trainer#amp", "validate#evaluator#amp"):
        value = parser.get_parsed_content(key)
        assert value is expected and isinstance(value, bool)
