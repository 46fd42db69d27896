"""SlabInferer: slabs cut and stacked as the training data are, every slice averaged back."""

import pytest
import torch

from mrsynth.inferers import SlabInferer
from mrsynth.transforms import extract_slab


def test_identity_network_returns_the_volume_and_sees_training_layout():
    vol = torch.randn(2, 2, 9, 10, 7)  # 2 cases, 2 source volumes each, H not divisible by 4
    seen = []

    def net(x, code):
        seen.append((x.clone(), code.clone()))
        return x[:, :3]  # "synthesize" source 0's slab

    out = SlabInferer(num_slices=3, batch_size=4, divisible_by=4)(vol, net, torch.tensor([1, 3]))
    assert out.shape == (2, 1, 9, 10, 7)
    torch.testing.assert_close(out[:, 0], vol[:, 0])  # overlapping predictions averaged exactly
    x0, c0 = seen[0]
    assert x0.shape == (4, 6, 12, 12)  # padded to multiples of 4 with -1
    expected = torch.cat([extract_slab(vol[0, :1], 0, 3), extract_slab(vol[0, 1:], 0, 3)])
    torch.testing.assert_close(x0[0, :, :9, :10], expected)
    assert float(x0[0, :, 9:, :].max()) == -1.0
    assert c0.tolist() == [1, 1, 1, 1] and seen[-1][1].tolist() == [3] * len(seen[-1][1])


def test_2d_network_with_one_slice():
    vol = torch.randn(1, 1, 8, 8, 5)
    out = SlabInferer(num_slices=1, batch_size=2)(vol, lambda x, c: 2 * x, torch.tensor([0]))
    torch.testing.assert_close(out, 2 * vol)


def test_amp_runs_the_network_in_the_devices_mixed_precision_and_returns_float32(monkeypatch):
    import mrsynth.amp
    from mrsynth.networks import Seq2Seq

    torch.manual_seed(0)
    net = Seq2Seq(2, 3, 3, channels=(8, 16, 32), num_res_blocks=1, num_kernels=4, code_dim=8).eval()
    vol = torch.rand(1, 1, 24, 20, 6) * 2 - 1
    code = torch.tensor([2])
    dtypes = []
    hook = net.encoder.stem[0].register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    with torch.no_grad():
        ref = SlabInferer(num_slices=3, batch_size=4)(vol, net, code)
        monkeypatch.setattr(mrsynth.amp, "cpu_bf16_supported", lambda: True)
        mixed = SlabInferer(num_slices=3, batch_size=4, amp=True)(vol, net, code)
        monkeypatch.setattr(mrsynth.amp, "cpu_bf16_supported", lambda: False)
        plain = SlabInferer(num_slices=3, batch_size=4, amp=True)(vol, net, code)  # no native bf16: float32
    hook.remove()
    assert dtypes[0] == torch.float32 and torch.bfloat16 in dtypes and dtypes[-1] == torch.float32
    assert mixed.dtype == torch.float32 and mixed.shape == ref.shape
    err = (mixed - ref).abs()
    assert 0 < float(err.max()) < 0.1 and float(err.mean()) < 0.02  # bf16 rounding, nothing worse
    torch.testing.assert_close(plain, ref)


def test_amp_dtype_per_device(monkeypatch):
    import mrsynth.amp as amp

    assert amp.amp_dtype("cuda") == torch.float16
    monkeypatch.setattr(amp, "cpu_bf16_supported", lambda: True)
    assert amp.amp_dtype("cpu") == torch.bfloat16
    assert amp.autocast("cpu").fast_dtype == torch.bfloat16 and not amp.autocast("cpu", enabled=False)._enabled
    monkeypatch.setattr(amp, "cpu_bf16_supported", lambda: False)
    assert amp.amp_dtype("cpu") is None and not amp.autocast("cpu")._enabled


def test_amp_flag_from_the_command_line_text():
    """`--amp false` reaches the config as the string 'false': it must switch mixed precision off."""
    import pytest

    assert SlabInferer(amp="false").amp is False and SlabInferer(amp="False").amp is False
    assert SlabInferer(amp="TRUE").amp is True and SlabInferer(amp=True).amp is True and SlabInferer().amp is False
    with pytest.raises(ValueError, match="--amp must be true or false, got 'maybe'"):
        SlabInferer(amp="maybe")


def test_per_sample_sliding_window_keeps_each_samples_code():
    """MONAI's SlidingWindowInferer mixes the windows of a batch and passes the codes unchanged;
    PerSampleInferer runs each sample with its own code (broadcast by the network over windows),
    and Gaussian blending of overlapping windows returns a pointwise map exactly."""
    from monai.inferers import SlidingWindowInferer

    from mrsynth.inferers import PerSampleInferer

    vol = torch.randn(3, 1, 20, 18, 14)
    codes = torch.tensor([1, 2, 5])
    calls = []

    def net(x, code):  # a 3D "synthesis" of target c: c * x; a (1,) code serves every window
        calls.append((x.shape[0], code.shape[0]))
        assert code.shape[0] in (1, x.shape[0])
        return x * code.float().view(-1, 1, 1, 1, 1)

    sw = SlidingWindowInferer(roi_size=(8, 8, 8), sw_batch_size=4, overlap=0.5, mode="gaussian", cval=-1.0)
    out = PerSampleInferer(sw)(vol, net, codes)
    assert out.shape == vol.shape
    torch.testing.assert_close(out, vol * codes.float().view(-1, 1, 1, 1, 1))
    assert all(c == 1 for _, c in calls) and max(n for n, _ in calls) == 4
    with pytest.raises(AssertionError):  # what happens without the wrapper: windows of 3 samples, 3 codes
        sw(vol, net, codes)


def test_per_sample_amp_returns_float32_close_to_float32():
    from monai.inferers import SlidingWindowInferer

    from mrsynth.inferers import PerSampleInferer
    from mrsynth.networks import Seq2Seq

    torch.manual_seed(0)
    net = Seq2Seq(3, 1, 1, channels=(4, 8), num_res_blocks=1, num_kernels=2, code_dim=4).eval()
    vol = torch.rand(2, 1, 12, 12, 12) * 2 - 1
    sw = SlidingWindowInferer(roi_size=(8, 8, 8), sw_batch_size=2, overlap=0.5, mode="gaussian", cval=-1.0)
    with torch.no_grad():
        ref = PerSampleInferer(sw)(vol, net, torch.tensor([0, 1]))
        mixed = PerSampleInferer(sw, amp="true")(vol, net, torch.tensor([0, 1]))
    assert mixed.dtype == torch.float32 and mixed.shape == ref.shape
    assert (mixed - ref).abs().max() < 0.1  # rounding only (float32 where the CPU has no native bf16)


def test_slab_inferer_hands_the_network_plain_tensors():
    """A MetaTensor input (what MONAI's loaders give) reaches the network as a plain tensor (its
    per-operation metadata handling cost more than the network on a CPU), with the same result."""
    from monai.data import MetaTensor

    seen = []

    class Net(torch.nn.Module):
        def forward(self, x, code):
            seen.append((type(x), type(code)))
            return x * (1 + code.view(-1, 1, 1, 1))

    vol = torch.rand(1, 1, 8, 8, 5)
    code = torch.tensor([2])
    inferer = SlabInferer(num_slices=3, batch_size=2)
    plain = inferer(vol, Net(), code)
    meta = inferer(MetaTensor(vol, meta={"filename_or_obj": "x.nii.gz"}), Net(), MetaTensor(code))
    assert all(t is torch.Tensor for pair in seen for t in pair)
    assert torch.allclose(plain, meta) and torch.allclose(plain, vol * 3)
