"""The pieces of MONAI's standard inference path (inference.json's dataset / preprocessing /
inferer / postprocessing / evaluator): the conditioning bound in the inferers, the source placed in
its channel, the synthesis mapped back to the source's scale and grid, the data list. The bundles
driven end to end by MONAI's create_workflow, MONAI Label's BundleInferTask and MONAI Deploy's
bundle operator are in test_apps.py."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

from mrsynth.errors import DataError, find_data_error
from mrsynth.inferers import ImplicitSlidingWindowInferer, PerSampleInferer, SlabInferer
from mrsynth.transforms import PAPER, AsSynthesisd, CheckVolumed, PlaceInSlotd, ScalePercentiled
from mrsynth.workflows.serving import default_image_sequence, image_datalist


class CodeNet(torch.nn.Module):
    """``x * (code + 1) + mask.sum(1)`` per sample: the output shows which extra inputs it got."""

    def forward(self, x, *extra):
        shape = (-1, *[1] * (x.ndim - 1))
        out = x * (extra[-1].float().view(shape) + 1)
        return out + (extra[0].sum(1).view(shape) if len(extra) > 1 else 0)


def test_slab_inferer_binds_its_conditions_when_the_call_gives_none():
    x = torch.rand(1, 1, 8, 8, 5)
    bound = SlabInferer(num_slices=3, batch_size=2, conditions=[2])
    free = SlabInferer(num_slices=3, batch_size=2)
    torch.testing.assert_close(bound(x, CodeNet()), free(x, CodeNet(), torch.tensor([2])))
    torch.testing.assert_close(bound(x, CodeNet()), x * 3)
    # a caller's own conditioning wins (the bundles' own workflows pass it per case)
    torch.testing.assert_close(bound(x, CodeNet(), torch.tensor([0])), x)
    # a mask and a code, as TSF-Seq2Seq takes them
    mask = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    two = SlabInferer(num_slices=1, conditions=[mask, 1])
    torch.testing.assert_close(two(x, CodeNet()), x * 2 + 2)
    with pytest.raises(IndexError):
        free(x, CodeNet())  # nothing bound, nothing given: the network is called without a code


def test_per_sample_inferer_binds_its_conditions():
    from monai.inferers import SlidingWindowInferer

    x = torch.rand(2, 1, 6, 6, 6)
    inner = SlidingWindowInferer(roi_size=(4, 4, 4), sw_batch_size=2, overlap=0.5)
    bound = PerSampleInferer(inner, conditions=[3])
    torch.testing.assert_close(bound(x, CodeNet()), x * 4)
    torch.testing.assert_close(bound(x, CodeNet(), torch.tensor([0, 1])), torch.cat([x[:1], x[1:] * 2]))


class PromptNet(torch.nn.Module):
    """TUMSyn's three calls: the output is the image times the sum of the tokens (plus acquisition)."""

    def encode_text(self, tokens, acquisition=None):
        t = tokens.float().sum(1, keepdim=True)
        return t if acquisition is None else t + acquisition.sum(1, keepdim=True)

    def encode(self, image, text):
        return image * text.view(-1, 1, 1, 1, 1)

    def query(self, features, coords):
        from mrsynth.networks import sample_features

        return sample_features(features, coords)[..., 0]


def test_implicit_inferer_binds_its_prompt():
    from mrsynth.transforms import Prompt, PromptTokenizer, acquisition_features

    x = MetaTensor(torch.rand(1, 1, 7, 6, 5) + 0.1, affine=torch.diag(torch.tensor([1.5, 2.0, 3.0, 1.0])))
    prompt = Prompt(modality="T2w", tr=4000.0, te=120.0)
    tok = PromptTokenizer()
    bound = ImplicitSlidingWindowInferer(roi_size=4, overlap=0.5, prompt=prompt, tokenizer=tok, skip_below=None)
    free = ImplicitSlidingWindowInferer(roi_size=4, overlap=0.5, skip_below=None)
    # a prompt without a voxel size gets the input's, as the bundle's own inference sets it
    on_grid = prompt.replace(voxel_size=(1.5, 2.0, 3.0))
    tokens, acq = tok(on_grid.format()), acquisition_features(on_grid)[None]
    torch.testing.assert_close(bound(x, PromptNet()), free(x, PromptNet(), tokens, acq))
    scale = float(tokens.sum() + acq.sum())
    torch.testing.assert_close(bound(x, PromptNet()), x.as_tensor() * scale, atol=1e-4, rtol=1e-5)
    assert not torch.equal(tok(prompt.format()), tokens)
    with pytest.raises(ValueError, match="no prompt"):
        free(x, PromptNet())


def test_implicit_inferer_binds_the_source_prompt_for_a_source_protocol_network():
    """A network that reads the source's protocol (``source_protocol``) gets the bound prompt's
    acquisition vector followed by the source prompt's; without a source prompt it is an error."""
    from mrsynth.transforms import Prompt, PromptTokenizer, acquisition_features

    class SourceNet(PromptNet):
        source_protocol = True

    x = MetaTensor(torch.rand(1, 1, 7, 6, 5) + 0.1, affine=torch.diag(torch.tensor([1.5, 2.0, 3.0, 1.0])))
    prompt = Prompt(modality="T2w", tr=4000.0, te=120.0, voxel_size=(1.5, 2.0, 3.0))
    source = "TR/TE/TI/FA: (500.0, 10.0, None, 90.0)"
    tok = PromptTokenizer()
    bound = ImplicitSlidingWindowInferer(roi_size=4, prompt=prompt, tokenizer=tok, source_prompt=source, skip_below=None)
    free = ImplicitSlidingWindowInferer(roi_size=4, skip_below=None)
    acq = torch.cat([acquisition_features(prompt), acquisition_features(source)])[None]
    torch.testing.assert_close(bound(x, SourceNet()), free(x, SourceNet(), tok(prompt.format()), acq))
    assert not torch.allclose(bound(x, SourceNet()), bound(x, PromptNet()))  # a plain network: the target's vector only
    with pytest.raises(ValueError, match="reads the source's protocol .* --source_prompt"):
        ImplicitSlidingWindowInferer(roi_size=4, prompt=prompt, tokenizer=tok)(x, SourceNet())
    with pytest.raises(ValueError, match="source prompt gives no TR and TE"):
        ImplicitSlidingWindowInferer(prompt=prompt, source_prompt="Age: 40")


def test_place_in_slot_keeps_the_image_and_its_metadata():
    img = MetaTensor(torch.rand(1, 4, 5, 3), affine=torch.diag(torch.tensor([2.0, 2.0, 3.0, 1.0])),
                     meta={"filename_or_obj": "case_t2.nii.gz"})
    out = PlaceInSlotd("image", slot=2, num_slots=4)({"image": img})["image"]
    assert out.shape == (4, 4, 5, 3)
    torch.testing.assert_close(out[2], img[0])
    assert float(out[[0, 1, 3]].abs().sum()) == 0.0
    torch.testing.assert_close(out.affine, img.affine)
    assert out.meta["filename_or_obj"] == "case_t2.nii.gz"
    with pytest.raises(DataError, match="case_t2.nii.gz.*one channel"):
        PlaceInSlotd("image", slot=0, num_slots=4)({"image": MetaTensor(torch.rand(2, 3, 3, 3), meta=img.meta)})
    with pytest.raises(ValueError, match="slot"):
        PlaceInSlotd("image", slot=4, num_slots=4)


def test_as_synthesis_maps_back_to_the_source_scale_and_grid(tmp_path):
    rng = np.random.default_rng(0)
    vol = rng.uniform(0, 800, (6, 7, 5)).astype(np.float32)
    affine = np.diag([1.5, 1.5, 4.0, 1.0])
    affine[:3, 3] = [10, -20, 5]
    nib.save(nib.Nifti1Image(vol, affine), str(tmp_path / "c_t1.nii.gz"))
    pre = Compose([LoadImaged("image", image_only=True), EnsureChannelFirstd("image"), ScalePercentiled("image", **PAPER)])
    d = pre({"image": str(tmp_path / "c_t1.nii.gz")})
    assert float(d["image"].min()) >= -1 and float(d["image"].max()) <= 1
    d["pred"] = d["image"].as_tensor()[None].clone()  # a network that returns its input, batch of one
    out = AsSynthesisd("pred", "image")(d)["pred"]
    assert isinstance(out, MetaTensor) and out.shape == (1, 6, 7, 5)
    np.testing.assert_allclose(out[0].numpy(), vol, rtol=1e-5, atol=1e-3)  # inside the clipping range: exact
    np.testing.assert_allclose(out.affine.numpy(), affine, atol=1e-6)
    with pytest.raises(DataError, match="image_scale"):
        AsSynthesisd("pred", "image")({"image": d["image"], "pred": d["pred"]})


def test_image_datalist_and_default_source(brats_dir, tmp_path):
    data = image_datalist(brats_dir, "t2")
    assert [d["case"] for d in data] and all(d["image"].endswith("_t2.nii.gz") for d in data)
    assert default_image_sequence(["t1", "t1ce", "t2", "flair"], "t1") == "t1ce"
    assert default_image_sequence(["t1", "t1ce", "t2", "flair"], "flair") == "t1"
    with pytest.raises(DataError, match="no source sequence"):
        default_image_sequence(["t1"], "t1")
    # a case without the source is left out; no case with it is an error naming the folder
    first = sorted(p for p in brats_dir.iterdir() if p.is_dir())[0]
    (first / f"{first.name}_t2.nii.gz").unlink()
    assert first.name not in [d["case"] for d in image_datalist(brats_dir, "t2")]
    with pytest.raises(DataError, match=f"{brats_dir}: no case has a pd image"):
        image_datalist(brats_dir, "pd", sequences=["t1", "t1ce", "t2", "flair"])


def test_check_volume_names_the_file_for_bad_input(tmp_path):
    load = Compose([LoadImaged("image", image_only=True), EnsureChannelFirstd("image"), CheckVolumed("image")])
    good = np.random.default_rng(0).uniform(0, 1, (5, 6, 4)).astype(np.float32)
    nib.save(nib.Nifti1Image(good, np.eye(4)), str(tmp_path / "ok_t1.nii.gz"))
    assert load({"image": str(tmp_path / "ok_t1.nii.gz")})["image"].shape == (1, 5, 6, 4)
    cases = {"series_t1.nii.gz": (np.stack([good, good], -1), "4D"),
             "empty_t1.nii.gz": (np.zeros_like(good), "constant"),
             "nan_t1.nii.gz": (np.where(good > 0.5, np.nan, good).astype(np.float32), "NaN")}
    for name, (array, problem) in cases.items():
        nib.save(nib.Nifti1Image(array, np.eye(4)), str(tmp_path / name))
        with pytest.raises(RuntimeError) as info:  # MONAI's Compose wraps it; the cause is ours
            load({"image": str(tmp_path / name)})
        err = find_data_error(info.value)
        assert err is not None and err.path == str(tmp_path / name) and problem in str(err), info.value
