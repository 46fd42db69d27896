"""Tests of TSF-Seq2Seq: per-sample fusion weights, absent sources, frozen encoder, shapes, TorchScript.

Everything is tiny (widths 8/16/32, one residual block, 32 x 32 images) to run on 2 CPU cores.
"""

from __future__ import annotations

import io
import warnings

import pytest
import torch

from mrsynth.networks import Seq2Seq, TaskSpecificFusion, TSFOutput, TSFSeq2Seq

TINY = dict(num_codes=8, channels=(8, 16, 32), num_res_blocks=1, num_kernels=4, code_dim=8)
FEAT_C = 32


def tiny_tsf(spatial_dims=2, num_sequences=4, seed=0, **kw):
    torch.manual_seed(seed)
    s2s = Seq2Seq(spatial_dims, 1, 1, **TINY)
    return TSFSeq2Seq(s2s, num_sequences, num_kernels=4, attention_ratio=4, **kw)


def tiny_fusion(spatial_dims=2, num_sequences=4, seed=0):
    torch.manual_seed(seed)
    return TaskSpecificFusion(spatial_dims, FEAT_C, num_sequences, num_kernels=4, attention_ratio=4)


def script(module):
    with warnings.catch_warnings():  # torch.jit.script is deprecated but still what ckpt_export uses
        warnings.simplefilter("ignore")
        return torch.jit.script(module)


def test_weights_per_sample_and_batch_independent():
    fusion = tiny_fusion()
    with torch.no_grad():  # make the learned part non-trivial
        fusion.weight_fc.weight.normal_()
        fusion.weight_fc.bias.normal_()
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1]])
    target = torch.tensor([2, 0])
    feats = torch.randn(2, 4, FEAT_C, 8, 8)
    with torch.no_grad():
        out = fusion(feats, mask, target)
        w = out.weights
        torch.testing.assert_close(w.sum(dim=1), torch.ones(2))
        assert (w[mask == 0] == 0).all() and (w[mask == 1] > 0).all()
        for b in range(2):  # the reference's batch-wide normalisation fails this
            alone = fusion(feats[b : b + 1], mask[b : b + 1], target[b : b + 1])
            torch.testing.assert_close(alone.weights[0], w[b])
            torch.testing.assert_close(alone.fused[0], out.fused[b], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(alone.fused_plain[0], out.fused_plain[b])
        # fused_plain is the weighted average of the present sources
        torch.testing.assert_close(out.fused_plain, (feats * w[:, :, None, None, None]).sum(1))


def test_weights_match_hand_computed_formula():
    n, eps = 4, 1e-5
    fusion = TaskSpecificFusion(2, FEAT_C, n, num_kernels=4, attention_ratio=4, eps=eps)
    bias = torch.tensor([0.0, 1.0, 2.0, -1.0])
    with torch.no_grad():
        fusion.weight_fc.weight.zero_()
        fusion.weight_fc.bias.copy_(bias)
    mask = torch.tensor([[1, 0, 1, 1], [0, 1, 0, 0], [1, 1, 1, 1]])
    target = torch.tensor([1, 0, 3])
    p = torch.exp(bias) / torch.exp(bias).sum() + eps
    expected = mask * p
    expected = expected / expected.sum(dim=1, keepdim=True)
    with torch.no_grad():
        torch.testing.assert_close(fusion.sequence_weights(mask, target), expected)
        onehot = torch.nn.functional.one_hot(target, n)
        torch.testing.assert_close(fusion.sequence_weights(mask.bool(), onehot.float()), expected)
        torch.testing.assert_close(fusion.task_code(mask, target), torch.cat([mask, onehot], 1).float())
    assert fusion.sequence_weights(mask, target)[1, 1] == 1.0  # a single present source takes it all
    # one target for the whole batch: a (1,) target broadcasts
    torch.testing.assert_close(fusion.sequence_weights(mask, torch.tensor([2])), fusion.sequence_weights(mask, torch.tensor([2] * 3)))


def test_loads_seq2seq_state_dict():
    torch.manual_seed(1)
    trained = Seq2Seq(2, 1, 1, **TINY)
    net = tiny_tsf()
    result = net.load_state_dict(trained.state_dict(), strict=False)
    assert not result.unexpected_keys and all(k.startswith("fusion.") for k in result.missing_keys)
    x = torch.randn(1, 4, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net.encode_sources(x, torch.ones(1, 4))[0, 2], trained.encode(x[:, 2])[0])


def test_absent_sources_do_not_influence_output():
    net = tiny_tsf().eval()
    x = torch.randn(2, 4, 1, 32, 32)
    mask = torch.tensor([[1, 0, 1, 0], [0, 1, 1, 1]])
    target = torch.tensor([1, 0])
    x2 = x.clone()
    x2[0, 1] = torch.randn(1, 32, 32) * 5
    x2[0, 3] = float("nan")
    x2[1, 0] = 7.0
    with torch.no_grad():
        a, b = net.forward_all(x, mask, target), net.forward_all(x2, mask, target)
        for u, v in zip(a, b):
            assert torch.equal(u, v)
        assert torch.equal(net(x, mask, target), net(x2, mask, target))
        f = net.encode_sources(x2, mask)
        assert f.shape == (2, 4, FEAT_C, 8, 8)
        assert (f[mask == 0] == 0).all() and not torch.isnan(f).any()


def test_encoder_frozen_fusion_and_decoder_train():
    net = tiny_tsf().train()
    assert not net.encoder.training and net.decoder.training and net.fusion.training
    enc_before = {k: v.clone() for k, v in net.encoder.state_dict().items()}
    dec_before = {k: v.clone() for k, v in net.decoder.state_dict().items()}
    opt = torch.optim.SGD(net.trainable_parameters(), lr=0.1)
    x = torch.randn(2, 4, 1, 32, 32)
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1]])
    target = torch.tensor([3, 0])
    out = net.forward_all(x, mask, target)
    loss = (out.image - x[:, 0]).abs().mean() + (out.image_plain - x[:, 0]).abs().mean()
    loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in net.encoder.parameters())
    for name, module in (("fusion", net.fusion), ("decoder", net.decoder)):
        for pname, p in module.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}.{pname} got no gradient"
    opt.step()
    for k, v in net.encoder.state_dict().items():
        assert torch.equal(v, enc_before[k])
    assert any(not torch.equal(v, dec_before[k]) for k, v in net.decoder.state_dict().items())
    assert {n.split(".")[0] for n, p in net.named_parameters() if p.requires_grad} == {"fusion", "decoder"}


def test_unfrozen_encoder_gets_gradients():
    net = tiny_tsf(freeze_encoder=False).train()
    net(torch.randn(2, 4, 1, 32, 32), torch.tensor([[1, 0, 1, 0], [1, 1, 1, 1]]), torch.tensor([0, 1])).sum().backward()
    assert all(p.grad is not None for p in net.encoder.parameters())


@pytest.mark.parametrize(
    "spatial_dims,num_sequences,size",
    [(2, 2, (32, 32)), (2, 5, (32, 32)), (3, 2, (16, 16, 16)), (3, 5, (16, 16, 16))],
    ids=["2d-n2", "2d-n5", "3d-n2", "3d-n5"],
)
def test_shapes(spatial_dims, num_sequences, size):
    net = tiny_tsf(spatial_dims, num_sequences).eval()
    x = torch.randn(2, num_sequences, 1, *size)
    mask = torch.ones(2, num_sequences)
    mask[0, 0] = 0 if num_sequences > 1 else 1
    target = torch.tensor([0, num_sequences - 1])
    with torch.no_grad():
        out = net.forward_all(x, mask, target)
        y = net(x, mask, target)
        fused = net.fuse(x, mask, target)
    assert isinstance(out, TSFOutput)
    assert y.shape == out.image.shape == out.image_plain.shape == out.tsem_map.shape == (2, 1, *size)
    assert out.weights.shape == (2, num_sequences)
    assert fused.fused.shape == fused.fused_plain.shape == (2, FEAT_C, *(s // 4 for s in size))
    torch.testing.assert_close(y, out.image, atol=1e-5, rtol=1e-5)
    # the TSEM map is |with - without|: non-negative, and zero exactly when the residual is skipped
    assert (out.tsem_map >= 0).all() and out.tsem_map.sum() > 0
    torch.testing.assert_close(out.tsem_map, (out.image - out.image_plain).abs(), atol=1e-6, rtol=0)
    no_tsem = net.fusion(net.encode_sources(x, mask), mask, target, use_tsem=False)
    assert torch.equal(no_tsem.fused, no_tsem.fused_plain)


@pytest.mark.parametrize("mask", [[[1, 1, 0, 0], [0, 0, 0, 0]], [[False] * 4]], ids=["one-empty", "all-empty"])
def test_empty_mask_raises(mask):
    mask = torch.tensor(mask)
    b = mask.shape[0]
    net = tiny_tsf()
    with pytest.raises(ValueError, match="at least one available source"):
        net(torch.randn(b, 4, 1, 32, 32), mask, torch.zeros(b, dtype=torch.long))
    with pytest.raises(ValueError, match="at least one available source"):
        net.fusion(torch.randn(b, 4, FEAT_C, 8, 8), mask, torch.zeros(b, dtype=torch.long))


def test_bad_inputs_raise():
    net = tiny_tsf()
    x, mask = torch.randn(1, 4, 1, 32, 32), torch.ones(1, 4)
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        net(x, mask, torch.tensor([4]))
    with pytest.raises(ValueError, match="shape"):
        net(x, torch.ones(1, 3), torch.tensor([0]))
    with pytest.raises(ValueError, match="sources of shape"):
        net(torch.randn(1, 3, 1, 32, 32), mask, torch.tensor([0]))
    with pytest.raises(ValueError, match="num_codes"):
        TSFSeq2Seq(Seq2Seq(2, 1, 1, **{**TINY, "num_codes": 3}), num_sequences=4)


def test_torchscript_matches_eager():
    net = tiny_tsf(num_sequences=3).eval()
    scripted = script(net)
    x = torch.randn(2, 3, 1, 32, 32)
    mask = torch.tensor([[1, 0, 1], [0, 1, 0]])
    target = torch.tensor([1, 2])
    buf = io.BytesIO()
    with warnings.catch_warnings():  # as ckpt_export does: save and reload the TorchScript module
        warnings.simplefilter("ignore")
        torch.jit.save(scripted, buf)
        buf.seek(0)
        loaded = torch.jit.load(buf)
    with torch.no_grad():
        ref = net.forward_all(x, mask, target)
        for m in (scripted, loaded):
            torch.testing.assert_close(m(x, mask, target), ref.image, atol=1e-5, rtol=0)
            out = m.forward_all(x, mask, target)
            for u, v in zip(out, ref):
                torch.testing.assert_close(u, v, atol=1e-5, rtol=0)
    with pytest.raises(torch.jit.Error, match="at least one available source"):
        scripted(x, torch.zeros(2, 3), target)
