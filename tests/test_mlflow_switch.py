"""``--mlflow false``: every bundle trains and evaluates without MLflow (no handler, no run, no
``mlruns.db``); MLflow stays on by default. (``--tracking`` is taken: it is MONAI's own ``run``
option that *adds* tracking.)"""

from __future__ import annotations

import pytest
from monai.bundle import ConfigParser
from monai.handlers import MLFlowHandler

from bundle_utils import BUNDLES, TINY, run_bundle

STACKS = [("seq2seq", ["train", "quick"]), ("tsf_seq2seq", ["train", "quick"]), ("vq_seq2seq", ["train", "quick"]),
          ("tumsyn", ["train_text_encoder", "quick"]), ("tumsyn", ["train_text_encoder", "train", "quick"])]
MLFLOW_IDS = ("train#mlflow", "validate#mlflow")


def parser_for(bundle: str, names, dataset_dir, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(BUNDLES / bundle / "configs" / f"{n}.json") for n in names])
    parser.update({"dataset_dir": str(dataset_dir), "bundle_root": "/nonexistent", **overrides})
    return parser


def mlflow_handler_refs(parser: ConfigParser) -> list:
    """The handler-list entries that log to MLflow (references to the MLflow handlers, sample images)."""
    out = []
    for key in ("train#handlers", "validate#handlers"):
        for h in parser[key]:
            ref = h.replace("::", "#") if isinstance(h, str) else None  # MONAI writes '#' as '::' once parsed
            if ref in {f"@{i}" for i in MLFLOW_IDS} or (isinstance(h, dict) and "MLflow" in str(h.get("_target_"))):
                out.append(h)
    return out


@pytest.mark.parametrize("bundle, names", STACKS, ids=["+".join([b, *n]) for b, n in STACKS])
@pytest.mark.parametrize("value", ["false", False, "False", "0"])
def test_mlflow_off_disables_every_mlflow_handler(bundle, names, value, phantom):
    parser = parser_for(bundle, names, phantom, mlflow=value)
    assert parser.get_parsed_content("tracking_uri") is None  # evaluate.json hands it to the evaluation: no run
    assert parser.get_parsed_content("no_tracking") is True
    for i in MLFLOW_IDS:
        assert parser[i]["_disabled_"] == "@no_tracking", f"{bundle}: {i} is not switched by --mlflow"
    assert mlflow_handler_refs(parser), bundle
    for h in mlflow_handler_refs(parser):
        if isinstance(h, dict):
            assert h["_disabled_"] == "@no_tracking", h
    # the trainer and evaluator drop disabled handlers instead of receiving None
    assert "if h is not None" in parser["train#trainer#train_handlers"]
    assert "if h is not None" in parser["validate#evaluator#val_handlers"]


@pytest.mark.parametrize("bundle, names", STACKS[:1] + STACKS[3:4], ids=["seq2seq", "tumsyn_stage1"])
def test_mlflow_on_by_default(bundle, names, phantom):
    parser = parser_for(bundle, names, phantom)
    assert str(parser.get_parsed_content("tracking_uri")).startswith("sqlite:///")
    assert parser.get_parsed_content("no_tracking") is False
    assert isinstance(parser.get_parsed_content("validate#mlflow"), MLFlowHandler)


def test_mlflow_bad_value_is_a_clear_error(phantom):
    parser = parser_for("seq2seq", ["train", "quick"], phantom, mlflow="maybe")
    with pytest.raises(Exception, match="mlflow"):
        parser.get_parsed_content("no_tracking")


@pytest.mark.slow  # trains one epoch
def test_training_without_mlflow_writes_no_run(phantom, tmp_path):
    root = tmp_path / "b"
    run_bundle("seq2seq", ["train", "quick"], "--dataset_dir", phantom, "--bundle_root", root, "--output_dir",
               root / "eval", "--max_epochs", 1, "--val_interval", 1, "--mlflow", "false", *TINY)
    assert (root / "models" / "model.pt").is_file()
    assert not list(root.rglob("mlruns*")) and not list((BUNDLES / "seq2seq").rglob("mlruns*"))
