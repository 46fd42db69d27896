"""Model-zoo packaging (tools/package_bundles.py): deterministic zips that carry mrsynth, the
model_info.json index, and a bundle fetched over HTTP with ``python -m monai.bundle download``
that runs inference in a new virtual environment holding only the bundle's declared requirements
(no mrsynth, no repository on the path)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from bundle_utils import BUNDLES, REPO, TINY

sys.path.insert(0, str(REPO / "tools"))
from package_bundles import bundle_files, package, package_all  # noqa: E402


def _bundle_with_clutter(tmp_path: Path) -> Path:
    """A copy of the seq2seq bundle with what a user's folder holds after training and evaluating."""
    b = tmp_path / "seq2seq"
    shutil.copytree(BUNDLES / "seq2seq", b, ignore=shutil.ignore_patterns("models", "eval"))
    (b / "models").mkdir()
    (b / "models" / "model.pt").write_bytes(b"weights")
    (b / "models" / "checkpoint_epoch=3.pt").write_bytes(b"a checkpoint")
    (b / "models" / "rank_weights").mkdir()
    (b / "models" / "rank_weights" / "rank0.pt").write_bytes(b"x")
    for junk in ("eval/metrics.csv", "eval/mlruns.db", "configs/__pycache__/x.pyc", "mlruns/0/meta.yaml"):
        (b / junk).parent.mkdir(parents=True, exist_ok=True)
        (b / junk).write_text("junk")
    return b


def test_zip_contents_carry_mrsynth_and_weights_but_no_runs(tmp_path):
    b = _bundle_with_clutter(tmp_path)
    names = set(bundle_files(b))
    assert {"seq2seq/configs/metadata.json", "seq2seq/configs/inference.json", "seq2seq/docs/README.md",
            "seq2seq/LICENSE", "seq2seq/models/model.pt", "seq2seq/mrsynth/__init__.py",
            "seq2seq/mrsynth/networks/seq2seq.py"} <= names
    assert not [n for n in names if "checkpoint" in n or "rank_weights" in n or "/eval/" in n or "mlruns" in n
                or n.endswith(".pyc")], sorted(names)
    assert all(n.startswith("seq2seq/") for n in names)
    # every module of the package goes along
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "mrsynth").rglob("*.py")}
    assert {f"seq2seq/{m}" for m in modules} <= names
    with pytest.raises(FileNotFoundError, match="not a bundle"):
        bundle_files(tmp_path)


def test_zips_are_deterministic_and_indexed(tmp_path):
    b = _bundle_with_clutter(tmp_path)
    name, version, path, sha1 = package(b, tmp_path / "a")
    meta = json.loads((b / "configs" / "metadata.json").read_text())
    assert (name, version) == ("seq2seq", meta["version"]) and path.name == f"seq2seq_v{version}.zip"
    assert sha1 == hashlib.sha1(path.read_bytes()).hexdigest()
    os.utime(b / "LICENSE", (0, 1_000_000))  # another mtime: same bytes
    _, _, again, sha1_again = package(b, tmp_path / "b")
    assert sha1_again == sha1 and again.read_bytes() == path.read_bytes()
    (b / "docs" / "README.md").write_text("changed")
    assert package(b, tmp_path / "c")[3] != sha1
    with zipfile.ZipFile(path) as zf:
        assert zf.read("seq2seq/models/model.pt") == b"weights"
        assert {i.date_time for i in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}

    info = package_all([BUNDLES / n for n in ("seq2seq", "tumsyn")], tmp_path / "dist", "http://host/zoo/")
    on_disk = json.loads((tmp_path / "dist" / "model_info.json").read_text())
    assert on_disk == info and len(info) == 2
    for key, entry in info.items():
        zip_path = tmp_path / "dist" / f"{key}.zip"
        assert entry == {"checksum": hashlib.sha1(zip_path.read_bytes()).hexdigest(),
                         "source": f"http://host/zoo/{key}.zip"}


@pytest.fixture
def served(tmp_path):
    """An HTTP server on 127.0.0.1 for a folder: yields (folder, base url)."""
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _env_without_repo() -> dict:
    """The environment of a user who has only the downloaded bundle (and the packages it needs)."""
    e = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLFLOW_TRACKING_URI", "VIRTUAL_ENV")}
    e.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", MPLBACKEND="Agg", GIT_PYTHON_REFRESH="quiet")
    return e


def _run(cmd, cwd) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=_env_without_repo(), capture_output=True, text=True,
                          timeout=600)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-5000:]}")
    return proc


def declared_requirements(meta: dict) -> list[str]:
    """pip requirements from a bundle's metadata: torch, MONAI, numpy and ``required_packages_version``
    (``mrsynth`` travels inside the bundle, so it is not installed)."""
    reqs = [f"torch=={meta['pytorch_version']}", f"monai=={meta['monai_version']}", f"numpy=={meta['numpy_version']}"]
    return reqs + [f"{k}=={v}" for k, v in sorted(meta["required_packages_version"].items()) if k != "mrsynth"]


@pytest.fixture(scope="module")
def fresh_python(tmp_path_factory):
    """The interpreter of a new virtual environment holding only seq2seq's declared requirements."""
    meta = json.loads((BUNDLES / "seq2seq" / "configs" / "metadata.json").read_text())
    venv = tmp_path_factory.mktemp("fresh") / "venv"
    base = Path(sys.base_prefix) / "bin" / "python3"
    subprocess.run([str(base), "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    proc = subprocess.run([str(py), "-m", "pip", "install", "-q", *declared_requirements(meta)], capture_output=True,
                          text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    probe = subprocess.run([str(py), "-c", "import mrsynth"], cwd=venv, capture_output=True, text=True)
    assert probe.returncode != 0, "mrsynth must not be installed in the fresh environment"
    yield py
    shutil.rmtree(venv, ignore_errors=True)  # several GB of torch


def test_download_over_http_and_run_inference_from_the_bundle(trained_seq2seq, phantom, served, fresh_python, tmp_path):
    root, _ = trained_seq2seq
    bundle = tmp_path / "src" / "seq2seq"
    shutil.copytree(BUNDLES / "seq2seq", bundle, ignore=shutil.ignore_patterns("models", "eval"))
    shutil.copytree(root / "models", bundle / "models")
    folder, url = served
    info = package_all([bundle], folder, url)
    (key, entry), = info.items()
    version = key.rsplit("_v", 1)[1]

    dest = tmp_path / "downloaded"
    _run([fresh_python, "-m", "monai.bundle", "download", "--name", "seq2seq", "--version", version,
          "--url", entry["source"], "--bundle_dir", dest], cwd=tmp_path)
    got = dest / "seq2seq"
    assert (got / "configs" / "inference.json").is_file() and (got / "models" / "model.pt").is_file()
    assert (got / "models" / "model.pt").read_bytes() == (root / "models" / "model.pt").read_bytes()
    assert hashlib.sha1((dest / "seq2seq.zip").read_bytes()).hexdigest() == entry["checksum"]

    # from the bundle's folder, `import mrsynth` is the bundle's own copy, not this repository's
    where = _run([fresh_python, "-c", "import mrsynth; print(mrsynth.__file__)"], cwd=got).stdout.strip()
    assert Path(where).resolve() == (got / "mrsynth" / "__init__.py").resolve(), where

    out = tmp_path / "out"
    case = sorted(p for p in Path(phantom).iterdir() if p.is_dir())[0]
    _run([fresh_python, "-m", "monai.bundle", "run", "--config_file", "['configs/inference.json','configs/quick.json']",
          "--dataset_dir", phantom, "--output_dir", out, "--target", "flair", *TINY[:2]], cwd=got)
    syn = out / case.name / f"{case.name}_flair_syn.nii.gz"
    img, ref = nib.load(str(syn)), nib.load(str(next(case.glob(f"{case.name}_t*.nii.gz"))))
    assert img.shape == ref.shape
    np.testing.assert_allclose(img.affine, ref.affine, atol=1e-5)
    assert np.isfinite(img.get_fdata()).all() and img.get_fdata().max() > 0
