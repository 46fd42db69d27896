"""The training datasets' disk cache (mrsynth.data.training_dataset with cache_dir): same items as
the in-memory cache, reused across runs, and never stale after a file or the normalisation changes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from monai.data import CacheDataset, PersistentDataset
from monai.transforms import Compose

from bundle_utils import REPO, TINY, env, run_bundle
from conftest import write_case
from mrsynth.data import list_cases, training_dataset
from mrsynth.transforms import LoadSequencesd, ScalePercentiled

SEQS = ["t1", "t2"]


def pipeline(upper=99.0):
    return Compose([LoadSequencesd(SEQS), ScalePercentiled(SEQS, upper_percentile=upper, b_min=-1.0, b_max=1.0)])


def entries(cache_dir) -> set:
    return {p.name for p in os.scandir(cache_dir)}


def test_disk_cache_matches_memory_is_reused_and_never_stale(tmp_path):
    for i in range(3):
        write_case(tmp_path / "data", f"C{i}", seqs=SEQS, seed=i)
    cases = list_cases(tmp_path / "data", SEQS)
    cache = tmp_path / "cache"
    mem = training_dataset(cases, pipeline())
    disk = training_dataset(cases, pipeline(), cache_dir=cache)
    assert isinstance(mem, CacheDataset) and isinstance(disk, PersistentDataset)
    for a, b in zip(mem, disk):
        for s in SEQS:
            torch.testing.assert_close(torch.as_tensor(b[s]), torch.as_tensor(a[s]))
    first = entries(cache)
    assert len(first) == 3
    stamps = {p: os.stat(cache / p).st_mtime_ns for p in first}
    again = training_dataset(cases, pipeline(), cache_dir=cache)  # a second run: read, not rewritten
    [again[i] for i in range(3)]
    assert entries(cache) == first and all(os.stat(cache / p).st_mtime_ns == t for p, t in stamps.items())
    # another normalisation: new entries, not the old ones
    other = training_dataset(cases, pipeline(upper=95.0), cache_dir=cache)
    x = other[0]
    assert len(entries(cache)) == 4
    ref = training_dataset(cases, pipeline(upper=95.0))[0]
    torch.testing.assert_close(torch.as_tensor(x["t1"]), torch.as_tensor(ref["t1"]))
    # an edited image: a new entry with the new voxels
    path = cases[1]["t2"]
    import nibabel as nib

    img = nib.load(path)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj) * 2 + 5, img.affine), path)
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    edited = training_dataset(cases, pipeline(), cache_dir=cache)[1]
    fresh = training_dataset(cases, pipeline())[1]
    torch.testing.assert_close(torch.as_tensor(edited["t2"]), torch.as_tensor(fresh["t2"]))
    assert len(entries(cache)) == 5


@pytest.mark.slow
def test_bundle_trains_from_the_disk_cache_and_reuses_it(phantom, tmp_path):
    cache = tmp_path / "cache"
    for run in (1, 2):
        run_bundle("seq2seq", ["train", "quick"], "--dataset_dir", phantom, "--bundle_root", tmp_path / f"b{run}",
                   "--max_epochs", 1, "--val_interval", 1, "--mlflow", "false", "--cache_dir", cache, *TINY)
        if run == 1:
            first = {p: os.stat(cache / p).st_mtime_ns for p in entries(cache)}
            assert len(first) == 4  # 3 training cases and 1 validation case of the 4-subject phantom
    assert {p: os.stat(cache / p).st_mtime_ns for p in entries(cache)} == first  # read back, not rewritten


@pytest.mark.slow
def test_cache_benchmark_runs(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "bench_cache.py"), "--cases", "3", "--spacing", "8",
                           "--repeats", "1", "--out", str(tmp_path)], env=env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "results.json").read_text())
    assert set(res) >= {"memory", "disk, first run", "disk, later run"}
    assert all(r["batches"] > 0 and 0 < r["first_batch_s"] <= r["epoch_s"] for k, r in res.items() if isinstance(r, dict))
    assert "epoch vs memory" in proc.stdout
