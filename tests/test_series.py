"""4D synthesis (#15 items 2-3): series transforms, the frame-major network wrapper, the series slab
inferer, T = 1 equal to the 3D path, the curve metrics, and a short run of the Seq2Seq bundle's DCE
configuration through ``python -m monai.bundle run`` (train, infer, evaluate)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose

from bundle_utils import run_bundle
from mrsynth.errors import DataError
from mrsynth.inferers import SlabInferer
from mrsynth.networks import FlatSeries, Seq2Seq, Seq2Seq4D
from mrsynth.transforms import (PAPER, LoadSequencesd, RandSeriesSlabd, ScalePercentiled, SeriesSlabsd, SplitFramesd,
                                parse_frames)
from mrsynth.workflows import SeriesInference, SynthesisInference, curve_metrics


def test_parse_frames():
    assert parse_frames("0") == slice(0, 1) and parse_frames(2) == slice(2, 3)
    assert parse_frames("1:") == slice(1, None) and parse_frames("2:5") == slice(2, 5)
    assert parse_frames("-1") == slice(-1, None)
    with pytest.raises(ValueError, match="frames"):
        parse_frames("a:b")


def test_split_frames_names_the_parts_and_keeps_metadata():
    series = MetaTensor(torch.arange(5.0).view(5, 1, 1, 1).expand(5, 2, 3, 4).clone(), affine=torch.eye(4) * 2,
                        meta={"filename_or_obj": "c_dce.nii.gz"})
    d = SplitFramesd(["dce", "dce_noiseless"], {"_pre": "0", "_post": "1:"})({"dce": series, "dce_noiseless": series + 1})
    assert "dce" not in d and d["dce_pre"].shape == (1, 2, 3, 4) and d["dce_post"].shape == (4, 2, 3, 4)
    assert float(d["dce_pre"].max()) == 0 and d["dce_post"][:, 0, 0, 0].tolist() == [1, 2, 3, 4]
    assert d["dce_post_noiseless"][:, 0, 0, 0].tolist() == [2, 3, 4, 5] and "dce_pre_noiseless" in d
    assert d["dce_post"].meta["filename_or_obj"] == "c_dce.nii.gz"
    # a pre-contrast image alone (one frame) is a valid input: there is no post part
    one = SplitFramesd("dce", {"_pre": "0", "_post": "1:"})({"dce": series[:1]})
    assert set(one) == {"dce_pre"}


def _case(depth=7):
    g = torch.Generator().manual_seed(0)
    return {"dce_pre": torch.rand(1, 8, 6, depth, generator=g), "t2": torch.rand(1, 8, 6, depth, generator=g),
            "dce_post": torch.rand(3, 8, 6, depth, generator=g), "case": "c"}


def test_series_slabs_are_frame_major():
    d = _case()
    (s,) = SeriesSlabsd(["dce_pre", "t2"], ["dce_post"], code=4, num_slices=3, slices_per_case=1)(d)
    assert s["image"].shape == (2 * 3, 8, 6) and s["label"].shape == (3 * 3, 8, 6) and int(s["tgt_code"]) == 4
    z = s["slice"]
    torch.testing.assert_close(s["image"][:3], d["dce_pre"][0][..., [z - 1, z, z + 1]].permute(2, 0, 1))
    torch.testing.assert_close(s["image"][3:], d["t2"][0][..., [z - 1, z, z + 1]].permute(2, 0, 1))
    torch.testing.assert_close(s["label"][3:6], d["dce_post"][1][..., [z - 1, z, z + 1]].permute(2, 0, 1))
    rand = RandSeriesSlabd(["dce_pre", "t2"], ["dce_post"], code=4, num_slices=3, num_samples=5)
    rand.set_random_state(0)
    out = rand(d)
    assert len(out) == 5 and all(o["image"].shape == (6, 8, 6) for o in out)
    with pytest.raises(DataError, match="no t1"):
        SeriesSlabsd(["t1"], ["dce_post"], code=0)(d)


def test_flat_series_wraps_seq2seq4d():
    net = Seq2Seq4D(spatial_dims=2, in_channels=3, out_channels=3, channels=(8, 16), num_res_blocks=1, num_kernels=2,
                    code_dim=8, out_frames=4, lstm_layers=1).eval()
    flat = FlatSeries(net, channels=3)
    x = torch.rand(2, 2 * 3, 16, 16)
    code = torch.tensor([4, 4])
    with torch.no_grad():
        y = flat(x, code)
        ref = net(x.view(2, 2, 3, 16, 16), code)
    assert y.shape == (2, 4 * 3, 16, 16)
    torch.testing.assert_close(y, ref.reshape(2, 12, 16, 16))
    assert set(flat.state_dict()) == set(net.state_dict())  # checkpoints are the plain network's
    with pytest.raises(ValueError, match="frames of 3 channels"):
        flat(torch.rand(1, 4, 16, 16), code[:1])
    # residual on input frame 0: every output frame is frame 0 plus the network's change
    res = FlatSeries(net, channels=3, residual_frame=0)
    with torch.no_grad():
        yr = res(x, code)
    torch.testing.assert_close(yr, ref.reshape(2, 12, 16, 16) + x[:, :3].repeat(1, 4, 1, 1))


class FramesNet(torch.nn.Module):
    """Output frame f = (f + 1) * the mean of the input frames, frame-major channels."""

    def __init__(self, k, frames):
        super().__init__()
        self.k, self.frames = k, frames

    def forward(self, x, code):
        b, c = x.shape[:2]
        mean = x.view(b, c // self.k, self.k, *x.shape[2:]).mean(1)
        return torch.cat([(f + 1) * mean for f in range(self.frames)], dim=1)


def test_slab_inferer_returns_every_output_frame():
    x = torch.rand(1, 2, 8, 8, 5)
    out = SlabInferer(num_slices=3, batch_size=2, out_frames=3)(x, FramesNet(3, 3), torch.tensor([0]))
    assert out.shape == (1, 3, 8, 8, 5)
    for f in range(3):
        torch.testing.assert_close(out[0, f], (f + 1) * x[0].mean(0), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="out_frames"):
        SlabInferer(out_frames=0)


def test_one_frame_series_equals_the_3d_path(brats_dir, tmp_path):
    """T = 1 in and out: the 4D inference (stack, slab inferer, file) gives the 3D path's synthesis."""
    seqs = ["t1", "t1ce", "t2", "flair"]
    torch.manual_seed(0)
    net = Seq2Seq(spatial_dims=2, in_channels=3, out_channels=3, channels=(8, 16), num_res_blocks=1, num_kernels=2,
                  code_dim=8).eval()
    pre = Compose([LoadSequencesd(seqs), ScalePercentiled(seqs, **PAPER)])
    three = SynthesisInference(net, SlabInferer(3, batch_size=4), seqs, "t2", brats_dir, tmp_path / "3d", source="t1",
                               preprocessing=pre)
    four = SeriesInference(net, SlabInferer(3, batch_size=4, out_frames=1), seqs, ["t1"], code=2, output_name="t2",
                           dataset_dir=brats_dir, output_dir=tmp_path / "4d", preprocessing=pre)
    with pytest.raises(DataError):  # C2 has no t1: written for the others, then named
        three.run()
    with pytest.raises(DataError, match="C2"):
        four.run()
    for case in ("C0", "C1"):
        a = nib.load(str(tmp_path / "3d" / case / f"{case}_t2_syn.nii.gz"))
        b = nib.load(str(tmp_path / "4d" / case / f"{case}_t2_syn.nii.gz"))
        assert b.shape == a.shape  # one frame without timing: a 3D image, as the 3D path writes
        np.testing.assert_allclose(b.get_fdata(), a.get_fdata(), rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(b.affine, a.affine)


def test_curve_metrics_of_known_curves():
    times = [30, 60, 90, 120]
    true = [1.5, 1.8, 1.7, 1.6]
    m = curve_metrics([1.2, 1.4, 1.6, 1.7], true, baseline=1.0, times_s=times)
    assert m["curve_error_pct"] == pytest.approx(100 * np.mean([0.3, 0.4, 0.1, 0.1]))
    assert m["peak_enhancement_true_pct"] == pytest.approx(80.0) and m["peak_enhancement_pct"] == pytest.approx(70.0)
    assert m["peak_enhancement_error_pct"] == pytest.approx(-10.0)
    assert (m["time_to_peak_true_s"], m["time_to_peak_s"], m["time_to_peak_error_s"]) == (60, 120, 60)


@pytest.fixture(scope="module")
def dce_data(tmp_path_factory):
    from mrsynth.data.phantom import write_dataset

    root = tmp_path_factory.mktemp("dce")
    write_dataset(root, subjects=3, spacing=6.0, seed=4, sequences=("t1", "t2"), dce={"frames": 3}, progress=False)
    return root


@pytest.mark.slow
def test_dce_bundle_trains_infers_and_evaluates(dce_data, tmp_path):
    """quick.json + dce.json through ``python -m monai.bundle run``: training, a 4D synthesis with
    the input's grid and frame timing, and the per-frame / curve evaluation with its baselines."""
    bundle = tmp_path / "bundle"
    args = ["--dataset_dir", str(dce_data), "--bundle_root", str(bundle), "--out_frames", "3", "--lstm_layers", "1",
            "--patch_size", "[48,48]", "--mlflow", "false"]
    run_bundle("seq2seq", ["train", "quick", "dce"], *args, "--max_epochs", "2", "--val_interval", "1",
               "--output_dir", str(tmp_path / "train"))
    model = bundle / "models" / "model.pt"
    assert model.is_file()
    state = torch.load(model, weights_only=True)
    assert any(k.startswith("encoder_lstm") for k in state)  # Seq2Seq4D's weights, unwrapped
    run_bundle("seq2seq", ["inference", "quick", "dce"], *args[:-2], "--ckpt_path", str(model),
               "--output_dir", str(tmp_path / "syn"))
    out = tmp_path / "syn" / "PHANTOM_0000" / "PHANTOM_0000_dce_post_syn.nii.gz"
    img, src = nib.load(str(out)), nib.load(str(dce_data / "PHANTOM_0000" / "PHANTOM_0000_t2.nii.gz"))
    assert img.shape == (*src.shape, 3)
    np.testing.assert_allclose(img.affine, src.affine)
    assert img.header.get_zooms()[3] == pytest.approx(30.0) and img.header.get_xyzt_units()[1] == "sec"
    assert np.isfinite(img.get_fdata()).all()
    side = json.loads(out.with_name("PHANTOM_0000_dce_post_syn.json").read_text())
    assert side["frame_times_s"] == [30.0, 60.0, 90.0] and side["inputs"] == ["dce_pre", "t2"]
    run_bundle("seq2seq", ["train", "evaluate", "quick", "dce"], *args, "--ckpt_path", str(model),
               "--output_dir", str(tmp_path / "eval"))
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["cases"] == 3 and sorted(summary["per_frame"]) == ["0", "1", "2"]
    assert summary["psnr_limit"] > summary["psnr_copy"]  # the noisy truth beats copying the pre-contrast frame
    assert sorted(summary["contribution_ranking"]) == ["dce_pre", "t2"]
    assert "enhancing/synthesis" in summary["curves"] and "enhancing/copy" in summary["curves"]
    # whether the tumour is there: r inside the brain and the means per region, beside the truth's
    assert -1 <= summary["r"] <= 1 and summary["r_limit"] > 0.5
    means = summary["region_means"]["enhancing"]
    assert means["truth"] > summary["region_means"]["rest of brain"]["truth"]  # the rim enhances
    assert means["limit"] == pytest.approx(means["truth"], abs=0.05)  # noise averages out
    rows = (tmp_path / "eval" / "series_metrics.csv").read_text().splitlines()
    assert rows[0].startswith("case,frame,time_s,psnr") and len(rows) == 1 + 3 * 3


def test_load_sequences_takes_a_series_only_where_allowed(tmp_path):
    vol = np.random.default_rng(0).uniform(1, 2, (4, 5, 3, 6)).astype(np.float32)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(tmp_path / "c_dce.nii.gz"))
    d = LoadSequencesd("dce", series="dce")({"dce": str(tmp_path / "c_dce.nii.gz")})
    assert d["dce"].shape == (6, 4, 5, 3)
    np.testing.assert_allclose(d["dce"][2].numpy(), vol[..., 2])
    with pytest.raises(DataError, match="4D"):
        LoadSequencesd("dce")({"dce": str(tmp_path / "c_dce.nii.gz")})
    nib.save(nib.Nifti1Image(np.ones_like(vol), np.eye(4)), str(tmp_path / "flat_dce.nii.gz"))
    with pytest.raises(DataError, match="constant"):
        LoadSequencesd("dce", series="dce")({"dce": str(tmp_path / "flat_dce.nii.gz")})


def test_slab_inferer_pads_up_to_a_minimum_size():
    seen = []

    class Net(torch.nn.Module):
        def forward(self, x, code):
            seen.append(tuple(x.shape[-2:]))
            return x[:, :3] * 2

    x = torch.rand(1, 1, 10, 7, 3)
    out = SlabInferer(num_slices=3, divisible_by=4, min_size=[16, 16])(x, Net(), torch.tensor([0]))
    assert seen[0] == (16, 16) and out.shape == (1, 1, 10, 7, 3)
    torch.testing.assert_close(out, x * 2)
    SlabInferer(num_slices=3, divisible_by=4, min_size=6)(x, Net(), torch.tensor([0]))
    assert seen[-1] == (12, 8)  # at least 6, then a multiple of 4


def _bundle_parser(names, **ids):
    from monai.bundle import ConfigParser

    from bundle_utils import BUNDLES

    parser = ConfigParser()
    parser.read_config([str(BUNDLES / "seq2seq" / "configs" / f"{n}.json") for n in names])
    for k, v in ids.items():
        parser[k] = v
    return parser


def test_frames_to_washin_task(dce_data, tmp_path):
    """dce_washin.json: the whole series (pre + post frames) -> the wash-in map, one output frame.
    The map is scaled on (-h, h) of the pre-contrast frame's bound (0 stays 0, negative noise kept),
    a training sample is T_in = 4 frames -> 1, the network maps it to one frame, and the synthesis
    is a 3D map mapped back to the series' units; evaluation's baseline is the zero map."""
    parser = _bundle_parser(["train", "quick", "dce", "dce_washin"], dataset_dir=str(dce_data),
                            bundle_root=str(tmp_path), mlflow=False, lstm_layers=1)
    d = Compose(parser.get_parsed_content("load_transforms"))(dict(parser.get_parsed_content("cases")[0]))
    lo, hi = d["dce_washin_scale"][:2]
    assert lo == -hi and hi == pytest.approx(d["dce_pre_scale"][1])
    raw = nib.load(str(dce_data / "PHANTOM_0000" / "PHANTOM_0000_dce_washin.nii.gz")).get_fdata()
    np.testing.assert_allclose(d["dce_washin"][0].numpy(), np.clip(raw, lo, hi) / hi, atol=1e-5)
    assert float(d["dce_washin"].min()) < 0  # the map's negative noise is not clipped away
    assert parser.get_parsed_content("target_code") == 5
    sample = parser.get_parsed_content("augmentation")[0](d)[0]
    k = parser.get_parsed_content("num_slices")
    assert sample["image"].shape[0] == 4 * k and sample["label"].shape[0] == k
    net = parser.get_parsed_content("network").eval()
    assert net.residual_frame is None  # a map is not a frame plus a change
    post = _bundle_parser(["train", "quick", "dce"], dataset_dir=str(dce_data), bundle_root=str(tmp_path), mlflow=False)
    assert post.get_parsed_content("network").residual_frame == 0  # post-contrast frames: the pre-contrast frame + the change
    with torch.no_grad():
        y = net(sample["image"][None, :, :32, :32].float(), torch.tensor([5]))
    assert y.shape == (1, k, 32, 32)
    torch.save(parser.get_parsed_content("network_def").state_dict(), tmp_path / "model.pt")
    syn = _bundle_parser(["inference", "quick", "dce", "dce_washin"], dataset_dir=str(dce_data),
                         output_dir=str(tmp_path / "syn"), ckpt_path=str(tmp_path / "model.pt"), patch_size=[48, 48],
                         lstm_layers=1)
    [out] = [p for p in syn.get_parsed_content("synthesis").run() if "PHANTOM_0000" in p.name]
    img = nib.load(str(out))
    assert out.name == "PHANTOM_0000_dce_washin_syn.nii.gz" and img.shape == raw.shape  # 3D, the series' grid
    side = json.loads(out.with_name("PHANTOM_0000_dce_washin_syn.json").read_text())
    assert side["frame_times_s"] is None and side["inputs"] == ["dce_pre", "dce_post"]
    assert np.abs(img.get_fdata()).max() <= side["scale"][1] + 1e-3  # mapped back on (-h, h)
    ev = _bundle_parser(["train", "evaluate", "quick", "dce", "dce_washin"], dataset_dir=str(dce_data),
                        bundle_root=str(tmp_path), mlflow=False).get_parsed_content("evaluation")
    assert ev.copy_of == 0.0 and ev.targets == ["dce_washin"] and ev.frame_times_from is None


def test_dce_maps_rank_across_the_derived_sequences(dce_data, tmp_path):
    """dce_maps.json: the 3D Seq2Seq over the structural sequences and the wash-in / wash-out maps;
    the maps are signed (wash-out's negative values survive the scaling), every sequence has a code,
    and a synthesized map is mapped back on a symmetric range."""
    parser = _bundle_parser(["train", "quick", "dce_maps"], dataset_dir=str(dce_data), bundle_root=str(tmp_path),
                            mlflow=False)
    seqs = parser.get_parsed_content("sequences")
    assert seqs[-2:] == ["dce_washin", "dce_washout"]
    case = parser.get_parsed_content("cases")[0]
    assert {"dce_washin", "dce_washout"} <= set(case)
    d = Compose(parser.get_parsed_content("load_transforms"))(dict(case))
    lo, hi = d["dce_washout_scale"][:2]
    raw = nib.load(str(case["dce_washout"])).get_fdata()
    assert lo == -hi and (raw < 0).sum() > 0.2 * (raw != 0).sum()
    np.testing.assert_allclose(d["dce_washout"][0].numpy(), np.clip(raw, lo, hi) / hi, atol=1e-5)
    assert d["t1_scale"][0] == 0  # the structural sequences keep the papers' scaling
    syn = _bundle_parser(["inference", "quick", "dce_maps"], dataset_dir=str(dce_data), output_dir=str(tmp_path),
                         target="dce_washout")
    assert syn.get_parsed_content("synthesis").signed_target
    assert not _bundle_parser(["inference", "quick", "dce_maps"], dataset_dir=str(dce_data), output_dir=str(tmp_path),
                              target="t2").get_parsed_content("synthesis").signed_target
