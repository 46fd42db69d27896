"""Layout conversion (mrsynth.data.convert, tools/convert.py): round trips change no voxel, a CSV
builds either layout, bad rows are named and the good cases still written."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bundle_utils import REPO
from mrsynth.data import convert_dataset, dataset_from_csv, list_cases
from mrsynth.data.phantom import write_dataset
from mrsynth.errors import DataError


@pytest.fixture(scope="module")
def brats(tmp_path_factory):
    """3 phantom subjects at 8 mm, some sequences missing, with seg, tissue, fractions, noiseless twins
    and sidecars, plus the prompted protocols (images not among the four named sequences)."""
    root = tmp_path_factory.mktemp("conv") / "brats"
    write_dataset(root, subjects=3, spacing=8.0, seed=3, layout="brats", drop_max=1, progress=False, protocols=2)
    return root


def files(root: Path) -> dict[str, Path]:
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*")) if p.is_file()}


def same_file(a: Path, b: Path) -> None:
    if a.suffix == ".json":
        assert json.loads(a.read_text()) == json.loads(b.read_text()), a
        return
    ia, ib = nib.load(str(a)), nib.load(str(b))
    np.testing.assert_array_equal(np.asarray(ia.dataobj), np.asarray(ib.dataobj), err_msg=str(a))
    np.testing.assert_array_equal(ia.affine, ib.affine, err_msg=str(a))
    assert ia.get_data_dtype() == ib.get_data_dtype()


def test_brats_to_nnseq2seq_and_back_changes_no_voxel(brats, tmp_path):
    written = convert_dataset(brats, tmp_path / "Dataset001_P", to="nnseq2seq")
    nn = tmp_path / "Dataset001_P"
    spec = json.loads((nn / "dataset.json").read_text())
    assert spec["numTraining"] == len(written) == 3 and spec["file_ending"] == ".nii.gz"
    assert list(spec["channel_names"].values())[:4] == ["T1", "T1CE", "T2", "FLAIR"]
    assert spec["labels"]["enhancing_tumor"] == 4
    a, b = list_cases(brats, check_geometry=False), list_cases(nn, check_geometry=False)
    assert [c["case"] for c in a] == [c["case"] for c in b]
    for ca, cb in zip(a, b):  # the same sequences present and missing
        assert {k for k in ca if k in ("t1", "t1ce", "t2", "flair")} == {k for k in cb if k in ("t1", "t1ce", "t2", "flair")}
        assert ("seg" in ca) == ("seg" in cb)
    back = tmp_path / "brats_again"
    convert_dataset(nn, back, to="brats")
    fa, fb = files(brats), files(back)
    assert fa.keys() == fb.keys()  # every image, twin, sidecar and map, under its own name
    for k in fa:
        same_file(fa[k], fb[k])
        assert fa[k].read_bytes() == fb[k].read_bytes()  # copied, not re-encoded
    assert not list(back.glob(".*")) and not list(nn.rglob(".part.*"))


def test_csv_builds_either_layout_and_names_bad_rows(brats, tmp_path):
    cases = list_cases(brats, check_geometry=False)
    rows = [(c["case"], s.upper(), c[s]) for c in cases for s in ("t1", "t2", "flair") if s in c]
    rows += [(cases[0]["case"], "seg", cases[0]["seg"])]
    rows += [("BAD1", "t1", "missing/file.nii.gz"),
             (cases[1]["case"], "T1", rows[0][2])] if "t1" in cases[1] else [("BAD1", "t1", "missing/file.nii.gz")]
    table = tmp_path / "files.csv"
    with open(table, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case", "sequence", "path"])
        w.writerows(rows)
    out = tmp_path / "from_csv"
    with pytest.raises(DataError) as err:
        dataset_from_csv(table, out, to="brats")
    msg = str(err.value)
    assert "files.csv line" in msg and "missing/file.nii.gz: file not found" in msg
    written = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert "BAD1" not in written and cases[0]["case"] in written  # the good cases are written
    got = list_cases(out, check_geometry=False)
    first = next(c for c in got if c["case"] == cases[0]["case"])
    carried = [s for s in ("t1", "t2", "flair") if s in cases[0]]
    assert carried and all(s in first for s in carried)
    for s in carried:
        same_file(Path(first[s]), Path(cases[0][s]))
    assert "seg" in first
    # a clean CSV -> nnSeq2Seq, through the command line
    good = tmp_path / "good.csv"
    with open(good, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case", "sequence", "path"])
        w.writerows(r for r in rows if r[0] != "BAD1" and not (r[0] == cases[1]["case"] and r[2] == rows[0][2]))
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "convert.py"), str(good), str(tmp_path / "D2"),
                           "--to", "nnseq2seq"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert len(list_cases(tmp_path / "D2", check_geometry=False)) == len(cases)


def test_csv_errors(tmp_path):
    (tmp_path / "a.csv").write_text("case,path\nX,y.nii.gz\n")
    with pytest.raises(DataError, match=r"a\.csv: the CSV needs the columns case, sequence and path; missing: \['sequence'\]"):
        dataset_from_csv(tmp_path / "a.csv", tmp_path / "out")
    with pytest.raises(DataError, match="unknown layout 'nifti'"):
        convert_dataset(tmp_path, tmp_path / "o", to="nifti")
