"""VQ-Seq2Seq: the quantized bottleneck, the training step's terms, domain augmentation and pair sampling."""

from __future__ import annotations

import pytest
import torch

from mrsynth.engines import Seq2SeqTrainStep, VQSeq2SeqTrainStep, info_nce, masked_consistency
from mrsynth.networks import Seq2Seq, VQSeq2Seq, codebook_stats
from mrsynth.transforms import RandDomainAugmentd, RandSequencePaird

SMALL = dict(channels=(8, 16), num_res_blocks=1, num_kernels=2, code_dim=8)


def small_vq(**kw) -> VQSeq2Seq:
    torch.manual_seed(0)
    return VQSeq2Seq(2, 3, 3, codebook_size=kw.pop("codebook_size", 32), **SMALL, **kw)


def test_shapes_and_quantized_latent_is_a_codebook_vector():
    net = small_vq().eval()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    z = net.encode(x)
    assert z.shape == (2, 3, 8, 8) and net(x, torch.tensor([0, 2])).shape == (2, 3, 16, 16)
    z_q, loss, idx = net.quantize(net.encode_continuous(x))
    assert idx.shape == (2, 8, 8) and loss.ndim == 0 and float(loss) > 0
    # every latent position is exactly the code vector of its index
    torch.testing.assert_close(z_q.permute(0, 2, 3, 1), net.quantizer.embedding.weight[idx])
    torch.testing.assert_close(net.decode(z, torch.tensor([1])), net(x, torch.tensor([1])))


def test_straight_through_gradients_reach_the_encoder_and_codes_are_used():
    net = small_vq(codebook_size=16).train()
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    y = net(x, torch.tensor([0, 1, 2, 3]))
    y.square().mean().backward()
    enc = [p.grad for n, p in net.named_parameters() if n.startswith(("encoder.", "to_latent."))]
    assert enc and all(g is not None and g.abs().sum() > 0 for g in enc)
    _, _, idx = net.quantize(net.encode_continuous(x))
    perplexity, usage = codebook_stats(idx, 16)
    assert idx.unique().numel() > 1 and float(perplexity) > 1.0 and 0 < float(usage) <= 1


def test_codebook_stats_known_answers():
    p, u = codebook_stats(torch.zeros(10, dtype=torch.long), 8)
    assert float(p) == pytest.approx(1.0) and float(u) == pytest.approx(1 / 8)
    p, u = codebook_stats(torch.arange(8).repeat(3), 8)
    assert float(p) == pytest.approx(8.0, rel=1e-4) and float(u) == 1.0


def test_codebook_moves_in_training_only():
    net = small_vq()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    before = net.quantizer.embedding.weight.clone()
    net.eval()(x, torch.tensor([0]))
    assert torch.equal(before, net.quantizer.embedding.weight)
    net.train()(x, torch.tensor([0]))
    assert not torch.equal(before, net.quantizer.embedding.weight)


def test_latent_norm_fixes_the_latent_scale():
    net = small_vq(latent_norm="instance").eval()
    x = torch.rand(2, 3, 16, 16) * 5 - 1
    z = net.encode_continuous(x)
    torch.testing.assert_close(z.mean((2, 3)), torch.zeros(2, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.var((2, 3), unbiased=False), torch.ones(2, 3), atol=1e-3, rtol=0)
    torch.testing.assert_close(torch.jit.script(net)(x, torch.tensor([1])), net(x, torch.tensor([1])))


def test_seq2seq_weights_load_into_vq():
    s2s = Seq2Seq(2, 3, 3, **SMALL)
    missing, unexpected = small_vq().load_state_dict(s2s.state_dict(), strict=False)
    assert not unexpected and all(k.startswith(("to_latent", "from_latent", "quantizer")) for k in missing)


def test_torchscript_export_matches():
    net = small_vq().eval()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    ts = torch.jit.script(net)
    torch.testing.assert_close(ts(x, torch.tensor([2])), net(x, torch.tensor([2])))
    torch.testing.assert_close(ts.encode(x), net.encode(x))


def test_masked_consistency_and_info_nce_known_answers():
    a, b = torch.zeros(1, 3, 2, 2), torch.ones(1, 3, 2, 2)
    m = torch.tensor([[[[1, 0], [0, 0]]]], dtype=torch.bool)
    assert float(masked_consistency(a, b, m)) == pytest.approx(2.0)  # 1 from each side, one position
    b2 = b.clone().requires_grad_()
    masked_consistency(a, b2, torch.ones_like(m)).backward()
    torch.testing.assert_close(b2.grad, torch.full_like(b, 2 / 12))  # each side pulled towards the other's stopped value
    z = torch.nn.functional.normalize(torch.randn(1, 4, 4, 4), dim=1)
    same = info_nce(z, z, torch.ones(1, 1, 4, 4, dtype=torch.bool), num_samples=16)
    other = info_nce(z, torch.roll(z, 1, dims=2), torch.ones(1, 1, 4, 4, dtype=torch.bool), num_samples=16)
    assert float(same) < float(other)


def test_step_is_seq2seq_on_the_symmetric_batch_plus_vq_terms():
    """The translation and self terms are Seq2Seq's over both directions of every pair, computed
    against the clean images while the network sees the augmented ones."""
    net = small_vq().train()
    src, tgt = torch.rand(2, 3, 16, 16) * 2 - 1, torch.rand(2, 3, 16, 16) * 2 - 1
    src_aug = src + 0.3
    sc, tc = torch.tensor([0, 1]), torch.tensor([2, 3])
    state = {k: v.clone() for k, v in net.state_dict().items()}
    step = VQSeq2SeqTrainStep(rec_weight=10, ssim_weight=1, latent_weight=10, vq_weight=10, contrastive_weight=1,
                              contrastive_start_epoch=None)
    out = step.losses(net, src, tgt, sc, tc, src_aug=src_aug)
    assert out["pred"].shape == src.shape
    net.load_state_dict(state)  # the step's quantizer call moved the codebook: redo from the same state
    x = torch.cat([src_aug, tgt])
    z_q, vq_loss, _ = net.quantize(net.encode_continuous(x))
    both = net.decode(torch.cat([z_q, z_q]), torch.cat([tc, sc, sc, tc]))
    l1 = torch.nn.SmoothL1Loss()  # the step's default outside a trainer
    assert float(out["loss_target"]) == pytest.approx(float(l1(both[:4], torch.cat([tgt, src]))), rel=1e-4)
    assert float(out["loss_self"]) == pytest.approx(float(l1(both[4:], torch.cat([src, tgt]))), rel=1e-4)
    assert float(out["loss_vq"]) == pytest.approx(float(vq_loss), rel=1e-4)
    assert float(out["loss_contrastive"]) == 0.0
    total = 10 * (out["loss_target"] + out["loss_self"]) + out["loss_ssim"] + 10 * out["loss_latent"] + 10 * out["loss_vq"]
    assert float(out["loss"]) == pytest.approx(float(total), rel=1e-4)
    assert float(out["perplexity"]) >= 1.0 and 0 < float(out["codebook_usage"]) <= 1


def test_contrastive_term_switches_on_at_its_epoch():
    net = small_vq().train()
    step = VQSeq2SeqTrainStep(contrastive_start_epoch=3)
    src, tgt = torch.rand(2, 3, 16, 16) * 2 - 1, torch.rand(2, 3, 16, 16) * 2 - 1
    args = (net, src, tgt, torch.tensor([0, 1]), torch.tensor([2, 3]))
    step.epoch = 2
    assert float(step.losses(*args)["loss_contrastive"]) == 0.0
    step.epoch = 3
    assert float(step.losses(*args)["loss_contrastive"]) > 0.0


def test_own_translations_replace_inputs_without_moving_the_codebook():
    net = small_vq().train()
    step = VQSeq2SeqTrainStep(translate_prob=1.0, translate_start_epoch=1, num_sequences=4)
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    before = net.quantizer.embedding.weight.clone()
    y = step.translate_inputs(net, x)
    assert y.shape == x.shape and not torch.equal(x, y) and net.training
    assert torch.equal(before, net.quantizer.embedding.weight)
    step.translate_prob = 0.0
    assert torch.equal(step.translate_inputs(net, x), x)


def test_seq2seq_step_split_keeps_its_terms():
    """Seq2Seq's outputs/terms split: a zero network gives the paper's combination."""
    src, tgt = torch.full((2, 3, 8, 8), 0.5), torch.full((2, 3, 8, 8), 2.0)
    step = Seq2SeqTrainStep(rec_weight=10, cycle_weight=10)
    out = step.outputs(lambda x, c: torch.zeros_like(x), {"image": src, "label": tgt, "src_code": torch.tensor([0, 1]),
                                                          "tgt_code": torch.tensor([2, 3])})
    assert set(out) == {"pred", "self", "cycle"}
    terms = step.terms(out, {"image": src, "label": tgt})
    assert {k: w for k, (w, _) in terms.items()} == {"target": 10, "self": 10, "cyc": 10, "perceptual": 0.0}
    assert float(terms["target"][1]) == pytest.approx(1.5)


def test_domain_augmentation_is_seeded_and_keeps_the_clean_images():
    x = torch.linspace(-1, 1, 3 * 24 * 24).reshape(3, 24, 24)
    d = {"image": x.clone(), "label": -x.clone()}
    a = RandDomainAugmentd(["image", "label"], prob=1.0).set_random_state(3)(d)
    b = RandDomainAugmentd(["image", "label"], prob=1.0).set_random_state(3)(d)
    c = RandDomainAugmentd(["image", "label"], prob=1.0).set_random_state(4)(d)
    assert torch.equal(a["image"], x) and torch.equal(a["label"], -x)  # clean keys untouched
    assert torch.equal(a["image_aug"], b["image_aug"]) and torch.equal(a["label_aug"], b["label_aug"])
    assert not torch.equal(a["image_aug"], c["image_aug"])
    assert not torch.equal(a["image_aug"], x) and a["image_aug"].shape == x.shape
    assert type(a["image_aug"]) is torch.Tensor  # a plain tensor, as EnsureTyped(track_meta=False) gives
    off = RandDomainAugmentd(["image"], prob=0.0).set_random_state(0)({"image": x})
    torch.testing.assert_close(off["image_aug"], x)


def test_pair_sampling_modes():
    vols = {s: torch.rand(1, 8, 8, 6) for s in ("t1", "t1ce", "t2")}
    seqs = ["t1", "t1ce", "t2", "flair"]
    per_case = RandSequencePaird(seqs, num_samples=5, identity_prob=0.0, pairs="per_case").set_random_state(0)(vols)
    assert len({(int(s["src_code"]), int(s["tgt_code"])) for s in per_case}) == 1
    assert all(s["src_code"] != s["tgt_code"] for s in per_case)
    every = RandSequencePaird(seqs, num_samples=2, pairs="all").set_random_state(0)(vols)
    pairs = [(int(s["src_code"]), int(s["tgt_code"])) for s in every]
    assert len(every) == 12 and set(pairs) == {(a, b) for a in (0, 1, 2) for b in (0, 1, 2) if a != b}
    with pytest.raises(ValueError, match="pairs must be one of"):
        RandSequencePaird(seqs, pairs="some")
