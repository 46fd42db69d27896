"""What a synthesis network is asked for (mrsynth.workflows.conditioning): the resampled output
grid, the named protocols, the prompt / code / fusion conditionings, and SynthesisInference
writing onto the grid the conditioning asks for."""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import SEQS, write_case
from monai.data import MetaTensor
from monai.inferers import SimpleInferer

from mrsynth.data.phantom import PROTOCOL_PRESETS, check_protocol, modality_of
from mrsynth.errors import DataError
from mrsynth.inferers import ImplicitSlidingWindowInferer
from mrsynth.networks import TextEncoder, TUMSyn
from mrsynth.transforms import Prompt, PromptTokenizer, acquisition_features
from mrsynth.workflows import (NAMED_PROTOCOLS, SynthesisInference, TargetCode, TargetCodeFusion, TargetPrompt,
                               named_protocol, resampled_geometry)

FLAIR = ("Modality: FLAIR; Imaging parameter TR(ms), TE(ms), TI(ms), and FA(degree): "
         "(9000.0, 110.0, 2481.0, 90.0)")
SIDECAR = {"age": 42, "sex": "F", "scanner": "3.0 Siemens", "modality": "T1w", "voxel_size": [2.0, 2.0, 2.0],
           "TR": 500.0, "TE": 10.0, "TI": None, "FA": 90.0}


@pytest.fixture(scope="module")
def tok():
    return PromptTokenizer()  # one per module: the first use imports open_clip (seconds)


def corner(affine, index) -> np.ndarray:
    """World position of a continuous voxel index."""
    return (np.asarray(affine) @ np.append(np.asarray(index, dtype=np.float64), 1.0))[:3]


def outer_corners(affine, shape):
    """The outer edge of voxel 0 and the far outer edge of the last voxel."""
    return corner(affine, [-0.5] * 3), corner(affine, [n - 0.5 for n in shape])


# -- resampled_geometry --------------------------------------------------------------------------
def test_resampled_geometry_axis_aligned_halves_the_voxel_and_keeps_the_field_of_view():
    src = np.diag([4.0, 4.0, 4.0, 1.0])
    src[:3, 3] = [-100.0, -118.0, -60.0]
    shape = (50, 59, 48)
    affine, new_shape = resampled_geometry(src, shape, 2.0)
    assert new_shape == (100, 118, 96)
    np.testing.assert_allclose(np.diag(affine)[:3], [2.0, 2.0, 2.0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(affine[:3, :3] - np.diag(np.diag(affine)[:3]), 0, atol=1e-12)  # still axis aligned
    np.testing.assert_allclose(affine[3], [0, 0, 0, 1])
    for new, old in zip(outer_corners(affine, new_shape), outer_corners(src, shape)):
        np.testing.assert_allclose(new, old, rtol=0, atol=1e-9)
    # voxel 0's centre moved half a new voxel inwards from the edge: -100 - 2 + 1
    np.testing.assert_allclose(affine[:3, 3], [-101.0, -119.0, -61.0], atol=1e-12)


def test_resampled_geometry_rotated_anisotropic_grid():
    t = math.radians(30)
    rot = np.array([[math.cos(t), -math.sin(t), 0], [math.sin(t), math.cos(t), 0], [0, 0, 1]])
    src = np.eye(4)
    src[:3, :3] = rot @ np.diag([1.0, 1.0, 5.0])
    src[:3, 3] = [12.5, -30.0, 7.0]
    shape = (10, 12, 6)
    affine, new_shape = resampled_geometry(src, shape, 1)
    assert new_shape == (10, 12, 30)
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(0))
    np.testing.assert_allclose(spacing, [1, 1, 1], atol=1e-12)
    np.testing.assert_allclose(affine[:3, :3] / spacing, rot, atol=1e-12)  # direction cosines unchanged
    for new, old in zip(outer_corners(affine, new_shape), outer_corners(src, shape)):
        np.testing.assert_allclose(new, old, rtol=0, atol=1e-9)
    # one number per axis: only the thick axis changes
    affine3, shape3 = resampled_geometry(src, shape, [1.0, 1.0, 2.5])
    assert shape3 == (10, 12, 12)
    np.testing.assert_allclose(affine3[:3, :3], rot @ np.diag([1.0, 1.0, 2.5]), atol=1e-12)
    np.testing.assert_allclose(outer_corners(affine3, shape3), outer_corners(src, shape), atol=1e-9)


def test_resampled_geometry_keeps_the_field_of_view_when_the_spacing_does_not_divide_it():
    src = np.diag([4.0, 4.0, 4.0, 1.0])
    shape = (50, 50, 50)  # 200 mm; 200 / 3 = 66.7
    affine, new_shape = resampled_geometry(src, shape, 3.0)
    assert new_shape == (67, 67, 67)
    np.testing.assert_allclose(np.diag(affine)[:3], [200 / 67] * 3, rtol=0, atol=1e-12)  # not 3 mm
    for new, old in zip(outer_corners(affine, new_shape), outer_corners(src, shape)):
        np.testing.assert_allclose(new, old, rtol=0, atol=1e-9)
    # a spacing beyond the field of view gives one voxel over all of it
    big, one = resampled_geometry(src, shape, 1000.0)
    assert one == (1, 1, 1)
    np.testing.assert_allclose(outer_corners(big, one), outer_corners(src, shape), atol=1e-9)
    # and the docstring says so (it used to promise the edges only "up to the rounding of the count")
    doc = " ".join(resampled_geometry.__doc__.split())
    assert "field of view kept exactly" in doc and "n * old / n'" in doc and "rounding" not in doc


def test_resampled_geometry_none_and_bad_spacings():
    src = np.diag([2.0, 3.0, 4.0, 1.0])
    src[:3, 3] = [1, 2, 3]
    affine, shape = resampled_geometry(src, np.array([4, 5, 6]), None)
    assert shape == (4, 5, 6) and all(type(n) is int for n in shape)
    np.testing.assert_array_equal(affine, src)
    affine[0, 0] = 99  # a copy
    assert src[0, 0] == 2
    for bad in (0, -1.0, [2.0, 0.0, 2.0], [1.0, 2.0], [1, 2, 3, 4], float("nan")):
        with pytest.raises(ValueError, match="spacing must be one positive number or three"):
            resampled_geometry(src, (4, 5, 6), bad)
    _, same = resampled_geometry(src, (4, 5, 6), [2.0])  # one number in a list
    assert same == (4, 8, 12)


# -- named protocols -----------------------------------------------------------------------------
def test_named_protocol_aliases_presets_and_unknown_names():
    flair = check_protocol(PROTOCOL_PRESETS["flair"])
    assert named_protocol("flair") == flair == named_protocol("FLAIR")
    assert modality_of(flair) == "FLAIR"
    assert named_protocol("t1") == check_protocol(PROTOCOL_PRESETS["t1_se"])
    t1ce = named_protocol("t1ce")
    assert t1ce["contrast_agent"] is True and modality_of(t1ce) == "T1Gd"
    assert {**t1ce, "contrast_agent": False} == check_protocol(PROTOCOL_PRESETS["spgr_fa30"])
    assert named_protocol("spgr_fa30")["contrast_agent"] is False  # the preset itself has none
    assert named_protocol("T2_SE_TE60") == check_protocol(PROTOCOL_PRESETS["t2_se_te60"])
    assert set(NAMED_PROTOCOLS.values()) <= set(PROTOCOL_PRESETS)
    with pytest.raises(DataError, match="unknown target protocol 'dwi'") as e:
        named_protocol("dwi")
    for known in ("flair", "t1ce", "t2_se_te60", "spgr_fa5", "pd"):
        assert known in str(e.value)


# -- TargetPrompt --------------------------------------------------------------------------------
def test_target_prompt_exactly_one_of_prompt_and_target(tok):
    for kw in ({}, {"target": ""}, {"prompt": FLAIR, "target": "flair"}):
        with pytest.raises(ValueError, match="exactly one"):
            TargetPrompt(tokenizer=tok, **kw)
    with pytest.raises(DataError, match="unknown target protocol"):
        TargetPrompt(target="nope", tokenizer=tok)


def test_target_prompt_from_a_named_target(tok):
    c = TargetPrompt(target="T2_SE_TE60", tokenizer=tok)
    preset = PROTOCOL_PRESETS["t2_se_te60"]
    assert c.prompt.modality == modality_of(preset) == "T2w"
    assert (c.prompt.tr, c.prompt.te, c.prompt.ti, c.prompt.fa) == (4000.0, 60.0, None, 90.0)
    assert c.prompt.age is None and c.prompt.voxel_size is None
    assert c.name == "t2_se_te60" and c.spacing is None and not c.many_to_one
    flair = TargetPrompt(target="flair", tokenizer=tok).prompt
    assert flair.modality == "FLAIR" and flair.ti == PROTOCOL_PRESETS["flair"]["TI"]


def test_target_prompt_spacing_and_name(tok):
    assert TargetPrompt(prompt=FLAIR, spacing=2, tokenizer=tok).spacing == [2.0, 2.0, 2.0]
    assert TargetPrompt(prompt=FLAIR, spacing=(1, 1, 3), tokenizer=tok).spacing == [1.0, 1.0, 3.0]
    assert TargetPrompt(prompt=FLAIR, tokenizer=tok).spacing is None
    vs = TargetPrompt(prompt=FLAIR + "; Voxel size: (0.5, 0.5, 2.0)", tokenizer=tok)
    assert vs.spacing == [0.5, 0.5, 2.0]
    assert vs.geometry(np.diag([1.0, 1.0, 4.0, 1.0]), (8, 8, 5))[1] == (16, 16, 10)
    # an explicit spacing wins over the prompt's voxel size
    assert TargetPrompt(prompt=FLAIR + "; Voxel size: (0.5, 0.5, 2.0)", spacing=1, tokenizer=tok).spacing == [1.0] * 3
    # no spacing at all: the source's grid
    affine = np.diag([1.0, 1.0, 4.0, 1.0])
    a, s = TargetPrompt(prompt=FLAIR, tokenizer=tok).geometry(affine, (8, 8, 5))
    assert s == (8, 8, 5)
    np.testing.assert_array_equal(a, affine)
    # names
    assert TargetPrompt(prompt=FLAIR, tokenizer=tok).name == "flair"
    assert TargetPrompt(prompt="Modality: T2*w", tokenizer=tok).name == "t2_w"
    assert TargetPrompt(prompt="Age: 30", tokenizer=tok).name == "prompt"
    assert TargetPrompt(prompt=FLAIR, name="mine", tokenizer=tok).name == "mine"
    assert TargetPrompt(target="t1ce", name="gd", tokenizer=tok).name == "gd"


def test_prompt_for_inherits_the_subject_only_where_the_prompt_leaves_it_out(tok, tmp_path):
    side = tmp_path / "t1.json"
    side.write_text(json.dumps(SIDECAR))
    d = {"t1_meta": str(side)}
    p = TargetPrompt(prompt=FLAIR, tokenizer=tok).prompt_for(d, "t1", [4, 4, 4])
    assert (p.age, p.gender, p.scanner) == (42, "F", "3.0 Siemens")
    # the acquisition is the target's, not the source's
    assert (p.modality, p.tr, p.te, p.ti, p.fa) == ("FLAIR", 9000.0, 110.0, 2481.0, 90.0)
    assert p.voxel_size == (4.0, 4.0, 4.0)
    # the prompt's own values win
    p30 = TargetPrompt(prompt="Age: 30; " + FLAIR, tokenizer=tok).prompt_for(d, "t1", [4, 4, 4])
    assert (p30.age, p30.gender, p30.scanner) == (30, "F", "3.0 Siemens")
    # the requested spacing wins over the source's; a dict sidecar works as well as a path
    p1 = TargetPrompt(prompt=FLAIR, spacing=1, tokenizer=tok).prompt_for({"t1_meta": SIDECAR}, "t1", [4, 4, 4])
    assert p1.voxel_size == (1.0, 1.0, 1.0) and p1.age == 42
    # no inheritance: inherit=(), another source's sidecar, or none
    for cond, dd in ((TargetPrompt(prompt=FLAIR, tokenizer=tok, inherit=()), d),
                     (TargetPrompt(prompt=FLAIR, tokenizer=tok), {"t2_meta": str(side)}),
                     (TargetPrompt(prompt=FLAIR, tokenizer=tok), {})):
        q = cond.prompt_for(dd, "t1", [4, 4, 4])
        assert (q.age, q.gender, q.scanner) == (None, None, None)
    only_age = TargetPrompt(prompt=FLAIR, tokenizer=tok, inherit=("age",)).prompt_for(d, "t1", [4, 4, 4])
    assert (only_age.age, only_age.gender) == (42, None)


def test_prompt_for_ignores_an_unusable_sidecar_with_a_warning(tok, tmp_path):
    """The source's sidecar is optional metadata: a broken one must not stop the synthesis, but it
    changes the prompt (the subject fields stay None), so it is reported, naming the file."""
    cond = TargetPrompt(prompt=FLAIR, tokenizer=tok)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    bad_value = tmp_path / "bad_value.json"
    bad_value.write_text(json.dumps({**SIDECAR, "age": 150}))
    for side in (broken, bad_value, tmp_path / "missing.json"):
        with pytest.warns(UserWarning, match=side.name):
            p = cond.prompt_for({"t1_meta": str(side)}, "t1", [2, 2, 2])
        assert (p.age, p.gender, p.scanner) == (None, None, None)
        assert p.voxel_size == (2.0, 2.0, 2.0) and p.modality == "FLAIR"


def test_target_prompt_inputs_and_describe(tok, tmp_path):
    side = tmp_path / "t1.json"
    side.write_text(json.dumps(SIDECAR))
    data = torch.rand(1, 8, 10, 6)
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    affine[:3, 3] = [5, 6, 7]
    d = {"t1": MetaTensor(data, affine=torch.as_tensor(affine)), "t1_meta": str(side)}
    cond = TargetPrompt(target="flair", spacing=1, tokenizer=tok)
    x, args, kwargs = cond.inputs(d, ["t1"], list(SEQS), "cpu")
    assert x.shape == (1, 1, 8, 10, 6) and x.dtype == torch.float32
    torch.testing.assert_close(x[0], data.float(), atol=0, rtol=0)
    assert len(args) == 2
    tokens, acquisition = args
    assert tokens.shape == (1, 128) and tokens.dtype == torch.long
    # the flair preset's TR, TE, TI and flip angle, as numbers
    p = named_protocol("flair")
    torch.testing.assert_close(acquisition, acquisition_features(
        f"TR/TE/TI/FA: ({p['TR']}, {p['TE']}, {p['TI']}, {p['FA']})")[None])
    assert acquisition[0, 8] == pytest.approx(p["TI"] / 1000, rel=1e-6)
    text = cond.describe()["prompt"]
    assert text == cond.prompt_for(d, "t1", [2.0, 2.0, 3.0]).format()
    assert "Age: 42; Gender: F; Scanner: 3.0 Siemens; Modality: FLAIR; Voxel size: (1.0, 1.0, 1.0)" in text
    n = int((tokens[0] != 0).sum())
    assert n == tok.count(text) and tokens[0, :n].tolist() == tok.encode(text)
    assert tokens[0, 0] == tok.sot_token_id and tokens[0, n - 1] == tok.eot_token_id
    assert kwargs == {"output_shape": resampled_geometry(affine, (8, 10, 6), 1)[1]} == {"output_shape": (16, 20, 18)}
    assert cond.describe() == {"target": "flair", "prompt": text, "spacing": [1.0, 1.0, 1.0]}
    # without a spacing: the source's voxel size in the prompt and the source's grid
    same = TargetPrompt(target="flair", tokenizer=tok)
    assert same.describe()["prompt"] == same.prompt.format()  # before any inputs: the bare prompt
    _, _, kw = same.inputs(d, ["t1"], list(SEQS), "cpu")
    assert kw == {"output_shape": (8, 10, 6)}
    assert "Voxel size: (2.0, 2.0, 3.0)" in same.describe()["prompt"] and same.describe()["spacing"] is None


def test_target_prompt_with_the_source_protocol(tok, tmp_path):
    """source_protocol: the acquisition vector is the target's then the source's, from the source's
    sidecar or from an explicit source prompt; a source with neither is an error naming its file."""
    side = tmp_path / "t1.json"
    side.write_text(json.dumps(SIDECAR))
    img = MetaTensor(torch.rand(1, 8, 10, 6), affine=torch.eye(4), meta={"filename_or_obj": "/data/c0/c0_t1.nii.gz"})
    d = {"t1": img, "t1_meta": str(side)}
    target = acquisition_features(TargetPrompt(target="flair", tokenizer=tok).prompt)
    source = acquisition_features("TR/TE/TI/FA: (500.0, 10.0, None, 90.0)")  # the sidecar's protocol
    _, (_, acq), _ = TargetPrompt(target="flair", tokenizer=tok, source_protocol=True).inputs(d, ["t1"], list(SEQS), "cpu")
    torch.testing.assert_close(acq, torch.cat([target, source])[None])
    given = "TR/TE/TI/FA: (4000.0, 100.0, None, 90.0)"
    _, (_, acq2), _ = TargetPrompt(target="flair", tokenizer=tok, source_protocol=True, source_prompt=given).inputs(
        {"t1": img}, ["t1"], list(SEQS), "cpu")
    torch.testing.assert_close(acq2, torch.cat([target, acquisition_features(given)])[None])
    _, (_, plain), _ = TargetPrompt(target="flair", tokenizer=tok).inputs(d, ["t1"], list(SEQS), "cpu")
    assert plain.shape == (1, target.numel())
    with pytest.raises(DataError, match=r"c0_t1.nii.gz: this model reads the source's protocol .* no JSON sidecar"):
        TargetPrompt(target="flair", tokenizer=tok, source_protocol=True).inputs({"t1": img}, ["t1"], list(SEQS), "cpu")
    bare = tmp_path / "bare.json"  # a sidecar without the protocol
    bare.write_text(json.dumps({"age": 42}))
    with pytest.raises(DataError, match=r"c0_t1.nii.gz: .* gives no TR and TE"):
        TargetPrompt(target="flair", tokenizer=tok, source_protocol=True).inputs({"t1": img, "t1_meta": str(bare)},
                                                                                 ["t1"], list(SEQS), "cpu")
    with pytest.raises(DataError, match="source prompt .* gives no TR and TE"):
        TargetPrompt(target="flair", tokenizer=tok, source_protocol=True, source_prompt="Age: 40")


# -- TargetCode / TargetCodeFusion ---------------------------------------------------------------
def test_target_code_and_fusion_inputs():
    vols = {s: torch.full((1, 4, 5, 3), float(i + 1)) for i, s in enumerate(SEQS)}
    code = TargetCode("T2", SEQS)
    assert code.name == "t2" and code.code == 2 and not code.many_to_one
    x, args, kw = code.inputs(vols, ["flair"], list(SEQS), "cpu")
    assert x.shape == (1, 1, 4, 5, 3) and torch.all(x == 4.0) and kw == {}
    assert len(args) == 1 and args[0].tolist() == [2]
    assert code.describe() == {"target": "t2", "code": 2}
    with pytest.raises(DataError, match="unknown sequence 'dwi'"):
        TargetCode("dwi", SEQS)

    fusion = TargetCodeFusion("flair", SEQS)
    assert fusion.many_to_one and fusion.code == 3
    d = {s: vols[s] for s in ("t1", "t2")}
    x, (mask, c), kw = fusion.inputs(d, ["t2", "t1"], list(SEQS), "cpu")
    assert x.shape == (1, 4, 4, 5, 3) and kw == {}
    assert [float(x[0, i].max()) for i in range(4)] == [1.0, 0.0, 3.0, 0.0]  # code order, zeros for the absent
    assert [float(x[0, i].min()) for i in range(4)] == [1.0, 0.0, 3.0, 0.0]
    assert mask.tolist() == [[1.0, 0.0, 1.0, 0.0]] and c.tolist() == [3]
    assert fusion.describe() == {"target": "flair", "code": 3, "fusion": True}


# -- SynthesisInference onto the conditioning's grid ---------------------------------------------
def tiny_prompted_tumsyn() -> TUMSyn:
    torch.manual_seed(0)
    text = TextEncoder(context_length=128, width=16, heads=2, layers=1, embed_dim=16)
    return TUMSyn(text, features=4, num_blocks=1, decoder_channels=(8,))


def test_synthesis_inference_with_a_prompt_writes_the_new_grid(tok, brats_dir, tmp_path):
    (brats_dir / "C0" / "C0_t1.json").write_text(json.dumps(SIDECAR))
    out = tmp_path / "out"
    cond = TargetPrompt(target="flair", spacing=1, tokenizer=tok)
    inferer = ImplicitSlidingWindowInferer(roi_size=8, overlap=0)  # fewer windows: the cores are shared
    inf = SynthesisInference(tiny_prompted_tumsyn(), inferer, SEQS, None, brats_dir, out, source=["t1", "t2"],
                             condition=cond)
    assert inf.target == "flair"
    written = inf.run()
    assert written == [out / c / f"{c}_flair_syn.nii.gz" for c in ("C0", "C1", "C2")]
    for case, src_seq in (("C0", "t1"), ("C1", "t1"), ("C2", "t2")):
        src = nib.load(brats_dir / case / f"{case}_{src_seq}.nii.gz")
        affine, shape = resampled_geometry(src.affine, src.shape, 1)
        assert shape == (32, 40, 24)
        syn = nib.load(out / case / f"{case}_flair_syn.nii.gz")
        assert syn.shape == shape
        np.testing.assert_allclose(syn.affine, affine, atol=1e-6)
        np.testing.assert_allclose(outer_corners(syn.affine, shape), outer_corners(src.affine, src.shape), atol=1e-5)
        data = np.asarray(syn.dataobj)
        assert np.isfinite(data).all() and data.std() > 0
        side = json.loads((out / case / f"{case}_flair_syn.json").read_text())
        assert side["spacing"] == [1.0, 1.0, 1.0] and side["target"] == "flair" and side["sources"] == [src_seq]
        assert "Modality: FLAIR; Voxel size: (1.0, 1.0, 1.0)" in side["prompt"]
        # the subject comes from this case's own source sidecar (C0's t1 only has one)
        assert side["prompt"].startswith("Age: 42; Gender: F" if case == "C0" else "Age: None; Gender: None")


class Identity(torch.nn.Module):
    def forward(self, x, code):
        assert code.shape == (1,)
        return x


def test_synthesis_inference_with_a_target_code_keeps_the_source_grid(brats_dir, tmp_path):
    affine = np.array([[0.0, -2.0, 0.0, 30.0], [2.0, 0.0, 0.0, -12.0], [0.0, 0.0, 3.0, 4.0], [0, 0, 0, 1]])
    write_case(brats_dir, "C3", seqs=("t1", "t2"), affine=affine, seed=3)
    out = tmp_path / "out"
    inf = SynthesisInference(Identity(), SimpleInferer(), SEQS, "t1ce", brats_dir, out)
    assert type(inf.condition) is TargetCode
    inf.run()
    for case, first in (("C0", "t1"), ("C1", "t1"), ("C2", "t2"), ("C3", "t1")):
        src = nib.load(brats_dir / case / f"{case}_{first}.nii.gz")
        syn = nib.load(out / case / f"{case}_t1ce_syn.nii.gz")
        assert syn.shape == src.shape == (16, 20, 12)
        np.testing.assert_array_equal(syn.affine, src.affine)
        # every source is the same ramp times a constant: the mean of the identities, in the first
        # source's scale, is that source
        np.testing.assert_allclose(np.asarray(syn.dataobj), np.asarray(src.dataobj), rtol=1e-5, atol=1e-4)
        side = json.loads((out / case / f"{case}_t1ce_syn.json").read_text())
        assert side["code"] == 1 and "prompt" not in side and "spacing" not in side
