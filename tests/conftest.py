"""Shared fixtures. Everything is tiny so the whole suite runs on 2 CPU cores."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
# the cores shared among pytest-xdist's worker processes (make test runs 2)
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))

from mrsynth.io import save_nifti  # noqa: E402

SEQS = ("t1", "t1ce", "t2", "flair")


def write_case(root, case, shape=(16, 20, 12), seqs=SEQS, affine=None, seed=0, seg=True):
    """Write a tiny BraTS-layout case whose sequence ``i`` is a known ramp times ``i + 1``."""
    rng = np.random.default_rng(seed)
    affine = np.diag([2.0, 2.0, 2.0, 1.0]) if affine is None else affine
    base = rng.uniform(1, 100, size=shape).astype(np.float32)
    folder = root / case
    for i, s in enumerate(SEQS):
        if s in seqs:
            save_nifti(base * (i + 1), affine, folder / f"{case}_{s}.nii.gz")
    if seg:
        save_nifti(np.zeros(shape, np.uint8), affine, folder / f"{case}_seg.nii.gz", dtype=np.uint8)
    return folder


@pytest.fixture
def brats_dir(tmp_path):
    """Three cases: complete, missing t1ce+flair, t2 only."""
    root = tmp_path / "brats"
    write_case(root, "C0", seed=0)
    write_case(root, "C1", seqs=("t1", "t2"), seed=1)
    write_case(root, "C2", seqs=("t2",), seed=2)
    return root


@pytest.fixture(scope="session")
def phantom(tmp_path_factory):
    """4 subjects at 4 mm, up to 1 missing sequence per case (incomplete data trains too)."""
    from mrsynth.data.phantom import write_dataset

    root = tmp_path_factory.mktemp("phantom")
    write_dataset(root, subjects=4, spacing=4.0, seed=7, layout="brats", drop_max=1, progress=False)
    return root


@pytest.fixture(scope="session")
def trained_seq2seq(phantom, tmp_path_factory):
    """A Seq2Seq bundle root trained for 2 tiny epochs (quick.json, shrunk further), and its log."""
    from bundle_utils import TINY, run_bundle

    root = tmp_path_factory.mktemp("seq2seq_bundle")
    proc = run_bundle("seq2seq", ["train", "quick"], "--dataset_dir", phantom, "--bundle_root", root,
                      "--max_epochs", 2, "--val_interval", 1, *TINY)
    return root, proc.stdout + proc.stderr


# Tests that train or run a bundle end to end take seconds to minutes each: they are marked
# ``slow`` and left out of ``make test-fast``. A test is slow when it uses one of these fixtures
# (each trains a bundle) or carries the marker itself.
BUNDLE_FIXTURES = {"trained_seq2seq", "trained_tsf", "trained_vq", "exported_seq2seq", "exported_tsf", "ddp_seq2seq",
                   "mlflow_server", "trained_3d", "trained_tumsyn", "served_bundles", "label_server"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if BUNDLE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
