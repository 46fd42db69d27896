"""3D Seq2Seq: configs/3d.json stacked on the bundle's train, inference and evaluate configs."""

from __future__ import annotations

import csv
import json
import re

import nibabel as nib
import numpy as np
import pytest
import torch

from bundle_utils import run_bundle

pytestmark = pytest.mark.slow
B = "seq2seq"
TINY_3D = ["--patch_size", "[32,32,32]", "--samples_per_case", "1"]


@pytest.fixture(scope="module")
def trained_3d(phantom, tmp_path_factory):
    root = tmp_path_factory.mktemp("seq2seq_3d")
    proc = run_bundle(B, ["train", "quick", "3d"], "--dataset_dir", phantom, "--bundle_root", root,
                      "--max_epochs", 2, "--val_interval", 2, *TINY_3D)
    return root, proc.stdout + proc.stderr


def test_3d_training_trains_a_3d_network_on_3d_patches(trained_3d):
    root, log = trained_3d
    losses = [float(x) for x in re.findall(r"train_loss: ([0-9.]+)", log)]
    assert losses and all(np.isfinite(losses))
    assert re.search(r"val_psnr: [0-9.]+", log)  # validation ran the sliding window over whole volumes
    state = torch.load(root / "models" / "model.pt", map_location="cpu")
    enc = [v for k, v in state.items() if k.startswith("encoder") and k.endswith("weight") and v.ndim > 1]
    assert enc and all(v.ndim == 5 for v in enc)  # (out, in, kx, ky, kz): 3D convolutions throughout
    first = enc[0]
    assert first.shape[1] == 1  # one channel in: the volume, not a 2.5D slab
    executed = json.loads(next((root / "eval").glob("config_*.json")).read_text())
    assert executed["spatial_dims"] == 3 and executed["inferer"]["inferer"]["mode"] == "gaussian"


def test_3d_inference_writes_whole_volumes_on_the_source_grid(trained_3d, phantom, tmp_path):
    root, _ = trained_3d
    out = tmp_path / "out"
    run_bundle(B, ["inference", "quick", "3d"], "--dataset_dir", phantom, "--bundle_root", root, "--output_dir", out,
               "--target", "t2", "--patch_size", "[32,32,32]")
    for case in sorted(p for p in phantom.iterdir() if p.is_dir()):
        syn = nib.load(str(out / case.name / f"{case.name}_t2_syn.nii.gz"))
        ref = nib.load(str(next(case.glob(f"{case.name}_t*.nii.gz"))))
        assert syn.shape == ref.shape and np.allclose(syn.affine, ref.affine)
        a = np.asarray(syn.dataobj, dtype=np.float32)
        assert np.isfinite(a).all() and a.std() > 0


def test_3d_evaluation_scores_every_pair(trained_3d, phantom, tmp_path):
    root, _ = trained_3d
    out = tmp_path / "ev"
    first = sorted(p.name for p in phantom.iterdir() if p.is_dir())[0]
    run_bundle(B, ["train", "quick", "evaluate", "3d"], "--dataset_dir", phantom, "--bundle_root", root,
               "--output_dir", out, "--eval_cases", f"$[c for c in @cases if c['case'] == '{first}']",
               "--evaluation#map_previews", 0, "--patch_size", "[32,32,32]")
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    n = sum((phantom / first / f"{first}_{s}.nii.gz").exists() for s in ("t1", "t1ce", "t2", "flair"))
    assert len(rows) == n * (n - 1) and {r["case"] for r in rows} == {first}
    assert all(np.isfinite(float(r["psnr_clean"])) and -1 <= float(r["r_brain"]) <= 1 for r in rows)
