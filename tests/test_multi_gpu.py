"""Multi-GPU training (``configs/multi_gpu_train.json``, DistributedDataParallel) of both bundles,
run as users run it: ``torchrun --nproc_per_node=2 -m monai.bundle run``, here 2 CPU processes with
the gloo backend, 1 tiny epoch each."""

from __future__ import annotations

import re
import socket
import sys

import pytest
import torch
from monai.bundle import ConfigParser

from bundle_utils import BUNDLES, TINY, run_bundle

CONFIGS = ["train", "quick", "multi_gpu_train"]


def torchrun() -> list:
    with socket.socket() as s:  # a free port: other jobs may run torchrun on the default one
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(port),
            "-m", "monai.bundle", "run"]


def train_ddp(bundle, phantom, root, *args) -> str:
    proc = run_bundle(bundle, CONFIGS, "--dataset_dir", phantom, "--bundle_root", root, "--max_epochs", 1,
                      "--val_interval", 1, "--rank_weights_dir", root / "ranks", *TINY, *args, cmd=torchrun(),
                      timeout=300)
    return proc.stdout + proc.stderr


def fresh_network(bundle, **overrides):
    """The bundle's untrained ``network_def`` (train.json + quick.json), as inference builds it."""
    parser = ConfigParser()
    parser.read_config([str(BUNDLES / bundle / "configs" / f"{n}.json") for n in ("train", "quick")])
    parser.update(overrides)
    return parser.get_parsed_content("network_def")


def load_model_pt(bundle, root, **overrides) -> dict:
    """models/model.pt: plain keys, loaded strictly into a fresh network."""
    state = torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert state and not any(k.startswith("module.") for k in state)
    fresh_network(bundle, **overrides).load_state_dict(state)  # strict
    return state


def assert_ranks_identical(root, log):
    r0, r1 = (torch.load(root / "ranks" / f"rank{r}_final.pt", weights_only=True) for r in (0, 1))
    assert r0.keys() == r1.keys() and not any(k.startswith("module.") for k in r0)
    different = [k for k in r0 if not torch.equal(r0[k], r1[k])]
    assert not different, f"ranks ended with different weights: {different[:5]}"
    assert "weights identical on all 2 ranks" in log
    # rank 0 alone logs the iterations and writes checkpoints
    assert len(re.findall(r"Epoch: 1/1, Iter: 1/1 -- train_loss: [0-9.]+", log)) == 1
    assert [p.name for p in (root / "models").glob("checkpoint*.pt")] == ["checkpoint_checkpoint_epoch=1.pt"]
    return r0


@pytest.fixture(scope="module")
def ddp_seq2seq(phantom, tmp_path_factory):
    root = tmp_path_factory.mktemp("seq2seq_ddp")
    return root, train_ddp("seq2seq", phantom, root)


def test_seq2seq_multi_gpu_training(ddp_seq2seq):
    root, log = ddp_seq2seq
    final = assert_ranks_identical(root, log)
    best = load_model_pt("seq2seq", root)
    assert best.keys() == final.keys()
    assert re.search(r"val_psnr: [0-9.]+", log)
    import mlflow  # rank 0 alone tracks: one run

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'eval' / 'mlruns.db'}")
    exp = client.get_experiment_by_name("seq2seq")
    assert len(client.search_runs([exp.experiment_id])) == 1


def test_tsf_multi_gpu_training_keeps_the_encoder_frozen(ddp_seq2seq, phantom, tmp_path):
    s2s_root, _ = ddp_seq2seq
    s2s_ckpt = s2s_root / "models" / "model.pt"  # written by the DDP run: loads into TSF's Seq2Seq
    root = tmp_path / "tsf"
    log = train_ddp("tsf_seq2seq", phantom, root, "--seq2seq_ckpt", s2s_ckpt)
    final = assert_ranks_identical(root, log)
    best = load_model_pt("tsf_seq2seq", root, seq2seq_ckpt=str(s2s_ckpt))
    assert best.keys() == final.keys()
    s2s = torch.load(s2s_ckpt, weights_only=True)
    enc = [k for k in s2s if k.startswith("encoder.")]
    assert enc and all(torch.equal(final[k], s2s[k]) for k in enc)  # frozen under DDP too
    assert any(not torch.equal(final[k], s2s[k]) for k in s2s if k.startswith("decoder."))  # tuned
