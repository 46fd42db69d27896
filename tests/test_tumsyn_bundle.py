"""The TUMSyn bundle run as users run it: stage 1 (text encoder) and stage 2 (synthesis) stacked,
inference from a prompt or a named protocol onto a new voxel size, evaluation with held-out
protocols, TorchScript export, torchrun with gloo, and the errors a user meets first."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from bundle_utils import BUNDLES, run_bundle
from test_export import bundle_copy, exported_and_eager, quick_export_command, run_in
from test_multi_gpu import assert_ranks_identical, torchrun

B = "tumsyn"
STAGE1 = ["train_text_encoder", "quick"]
STAGE2 = ["train_text_encoder", "train", "quick"]
TINY = ["--samples_per_case", "1", "--num_points", "300", "--patch_size", "8", "--clip_patch_size", "12"]
FLAIR = ("Modality: FLAIR; Imaging parameter TR(ms), TE(ms), TI(ms), and FA(degree): (9000.0, 110.0, 2481.0, 90.0)")

pytestmark = [pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")]


@pytest.fixture(scope="module")
def protocol_phantom(tmp_path_factory):
    """3 subjects at 4 mm: the named sequences, 2 random protocols (no PD-weighted one) and two
    presets; ``pd_se`` is held out of training by the bundle's default."""
    from mrsynth.data.phantom import write_dataset

    root = tmp_path_factory.mktemp("protocol_phantom")
    write_dataset(root, subjects=3, spacing=4.0, seed=11, protocols=2, presets=["pd_se", "t2_se_te60"],
                  exclude_modalities=["PDw"], progress=False)
    return root


@pytest.fixture(scope="module")
def trained_tumsyn(protocol_phantom, tmp_path_factory):
    """Stage 1 then stage 2, one tiny epoch each, in one bundle root (stage 2 with gradient
    clipping); returns (root, stage-2 log)."""
    root = tmp_path_factory.mktemp("tumsyn_bundle")
    common = ["--dataset_dir", protocol_phantom, "--bundle_root", root, "--max_epochs", 1, "--val_interval", 1, *TINY]
    run_bundle(B, STAGE1, *common)
    proc = run_bundle(B, STAGE2, *common, "--max_grad_norm", 1.0)
    return root, proc.stdout + proc.stderr


def test_both_stages_write_their_weights_and_stage2_keeps_the_text_encoder(trained_tumsyn):
    root, log = trained_tumsyn
    text = torch.load(root / "models" / "text_encoder.pt", weights_only=True)
    model = torch.load(root / "models" / "model.pt", weights_only=True)
    assert text and "val_psnr" in log
    for k, v in text.items():  # frozen in stage 2: the synthesis model carries stage 1's weights unchanged
        torch.testing.assert_close(model[f"text_encoder.{k}"], v, rtol=0, atol=0)
    assert any(k.startswith("decoder.") for k in model) and any(k.startswith("fusion.") for k in model)
    # model.pt: the last epoch's weights (the training checkpoint's); the best validation PSNR's beside it
    (last,) = (root / "models").glob("checkpoint_*epoch=1.pt")
    last = torch.load(last, weights_only=True)["model"]
    assert set(model) == set(last) and all(torch.equal(model[k], last[k]) for k in model)
    assert set(torch.load(root / "models" / "model_best_val.pt", weights_only=True)) == set(model)
    import mlflow

    # a client, not mlflow.set_tracking_uri: that one is process-wide (and exported to the bundles other tests start)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'eval' / 'mlruns.db'}")
    names = {e.name for e in client.search_experiments()}
    assert {"tumsyn_text_encoder", "tumsyn"} <= names
    (run,) = client.search_runs([client.get_experiment_by_name("tumsyn").experiment_id])
    assert {"train_loss", "train_loss_forward", "train_loss_backward", "train_grad_norm"} <= set(run.data.metrics)
    assert float(run.data.params["max_grad_norm"]) == 1.0
    (run1,) = client.search_runs([client.get_experiment_by_name("tumsyn_text_encoder").experiment_id])
    assert {"train_loss", "logit_scale", "train_retrieval_acc"} <= set(run1.data.metrics)


@pytest.mark.slow  # runs a bundle
def test_stage2_without_stage1_names_the_missing_checkpoint(protocol_phantom, tmp_path):
    proc = run_bundle(B, STAGE2, "--dataset_dir", protocol_phantom, "--bundle_root", tmp_path, "--max_epochs", 1,
                      *TINY, check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "text_encoder.pt" in out and "run stage 1 first" in out


def test_inference_from_a_prompt_onto_a_new_voxel_size(trained_tumsyn, protocol_phantom, tmp_path):
    from mrsynth.workflows import resampled_geometry

    root, _ = trained_tumsyn
    out = tmp_path / "out"
    run_bundle(B, ["inference", "quick"], "--dataset_dir", protocol_phantom, "--bundle_root", root,
               "--output_dir", out, "--target_prompt", FLAIR, "--spacing", 2, "--source", "t1", "--roi_size", 16,
               "--points_per_chunk", 5000)
    case = "PHANTOM_0000"
    src = nib.load(protocol_phantom / case / f"{case}_t1.nii.gz")
    syn = nib.load(out / case / f"{case}_flair_syn.nii.gz")
    affine, shape = resampled_geometry(src.affine, src.shape, 2.0)
    assert syn.shape == shape == tuple(2 * n for n in src.shape)
    np.testing.assert_allclose(syn.affine, affine, atol=1e-5)
    # the field of view is kept: the outer voxel edges coincide
    np.testing.assert_allclose(syn.affine @ [-0.5, -0.5, -0.5, 1], src.affine @ [-0.5, -0.5, -0.5, 1], atol=1e-5)
    data = np.asarray(syn.dataobj)
    assert np.isfinite(data).all() and data.std() > 0
    side = json.loads((out / case / f"{case}_flair_syn.json").read_text())
    age = json.loads((protocol_phantom / case / f"{case}_t1.json").read_text())["age"]
    assert "Voxel size: (2.0, 2.0, 2.0)" in side["prompt"] and f"Age: {age};" in side["prompt"]  # subject inherited
    assert side["sources"] == ["t1"]
    # a named protocol without --spacing stays on the source's grid
    run_bundle(B, ["inference", "quick"], "--dataset_dir", protocol_phantom, "--bundle_root", root,
               "--output_dir", out, "--target", "t2_se_te60", "--source", "t1", "--roi_size", 16)
    named = nib.load(out / case / f"{case}_t2_se_te60_syn.nii.gz")
    assert named.shape == src.shape
    np.testing.assert_allclose(named.affine, src.affine, atol=1e-5)


def test_inference_rejects_a_malformed_prompt_naming_the_field(trained_tumsyn, protocol_phantom, tmp_path):
    root, _ = trained_tumsyn
    proc = run_bundle(B, ["inference", "quick"], "--dataset_dir", protocol_phantom, "--bundle_root", root,
                      "--output_dir", tmp_path, "--target_prompt", "Modality: FLAIR; Age: old", check=False)
    assert proc.returncode != 0 and "Age" in proc.stdout + proc.stderr
    assert not list(tmp_path.rglob("*_syn.nii.gz"))


def test_evaluation_scores_a_held_out_protocol(trained_tumsyn, protocol_phantom, tmp_path):
    root, _ = trained_tumsyn
    out = tmp_path / "ev"
    run_bundle(B, ["train_text_encoder", "train", "evaluate", "quick"], "--dataset_dir", protocol_phantom,
               "--bundle_root", root, "--output_dir", out, "--eval_sources", "['t1']",
               "--eval_targets", "['pd_se','flair']", "--roi_size", 16, timeout=900)
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert {(r["source"], r["target"]) for r in rows} == {("t1", "pd_se"), ("t1", "flair")}
    assert len(rows) == 6  # 3 cases x 2 pairs
    for r in rows:
        assert float(r["limit_psnr"]) > float(r["psnr"]) > 0
        assert r["r_brain"] and float(r["oracle_r_brain"]) > 0.5  # the known answer is there for every target
    summary = json.loads((out / "summary.json").read_text())
    assert "t1->pd_se" in summary["pairs"]
    # the picture grid of the first case (map_previews 1): source, synthesis, truth, difference per pair
    grids = sorted((out / "grids").glob("*.png"))
    assert [g.name for g in grids] == ["PHANTOM_0000.png"] and grids[0].stat().st_size > 5000


def test_torchscript_export_matches_checkpoint(trained_tumsyn, tmp_path):
    from mrsynth.inferers import ImplicitSlidingWindowInferer
    from mrsynth.networks import voxel_centers
    from mrsynth.transforms import PromptTokenizer, acquisition_features

    root, _ = trained_tumsyn
    bundle = bundle_copy(B, root, tmp_path / B)
    run_in(bundle, quick_export_command(B))
    ts, meta, _, net = exported_and_eager(bundle)
    assert list(meta["network_data_format"]["inputs"]) == ["image"]
    assert list(meta["network_conditioning"]["inputs"]) == ["tokens", "coords", "acquisition"]
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 1, 10, 12, 9, generator=g)
    tokens = PromptTokenizer()(FLAIR)
    acquisition = acquisition_features(FLAIR)[None]
    coords = voxel_centers((10, 12, 9))[None]
    with torch.no_grad():
        torch.testing.assert_close(ts(image, tokens, coords, acquisition), net(image, tokens, coords, acquisition),
                                   atol=1e-5, rtol=0)
        inferer = ImplicitSlidingWindowInferer(roi_size=6, points_per_chunk=100)
        torch.testing.assert_close(inferer(image, ts, tokens, acquisition, output_shape=(20, 24, 18)),
                                   inferer(image, net, tokens, acquisition, output_shape=(20, 24, 18)), atol=1e-5, rtol=0)


@pytest.mark.slow  # two processes train, twice
def test_multi_gpu_training_of_both_stages_keeps_ranks_in_sync(protocol_phantom, tmp_path):
    root = tmp_path / "ddp"
    common = ["--dataset_dir", protocol_phantom, "--bundle_root", root, "--max_epochs", 1, "--val_interval", 1,
              "--rank_weights_dir", root / "ranks", *TINY]
    run_bundle(B, [*STAGE1, "multi_gpu_train"], *common, cmd=torchrun(), timeout=300)
    assert (root / "models" / "text_encoder.pt").is_file()
    proc = run_bundle(B, [*STAGE2, "multi_gpu_train"], *common, cmd=torchrun(), timeout=300)
    final = assert_ranks_identical(root, proc.stdout + proc.stderr)
    assert any(k.startswith("decoder.") for k in final)


def test_source_protocol_trains_synthesizes_and_evaluates_through_the_bundle(trained_tumsyn, protocol_phantom, tmp_path):
    """source_protocol (with source_mixture): stage 2 on the pairs' two acquisition vectors, then
    the bundle's inference and evaluation, which read the source's protocol from its sidecar; a
    source without a sidecar is an error naming its file, the other cases are still written."""
    import shutil

    root, _ = trained_tumsyn
    new = tmp_path / "bundle"
    ids = ["--signal_head", "true", "--source_mixture", "true", "--source_protocol", "true"]
    run_bundle(B, STAGE2, "--dataset_dir", protocol_phantom, "--bundle_root", new, "--max_epochs", 1, "--val_interval", 1,
               *TINY, "--text_encoder_ckpt", root / "models" / "text_encoder.pt", *ids)
    model = torch.load(new / "models" / "model.pt", weights_only=True)
    assert model["acquisition.mlp.0.weight"].shape[1] == 96 and "readout.weight" in model
    data = tmp_path / "data"
    shutil.copytree(protocol_phantom, data)
    (data / "PHANTOM_0001" / "PHANTOM_0001_t1.json").unlink()
    out = tmp_path / "out"
    proc = run_bundle(B, ["inference", "quick"], "--dataset_dir", data, "--bundle_root", new, "--output_dir", out,
                      "--target", "t2_se_te60", "--source", "t1", "--roi_size", 16, *ids, check=False)
    log = proc.stdout + proc.stderr
    assert "PHANTOM_0001_t1.nii.gz" in log and "source's protocol" in log
    written = sorted(p.name for p in out.rglob("*_syn.nii.gz"))
    assert written == ["PHANTOM_0000_t2_se_te60_syn.nii.gz", "PHANTOM_0002_t2_se_te60_syn.nii.gz"]
    assert np.asarray(nib.load(out / "PHANTOM_0000" / "PHANTOM_0000_t2_se_te60_syn.nii.gz").dataobj).std() > 0
    ev = tmp_path / "ev"
    run_bundle(B, ["train_text_encoder", "train", "evaluate", "quick"], "--dataset_dir", protocol_phantom,
               "--bundle_root", new, "--output_dir", ev, "--eval_sources", "['t1']", "--eval_targets", "['flair']",
               "--roi_size", 16, *ids, timeout=900)
    rows = list(csv.DictReader(open(ev / "metrics.csv")))
    assert len(rows) == 3 and all(r["r_brain"] for r in rows)


def test_configs_share_the_network_and_normalisation():
    """inference.json builds the network and scales intensities as the stacked training configs do."""
    from monai.bundle import ConfigParser

    def parser(names):
        p = ConfigParser()
        p.read_config([str(BUNDLES / B / "configs" / f"{n}.json") for n in names])
        return p

    train, infer = parser(["train_text_encoder", "train"]), parser(["inference"])
    for key in ("context_length", "text_width", "text_heads", "text_layers", "embed_dim", "features", "num_blocks",
                "heads", "adapter_hidden", "decoder_channels", "text_encoder_def", "network_def", "layout",
                "signal_head", "source_mixture", "mixture_scale", "source_skip"):
        assert train[key] == infer[key], key
    def plain(transforms):
        return [{k: v for k, v in t.items() if k != "_desc_"} for t in transforms if "PromptFromSidecard" not in t["_target_"]]

    assert plain(infer["load_transforms"]) == plain(train["load_transforms"])
    quick = json.loads((BUNDLES / B / "configs" / "quick.json").read_text())
    assert all("#" not in k for k in quick), "quick.json must only set top-level ids (it stacks on every config)"


def test_bare_stage2_loop_tool_runs_on_a_study_folder(trained_tumsyn, protocol_phantom, tmp_path):
    """tools/tumsyn_loop.py on a study-shaped folder (data, the stage-1 text encoder): ten steps of
    a variant with the options, then whole-volume r of each pair for both subjects, the training
    batches' L1 with their own and with another cube's target prompt, the physics sweeps, the
    picture and the weights; one step from those weights (``--init``); then two steps with the
    source's acquisition numbers too, on two of the images only (``--images``)."""
    import shutil
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    import tumsyn_loop

    root, _ = trained_tumsyn
    (tmp_path / "bundle" / "models").mkdir(parents=True)
    shutil.copy(root / "models" / "text_encoder.pt", tmp_path / "bundle" / "models")
    for part in ("train", "test"):
        (tmp_path / part).symlink_to(protocol_phantom)
    args = tumsyn_loop.build_parser().parse_args(
        ["--study", str(tmp_path), "--steps", "10", "--every", "10", "--patch", "8", "--points", "200",
         "--query-to-decoder", "--no-identity-pairs", "--scale1", "--targets-per-source", "2",
         "--picture", str(tmp_path / "loop.png"), "--save", str(tmp_path / "loop.pt"), "--sweeps"])
    with pytest.raises(SystemExit, match="source-acquisition"):  # the sweeps' prompts carry the target's numbers only
        tumsyn_loop.run(tumsyn_loop.build_parser().parse_args(["--study", str(tmp_path), "--sweeps", "--source-acquisition"]))
    evals = tumsyn_loop.run(args)
    assert [(s, n) for s, n, _ in evals] == [(10, "training subject"), (10, "test subject"), (10, "prompt gain"),
                                             (10, "sweeps")]
    sweeps = evals[-1][2]  # the study's three sweeps of six protocols, with truths that follow the physics
    assert len(sweeps) == 3 and all(len(rows) == 6 for rows in sweeps.values())
    te = next(rows for title, rows in sweeps.items() if "TE" in title)
    assert te[-1]["truth"]["csf/wm"] > 2 * te[0]["truth"]["csf/wm"]  # long TE: CSF brightens against WM
    assert all(np.isfinite(r["synthesis"]["csf/wm"]) for rows in sweeps.values() for r in rows)
    assert set(torch.load(tmp_path / "loop.pt", weights_only=True)) >= {"decoder.mlp.0.weight", "fusion.film.weight"}
    assert (tmp_path / "loop.png").stat().st_size > 10_000
    gain = evals[2][2]
    assert 0 < gain["own"] < 1 and 0 < gain["other"] < 1 and gain["own"] != gain["other"]
    saved = torch.load(tmp_path / "loop.pt", weights_only=True)  # --init continues from those weights: one step at lr 0 keeps them
    tumsyn_loop.run(tumsyn_loop.build_parser().parse_args(
        ["--study", str(tmp_path), "--steps", "1", "--every", "1", "--patch", "8", "--points", "200", "--query-to-decoder",
         "--lr", "0", "--init", str(tmp_path / "loop.pt"), "--save", str(tmp_path / "again.pt")]))
    again = torch.load(tmp_path / "again.pt", weights_only=True)
    assert all(torch.equal(saved[k], again[k]) for k in saved)  # without --init: the fresh network's weights
    src_acq = tumsyn_loop.run(tumsyn_loop.build_parser().parse_args(
        ["--study", str(tmp_path), "--steps", "2", "--every", "2", "--patch", "8", "--points", "200", "--source-acquisition",
         "--images", "t1", "t2"]))
    assert [(s, n) for s, n, _ in src_acq] == [(2, "training subject"), (2, "test subject")]
    mixture = tumsyn_loop.run(tumsyn_loop.build_parser().parse_args(  # through the bundle's source_mixture id
        ["--study", str(tmp_path), "--steps", "2", "--every", "2", "--patch", "8", "--points", "200", "--source-mixture",
         "--scale1", "--clip", "1", "--save", str(tmp_path / "mixture.pt")]))
    keys = set(torch.load(tmp_path / "mixture.pt", weights_only=True))
    assert "readout.weight" in keys and not any(k.startswith("fusion.") for k in keys)
    for _, _, ev in evals[:2] + src_acq + mixture[:2]:
        assert set(ev) == {f"{s}->{t}" for s, t in tumsyn_loop.PAIRS}
        assert all(-1 <= r <= 1 and -1 <= rs <= 1 for r, rs in ev.values())



def test_study_tool_evaluates_the_last_epoch_on_request(trained_tumsyn, protocol_phantom, tmp_path):
    """tools/tumsyn_study.py --skip-train --weights final: the evaluation, sweeps and report use the
    last epoch's training checkpoint (not models/model.pt) and go to their own files; with no epoch
    checkpoint it is an error naming the folder."""
    import shutil
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    import tumsyn_study

    root, _ = trained_tumsyn
    for part in ("train", "test"):
        (tmp_path / part).symlink_to(protocol_phantom)
    shutil.copytree(root / "models", tmp_path / "bundle" / "models")
    (tmp_path / "bundle" / "models" / "model.pt").unlink()  # not read with --weights final
    argv = ["--out", str(tmp_path), "--skip-train", "--spacing", "4", "--sr-factor", "2", "--eval-sources", "['t1']",
            "--eval-targets", "['t2']", "--overrides", '{"patch_size": 8, "num_points": 300}', "--weights", "final",
            "--report", str(tmp_path / "final.md")]
    assert tumsyn_study.main(argv) == 0
    summary = json.loads((tmp_path / "eval_final" / "summary.json").read_text())
    assert list(summary["pairs"]) == ["t1->t2"] and not (tmp_path / "eval").exists()
    study = json.loads((tmp_path / "study_final.json").read_text())
    assert len(study["sweep"]) == 3 and (tmp_path / "tumsyn_study_final.png").is_file()
    assert "the last epoch's training checkpoint" in (tmp_path / "final.md").read_text()
    for ckpt in (tmp_path / "bundle" / "models").glob("checkpoint*"):
        ckpt.unlink()
    with pytest.raises(FileNotFoundError, match="no epoch checkpoint"):
        tumsyn_study.main(argv)


def test_scale_curriculum_through_the_stacked_configs(protocol_phantom, tmp_path):
    """--scale_warmup_epochs: the handler in the trainer's handlers schedules the very sampler the
    training DataLoader draws from (in a worker process here); stage 1's cubes keep their own range
    (clip_scale_range) whatever stage 2's scale_range is."""
    from ignite.engine import Engine
    from monai.bundle import ConfigParser

    from mrsynth.handlers import ScaleCurriculum

    def parser(names, **ids):
        p = ConfigParser()
        p.read_config([str(BUNDLES / B / "configs" / f"{n}.json") for n in names])
        p.update({"dataset_dir": str(protocol_phantom), "bundle_root": str(tmp_path), "samples_per_case": 1,
                  "patch_size": 8, "num_points": 10, **ids})
        return p

    p = parser(STAGE2, scale_range=[1.5, 2.5], scale_warmup_epochs=1, num_workers=1, batch_size=8)
    (cur,) = [h for h in p.get_parsed_content("train#handlers") if isinstance(h, ScaleCurriculum)]
    loader = p.get_parsed_content("train#dataloader")
    assert cur.transform is loader.dataset.transform.transforms[-3]  # RandImplicitPaird, before tokenizing
    scales = []
    engine = Engine(lambda e, batch: scales.append(batch["scale"].tolist()))
    cur.attach(engine)
    engine.run(loader, max_epochs=3)
    assert set(scales[0]) == {1.5} and all(1.5 <= s <= 2.5 for b in scales[1:] for s in b)
    assert len({s for b in scales[1:] for s in b}) > 1
    assert not [h for h in parser(STAGE2).get_parsed_content("train#handlers") if isinstance(h, ScaleCurriculum)
                and (h.warmup_epochs or h.ramp_epochs)]  # default: the paper's random scale from the start
    stage1 = parser(STAGE1, scale_range=[1, 1]).get_parsed_content("train#sampling")[0]
    assert stage1.scale_range == (1.0, 3.0)
    # --thick_slice_prob reaches both of stage 2's samplers (training and validation); default 0, the paper's cube
    thick = parser(STAGE2, thick_slice_prob=0.5)
    assert [t[0].thick_slice_prob for t in (thick.get_parsed_content("train#sampling"),
                                            thick.get_parsed_content("validate#sampling"))] == [0.5, 0.5]
    assert parser(STAGE2).get_parsed_content("train#sampling")[0].thick_slice_prob == 0.0
