"""TorchScript export of both bundles, run as users run it: the ``ckpt_export`` command written in
each bundle's docs/README.md, from a copy of the bundle folder holding trained weights. The
exported ``models/model.ts`` must match the eager network loaded from ``models/model.pt`` and
carry the bundle's metadata."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import load_net_with_metadata

from bundle_utils import BUNDLES, REPO, env
from test_tsf_bundle import trained_tsf  # noqa: F401  (module fixture: a TSF bundle trained for 1 tiny epoch)

pytestmark = [
    # torch.jit.* is deprecated but is what ckpt_export writes and MONAI loads; the schema is a local copy
    pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning"),
    pytest.mark.filterwarnings("ignore:No hash value provided:UserWarning"),
]

SCHEMA = REPO / "tests" / "data" / "meta_schema_20240725.json"  # a copy of MONAI's published schema
ATOL = 1e-5


def readme_export_commands(bundle: str) -> list[list[str]]:
    """The commands of the bash block that follows "Export TorchScript" in the bundle's README."""
    text = (BUNDLES / bundle / "docs" / "README.md").read_text()
    start = text.index("Export TorchScript")
    block = text[text.index("```bash\n", start) + len("```bash\n"):]
    block = block[: block.index("```")].replace("\\\n", " ")
    cmds = [shlex.split(line, comments=True) for line in block.splitlines()]
    return [c for c in cmds if c]


def quick_export_command(bundle: str) -> list[str]:
    """The documented command for a model trained with quick.json, with this interpreter."""
    (cmd,) = [c for c in readme_export_commands(bundle) if "quick.json" in " ".join(c)]
    assert cmd[:4] == ["python", "-m", "monai.bundle", "ckpt_export"], cmd
    return [sys.executable, *cmd[1:]]


def with_option(cmd: list[str], name: str, value: str) -> list[str]:
    """``cmd`` with option ``--name`` set to ``value`` (replaced when present, else appended)."""
    cmd = list(cmd)
    if name in cmd:
        cmd[cmd.index(name) + 1] = value
    else:
        cmd += [name, value]
    return cmd


def run_in(cwd: Path, cmd: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def bundle_copy(bundle: str, trained_root: Path, dest: Path) -> Path:
    """The bundle folder (configs, docs) with the trained ``models/`` of ``trained_root``."""
    shutil.copytree(BUNDLES / bundle, dest, ignore=shutil.ignore_patterns("models", "eval"))
    shutil.copytree(trained_root / "models", dest / "models")
    return dest


def eager_network(bundle_dir: Path, state_dict: dict) -> torch.nn.Module:
    """The network of inference.json + quick.json (as trained) with the given weights, strictly loaded."""
    parser = ConfigParser()
    parser.read_config([str(bundle_dir / "configs" / "inference.json"), str(bundle_dir / "configs" / "quick.json")])
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(state_dict)
    return net.eval()


def load_ts(path: Path):
    return load_net_with_metadata(str(path), more_extra_files=["inference.json", "quick.json"])


def exported_and_eager(bundle: Path):
    """``(ts, meta, extra, net)``: the exported models/model.ts with its metadata and extra files,
    and the eager network with the weights of models/model.pt, both in evaluation mode."""
    ts, meta, extra = load_ts(bundle / "models" / "model.ts")
    net = eager_network(bundle, torch.load(bundle / "models" / "model.pt", weights_only=True))
    return ts.eval(), meta, extra, net


def assert_same(eager, scripted, *inputs):
    """Same output without autograd (the CPU per-sample path) and with it (the batched path)."""
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            ref = eager(*inputs)
            out = scripted(*inputs)
        assert out.shape == ref.shape
        torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)


@pytest.fixture(scope="module")
def exported_seq2seq(trained_seq2seq, tmp_path_factory):
    root, _ = trained_seq2seq
    bundle = bundle_copy("seq2seq", root, tmp_path_factory.mktemp("export") / "seq2seq")
    run_in(bundle, quick_export_command("seq2seq"))
    return bundle


@pytest.fixture(scope="module")
def exported_tsf(trained_tsf, tmp_path_factory):  # noqa: F811
    root, _, _ = trained_tsf
    bundle = bundle_copy("tsf_seq2seq", root, tmp_path_factory.mktemp("export") / "tsf_seq2seq")
    run_in(bundle, quick_export_command("tsf_seq2seq"))
    return bundle


def test_seq2seq_torchscript_matches_checkpoint(exported_seq2seq):
    ts, _, _, net = exported_and_eager(exported_seq2seq)
    g = torch.Generator().manual_seed(0)
    image = torch.rand(4, 3, 48, 40, generator=g) * 2 - 1
    assert_same(net, ts, image, torch.tensor([0, 3, 1, 3]))  # mixed targets
    assert_same(net, ts, image, torch.tensor([2, 2, 2, 2]))  # one target, per sample
    assert_same(net, ts, image, torch.tensor([1]))  # one target for the whole batch
    assert_same(net, ts, image[:1], torch.tensor([3]))
    # the targets really condition the exported network
    with torch.no_grad():
        assert not torch.allclose(ts(image[:1], torch.tensor([0])), ts(image[:1], torch.tensor([3])))
    # bad input: the network's own message survives scripting
    factor = net.encoder.downsample_factor
    with pytest.raises(torch.jit.Error, match=f"divisible by {factor}"):
        ts(torch.zeros(1, 3, 4 * factor + 1, 4 * factor), torch.tensor([0]))


def test_seq2seq_torchscript_carries_metadata_and_configs(exported_seq2seq):
    bundle = exported_seq2seq
    ts, meta, extra = load_ts(bundle / "models" / "model.ts")
    assert meta == json.loads((bundle / "configs" / "metadata.json").read_text())
    fmt, cond = meta["network_data_format"], meta["network_conditioning"]["inputs"]
    # MONAI's standard path feeds the image alone (the inferer binds the code); the scripted network takes both
    assert list(fmt["inputs"]) == ["image"] and list(cond) == ["code"] and list(fmt["outputs"]) == ["pred"]
    assert cond["code"]["dtype"] == "int64"
    # one documented input per argument of the scripted forward, in order
    args = [a.name for a in ts.forward.schema.arguments][1:]
    assert len(args) == len(fmt["inputs"]) + len(cond), args
    for name in ("inference.json", "quick.json"):
        assert json.loads(extra[name]) == json.loads((bundle / "configs" / name).read_text())


def test_seq2seq_export_from_resumable_checkpoint(exported_seq2seq):
    """The CheckpointSaver epoch file nests the weights under "model": --key_in_ckpt model."""
    bundle = exported_seq2seq
    (ckpt,) = sorted((bundle / "models").glob("checkpoint_*.pt"))
    cmd = with_option(quick_export_command("seq2seq"), "--ckpt_file", str(ckpt.relative_to(bundle)))
    cmd = with_option(with_option(cmd, "--filepath", "models/resumed.ts"), "--key_in_ckpt", "model")
    run_in(bundle, cmd)
    ts, meta, _ = load_ts(bundle / "models" / "resumed.ts")
    ts.eval()
    assert meta["name"].startswith("Seq2Seq")
    net = eager_network(bundle, torch.load(ckpt, weights_only=False)["model"])
    image = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    assert_same(net, ts, image, torch.tensor([3, 0, 2]))


def test_tsf_torchscript_matches_checkpoint_and_carries_metadata(exported_tsf):
    bundle = exported_tsf
    ts, meta, extra, net = exported_and_eager(bundle)
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, 12, 48, 40, generator=g) * 2 - 1
    mask = torch.tensor([[1.0, 1, 0, 1], [0, 1, 1, 0], [1, 1, 1, 1]])
    assert_same(net, ts, image, mask, torch.tensor([2, 3, 0]))  # mixed targets and masks
    assert_same(net, ts, image, mask, torch.tensor([3, 3, 3]))  # one target
    assert_same(net, ts, image, mask, torch.tensor([1]))
    # absent sources are never read: NaN there changes nothing
    poisoned = image.clone().reshape(3, 4, 3, 48, 40)
    poisoned[mask == 0] = float("nan")
    with torch.no_grad():
        torch.testing.assert_close(ts(poisoned.reshape(3, 12, 48, 40), mask, torch.tensor([2, 3, 0])),
                                   ts(image, mask, torch.tensor([2, 3, 0])), atol=ATOL, rtol=0)
    with pytest.raises(torch.jit.Error, match="at least one available source"):
        ts(image, torch.zeros(3, 4), torch.tensor([0, 0, 0]))

    assert meta == json.loads((bundle / "configs" / "metadata.json").read_text())
    fmt, cond = meta["network_data_format"], meta["network_conditioning"]["inputs"]
    assert list(fmt["inputs"]) == ["image"] and list(cond) == ["mask", "code"] and list(fmt["outputs"]) == ["pred"]
    args = [a.name for a in ts.forward.schema.arguments][1:]
    assert len(args) == len(fmt["inputs"]) + len(cond), args
    assert json.loads(extra["quick.json"]) == json.loads((bundle / "configs" / "quick.json").read_text())


@pytest.mark.slow  # runs a bundle command in a new process
@pytest.mark.parametrize("bundle", ["seq2seq", "tsf_seq2seq", "vq_seq2seq", "tumsyn"])
def test_metadata_valid_against_schema(bundle, tmp_path):
    """``python -m monai.bundle verify_metadata``, offline: the schema copy shipped with the tests
    stands where MONAI would download it."""
    schema = tmp_path / SCHEMA.name
    shutil.copy(SCHEMA, schema)
    meta = BUNDLES / bundle / "configs" / "metadata.json"
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", "verify_metadata", "--meta_file", str(meta),
                           "--filepath", str(schema)], env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "metadata is verified with no error" in proc.stdout + proc.stderr
    # and it fails on a metadata file that breaks the schema
    bad = json.loads(meta.read_text())
    del bad["network_data_format"]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", "verify_metadata", "--meta_file", str(tmp_path / "bad.json"),
                           "--filepath", str(schema)], env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    # and the export command's metadata file is this one
    assert "configs/metadata.json" in quick_export_command(bundle)


@pytest.mark.slow  # runs a bundle command in a new process
@pytest.mark.parametrize("bundle", ["seq2seq", "tsf_seq2seq", "vq_seq2seq", "tumsyn"])
def test_verify_net_in_out(bundle):
    """``python -m monai.bundle verify_net_in_out`` on the paper-size inference config: the network
    with its conditioning bound (``deployable_network_def``) maps metadata's ``image`` to ``pred``."""
    cmd = [sys.executable, "-m", "monai.bundle", "verify_net_in_out", "--net_id", "deployable_network_def",
           "--meta_file", "configs/metadata.json", "--config_file", "configs/inference.json", "--n", "8"]
    if bundle == "tumsyn":
        cmd += ["--target", "flair"]  # TUMSyn's inference takes a prompt or a named protocol
    proc = subprocess.run(cmd, cwd=BUNDLES / bundle, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "data shape of network is verified with no error" in proc.stdout + proc.stderr
