"""Shared fixtures. Everything is tiny so the whole suite runs on 2 CPU cores."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
torch.set_num_threads(min(2, os.cpu_count() or 1))

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
