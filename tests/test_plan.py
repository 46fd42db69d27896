"""tools/plan.py and mrsynth.planning: plans for phantom datasets at 1 mm, 2 mm and with thick
slices differ the way nnU-Net's rules say, and stack on a bundle's train.json."""

from __future__ import annotations

import json
import sys

import pytest
from monai.bundle import ConfigParser

from bundle_utils import BUNDLES, REPO
from mrsynth.data.phantom import write_dataset
from mrsynth.planning import fingerprint, target_spacing

sys.path.insert(0, str(REPO / "tools"))
import plan as plan_tool  # noqa: E402

pytestmark = pytest.mark.slow  # writes a 1 mm phantom (~20 s) and probes the paper-size network


@pytest.fixture(scope="module")
def plans(tmp_path_factory):
    """{name: (plan_2d, plan_3d, fingerprint)} for three phantom datasets, planned for the paper-size Seq2Seq."""
    out = {}
    for name, subjects, spacing, thick in (("1mm", 1, 1.0, None), ("2mm", 2, 2.0, None), ("thick", 1, 1.0, 5.0)):
        root = tmp_path_factory.mktemp(name)
        write_dataset(root, subjects=subjects, spacing=spacing, seed=1, layout="brats", sequences=("t1", "t2"),
                      progress=False, slice_thickness=thick)
        assert plan_tool.main([str(root)]) == 0  # default: <dataset>_plans beside it
        out[name] = tuple(json.loads((root.with_name(f"{root.name}_plans") / f).read_text())
                          for f in ("plan_2d.json", "plan_3d.json", "fingerprint.json"))
    root = tmp_path_factory.mktemp("1mm_80gb")
    assert plan_tool.main([str(out["1mm"][2]["dataset_dir"]), "--out", str(root), "--gpu-memory", "80"]) == 0
    out["1mm_80gb"] = (json.loads((root / "plan_2d.json").read_text()),)
    return out


def test_target_spacing_follows_the_data(plans):
    assert plans["1mm"][0]["plan"]["target_spacing"] == [1.0, 1.0, 1.0]
    assert plans["2mm"][0]["plan"]["target_spacing"] == [2.0, 2.0, 2.0]
    thick = plans["thick"][0]["plan"]
    assert thick["anisotropic"] and thick["target_spacing"] == [1.0, 1.0, 5.0]
    assert not plans["1mm"][0]["plan"]["anisotropic"]


def test_anisotropy_rule_takes_the_10th_percentile_of_the_thick_axis():
    fp = {"median_spacing": [1.0, 1.0, 5.0], "spacing_percentile_10": [1.0, 1.0, 3.0]}
    assert target_spacing(fp) == ([1.0, 1.0, 3.0], True)
    fp = {"median_spacing": [1.0, 1.0, 2.5], "spacing_percentile_10": [1.0, 1.0, 1.2]}  # ratio 2.5 < 3: median kept
    assert target_spacing(fp) == ([1.0, 1.0, 2.5], False)


def test_patches_scale_with_resolution_and_divide_by_the_stride(plans):
    p1, p2, pt = (plans[k][0]["patch_size"] for k in ("1mm", "2mm", "thick"))
    for p in (p1, p2, pt, *(plans[k][1]["patch_size"] for k in ("1mm", "2mm", "thick"))):
        assert all(v % 4 == 0 for v in p), p  # Seq2Seq's stride: 2 ** (3 - 1)
    assert all(abs(a - 2 * b) <= 8 for a, b in zip(p1, p2)), (p1, p2)  # half the spacing, twice the voxels
    assert pt == p1  # thick slices: the same in-plane grid as 1 mm (slabs run along the thick axis)
    t3 = plans["thick"][1]["patch_size"]
    assert t3[2] * 2 < min(t3[:2])  # few voxels along the 5 mm axis


def test_batch_size_follows_the_memory(plans):
    b1, b2 = plans["1mm"][0]["batch_size"], plans["2mm"][0]["batch_size"]
    assert b2 > b1 >= 1  # smaller patches, more of them
    assert plans["1mm_80gb"][0]["batch_size"] >= 2 * b1 - 1  # twice the memory, about twice the batch
    info = plans["1mm"][0]["plan"]
    used = info["estimated_sample_bytes_2d"] * b1 + info["weights_and_optimiser_bytes"]
    assert used <= 40 * 1024 ** 3


def test_fingerprint_records_presence_and_intensities(plans, tmp_path):
    fp = plans["2mm"][2]
    assert fp["num_cases"] == 2 and fp["sequences"] == ["t1", "t2"] and fp["presence"] == {"t1": 1.0, "t2": 1.0}
    s = fp["foreground_intensity"]["t1"]
    assert s["percentile_00_5"] < s["median"] < s["percentile_99_5"] and s["std"] > 0
    root = tmp_path / "missing"
    write_dataset(root, subjects=4, spacing=8.0, seed=2, layout="brats", drop_max=2, progress=False)
    fp = fingerprint(root)
    assert any(v < 1.0 for v in fp["presence"].values())  # sequences dropped from some cases
    assert all(c["cropped_shape"][a] <= c["shape"][a] for c in fp["cases"] for a in range(3))


def test_plan_stacks_on_train_json(plans, tmp_path):
    (tmp_path / "plan_2d.json").write_text(json.dumps(plans["2mm"][0]))
    parser = ConfigParser()
    parser.read_config([str(BUNDLES / "seq2seq" / "configs" / "train.json"), str(tmp_path / "plan_2d.json")])
    assert parser["patch_size"] == plans["2mm"][0]["patch_size"]
    assert parser["batch_size"] == plans["2mm"][0]["batch_size"]


def test_tumsyn_plan_sets_the_stage_2_batch_and_stacks(plans, tmp_path):
    data = plans["2mm"][2]["dataset_dir"]
    batches = []
    for gb in (20, 80):
        assert plan_tool.main([data, "--bundle", "tumsyn", "--out", str(tmp_path / str(gb)), "--gpu-memory", str(gb)]) == 0
        plan = json.loads((tmp_path / str(gb) / "plan_implicit.json").read_text())
        assert set(plan) == {"_desc_", "batch_size", "plan"}  # TUMSyn's cube and query count stay its own
        batches.append(plan["batch_size"])
    assert 1 <= batches[0] < batches[1]
    assert plan["plan"]["target_spacing"] == [2.0, 2.0, 2.0]
    root = BUNDLES / "tumsyn" / "configs"
    parser = ConfigParser()
    parser.read_config([str(root / "train_text_encoder.json"), str(root / "train.json"),
                        str(tmp_path / "80" / "plan_implicit.json")])
    assert parser["batch_size"] == batches[1]
