"""Tests of the Seq2Seq networks: shapes, per-sample conditioning, TorchScript, gradients.

Everything is tiny (widths 8/16/32, one residual block, 32 x 32 images) to run on 2 CPU cores.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from mrsynth.networks import (
    CodeEmbedding,
    ConvLSTM,
    HyperConv,
    Seq2Seq,
    Seq2Seq4D,
    Seq2SeqDecoder,
    Seq2SeqEncoder,
    code_to_onehot,
)

TINY = dict(num_codes=4, channels=(8, 16, 32), num_res_blocks=1, num_kernels=4, code_dim=8)


def tiny(spatial_dims=2, in_channels=1, out_channels=1, **kw):
    torch.manual_seed(0)
    return Seq2Seq(spatial_dims, in_channels, out_channels, **{**TINY, **kw}).eval()


def script(module):
    with warnings.catch_warnings():  # torch.jit.script is deprecated but still what ckpt_export uses
        warnings.simplefilter("ignore")
        return torch.jit.script(module)


@pytest.mark.parametrize(
    "spatial_dims,channels,size",
    [(2, 1, (32, 32)), (2, 3, (32, 32)), (3, 1, (16, 16, 16)), (2, 1, (32, 48))],
    ids=["2d", "2.5d", "3d", "2d-nonsquare"],
)
def test_output_shapes(spatial_dims, channels, size):
    net = tiny(spatial_dims, channels, channels)
    x = torch.randn(2, channels, *size)
    with torch.no_grad():
        feats = net.encode(x)
        y = net(x, torch.tensor([0, 3]))
    assert feats.shape == (2, 32, *(s // 4 for s in size))
    assert y.shape == x.shape
    assert y.abs().max() <= 1.0  # tanh


def test_encoder_decoder_standalone_shapes():
    enc = Seq2SeqEncoder(2, 3, channels=(8, 16), num_res_blocks=0)
    dec = Seq2SeqDecoder(2, 1, num_codes=5, channels=(8, 16), num_res_blocks=2, num_kernels=2, code_dim=4)
    assert enc.downsample_factor == 2 and dec.upsample_factor == 2
    f = enc(torch.randn(2, 3, 12, 12))
    assert f.shape == (2, 16, 6, 6)
    assert dec(f, torch.tensor([4, 0])).shape == (2, 1, 12, 12)


def test_mixed_codes_batch_equals_per_sample():
    net = tiny(2, 3, 3)
    x = torch.randn(4, 3, 32, 32)
    code = torch.tensor([0, 1, 2, 1])
    with torch.no_grad():
        batched = net(x, code)
        for i in range(4):
            alone = net(x[i : i + 1], code[i : i + 1])
            torch.testing.assert_close(batched[i : i + 1], alone, atol=1e-5, rtol=0)


def test_same_code_batch_equals_per_sample():
    net = tiny(2, 1, 1)
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        batched = net(x, torch.tensor([2, 2, 2]))
        broadcast = net(x, torch.tensor([2]))  # one code for the whole batch
        for i in range(3):
            torch.testing.assert_close(batched[i : i + 1], net(x[i : i + 1], torch.tensor([2])), atol=1e-5, rtol=0)
    torch.testing.assert_close(broadcast, batched, atol=1e-6, rtol=0)


def test_integer_and_onehot_codes_identical():
    net = tiny(2, 1, 1)
    x = torch.randn(3, 1, 32, 32)
    code = torch.tensor([3, 0, 1])
    with torch.no_grad():
        a = net(x, code)
        b = net(x, F.one_hot(code, 4).float())
        c = net(x, code.int())  # any integer dtype
    assert torch.equal(a, b) and torch.equal(a, c)


def test_different_codes_give_different_outputs():
    net = tiny(2, 1, 1)
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        outs = [net(x, torch.tensor([k])) for k in range(4)]
    for i in range(4):
        for j in range(i + 1, 4):
            assert (outs[i] - outs[j]).abs().max() > 1e-3


def test_soft_code_interpolates_embedding_input():
    emb = CodeEmbedding(4, 8)
    soft = torch.tensor([[0.5, 0.5, 0.0, 0.0]])
    expected = F.leaky_relu(0.5 * (emb.linear.weight[:, 0] + emb.linear.weight[:, 1]) + emb.linear.bias, 0.2)
    torch.testing.assert_close(emb(soft)[0], expected)


@pytest.mark.parametrize(
    "code", [torch.tensor([0.0, 1.0]), torch.tensor([0, 4]), torch.tensor([-1, 0]), torch.zeros(2, 3), torch.zeros(2, 4, 1)]
)
def test_bad_codes_raise(code):
    with pytest.raises(ValueError):
        code_to_onehot(code, 4)


def test_no_host_sync_off_cpu_or_under_compile():
    """Off the CPU the hyper-network reads no values back to the host (a synchronisation each time,
    ~40 per forward on a GPU before): an expanded row is identical by construction, other rows are
    not compared, the code's range is a device-side assertion ("meta" tensors have no values, so
    any read would fail). Under torch.compile the whole Seq2Seq forward is one graph and equals
    eager mode; an index out of range still fails there."""
    from mrsynth.networks.hyperconv import rows_identical

    assert rows_identical(torch.zeros(1, 4, device="meta").expand(3, 4))
    assert not rows_identical(torch.zeros(3, 4, device="meta"), compare_values=False)
    assert rows_identical(torch.ones(3, 4)) and not rows_identical(torch.eye(3))  # CPU: the values decide
    assert code_to_onehot(torch.tensor([0, 5], device="meta"), 4).shape == (2, 4)
    conv = HyperConv(2, 2, 3, 3, code_dim=5, num_kernels=4).to("meta")
    assert conv(torch.zeros(2, 2, 8, 8, device="meta"), torch.zeros(2, 5, device="meta")).shape == (2, 3, 8, 8)
    net = tiny(2, 1, 1, mixture_classes=4).train()
    x, code = torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 2, 3])
    explained = torch._dynamo.explain(net)(x, code)
    assert explained.graph_count == 1 and explained.graph_break_count == 0, explained.break_reasons
    torch._dynamo.reset()
    compiled = torch.compile(net, backend="eager", fullgraph=True)
    for c in (code, torch.tensor([2, 2, 2, 2])):  # per-sample and (compared on CPU) one-target batches
        torch.testing.assert_close(compiled(x, c), net(x, c))
    with pytest.raises(RuntimeError, match="out of range"):
        compiled(x, torch.tensor([0, 1, 2, 64]))
    torch._dynamo.reset()


@pytest.mark.parametrize("spatial_dims,padding_mode,stride", [(2, "reflect", 1), (2, "zeros", 2), (3, "replicate", 1), (1, "zeros", 1)])
def test_hyperconv_shared_path_equals_grouped_path(spatial_dims, padding_mode, stride):
    torch.manual_seed(0)
    conv = HyperConv(spatial_dims, 3, 5, 3, code_dim=None, num_kernels=4, stride=stride, padding_mode=padding_mode)
    with torch.no_grad():
        conv.bias.normal_()
    x = torch.randn(3, 3, *([8] * spatial_dims))
    coeff = torch.randn(1, 4).expand(3, 4)

    y_shared = conv.conv_shared(x, coeff)
    y_grouped = conv.conv_per_sample(x, coeff)
    torch.testing.assert_close(y_shared, y_grouped, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(conv(x, coeff), y_shared)  # forward picks the shared path, same result

    # ... and the same gradients for the kernel banks and for what lies upstream of the coefficients
    grads = []
    for path in (conv.conv_shared, conv.conv_per_sample):
        conv.zero_grad()
        c = coeff.clone().requires_grad_(True)
        path(x, c).square().sum().backward()
        grads.append((conv.weight.grad.clone(), conv.bias.grad.clone(), c.grad.sum(0)))
    for a, b in zip(*grads):
        # float32 sums over thousands of terms, in another order per path: an error relative to the
        # tensor's largest entry (one thread and two differ by up to 1e-6 of it), not to each entry
        torch.testing.assert_close(a, b, atol=1e-5 * float(b.abs().max()), rtol=1e-4)


def test_hyperconv_per_sample_equals_plain_conv():
    torch.manual_seed(0)
    conv = HyperConv(2, 2, 4, 3, code_dim=6, num_kernels=3)
    with torch.no_grad():
        conv.bias.normal_()
    x, code = torch.randn(2, 2, 9, 9), torch.randn(2, 6)
    y = conv(x, code)
    coeff = conv.coefficients(code)
    for i in range(2):
        w = torch.einsum("n,noikl->oikl", coeff[i], conv.weight)
        b = coeff[i] @ conv.bias
        torch.testing.assert_close(y[i : i + 1], F.conv2d(x[i : i + 1], w, b, padding=1), atol=1e-5, rtol=1e-5)


def test_hyperconv_rejects_bad_shapes():
    conv = HyperConv(2, 2, 4, 3, code_dim=None, num_kernels=3)
    with pytest.raises(ValueError):
        conv(torch.randn(2, 2, 8, 8), torch.randn(3, 3))  # batch mismatch
    with pytest.raises(ValueError):
        conv(torch.randn(2, 2, 8, 8), torch.randn(2, 4))  # wrong number of coefficients
    with pytest.raises(ValueError):
        conv(torch.randn(2, 3, 8, 8), torch.randn(2, 3))  # wrong channels


def test_torchscript_matches_eager():
    net = tiny(2, 3, 3)
    scripted = script(net)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        for code in (torch.tensor([0, 2, 3]), torch.tensor([1, 1, 1]), F.one_hot(torch.tensor([3, 0, 1]), 4).float()):
            torch.testing.assert_close(scripted(x, code), net(x, code), atol=1e-6, rtol=0)
        torch.testing.assert_close(scripted.encode(x), net.encode(x), atol=1e-6, rtol=0)
        f = net.encode(x)
        torch.testing.assert_close(scripted.decode(f, torch.tensor([2])), net.decode(f, torch.tensor([2])), atol=1e-6, rtol=0)


def test_torchscript_hyperconv_3d():
    conv = HyperConv(3, 2, 3, 3, code_dim=5, num_kernels=2, padding_mode="reflect")
    scripted = script(conv)
    x, code = torch.randn(2, 2, 6, 6, 6), torch.randn(2, 5)
    torch.testing.assert_close(scripted(x, code), conv(x, code))


def test_non_divisible_input_raises():
    net = tiny(2, 1, 1)
    with pytest.raises(ValueError, match=r"divisible by 4.*\[32, 30\]|\[32, 30\].*divisible by 4"):
        net(torch.randn(1, 1, 32, 30), torch.tensor([0]))
    with pytest.raises(ValueError, match="shape"):
        net(torch.randn(1, 2, 32, 32), torch.tensor([0]))  # wrong channels
    with pytest.raises(ValueError):
        tiny(3)(torch.randn(1, 1, 16, 16, 18), torch.tensor([0]))


def test_encode_decode_round_trip_equals_forward():
    net = tiny(2, 1, 1)
    x = torch.randn(2, 1, 32, 32)
    code = torch.tensor([1, 3])
    with torch.no_grad():
        assert torch.equal(net.decode(net.encode(x), code), net(x, code))


def test_gradients_reach_encoder_and_kernel_banks():
    net = tiny(2, 1, 1).train()
    x = torch.randn(2, 1, 32, 32)
    net(x, torch.tensor([0, 2])).square().mean().backward()
    enc_first = net.encoder.stem[0].weight.grad
    assert enc_first is not None and enc_first.abs().sum() > 0
    banks = [m.weight for m in net.decoder.modules() if isinstance(m, HyperConv)]
    assert len(banks) == 2 * 1 + 2 + 1
    for w in banks:
        assert w.grad is not None and w.grad.abs().sum() > 0
    assert net.decoder.embedding.linear.weight.grad.abs().sum() > 0
    assert net.decoder.final_conv.bias.grad.abs().sum() > 0


def test_paper_defaults():
    # paper size without building it: the defaults are the paper's, checked on the decoder layout
    net = Seq2Seq(2, 1, 1, channels=(4, 8, 16), num_res_blocks=6)
    assert len(net.encoder.res_blocks) == 6 and len(net.decoder.res_blocks) == 6
    assert net.decoder.embedding.num_codes == 64 and net.decoder.final_conv.num_kernels == 16
    assert net.decoder.final_conv.kernel_size == [7, 7]


def test_convlstm_shapes():
    lstm = ConvLSTM(2, 3, (4, 5), num_layers=2)
    assert lstm(torch.randn(2, 3, 3, 8, 8)).shape == (2, 3, 5, 8, 8)
    lstm3 = ConvLSTM(3, 2, 4, num_layers=3)
    assert lstm3(torch.randn(1, 2, 2, 4, 4, 4)).shape == (1, 2, 4, 4, 4, 4)


def test_convlstm_known_answer_and_causality():
    """With a 1x1 kernel every pixel is an ordinary LSTM: check two steps against the equations,
    written out by hand, and that an output frame depends on past frames only."""
    torch.manual_seed(0)
    lstm = ConvLSTM(2, 2, 3, num_layers=1, kernel_size=1)
    w = lstm.cells[0].conv.weight[:, :, 0, 0]  # (4 * 3, 2 + 3)
    bias = lstm.cells[0].conv.bias
    assert torch.equal(bias[3:6], torch.ones(3)) and not bias[:3].any()  # forget gate starts open
    x = torch.randn(1, 2, 2, 1, 1)
    y = lstm(x)
    h, c = torch.zeros(3), torch.zeros(3)
    for t in range(2):
        z = w @ torch.cat([x[0, t, :, 0, 0], h]) + bias
        i, f, o, g = z[:3].sigmoid(), z[3:6].sigmoid(), z[6:9].sigmoid(), z[9:].tanh()
        c = f * c + i * g
        h = o * c.tanh()
        torch.testing.assert_close(y[0, t, :, 0, 0], h, atol=1e-6, rtol=0)
    x2 = x.clone()
    x2[:, 1] += 1.0  # changing frame 1 leaves frame 0's output unchanged
    y2 = lstm(x2)
    assert torch.equal(y2[:, 0], y[:, 0]) and (y2[:, 1] - y[:, 1]).abs().max() > 0


@pytest.mark.parametrize("spatial_dims,size", [(2, (16, 16)), (3, (8, 8, 8))])
def test_seq2seq4d_shapes(spatial_dims, size):
    torch.manual_seed(0)
    net = Seq2Seq4D(spatial_dims, 1, 1, **{**TINY, "num_res_blocks": 0}, out_frames=2).eval()
    x = torch.randn(2, 3, 1, *size)  # (B, T, C, *spatial)
    with torch.no_grad():
        assert net.encode(x).shape == (2, 32, *(s // 4 for s in size))
        y = net(x, torch.tensor([0, 3]))
        assert y.shape == (2, 2, 1, *size)
        assert net(x, torch.tensor([1]), 4).shape == (2, 4, 1, *size)
        # frames differ (the decoder ConvLSTM unrolls), and samples are independent
        assert (y[:, 0] - y[:, 1]).abs().max() > 0
        torch.testing.assert_close(y[1:], net(x[1:], torch.tensor([3])), atol=1e-5, rtol=0)


def test_seq2seq4d_is_the_documented_composition():
    """Known answer from the parts: encode = time-mean of the encoder ConvLSTM over the per-frame
    encodings; frame k of the output = the hyper-decoder applied to step k of the decoder ConvLSTM
    fed the encoding at every step. The encoder and decoder load into a plain Seq2Seq."""
    torch.manual_seed(0)
    net = Seq2Seq4D(2, 1, 1, **TINY, out_frames=3).eval()
    x, code = torch.randn(2, 4, 1, 16, 16), torch.tensor([1, 2])
    with torch.no_grad():
        per_frame = torch.stack([net.encoder(x[:, t]) for t in range(4)], dim=1)
        feats = net.encoder_lstm(per_frame).mean(dim=1)
        torch.testing.assert_close(net.encode(x), feats, atol=1e-5, rtol=0)
        steps = net.decoder_lstm(feats.unsqueeze(1).expand(2, 3, *feats.shape[1:]).contiguous())
        y = net(x, code)
        for k in range(3):
            torch.testing.assert_close(y[:, k], net.decoder(steps[:, k], code), atol=1e-5, rtol=0)
        # the order of the input frames matters (a ConvLSTM, not a mean of frames)
        assert (net(x.flip(1), code) - y).abs().max() > 1e-4
        plain = Seq2Seq(2, 1, 1, **TINY).eval()
        missing = plain.load_state_dict(net.state_dict(), strict=False)
        assert not missing.missing_keys
        torch.testing.assert_close(plain.encode(x[:, 0]), net.encoder(x[:, 0]))


def test_seq2seq4d_torchscript():
    torch.manual_seed(0)
    net = Seq2Seq4D(2, 1, 1, **{**TINY, "num_res_blocks": 0}).eval()
    x, code = torch.randn(1, 2, 1, 16, 16), torch.tensor([2])
    torch.testing.assert_close(script(net)(x, code, 3), net(x, code, 3), atol=1e-6, rtol=0)


def test_same_code_batch_takes_single_conv_path(monkeypatch):
    net = tiny(2, 1, 1)

    def fail(self, x, coeff):
        raise AssertionError("grouped path used for a batch with one target")

    monkeypatch.setattr(HyperConv, "conv_per_sample", fail)
    with torch.no_grad():
        for b in (2, 5, 8, 13):  # batch sizes where a matrix product may round identical rows differently
            net(torch.randn(b, 1, 8, 8), torch.full((b,), 3))


def test_single_conv_path_gives_same_gradients_as_grouped_path(monkeypatch):
    import mrsynth.networks.hyperconv as hc

    net = tiny(2, 1, 1).train()
    x, code = torch.randn(3, 1, 16, 16), torch.tensor([1, 1, 1])

    def grads():
        net.zero_grad()
        net(x, code).square().mean().backward()
        return {n: p.grad.clone() for n, p in net.named_parameters()}

    fast = grads()
    monkeypatch.setattr(hc, "rows_identical", lambda t, compare_values=True: t.shape[0] <= 1)  # force the grouped path
    slow = grads()
    for name in fast:
        torch.testing.assert_close(fast[name], slow[name], atol=1e-5, rtol=1e-4, msg=name)


def test_cpu_inference_path_equals_batched_training_path():
    """Without autograd a CPU batch runs one sample at a time with each bank mixed once per target
    (memoised); with autograd the same batch runs as grouped convolutions. Same function."""
    net = tiny(2, 3, 3)
    x = torch.randn(5, 3, 32, 32)
    code = torch.tensor([3, 0, 3, 1, 0])
    batched = net(x, code).detach()  # grad enabled: the batched, grouped path
    with torch.no_grad():
        per_sample = net(x, code)
        decoded = net.decode(net.encode(x), code)
    torch.testing.assert_close(per_sample, batched, atol=1e-5, rtol=0)
    torch.testing.assert_close(decoded, per_sample, atol=0, rtol=0)


def test_mixture_output_is_a_convex_combination_of_the_targets_class_levels():
    net = tiny(2, 3, 3, mixture_classes=5)
    x = torch.randn(3, 3, 32, 32)
    code = torch.tensor([0, 2, 3])
    with torch.no_grad():
        y = net(x, code)
        dec = net.decoder
        emb = dec.embed(code)
        levels = torch.tanh(dec.levels(emb))  # (3, 5): one intensity per class and target
        h = net.encode(x)
        for block in dec.res_blocks:
            h = block(h, emb)
        for block in dec.up_blocks:
            h = block(h, emb)
        logits = dec.final_conv(h, emb).reshape(3, 3, 5, 32, 32)
    assert y.shape == (3, 3, 32, 32) and dec.out_channels == 3
    expected = (logits.softmax(2) * levels[:, None, :, None, None]).sum(2)
    torch.testing.assert_close(y, expected, atol=1e-6, rtol=0)
    # every voxel lies between its target's darkest and brightest class
    assert (y >= levels.min(1).values[:, None, None, None] - 1e-6).all()
    assert (y <= levels.max(1).values[:, None, None, None] + 1e-6).all()
    # the classes start spread over the output range, and the targets' levels are their own
    torch.testing.assert_close(dec.levels.bias.detach(), torch.linspace(-2.0, 2.0, 5))
    assert not torch.allclose(levels[0], levels[1])


def test_mixture_output_torchscript_per_sample_and_4d():
    net = tiny(2, 3, 3, mixture_classes=4)
    x, code = torch.randn(3, 3, 32, 32), torch.tensor([1, 0, 1])
    with torch.no_grad():
        per_sample = net(x, code)  # CPU inference: one sample at a time
        with torch.enable_grad():
            batched = net(x, code)
        torch.testing.assert_close(per_sample, batched, atol=1e-5, rtol=0)
        torch.testing.assert_close(script(net)(x, code), per_sample, atol=1e-6, rtol=0)
    torch.manual_seed(0)
    series = Seq2Seq4D(2, 1, 1, **TINY, lstm_layers=1, mixture_classes=3).eval()
    with torch.no_grad():
        assert series(torch.randn(2, 2, 1, 32, 32), torch.tensor([0, 1])).shape == (2, 1, 1, 32, 32)
    # the weights of one configuration load into the other
    result = Seq2Seq(2, 1, 1, **TINY, mixture_classes=3).load_state_dict(series.state_dict(), strict=False)
    assert not result.missing_keys and all("_lstm." in k for k in result.unexpected_keys)


@pytest.mark.parametrize("k", [-1, 1])
def test_mixture_classes_must_be_zero_or_at_least_two(k):
    with pytest.raises(ValueError, match="mixture_classes"):
        tiny(mixture_classes=k)
