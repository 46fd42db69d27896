"""A folder mixing good cases with each kind of bad input, through the Seq2Seq bundle's inference:
every good case is written, every bad file is named, nothing half-written is left."""

from __future__ import annotations

import gzip
import json
import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np

from bundle_utils import TINY, run_bundle


def _copy_case(src: Path, dest_root: Path, new_id: str, seqs=("t1", "t2")) -> Path:
    d = dest_root / new_id
    d.mkdir(parents=True)
    for s in seqs:
        shutil.copyfile(src / f"{src.name}_{s}.nii.gz", d / f"{new_id}_{s}.nii.gz")
    return d


def test_good_cases_written_bad_files_named(trained_seq2seq, phantom, tmp_path):
    root, _ = trained_seq2seq
    src = sorted(p for p in Path(phantom).iterdir() if p.is_dir())
    data = tmp_path / "messy"
    _copy_case(src[0], data, "GOOD1")
    _copy_case(src[1], data, "GOOD2")
    ref = nib.load(str(src[0] / f"{src[0].name}_t1.nii.gz"))
    vol = np.asarray(ref.dataobj, dtype=np.float32)
    # a 4D t1, the case's only sequence
    d = data / "FOUR_D"
    d.mkdir()
    nib.save(nib.Nifti1Image(np.stack([vol, vol], -1), ref.affine), str(d / "FOUR_D_t1.nii.gz"))
    # an all-zero t2 beside a good t1: the t1 alone is used
    d = _copy_case(src[2], data, "ZERO_T2", seqs=("t1",))
    nib.save(nib.Nifti1Image(np.zeros_like(vol), ref.affine), str(d / "ZERO_T2_t2.nii.gz"))
    # a truncated file
    d = data / "TRUNCATED"
    d.mkdir()
    raw = (src[0] / f"{src[0].name}_t1.nii.gz").read_bytes()
    (d / "TRUNCATED_t1.nii.gz").write_bytes(raw[: len(raw) // 3])
    # not NIfTI at all
    d = data / "NOT_NIFTI"
    d.mkdir()
    (d / "NOT_NIFTI_t1.nii.gz").write_bytes(gzip.compress(b"this is a scanner report, not an image"))
    # a sequence the bundle does not know
    d = data / "UNKNOWN"
    d.mkdir()
    shutil.copyfile(src[0] / f"{src[0].name}_t1.nii.gz", d / "UNKNOWN_dwi.nii.gz")

    out = tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proc = run_bundle("seq2seq", ["inference", "quick"], "--dataset_dir", data, "--output_dir", out,
                          "--ckpt_path", root / "models" / "model.pt", "--target", "flair", *TINY[:2], check=False)
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0  # the run reports the skipped cases...
    written = sorted(p.parent.name for p in out.glob("*/*_flair_syn.nii.gz"))
    assert written == ["GOOD1", "GOOD2", "ZERO_T2"], log[-3000:]  # ...after writing every good case
    for case in ("GOOD1", "GOOD2", "ZERO_T2"):
        img = nib.load(str(out / case / f"{case}_flair_syn.nii.gz"))
        assert img.shape == vol.shape and np.isfinite(img.get_fdata()).all()
    side = json.loads((out / "ZERO_T2" / "ZERO_T2_flair_syn.json").read_text())
    assert side["sources"] == ["t1"] and "is constant" in side["left_out"][0]
    assert "ZERO_T2_t2.nii.gz" in log and "is constant" in log
    assert "FOUR_D_t1.nii.gz" in log and "is 4D" in log
    assert "TRUNCATED_t1.nii.gz" in log and "NOT_NIFTI_t1.nii.gz" in log
    assert "UNKNOWN_dwi.nii.gz" in log and "not a sequence this bundle knows" in log
    assert "3 case(s) skipped, 3 written" in log
    assert log.rstrip().splitlines()[-1].startswith("error: ")  # ends with one plain line
    assert not list(out.rglob(".*"))  # no temporary file left behind
