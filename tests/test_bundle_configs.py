"""Each bundle is self-contained, as the model zoo needs, so train.json and inference.json both
write out the network and the intensity normalisation. These tests keep the copies equal: a
model trained with one network or scale and applied with another fails here, not in use."""

from __future__ import annotations

import json

import pytest

from bundle_utils import BUNDLES

BUNDLE_NAMES = ["seq2seq", "tsf_seq2seq", "vq_seq2seq"]
SHARED = ["sequences", "signed_sequences", "spatial_dims", "num_slices", "layout", "ckpt_dir", "output_dir", "device", "seq2seq_def"]


def load(bundle: str, name: str) -> dict:
    return json.loads((BUNDLES / bundle / "configs" / f"{name}.json").read_text())


@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
def test_train_and_inference_share_network_and_settings(bundle):
    train, infer = load(bundle, "train"), load(bundle, "inference")
    for key in SHARED:
        assert (key in train) == (key in infer), f"{bundle}: '{key}' in only one of train.json / inference.json"
        assert train.get(key) == infer.get(key), f"{bundle}: '{key}' differs between train.json and inference.json"
    net_t, net_i = dict(train["network_def"]), dict(infer["network_def"])
    if bundle == "tsf_seq2seq":  # training wraps the pretrained Seq2Seq; inference builds it bare (weights from the TSF checkpoint)
        assert (net_t.pop("seq2seq"), net_i.pop("seq2seq")) == ("@seq2seq", "@seq2seq_def")
    assert net_t == net_i, f"{bundle}: network_def differs between train.json and inference.json"


@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
def test_inference_normalises_as_training(bundle):
    train, infer = load(bundle, "train"), load(bundle, "inference")
    assert infer["load_transforms"] == train["load_transforms"], \
        f"{bundle}: inference.json's load_transforms are not train.json's load_transforms"
    assert infer["synthesis"]["preprocessing"]["transforms"] == "@load_transforms"
    # MONAI's standard path (one source under "image") scales as training does
    (scale,) = [t for t in infer["preprocessing"]["transforms"] if t["_target_"].endswith("ScalePercentiled")]
    (trained,) = [t for t in train["load_transforms"] if t["_target_"].endswith("ScalePercentiled")]
    params = {k: v for k, v in trained.items() if k not in ("keys", "ref_keys", "_desc_", "signed_keys")}
    assert {k: scale.get(k) for k in params} == params, \
        f"{bundle}: inference.json's preprocessing (standard path) does not scale as train.json's load_transforms"
    if "signed_keys" in trained:  # the image is signed when its sequence is
        assert trained["signed_keys"] == "@signed_sequences" and "@signed_sequences" in scale.get("signed_keys", ""), \
            f"{bundle}: the standard path does not scale a signed sequence as training does"
    assert "$@load_transforms" in train["train"]["preprocessing"]["transforms"]
    assert "$@load_transforms" in train["validate"]["preprocessing"]["transforms"]
    assert load(bundle, "evaluate")["evaluation"]["preprocessing"] == "@load_transforms"


@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
def test_drift_is_caught(bundle, monkeypatch):
    """The check above fails on a changed copy (it can fail)."""
    real = load

    def drifted(b, name):
        cfg = real(b, name)
        if name == "inference":
            cfg["load_transforms"][1]["upper_percentile"] = 99.5
            cfg["network_def"]["num_kernels"] = 8
        return cfg

    monkeypatch.setitem(globals(), "load", drifted)
    with pytest.raises(AssertionError, match="network_def differs"):
        test_train_and_inference_share_network_and_settings(bundle)
    with pytest.raises(AssertionError, match="are not train.json's load_transforms"):
        test_inference_normalises_as_training(bundle)

    def drifted_standard(b, name):
        cfg = real(b, name)
        if name == "inference":
            cfg["preprocessing"]["transforms"][3]["upper_percentile"] = 99.5
        return cfg

    monkeypatch.setitem(globals(), "load", drifted_standard)
    with pytest.raises(AssertionError, match="standard path"):
        test_inference_normalises_as_training(bundle)


@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
def test_executed_config_is_the_command_lines(bundle, tmp_path, monkeypatch):
    """What ``python -m monai.bundle run`` executes, overrides applied, written by MONAI's
    save_execute_config step; ``--save_execute_config false`` writes nothing."""
    from mrsynth.handlers.mlflow import save_execute_config

    monkeypatch.chdir(BUNDLES / bundle)
    argv = ["monai/bundle/__main__.py", "run", "--config_file", "['configs/train.json','configs/quick.json']",
            "--bundle_root", str(tmp_path), "--max_epochs", "3", "--patch_size", "[32,32]", "--tracking_uri=file:/x"]
    path = save_execute_config(argv)
    assert path and path.startswith(str(tmp_path / "eval" / "config_"))
    executed = json.loads(open(path).read())
    assert executed["max_epochs"] == 3 and executed["patch_size"] == [32, 32] and executed["tracking_uri"] == "file:/x"
    assert executed["network_def"] == {**load(bundle, "train")["network_def"], **{
        k.split("#", 1)[1]: v for k, v in load(bundle, "quick").items() if k.startswith("network_def#")}}
    assert executed["_meta_"]["version"] == json.loads((BUNDLES / bundle / "configs" / "metadata.json").read_text())["version"]
    assert save_execute_config(argv + ["--save_execute_config", "false"]) is None
    assert save_execute_config(["pytest", "-q"]) is None
    assert len(list((tmp_path / "eval").glob("config_*.json"))) == 1 and not (BUNDLES / bundle / "false").exists()


@pytest.mark.parametrize("bundle,name", [(b, n) for b in BUNDLE_NAMES for n in ("train", "multi_gpu_train")]
                         + [("tumsyn", n) for n in ("train_text_encoder", "train", "multi_gpu_train")])
def test_training_autotunes_cudnn_after_seeding(bundle, name):
    """``set_determinism`` with a seed turns cuDNN's autotuning off; every training config turns it
    back on afterwards (``cudnn_benchmark``, default true), or GPU training runs the slower
    deterministic kernels."""
    init = load(bundle, name)["initialize"]
    seeded = [i for i, s in enumerate(init) if "set_determinism" in s]
    tuned = [i for i, s in enumerate(init) if s == "$mrsynth.amp.cudnn_autotune(@cudnn_benchmark)"]
    assert seeded and tuned and tuned[0] > seeded[0], f"{bundle}/{name}: {init}"
    cfg = load(bundle, name)
    if "seed" in cfg:  # the first config of the stack defines the flag beside the seed
        assert cfg["cudnn_benchmark"] is True


def test_cudnn_autotune_sets_both_flags():
    import torch
    from monai.utils import set_determinism

    from mrsynth.amp import cudnn_autotune

    before = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    try:
        set_determinism(seed=0)
        assert (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic) == (False, True)
        assert cudnn_autotune(True) is True
        assert (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic) == (True, False)
        assert cudnn_autotune("false") is False  # as it arrives from the command line
        assert (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic) == (False, True)
        with pytest.raises(ValueError, match="cudnn_benchmark"):
            cudnn_autotune("fast")
    finally:
        set_determinism(seed=None)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before
