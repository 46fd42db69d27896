"""TUMSyn: the CLIP stage, the implicit synthesis network, its training steps, the sliding-window
inferer onto any output grid, and the random-scale training samples."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.data import MetaTensor, decollate_batch

from mrsynth.engines import CLIPTrainStep, TUMSynTrainStep, clip_loss, retrieval_output, same_prompts
from mrsynth.errors import DataError
from mrsynth.transforms import ACQUISITION_FEATURES
from mrsynth.inferers import ImplicitSlidingWindowInferer
from mrsynth.networks import (ImageEncoder, ImplicitDecoder, TextEncoder, TextImageCLIP, TUMSyn, sample_features,
                              voxel_centers)
from mrsynth.transforms import Prompt, RandImplicitPaird, scaled_prompt

VOCAB, CTX, EOT, SOT = 50, 8, 49, 48  # EOT is the highest id, as in CLIP's vocabulary


def tiny_text(seed: int = 0, **kw) -> TextEncoder:
    torch.manual_seed(seed)
    return TextEncoder(vocab_size=VOCAB, context_length=CTX, width=16, heads=2, layers=kw.pop("layers", 2),
                       embed_dim=16, **kw)


def tiny_tumsyn(seed: int = 0, **kw) -> TUMSyn:
    text = tiny_text(seed)
    torch.manual_seed(seed + 1)
    return TUMSyn(text, features=8, num_blocks=1, heads=2, adapter_hidden=8, decoder_channels=(16, 16), **kw)


def tokens(*rows) -> torch.Tensor:
    """Token rows ``[SOT, *ids, EOT, 0...]``."""
    out = torch.zeros(len(rows), CTX, dtype=torch.long)
    for i, ids in enumerate(rows):
        r = [SOT, *ids, EOT]
        out[i, : len(r)] = torch.tensor(r)
    return out


# -- text encoder ------------------------------------------------------------------------------
def test_text_encoder_shape_and_causal_read_of_the_end_token():
    enc = tiny_text().eval()
    t = tokens([3, 4, 5], [7, 8])
    out = enc(t)
    assert out.shape == (2, 16) and torch.isfinite(out).all()
    # the padding after the end-of-text token is invisible (causal attention, EOT read)
    after = t.clone()
    after[0, 5:] = torch.tensor([1, 2, 3])
    after[1, 4:] = torch.tensor([9, 9, 9, 9])
    torch.testing.assert_close(enc(after), out, atol=1e-6, rtol=0)
    # a token before it changes the embedding of that row only
    before = t.clone()
    before[0, 2] = 30
    changed = enc(before)
    assert (changed[0] - out[0]).abs().max() > 1e-3
    torch.testing.assert_close(changed[1], out[1], atol=1e-6, rtol=0)
    # and the same holds on the non-fused attention path
    slow = tiny_text(flash=False).eval()
    slow.load_state_dict(enc.state_dict())
    torch.testing.assert_close(slow(t), out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(slow(after), out, atol=1e-5, rtol=1e-5)


def test_text_encoder_rejects_wrong_token_shape():
    enc = tiny_text()
    with pytest.raises(ValueError, match=r"tokens must be \(B, 8\)"):
        enc(torch.zeros(2, CTX + 1, dtype=torch.long))
    with pytest.raises(ValueError, match="tokens must be"):
        enc(torch.zeros(CTX, dtype=torch.long))


# -- stage 1: CLIP -----------------------------------------------------------------------------
def tiny_clip(seed: int = 0) -> TextImageCLIP:
    text = tiny_text(seed, layers=1)
    torch.manual_seed(seed + 1)
    return TextImageCLIP(text, ImageEncoder(1, channels=(4, 8, 8, 8), embed_dim=16))


def test_clip_embeddings_are_unit_norm_and_temperature_starts_at_0_07():
    net = tiny_clip().eval()
    img, txt, scale = net(torch.rand(3, 1, 8, 8, 8), tokens([1], [2, 3], [4, 5, 6]))
    assert img.shape == txt.shape == (3, 16)
    torch.testing.assert_close(img.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(txt.norm(dim=1), torch.ones(3))
    assert float(scale.detach()) == pytest.approx(1 / 0.07, rel=1e-6)
    with torch.no_grad():
        net.logit_scale.fill_(np.log(1000.0))
        assert float(net(torch.rand(1, 1, 8, 8, 8), tokens([1]))[2]) == pytest.approx(100.0, rel=1e-5)  # clamp


def test_clip_loss_known_answer_and_matched_pairs_score_lower():
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(4, 8, generator=g), dim=1)
    txt = F.normalize(torch.randn(4, 8, generator=g), dim=1)
    loss, logits = clip_loss(img, txt, torch.tensor(10.0))
    ref = 10.0 * img @ txt.t()
    i2t = -torch.log_softmax(ref, dim=1).diagonal().mean()
    t2i = -torch.log_softmax(ref, dim=0).diagonal().mean()
    torch.testing.assert_close(logits, ref)
    assert float(loss) == pytest.approx(float(0.5 * (i2t + t2i)), rel=1e-6)
    matched, _ = clip_loss(img, img, torch.tensor(10.0))
    shuffled, _ = clip_loss(img, img[torch.tensor([1, 2, 3, 0])], torch.tensor(10.0))
    assert float(matched) < float(shuffled)


def test_clip_loss_with_identical_prompts_shares_the_target():
    g = torch.Generator().manual_seed(2)
    img = F.normalize(torch.randn(4, 8, generator=g), dim=1)
    txt = F.normalize(torch.randn(4, 8, generator=g), dim=1)
    tok = tokens([1, 2], [3], [1, 2], [4])  # rows 0 and 2: one prompt
    same = same_prompts(tok)
    assert same.tolist() == [[True, False, True, False], [False, True, False, False],
                             [True, False, True, False], [False, False, False, True]]
    loss, logits = clip_loss(img, txt, torch.tensor(10.0), same)
    target = torch.tensor([[0.5, 0, 0.5, 0], [0, 1, 0, 0], [0.5, 0, 0.5, 0], [0, 0, 0, 1.0]])
    i2t = -(target * torch.log_softmax(logits, dim=1)).sum(1).mean()
    t2i = -(target * torch.log_softmax(logits.t(), dim=1)).sum(1).mean()
    assert float(loss) == pytest.approx(float(0.5 * (i2t + t2i)), rel=1e-6)
    # all prompts different: the same as CLIP's hard targets
    plain, _ = clip_loss(img, txt, torch.tensor(10.0))
    eye, _ = clip_loss(img, txt, torch.tensor(10.0), torch.eye(4, dtype=torch.bool))
    assert float(plain) == pytest.approx(float(eye), rel=1e-6)
    # two cubes of one image with one prompt: the best possible loss is reached, not ln 2 above it
    emb = F.normalize(torch.tensor([[1.0, 0], [0, 1.0], [1.0, 0]]), dim=1)
    best, _ = clip_loss(emb, emb, torch.tensor(100.0), same_prompts(tokens([1], [2], [1])))
    assert float(best) < 0.7  # ln 2 = 0.69 is the soft target's entropy, the floor


def test_retrieval_output_batched_and_decollated_agree():
    g = torch.Generator().manual_seed(1)
    img = F.normalize(torch.randn(3, 8, generator=g), dim=1)
    txt = F.normalize(torch.randn(3, 8, generator=g), dim=1)
    batched = {"pred": (img, txt, torch.tensor(14.0)), "image": torch.zeros(3, 1, 2, 2, 2)}
    logits, target = retrieval_output(batched)
    torch.testing.assert_close(logits, img @ txt.t())
    assert torch.equal(target, torch.arange(3))
    logits2, target2 = retrieval_output(decollate_batch(batched, detach=True))
    torch.testing.assert_close(logits2, logits)
    assert torch.equal(target2, target)


def test_clip_step_memorises_four_pairs():
    torch.manual_seed(0)
    net = tiny_clip(seed=3).train()
    batch = {"image": torch.rand(4, 1, 8, 8, 8), "image_prompt_tokens": tokens([1, 2], [3], [4, 5, 6], [7, 8])}
    step = CLIPTrainStep()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    losses, accs = [], []
    for _ in range(60):
        opt.zero_grad()
        out = step.compute(net, batch)
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"].detach()))
        accs.append(float(out["retrieval_acc"]))
    assert out["pred"].shape == (4, 4) and float(out["loss_contrastive"]) == pytest.approx(losses[-1])
    assert float(out["logit_scale"]) != pytest.approx(1 / 0.07, rel=1e-4)  # the temperature learns too
    assert losses[-1] < 0.2 * losses[0]
    assert accs[-5:] == [1.0] * 5 and accs[0] < 1.0
    # the logged accuracy is the image-to-text argmax of the step's logits
    with torch.no_grad():
        img, txt, _ = net(batch["image"], batch["image_prompt_tokens"])
    assert torch.equal((img @ txt.t()).argmax(1), torch.arange(4))


# -- stage 2: TUMSyn ---------------------------------------------------------------------------
def tumsyn_inputs(b: int = 2, n: int = 20, size=(6, 5, 4)):
    g = torch.Generator().manual_seed(5)
    return (torch.rand(b, 1, *size, generator=g), tokens(*[[i + 1, i + 2] for i in range(b)]),
            torch.rand(b, n, 3, generator=g) * 2 - 1)


def test_frozen_text_encoder_gets_no_gradient_and_stays_in_eval():
    net = tiny_tumsyn().train()
    assert not net.text_encoder.training and net.encoder.training and net.decoder.training
    assert all(not p.requires_grad for p in net.text_encoder.parameters())
    image, tok, coords = tumsyn_inputs()
    y = net(image, tok, coords)
    assert y.shape == (2, 20)
    y.square().mean().backward()
    assert all(p.grad is None for p in net.text_encoder.parameters())
    others = {n: p.grad for n, p in net.named_parameters() if not n.startswith("text_encoder.")}
    assert others and all(g is not None for g in others.values())
    # the adapter's last layer is zero-initialised, so its first layer gets a zero gradient at the start
    for name in ("encoder.head.weight", "encoder.tail.weight", "fusion.kv.weight", "fusion.to_query.weight",
                 "fusion.adapter.2.weight", "fusion.gate.weight", "fusion.ffn_in.weight", "decoder.mlp.0.weight"):
        assert others[name].abs().sum() > 0, name
    net.eval()
    assert not net.text_encoder.training and not net.encoder.training


def test_trainable_text_encoder():
    net = tiny_tumsyn(train_text_encoder=True).train()
    # every parameter trains but MONAI's unused cross-attention norms (frozen so that DDP does not wait for them)
    assert net.text_encoder.training
    assert all(p.requires_grad != ("norm_cross_attn" in n) for n, p in net.text_encoder.named_parameters())
    image, tok, coords = tumsyn_inputs()
    net(image, tok, coords).square().mean().backward()
    assert net.text_encoder.token_embedding.weight.grad.abs().sum() > 0
    assert net.text_encoder.projection.weight.grad.abs().sum() > 0


def test_forward_is_encode_text_encode_query_and_the_prompt_matters():
    net = tiny_tumsyn().eval()
    with torch.no_grad():  # let the (zero-initialised) adapter and the fusion see the prompt
        net.fusion.adapter[-1].weight.normal_(0, 0.5)
    image, tok, coords = tumsyn_inputs()
    with torch.no_grad():
        y = net(image, tok, coords)
        torch.testing.assert_close(net.query(net.encode(image, net.encode_text(tok)), coords), y)
        other = net(image, tok.flip(0), coords)
    assert (other - y).abs().max() > 1e-4


def test_acquisition_parameters_reach_the_output_and_are_required():
    from mrsynth.transforms import acquisition_features

    net = tiny_tumsyn(acquisition_features=ACQUISITION_FEATURES).eval()
    image, tok, coords = tumsyn_inputs()
    t2 = acquisition_features("TR/TE/TI/FA: (4000, 120, None, 90)")
    flair = acquisition_features("TR/TE/TI/FA: (9000, 110, 2480, 90)")
    with torch.no_grad():  # FiLM starts at zero: give it weights so that the prompt shows
        net.fusion.film.weight.normal_(0, 0.5)
        same_tokens = tok[:1].expand(2, -1)
        y = net(image[:1].expand(2, -1, -1, -1, -1), same_tokens, coords[:1].expand(2, -1, -1), torch.stack([t2, flair]))
        # same image, same tokens: only the acquisition parameters differ
        assert (y[0] - y[1]).abs().max() > 1e-4
        acq = torch.stack([t2, flair])
        torch.testing.assert_close(net.query(net.encode(image, net.encode_text(tok, acq)), coords),
                                   net(image, tok, coords, acq))
        scripted = torch.jit.script(net)
        torch.testing.assert_close(scripted(image, tok, coords, acq), net(image, tok, coords, acq))
    with pytest.raises(ValueError, match="acquisition"):
        net(image, tok, coords)
    with pytest.raises(ValueError, match=rf"\(B, {ACQUISITION_FEATURES}\)"):
        net(image, tok, coords, acq[:, :5])
    # without the acquisition encoder (the paper's network) the vector is ignored
    paper = tiny_tumsyn().eval()
    with torch.no_grad():
        torch.testing.assert_close(paper(image, tok, coords, acq), paper(image, tok, coords))


def test_signal_head_reads_the_target_contrast_out_of_the_signal_equations():
    """signal_head: the decoder's output is softplus(v(x)) . s + b(x) with s the target protocol's
    canonical signals. With the last layer set to weight 1 on one canonical tissue, 0 elsewhere, b = 0, every point shows that
    tissue's signal under the prompt's protocol, whatever the image: a known answer per protocol.
    The sliding-window inferer and TorchScript keep it; a vector without the signals is refused."""
    from mrsynth.transforms import SIGNAL_FEATURES, signal_features, acquisition_features

    net = tiny_tumsyn(acquisition_features=ACQUISITION_FEATURES, signal_head=True, query_to_decoder=True).eval()
    assert net.decoder.mlp[0].in_features == 2 * 8 + SIGNAL_FEATURES + 6
    assert net.decoder.mlp[-1].out_features == SIGNAL_FEATURES + 1
    image, tok, coords = tumsyn_inputs()
    prompts = ["TR/TE/TI/FA: (4000, 120, None, 90)", "TR/TE/TI/FA: (9000, 110, 2480, 90)"]
    acq = torch.stack([acquisition_features(p) for p in prompts])
    j = SIGNAL_FEATURES - 1  # the longest T1 and T2: CSF-like
    with torch.no_grad():
        last = net.decoder.mlp[-1]
        last.weight.zero_()
        last.bias.fill_(-40.0)  # softplus(-40) ~ 0: no weight on the other tissues
        last.bias[j] = math.log(math.e - 1)  # softplus: weight 1
        last.bias[-1] = 0.0  # b
        y = net(image, tok, coords, acq)
        expected = torch.stack([signal_features(p)[j] for p in prompts])
        torch.testing.assert_close(y, expected[:, None].expand_as(y))
        assert y[1].max() < 0.05 < y[0].min()  # nulled by the FLAIR inversion, bright in T2
        last.weight.normal_(0, 0.1)
        text = net.encode_text(tok, acq)
        assert text.shape == (2, net.embed_dim + SIGNAL_FEATURES)
        torch.testing.assert_close(torch.jit.script(net)(image, tok, coords, acq), net(image, tok, coords, acq))
        whole = ImplicitSlidingWindowInferer(roi_size=6, points_per_chunk=50)(image[:1], net, tok[:1], acq[:1])
        assert whole.shape == (1, 1, *image.shape[2:]) and torch.isfinite(whole).all()
    with pytest.raises(ValueError, match="signal_head"):
        tiny_tumsyn(acquisition_features=12, signal_head=True)


def test_source_mixture_keeps_the_target_out_of_the_tissue_mixture():
    """source_mixture: the features the decoder's MLP reads are the source's alone (the same for
    any prompt), the prompt only sets the signals, the gain and the offset. Known answer: with the
    composition set to one canonical tissue, amplitude 1, gain 1 and offset 0.25, every point shows
    0.25 plus that tissue's signal under the prompt's protocol."""
    from mrsynth.transforms import SIGNAL_FEATURES, acquisition_features, signal_features

    net = tiny_tumsyn(acquisition_features=ACQUISITION_FEATURES, signal_head=True, source_mixture=True).eval()
    assert net.fusion is None
    assert net.decoder.mlp[0].in_features == 8 + 6 and net.decoder.mlp[-1].out_features == SIGNAL_FEATURES + 1
    image, tok, coords = tumsyn_inputs()
    prompts = ["TR/TE/TI/FA: (4000, 120, None, 90)", "TR/TE/TI/FA: (9000, 110, 2480, 90)"]
    acq = torch.stack([acquisition_features(p) for p in prompts])
    img = image[:1].expand(2, -1, -1, -1, -1)
    j = SIGNAL_FEATURES - 1  # CSF-like
    with torch.no_grad():
        f = net.encode(img, net.encode_text(tok, acq))
        assert f.shape == (2, 8 + SIGNAL_FEATURES + 2, *image.shape[2:])
        torch.testing.assert_close(f[0, :8], f[1, :8])  # the mixture's input: no trace of the prompt
        assert not torch.allclose(f[0, 8:8 + SIGNAL_FEATURES], f[1, 8:8 + SIGNAL_FEATURES])
        last = net.decoder.mlp[-1]
        last.weight.zero_()
        last.bias.fill_(-40.0)
        last.bias[j] = 0.0  # the composition: all on tissue j
        last.bias[-1] = math.log(math.e - 1)  # the amplitude: softplus 1
        net.readout.bias.copy_(torch.tensor([math.log(math.e - 1), 0.25]))  # gain 1, offset 0.25
        y = net(img, tok, coords, acq)
        expected = 0.25 + torch.stack([signal_features(p)[j] for p in prompts])
        torch.testing.assert_close(y, expected[:, None].expand_as(y))
        last.weight.normal_(0, 0.1)
        torch.testing.assert_close(torch.jit.script(net)(image, tok, coords, acq), net(image, tok, coords, acq))
    with pytest.raises(ValueError, match="signal head"):
        tiny_tumsyn(acquisition_features=ACQUISITION_FEATURES, source_mixture=True)
    with pytest.raises(ValueError, match="query_to_decoder"):
        tiny_tumsyn(acquisition_features=ACQUISITION_FEATURES, signal_head=True, source_mixture=True,
                    query_to_decoder=True)


def test_mixture_scale_multiplies_the_composition_logits():
    """mixture_scale s: the same output as scale 1 with the composition logits' weights and biases
    times s (the amplitude's untouched); scripting keeps it; s <= 0 is refused."""
    from mrsynth.transforms import SIGNAL_FEATURES, acquisition_features

    kw = dict(acquisition_features=ACQUISITION_FEATURES, signal_head=True, source_mixture=True)
    scaled, plain = tiny_tumsyn(mixture_scale=3.0, **kw).eval(), tiny_tumsyn(**kw).eval()
    plain.load_state_dict(scaled.state_dict())
    with torch.no_grad():
        last = plain.decoder.mlp[-1]
        last.weight[:SIGNAL_FEATURES] *= 3.0
        last.bias[:SIGNAL_FEATURES] *= 3.0
        scaled.decoder.mlp[-1].weight.normal_(0, 0.3)  # logits far enough from 0 that the scale shows
        plain.decoder.mlp[-1].weight.copy_(scaled.decoder.mlp[-1].weight)
        plain.decoder.mlp[-1].weight[:SIGNAL_FEATURES] *= 3.0
        image, tok, coords = tumsyn_inputs()
        acq = acquisition_features("TR/TE/TI/FA: (4000, 120, None, 90)")[None].expand(2, -1)
        y = scaled(image, tok, coords, acq)
        torch.testing.assert_close(y, plain(image, tok, coords, acq))
        scaled.decoder.mixture_scale = 1.0
        assert (scaled(image, tok, coords, acq) - y).abs().max() > 1e-4
        scaled.decoder.mixture_scale = 3.0
        torch.testing.assert_close(torch.jit.script(scaled)(image, tok, coords, acq), y)
    with pytest.raises(ValueError, match="mixture_scale must be > 0"):
        tiny_tumsyn(mixture_scale=0.0, **kw)


def test_source_protocol_gives_the_mixture_the_sources_signals_not_the_targets():
    """source_protocol: the acquisition vector is the target's then the source's; the decoder's MLP
    reads the image features and the source's canonical signals (read once per patch: equal to
    sampling them at every point), never the target's: one source under two targets gives the MLP
    identical inputs, one image under two source protocols inputs that differ in the source's
    signals only; scripting keeps it."""
    from mrsynth.transforms import SIGNAL_FEATURES, acquisition_features

    net = tiny_tumsyn(acquisition_features=2 * ACQUISITION_FEATURES, signal_head=True, source_mixture=True,
                      source_protocol=True).eval()
    assert net.decoder.mlp[0].in_features == 8 + SIGNAL_FEATURES + 6
    image, tok, coords = tumsyn_inputs()
    img, coords = image[:1].expand(2, -1, -1, -1, -1), coords[:1].expand(2, -1, -1)
    t1w, t2w, flair = ("TR/TE/TI/FA: (500, 10, None, 90)", "TR/TE/TI/FA: (4000, 120, None, 90)",
                       "TR/TE/TI/FA: (9000, 110, 2480, 90)")

    def acq(target, source):
        return torch.cat([acquisition_features(target), acquisition_features(source)])

    seen = []
    hook = net.decoder.mlp[0].register_forward_hook(lambda m, i, o: seen.append(i[0].detach().clone()))
    with torch.no_grad():
        f = net.encode(img, net.encode_text(tok, torch.stack([acq(t2w, t1w), acq(flair, t1w)])))
        assert f.shape == (2, 8 + 2 * SIGNAL_FEATURES + 2, *image.shape[2:])
        torch.testing.assert_close(f[0, 8:8 + SIGNAL_FEATURES, 0, 0, 0], acquisition_features(t1w)[-SIGNAL_FEATURES:])
        y_targets = net.query(f, coords)
        torch.testing.assert_close(seen[-1][0], seen[-1][1])  # two targets, one source: the same mixture's input
        assert (y_targets[0] - y_targets[1]).abs().max() > 1e-4  # read out in two contrasts
        y = net(img, tok, coords, torch.stack([acq(t2w, t1w), acq(t2w, flair)]))
        diff = (seen[-1][0] - seen[-1][1]).abs().amax(0)
        assert diff[:8].max() == 0 and diff[8 + SIGNAL_FEATURES:].max() == 0  # image features and position agree
        torch.testing.assert_close(diff[8:8 + SIGNAL_FEATURES], (acquisition_features(t1w) - acquisition_features(flair))
                                   [-SIGNAL_FEATURES:].abs())
        assert (y[0] - y[1]).abs().max() > 1e-4  # another source protocol, another mixture
        hook.remove()
        # reading the constant channels once equals sampling them at every point
        net.decoder.constant_inputs = 0
        sampled = net(img, tok, coords, torch.stack([acq(t2w, t1w), acq(t2w, flair)]))
        net.decoder.constant_inputs = SIGNAL_FEATURES
        torch.testing.assert_close(sampled, y)
        a = torch.stack([acq(t2w, t1w), acq(t2w, flair)])
        torch.testing.assert_close(torch.jit.script(net)(img, tok, coords, a), net(img, tok, coords, a))
    with pytest.raises(ValueError, match="set source_mixture too"):
        tiny_tumsyn(acquisition_features=2 * ACQUISITION_FEATURES, signal_head=True, source_protocol=True)
    with pytest.raises(ValueError, match=f"acquisition_features must be {2 * ACQUISITION_FEATURES}"):
        tiny_tumsyn(acquisition_features=ACQUISITION_FEATURES, signal_head=True, source_mixture=True,
                    source_protocol=True)


def test_query_to_decoder_gives_the_decoder_the_prompt_at_every_point():
    """query_to_decoder: the text query appended to the features as constant channels, so the
    prompt reaches the decoder's first layer even where the fusion leaves the features unchanged
    (FiLM and adapter at their zero initialisation); scripting keeps it."""
    from mrsynth.transforms import acquisition_features

    net = tiny_tumsyn(acquisition_features=ACQUISITION_FEATURES, query_to_decoder=True).eval()
    assert net.decoder.mlp[0].in_features == 2 * 8 + 6
    image, tok, coords = tumsyn_inputs()
    same = tok[:1].expand(2, -1)
    acq = torch.stack([acquisition_features("TR/TE/TI/FA: (4000, 120, None, 90)"),
                       acquisition_features("TR/TE/TI/FA: (9000, 110, 2480, 90)")])
    img = image[:1].expand(2, -1, -1, -1, -1)
    with torch.no_grad():
        text = net.encode_text(same, acq)
        f = net.encode(img, text)
        assert f.shape == (2, 16, *image.shape[2:])
        q = net.fusion.text_query(text)
        torch.testing.assert_close(f[:, 8:], q.view(2, 8, 1, 1, 1).expand(-1, -1, *image.shape[2:]))
        y = net(img, same, coords[:1].expand(2, -1, -1), acq)
        assert (y[0] - y[1]).abs().max() > 1e-4  # only the acquisition parameters differ
        torch.testing.assert_close(torch.jit.script(net)(img, same, coords[:1].expand(2, -1, -1), acq), y)
    assert tiny_tumsyn(acquisition_features=ACQUISITION_FEATURES).decoder.mlp[0].in_features == 8 + 6  # the paper's decoder


def test_source_skip_lets_the_decoder_read_the_sources_trilinear_interpolation():
    """source_skip: the image joins the sampled features (after the fused ones, before the
    constant channels), so a decoder whose MLP passes that one input through returns exactly the
    trilinear interpolation of the source at every query point, off the voxel centres too, which
    no encoder stands in the way of; scripting keeps it; without it the decoder is the paper's."""
    net = tiny_tumsyn(source_skip=True).eval()
    assert net.decoder.mlp[0].in_features == 8 + 1 + 6
    image, tok, coords = tumsyn_inputs()
    with torch.no_grad():
        f = net.encode(image, net.encode_text(tok))
        assert f.shape == (2, 9, *image.shape[2:])
        torch.testing.assert_close(f[:, 8:], image)
        for layer in net.decoder.mlp:  # hidden unit 0 carries the skip input (non-negative: ReLU passes it)
            if isinstance(layer, torch.nn.Linear):
                layer.weight.zero_(), layer.bias.zero_()
                layer.weight[0, 8 if layer is net.decoder.mlp[0] else 0] = 1.0
        y = net(image, tok, coords)
        torch.testing.assert_close(y, sample_features(image, coords)[..., 0])
        torch.testing.assert_close(torch.jit.script(net)(image, tok, coords), y)
    assert net.decoder.mlp[0].in_features - tiny_tumsyn().decoder.mlp[0].in_features == 1
    # with the signal head's constant channels after it, the skip channel still comes first
    net = tiny_tumsyn(source_skip=True, acquisition_features=ACQUISITION_FEATURES, signal_head=True,
                      source_mixture=True).eval()
    with torch.no_grad():
        f = net.encode(image, net.encode_text(tok, torch.rand(2, ACQUISITION_FEATURES)))
        torch.testing.assert_close(f[:, 8:9], image)


def test_fusion_film_starts_as_identity():
    net = tiny_tumsyn().eval()
    f = torch.randn(2, 8, 3, 3, 3)
    text = torch.randn(2, 16)
    with torch.no_grad():
        out = net.fusion(f, text)
        net.fusion.film.weight.normal_(0, 0.5)
        moved = net.fusion(f, text)
    assert net.fusion.film.bias.abs().sum() == 0 and (moved - out).abs().max() > 1e-4


# -- coordinates --------------------------------------------------------------------------------
def test_sample_features_at_voxel_centres_are_the_voxels():
    f = torch.randn(2, 3, 5, 4, 3)
    c = voxel_centers((5, 4, 3))
    assert c.shape == (60, 3)
    out = sample_features(f, c[None].expand(2, -1, -1))
    assert out.shape == (2, 60, 3)
    torch.testing.assert_close(out, f.flatten(2).transpose(1, 2), atol=1e-6, rtol=0)
    # a single point names (x, y, z) = axes 2, 3, 4 of the tensor
    point = torch.tensor([[[-1 + 3 / 5, -1 + 5 / 4, -1 + 1 / 3]]])  # voxel (1, 2, 0)
    torch.testing.assert_close(sample_features(f[:1], point)[0, 0], f[0, :, 1, 2, 0], atol=1e-6, rtol=0)
    # half-way between two voxels along x: their mean
    mid = torch.tensor([[[-1 + 4 / 5, -1 + 5 / 4, -1 + 1 / 3]]])  # x index 1.5
    torch.testing.assert_close(sample_features(f[:1], mid)[0, 0], f[0, :, 1:3, 2, 0].mean(1), atol=1e-6, rtol=0)


def test_relative_position_range_and_zero_at_centres():
    shape = (7, 5, 4)
    c = torch.rand(1000, 3) * 2 - 1
    rel = ImplicitDecoder.relative_position(c, shape)
    assert rel.abs().max() <= 0.5 + 1e-6 and rel.abs().max() > 0.45
    assert ImplicitDecoder.relative_position(voxel_centers(shape), shape).abs().max() < 1e-5
    # voxel index (2.3, 1.0, 3.4) -> (0.3, 0, 0.4)
    n = torch.tensor(shape, dtype=torch.float32)
    u = torch.tensor([[2.3, 1.0, 3.4]])
    torch.testing.assert_close(ImplicitDecoder.relative_position((2 * u + 1) / n - 1, shape),
                               torch.tensor([[0.3, 0.0, 0.4]]), atol=1e-5, rtol=0)


def test_decoder_is_the_same_at_every_place_and_patch_size():
    """A point gives the same value in a patch and in a larger patch that contains it (shifted)."""
    torch.manual_seed(0)
    dec = ImplicitDecoder(4, hidden=(16, 16)).eval()
    f = torch.randn(1, 4, 6, 5, 4)
    big = torch.randn(1, 4, 9, 7, 4)
    big[:, :, 2:8, 1:6, :] = f  # f sits at offset (2, 1, 0) in big
    u = torch.rand(1, 50, 3) * (torch.tensor([6, 5, 4]) - 1)  # interior voxel positions of f
    c_small = (2 * u + 1) / torch.tensor([6.0, 5, 4]) - 1
    c_big = (2 * (u + torch.tensor([2.0, 1, 0])) + 1) / torch.tensor([9.0, 7, 4]) - 1
    with torch.no_grad():
        torch.testing.assert_close(dec(big, c_big), dec(f, c_small), atol=1e-5, rtol=1e-5)


# -- the sliding-window inferer ------------------------------------------------------------------
class StubNet:
    """A network that ignores position: the window itself is the feature map; ``query`` returns
    ``value`` or the trilinear sample of the window. Records the windows it encodes."""

    def __init__(self, value=None, fail=False):
        self.value, self.fail, self.windows = value, fail, []

    def encode_text(self, tokens, acquisition=None):
        return torch.zeros(tokens.shape[0], 4)

    def encode(self, win, text):
        if self.fail:
            raise AssertionError("encode must not run here")
        self.windows.append(win.clone())
        return win

    def query(self, f, coords):
        if self.value is not None:
            return torch.full(coords.shape[:2], self.value)
        return sample_features(f, coords)[..., 0]


def test_inferer_chunking_does_not_change_the_result():
    net = tiny_tumsyn().eval()
    torch.manual_seed(1)
    x = torch.rand(1, 1, 14, 12, 10) + 0.1
    tok = tokens([1, 2])
    for shape in [(14, 12, 10), (14, 12, 20), (7, 5, 6)]:
        a = ImplicitSlidingWindowInferer(roi_size=8, overlap=0.5, points_per_chunk=97)(x, net, tok, output_shape=shape)
        b = ImplicitSlidingWindowInferer(roi_size=8, overlap=0.5, points_per_chunk=10**7)(x, net, tok,
                                                                                          output_shape=shape)
        assert a.shape == (1, 1, *shape) and a.std() > 0
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_inferer_with_one_window_is_the_network_on_the_output_grid():
    net = tiny_tumsyn().eval()
    torch.manual_seed(2)
    x = torch.rand(1, 1, 10, 8, 6) + 0.1
    tok = tokens([4])
    inf = ImplicitSlidingWindowInferer(roi_size=16, points_per_chunk=50)
    # output grids with no voxel exactly half-way between two input voxels: there the decoder's
    # relative position jumps from +0.5 to -0.5, and float rounding picks the side
    for shape in [(10, 8, 6), (20, 16, 4)]:
        with torch.no_grad():
            ref = net(x, tok, voxel_centers(shape)[None]).reshape(1, 1, *shape)
        torch.testing.assert_close(inf(x, net, tok, output_shape=shape), ref, atol=1e-5, rtol=1e-5)
    assert inf(x, net, tok).shape == (1, 1, 10, 8, 6)  # default: the input grid


def test_inferer_blending_weights_are_normalised():
    torch.manual_seed(3)
    x = torch.rand(1, 1, 30, 26, 22) + 0.5
    tok = tokens([1])
    inf = ImplicitSlidingWindowInferer(roi_size=12, overlap=0.5, points_per_chunk=1000)
    for shape in [(30, 26, 22), (60, 26, 22), (17, 13, 11)]:
        net = StubNet(value=0.7)
        out = inf(x, net, tok, output_shape=shape)
        assert len(net.windows) == 4 * 4 * 3  # starts 0/6/12/18, 0/6/12/14, 0/6/10
        torch.testing.assert_close(out, torch.full((1, 1, *shape), 0.7), atol=1e-6, rtol=0)
    # on the input grid every window samples exactly the input voxel: the blend is the input
    torch.testing.assert_close(inf(x, StubNet(), tok), x, atol=1e-6, rtol=0)


def test_inferer_skips_background_windows():
    tok = tokens([1])
    inf = ImplicitSlidingWindowInferer(roi_size=12, overlap=0.5, skip_below=1e-3)
    out = inf(torch.zeros(1, 1, 30, 26, 22), StubNet(fail=True), tok, output_shape=(15, 26, 44))
    assert out.shape == (1, 1, 15, 26, 44) and not out.any()
    # only the corner window holds signal: it alone runs, and only its voxels get values
    x = torch.zeros(1, 1, 30, 26, 22)
    x[:, :, :5, :5, :5] = 1.0
    net = StubNet(value=0.7)
    out = inf(x, net, tok)
    assert len(net.windows) == 1 and torch.equal(net.windows[0], x[:, :, :12, :12, :12])
    expected = torch.zeros(1, 1, 30, 26, 22)
    expected[:, :, :12, :12, :12] = 0.7
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    # skip_below=None runs every window
    net = StubNet(value=0.7)
    torch.testing.assert_close(ImplicitSlidingWindowInferer(roi_size=12, skip_below=None)(x, net, tok),
                               torch.full_like(x, 0.7), atol=1e-6, rtol=0)
    assert len(net.windows) == 48


def test_inferer_rejects_a_batch():
    with pytest.raises(ValueError, match="one volume"):
        ImplicitSlidingWindowInferer()(torch.rand(2, 1, 4, 4, 4), StubNet(0.1), tokens([1], [2]))
    with pytest.raises(ValueError, match="overlap"):
        ImplicitSlidingWindowInferer(overlap=1.0)


# -- stage 2 training step -----------------------------------------------------------------------
def tumsyn_batch(b: int = 2, p: int = 6, n: int = 30) -> dict:
    g = torch.Generator().manual_seed(7)
    return {"image": torch.rand(b, 1, p, p, p, generator=g), "label_lr": torch.rand(b, 1, p, p, p, generator=g),
            "image_prompt_tokens": tokens([1, 2], [3]), "label_prompt_tokens": tokens([10], [11, 12, 13]),
            "coords": torch.rand(b, n, 3, generator=g) * 2 - 1, "label": torch.rand(b, n, generator=g),
            "image_values": torch.rand(b, n, generator=g)}


def test_tumsyn_step_is_half_forward_plus_half_backward_l1():
    net = tiny_tumsyn().train()
    batch = tumsyn_batch()
    out = TUMSynTrainStep(loss=torch.nn.L1Loss()).compute(net, batch)
    with torch.no_grad():
        fwd = net(batch["image"], batch["label_prompt_tokens"], batch["coords"])
        bwd = net(batch["label_lr"], batch["image_prompt_tokens"], batch["coords"])
    lf, lb = (fwd - batch["label"]).abs().mean(), (bwd - batch["image_values"]).abs().mean()
    torch.testing.assert_close(out["pred"].detach(), fwd, atol=1e-5, rtol=1e-5)
    assert float(out["loss_forward"]) == pytest.approx(float(lf), rel=1e-5)
    assert float(out["loss_backward"]) == pytest.approx(float(lb), rel=1e-5)
    assert float(out["loss"].detach()) == pytest.approx(float(0.5 * lf + 0.5 * lb), rel=1e-5)
    assert out["loss"].requires_grad

    only = TUMSynTrainStep(backward_weight=0.0, loss=torch.nn.L1Loss()).compute(net, batch)
    assert float(only["loss_backward"]) == 0.0
    assert float(only["loss"].detach()) == pytest.approx(float(0.5 * lf), rel=1e-5)


def test_tumsyn_step_backward_asks_for_the_source_at_the_queries_voxel_size():
    """With ``image_prompt_query_tokens`` (the source's prompt at the queries' voxel size) in the
    batch, the target -> source direction is conditioned on it, not on ``image_prompt_tokens``
    (the source at the cube's coarser voxel size, which the queries are not)."""
    net = tiny_tumsyn().train()
    batch = tumsyn_batch()
    batch["image_prompt_query_tokens"] = tokens([4, 5, 6], [7])
    out = TUMSynTrainStep(loss=torch.nn.L1Loss()).compute(net, batch)
    with torch.no_grad():
        query = net(batch["label_lr"], batch["image_prompt_query_tokens"], batch["coords"])
        cube = net(batch["label_lr"], batch["image_prompt_tokens"], batch["coords"])
    assert (query - cube).abs().max() > 1e-4  # the prompts differ in what the network makes of them
    assert float(out["loss_backward"]) == pytest.approx(float((query - batch["image_values"]).abs().mean()), rel=1e-5)


def test_tumsyn_step_passes_each_direction_its_own_acquisition_parameters():
    net = tiny_tumsyn(acquisition_features=ACQUISITION_FEATURES).train()
    with torch.no_grad():
        net.fusion.film.weight.normal_(0, 0.5)
    batch = tumsyn_batch()
    g = torch.Generator().manual_seed(3)
    batch["image_prompt_acquisition"], batch["label_prompt_acquisition"] = torch.randn(2, 2, ACQUISITION_FEATURES, generator=g)
    out = TUMSynTrainStep(loss=torch.nn.L1Loss()).compute(net, batch)
    with torch.no_grad():
        fwd = net(batch["image"], batch["label_prompt_tokens"], batch["coords"], batch["label_prompt_acquisition"])
        bwd = net(batch["label_lr"], batch["image_prompt_tokens"], batch["coords"], batch["image_prompt_acquisition"])
        swapped = net(batch["image"], batch["label_prompt_tokens"], batch["coords"], batch["image_prompt_acquisition"])
    torch.testing.assert_close(out["pred"].detach(), fwd, atol=1e-5, rtol=1e-5)
    assert float(out["loss_backward"]) == pytest.approx(float((bwd - batch["image_values"]).abs().mean()), rel=1e-5)
    assert (swapped - fwd).abs().max() > 1e-4
    out["loss"].backward()
    assert net.acquisition.mlp[0].weight.grad.abs().sum() > 0


def test_tumsyn_step_clips_the_gradient_norm_in_a_trainer():
    """``max_grad_norm`` bounds each optimiser step: with SGD at lr 1 the parameters move by the
    clipped gradient (norm ``max_grad_norm``), the unclipped norm is reported as ``grad_norm``, and
    0 leaves the gradient alone."""
    from monai.engines import SupervisedTrainer

    batch = tumsyn_batch()

    def moved(max_grad_norm: float):
        torch.manual_seed(0)
        net = tiny_tumsyn()
        with torch.no_grad():  # a large output makes a large gradient
            net.decoder.mlp[-1].bias.fill_(50.0)
        before = [q.detach().clone() for q in net.parameters() if q.requires_grad]
        step = TUMSynTrainStep(max_grad_norm=max_grad_norm)
        trainer = SupervisedTrainer(device=torch.device("cpu"), max_epochs=1, train_data_loader=[batch], network=net,
                                    optimizer=torch.optim.SGD([q for q in net.parameters() if q.requires_grad], lr=1.0),
                                    loss_function=torch.nn.L1Loss(), iteration_update=step, decollate=False)
        trainer.run()
        after = [q.detach() for q in net.parameters() if q.requires_grad]
        return float(torch.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(after, before)))), trainer.state.output

    free, out_free = moved(0.0)
    clipped, out = moved(0.25)
    assert "grad_norm" not in out_free
    assert free > 1.0  # the unclipped step is large
    assert float(out["grad_norm"]) == pytest.approx(free, rel=1e-4)  # the norm before clipping
    assert clipped == pytest.approx(0.25, rel=1e-3)


# -- random-scale training samples ---------------------------------------------------------------
SHAPE = (40, 36, 32)


def ramp_case(case: str = "c0", voxel_size=(2, 2, 2)) -> dict:
    i, j, k = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")
    ramp = torch.as_tensor((i + 100 * j + 10000 * k)[None], dtype=torch.float32)
    affine = torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0]))
    return {"t1": MetaTensor(ramp, affine=affine), "t2": MetaTensor(2 * ramp, affine=affine), "case": case,
            "t1_prompt": Prompt(modality="T1w", voxel_size=voxel_size, tr=500).format(),
            "t2_prompt": Prompt(modality="T2w", voxel_size=voxel_size, tr=4000).format()}


def decode(v: torch.Tensor) -> torch.Tensor:
    """Voxel indices ``(N, 3)`` from ramp values ``i + 100 j + 10000 k``."""
    v = v.round().long()
    return torch.stack([v % 100, (v // 100) % 100, v // 10000], dim=-1)


def test_thick_slice_samples_scale_one_axis():
    p = 8
    d = ramp_case()
    t = RandImplicitPaird(["t1", "t2"], patch_size=p, scale_range=(2, 2), num_points=300, num_samples=24,
                          thick_slice_prob=1.0).set_random_state(0)
    axes = set()
    for s in t(d):
        factors = s["scale_factors"].tolist()
        assert sorted(factors) == [1.0, 1.0, 2.0] and float(s["scale"]) == 2.0
        axis = factors.index(2.0)
        axes.add(axis)
        m = [int(p * f) for f in factors]  # the HR crop: 16 voxels along the thick axis, 8 across
        assert s["image"].shape == (1, p, p, p)
        local = ((s["coords"] + 1) * torch.tensor(m, dtype=torch.float32) - 1) / 2
        torch.testing.assert_close(local, local.round(), atol=1e-4, rtol=0)
        src_ramp = s["image_values"] / {"t1": 1.0, "t2": 2.0}[s["src_name"]]
        start = decode(src_ramp) - local.round().long()
        assert (start == start[0]).all()
        # each LR voxel is the mean of two HR voxels along the thick axis only: the phantom's slabs
        sl = tuple(slice(a, a + k) for a, k in zip(start[0].tolist(), m))
        crop = d[s["src_name"]].as_tensor()[0][sl]
        shape = [p, p, p]
        shape.insert(axis + 1, 2)
        expected = crop.reshape(shape).mean(axis + 1)
        got = s["image"][0].as_tensor() if isinstance(s["image"], MetaTensor) else s["image"][0]
        torch.testing.assert_close(got, expected, atol=1e-3, rtol=0)
        vs = [2.0, 2.0, 2.0]
        vs[axis] = 4.0  # the source's prompt: thick along that axis only
        assert Prompt.parse(s["image_prompt"]).voxel_size == tuple(vs)
        assert Prompt.parse(s["label_prompt"]).voxel_size == Prompt.parse(s["image_prompt_query"]).voxel_size == (2.0, 2.0, 2.0)
    assert axes == {0, 1, 2}
    iso = RandImplicitPaird(["t1", "t2"], patch_size=p, scale_range=(2, 2), num_points=10).set_random_state(0)
    assert iso(d)[0]["scale_factors"].tolist() == [2.0, 2.0, 2.0]
    with pytest.raises(ValueError, match="thick_slice_prob"):
        RandImplicitPaird(["t1"], thick_slice_prob=1.5)


def test_implicit_sample_geometry_values_and_prompts():
    p = 8
    d = ramp_case()
    t = RandImplicitPaird(["t1", "t2", "flair"], patch_size=p, scale_range=(2, 2), num_points=200,
                          num_samples=3).set_random_state(0)
    samples = t(d)
    assert len(samples) == 3
    for s in samples:
        assert {s["src_name"], s["tgt_name"]} == {"t1", "t2"} and s["case"] == "c0"
        assert s["image"].shape == s["label_lr"].shape == (1, p, p, p)
        assert s["coords"].shape == (200, 3) and s["label"].shape == s["image_values"].shape == (200,)
        assert s["coords"].abs().max() < 1 and float(s["scale"]) == 2.0
        factor = {"t1": 1.0, "t2": 2.0}
        src_ramp, tgt_ramp = s["image_values"] / factor[s["src_name"]], s["label"] / factor[s["tgt_name"]]
        torch.testing.assert_close(src_ramp, tgt_ramp, atol=0, rtol=0)  # both images at the same voxels
        # coords are HR voxel centres of the 16^3 crop; the crop start is the same for every point
        local = ((s["coords"] + 1) * 16 - 1) / 2
        torch.testing.assert_close(local, local.round(), atol=1e-4, rtol=0)
        start = decode(tgt_ramp) - local.round().long()
        assert (start == start[0]).all() and (start[0] >= 0).all()
        assert (start[0] + 16 <= torch.tensor(SHAPE)).all()
        # each LR voxel is the mean of its 2x2x2 HR block of the crop
        x0, y0, z0 = start[0].tolist()
        for key, name in (("image", s["src_name"]), ("label_lr", s["tgt_name"])):
            crop = d[name].as_tensor()[0, x0 : x0 + 16, y0 : y0 + 16, z0 : z0 + 16]
            blocks = crop.reshape(p, 2, p, 2, p, 2).mean((1, 3, 5))
            torch.testing.assert_close(s[key][0].as_tensor() if isinstance(s[key], MetaTensor) else s[key][0],
                                       blocks, atol=1e-3, rtol=0)
        # the source's prompt is at the LR voxel size (2 mm * 16 / 8), the target's at its own
        src_p, tgt_p = Prompt.parse(s["image_prompt"]), Prompt.parse(s["label_prompt"])
        assert src_p.voxel_size == (4.0, 4.0, 4.0) and tgt_p.voxel_size == (2.0, 2.0, 2.0)
        # what the target -> source direction asks for: the source at the queries' voxel size
        assert Prompt.parse(s["image_prompt_query"]) == src_p.replace(voxel_size=(2.0, 2.0, 2.0))
        assert src_p.modality == {"t1": "T1w", "t2": "T2w"}[s["src_name"]]
        assert tgt_p.modality == {"t1": "T1w", "t2": "T2w"}[s["tgt_name"]]
        assert tgt_p.tr == {"t1": 500.0, "t2": 4000.0}[s["tgt_name"]]


def test_implicit_sample_random_scale_and_prompt_without_voxel_size():
    d = ramp_case()
    d["t1_prompt"], d["t2_prompt"] = Prompt(modality="T1w").format(), Prompt(modality="T2w").format()
    t = RandImplicitPaird(["t1", "t2"], patch_size=8, scale_range=(1.2, 2.8), num_points=10,
                          num_samples=6).set_random_state(1)
    scales = set()
    for s in t(d):
        m = int(round(8 * float(s["scale"])))
        scales.add(m)
        local = ((s["coords"] + 1) * m - 1) / 2
        torch.testing.assert_close(local, local.round(), atol=1e-4, rtol=0)  # HR voxel centres of an m^3 crop
        # no voxel size in the prompt: the image's spacing (2 mm) stands in
        assert Prompt.parse(s["image_prompt"]).voxel_size == pytest.approx((2 * m / 8,) * 3)
        assert Prompt.parse(s["label_prompt"]).voxel_size == (2.0, 2.0, 2.0)
    assert len(scales) > 1


def test_implicit_targets_per_source_share_all_but_the_target():
    """Groups of ``targets_per_source`` samples: one source, cube, scale and set of queries, each
    with another target (distinct while the case has enough images), so that only the target's
    prompt tells them apart."""
    d = ramp_case()
    d["flair"] = MetaTensor(3 * d["t1"].as_tensor(), affine=d["t1"].affine)
    d["flair_prompt"] = Prompt(modality="FLAIR", voxel_size=(2, 2, 2), tr=9000).format()
    factor = {"t1": 1.0, "t2": 2.0, "flair": 3.0}
    t = RandImplicitPaird(["t1", "t2", "flair"], patch_size=8, scale_range=(1.5, 2.5), num_points=100,
                          num_samples=4, targets_per_source=2).set_random_state(3)
    for _ in range(5):
        samples = t(d)
        assert len(samples) == 4
        for a, b in (samples[0:2], samples[2:4]):
            assert a["src_name"] == b["src_name"] and a["tgt_name"] != b["tgt_name"]
            assert a["src_name"] not in (a["tgt_name"], b["tgt_name"])  # identity off: never the source itself
            assert torch.equal(a["coords"], b["coords"]) and torch.equal(a["image_values"], b["image_values"])
            assert torch.equal(torch.as_tensor(a["image"]), torch.as_tensor(b["image"]))
            assert float(a["scale"]) == float(b["scale"]) and a["image_prompt"] == b["image_prompt"]
            for s in (a, b):  # the target's values at the same voxels as the source's
                torch.testing.assert_close(s["label"] / factor[s["tgt_name"]], s["image_values"] / factor[s["src_name"]],
                                           atol=0, rtol=0)
                torch.testing.assert_close(torch.as_tensor(s["label_lr"]) / factor[s["tgt_name"]],
                                           torch.as_tensor(s["image"]) / factor[s["src_name"]], atol=1e-2, rtol=1e-6)
                assert Prompt.parse(s["label_prompt"]).tr == {"t1": 500.0, "t2": 4000.0, "flair": 9000.0}[s["tgt_name"]]
        assert not torch.equal(samples[0]["coords"], samples[2]["coords"])  # groups draw their own cubes
    # more targets than other images: every other image once before any repeats
    t = RandImplicitPaird(["t1", "t2"], patch_size=8, scale_range=(2, 2), num_points=10, num_samples=3,
                          targets_per_source=3).set_random_state(0)
    assert len({s["src_name"] for s in t(ramp_case())}) == 1
    with pytest.raises(ValueError, match="targets_per_source"):
        RandImplicitPaird(["t1", "t2"], num_samples=4, targets_per_source=3)
    with pytest.raises(ValueError, match="targets_per_source"):
        RandImplicitPaird(["t1", "t2"], num_samples=4, targets_per_source=0)


def test_implicit_fixed_seed_repeats_per_case():
    t = RandImplicitPaird(["t1", "t2"], patch_size=8, scale_range=(1, 3), num_points=50, fixed_seed=11)
    a1, a2, b = t(ramp_case("a"))[0], t(ramp_case("a"))[0], t(ramp_case("b"))[0]
    assert torch.equal(a1["coords"], a2["coords"]) and torch.equal(a1["label"], a2["label"])
    assert torch.equal(a1["image"], a2["image"]) and a1["image_prompt"] == a2["image_prompt"]
    assert not torch.equal(a1["coords"], b["coords"])


def test_implicit_lr_cube_is_the_block_mean_of_any_volume():
    """Not only of a ramp, and at scale 3 (at scale 2 a trilinear resize would agree with the block
    mean): random volumes whose crop is the whole image."""
    g = torch.Generator().manual_seed(2)
    d = {"t1": torch.rand(1, 12, 12, 12, generator=g), "t2": torch.rand(1, 12, 12, 12, generator=g)}
    s = RandImplicitPaird(["t1", "t2"], patch_size=4, scale_range=(3, 3), num_points=0,
                          prompt_suffix=None).set_random_state(0)(d)[0]
    for key, name in (("image", s["src_name"]), ("label_lr", s["tgt_name"])):
        torch.testing.assert_close(s[key][0], d[name][0].reshape(4, 3, 4, 3, 4, 3).mean((1, 3, 5)))


def test_implicit_errors_and_no_points():
    d = ramp_case()
    del d["t2_prompt"]
    t = RandImplicitPaird(["t1", "t2"], patch_size=8, scale_range=(2, 2), num_points=5).set_random_state(0)
    with pytest.raises(DataError, match="'t2'"):
        t(d)
    with pytest.raises(DataError, match="none of the images"):
        t({"case": "x", "flair": torch.zeros(1, 4, 4, 4)})
    with pytest.raises(ValueError, match="scale_range"):
        RandImplicitPaird(["t1"], scale_range=(0.5, 2))
    s = RandImplicitPaird(["t1", "t2"], patch_size=8, scale_range=(2, 2), num_points=0,
                          prompt_suffix=None).set_random_state(0)(ramp_case())[0]
    assert "coords" not in s and "image_values" not in s and "image_prompt" not in s
    assert torch.equal(torch.as_tensor(s["label"]), torch.as_tensor(s["label_lr"]))


def test_scale_curriculum_reaches_persistent_dataloader_workers():
    """ScaleCurriculum: scale 1 for the warm-up epochs, then a linear ramp of the upper bound; the
    new range reaches a DataLoader's persistent worker process (shared memory), not only the
    transform in the trainer's process."""
    from ignite.engine import Engine
    from monai.data import DataLoader, Dataset

    from mrsynth.handlers import ScaleCurriculum

    t = RandImplicitPaird(["t1", "t2"], patch_size=4, scale_range=(1, 3), num_points=0, prompt_suffix=None)
    cur = ScaleCurriculum(t, (1, 3), warmup_epochs=2, ramp_epochs=3)
    assert [cur.range_at(e) for e in range(1, 8)] == [(1, 1), (1, 1), (1, 1.5), (1, 2), (1, 2.5), (1, 3), (1, 3)]
    assert ScaleCurriculum(t, (1, 3), warmup_epochs=1).range_at(2) == (1, 3)
    t.scale_range = (1.0, 1.0)
    loader = DataLoader(Dataset([ramp_case(f"c{i}") for i in range(3)], t), batch_size=6, num_workers=1,
                        persistent_workers=True)
    scales = []
    engine = Engine(lambda e, batch: scales.append((e.state.epoch, batch["scale"].tolist())))
    ScaleCurriculum(t, (2, 3), warmup_epochs=1, ramp_epochs=0).attach(engine)
    engine.run(loader, max_epochs=3)
    assert [e for e, _ in scales] == [1, 2, 3]
    first, later = scales[0][1], [v for _, b in scales[1:] for v in b]
    assert first == [2.0] * 3  # the warm-up at the range's lower bound, drawn in the worker
    assert all(2.0 <= v <= 3.0 for v in later) and len(set(later)) > 1  # the full range reached the worker
    with pytest.raises(ValueError, match="scale_range"):
        t.scale_range = (0.5, 2)
    with pytest.raises(ValueError, match="warmup_epochs"):
        ScaleCurriculum(t, (1, 3), warmup_epochs=-1)
    with pytest.raises(TypeError, match="scale_range"):
        ScaleCurriculum(object(), (1, 3), warmup_epochs=1)
    untouched = Engine(lambda e, b: None)
    ScaleCurriculum(t, (1, 3)).attach(untouched)  # no warm-up, no ramp: not attached, the range stays
    untouched.run([0], max_epochs=2)
    assert t.scale_range == (2.0, 3.0)


def test_scaled_prompt_native_voxel_size():
    no_vs = Prompt(modality="FLAIR", tr=9000).format()
    assert Prompt.parse(scaled_prompt(no_vs, 2, native=(1.0, 1.0, 3.0))).voxel_size == (2.0, 2.0, 6.0)
    assert Prompt.parse(scaled_prompt(no_vs, 2)).voxel_size is None
    with_vs = Prompt(modality="FLAIR", voxel_size=(0.5, 0.5, 1.0))
    assert Prompt.parse(scaled_prompt(with_vs, (2, 3, 4), native=(9, 9, 9))).voxel_size == (1.0, 1.5, 4.0)
    assert Prompt.parse(scaled_prompt(with_vs, 1)).modality == "FLAIR"
