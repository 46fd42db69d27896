"""Each bundle is self-contained, as the model zoo needs, so train.json and inference.json both
write out the network and the intensity normalisation. These tests keep the copies equal: a
model trained with one network or scale and applied with another fails here, not in use."""

from __future__ import annotations

import json

import pytest

from bundle_utils import BUNDLES

BUNDLE_NAMES = ["seq2seq", "tsf_seq2seq"]
SHARED = ["sequences", "spatial_dims", "num_slices", "layout", "ckpt_dir", "output_dir", "device", "seq2seq_def"]


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
    assert infer["preprocessing"]["transforms"] == train["load_transforms"], \
        f"{bundle}: inference.json's preprocessing is not train.json's load_transforms"
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
            cfg["preprocessing"]["transforms"][1]["upper_percentile"] = 99.5
            cfg["network_def"]["num_kernels"] = 8
        return cfg

    monkeypatch.setitem(globals(), "load", drifted)
    with pytest.raises(AssertionError, match="network_def differs"):
        test_train_and_inference_share_network_and_settings(bundle)
    with pytest.raises(AssertionError, match="not train.json's load_transforms"):
        test_inference_normalises_as_training(bundle)
