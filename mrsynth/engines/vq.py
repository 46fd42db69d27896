"""The VQ-Seq2Seq training iteration (papers.md section 3).

A batch holds one (source, target) pair per sample: ``image`` / ``label`` the clean images,
``image_aug`` / ``label_aug`` their domain-augmented copies
(:class:`~mrsynth.transforms.RandDomainAugmentd`; the clean images when absent). The step is
:class:`~mrsynth.engines.Seq2SeqTrainStep` run on the *symmetric* batch (each pair in both
directions), with the quantized bottleneck in between and VQ's own terms added:

- ``z_s, z_t = Q(E(src_aug)), Q(E(tgt_aug))`` (one quantizer call, so one codebook update),
- ``src->tgt, tgt->src`` (Seq2Seq's ``target`` term) and ``src->src, tgt->tgt`` (its ``self``
  term), all against the clean images, with the trainer's ``loss_function`` (paper: L1);
- ``ssim``: ``1 - SSIM`` of the same four outputs;
- ``vq``: the quantizer's commitment loss;
- ``latent``: masked MSE between ``z_s`` and ``z_t`` inside the head, each side pulled towards the
  other's stopped value (the common latent);
- ``contrastive`` (from ``contrastive_start_epoch``): InfoNCE between ``z_s`` and ``z_t`` at
  sampled head positions, where the same position in the two sequences is the positive pair;
- from ``translate_start_epoch``, with probability ``translate_prob`` a source is replaced by the
  model's own translation of it to a random sequence (no gradient, codebook untouched).

Paper weights: ``10 L1 + 1 SSIM + 10 latent + 10 VQ`` (+ 0.1 perceptual).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import SSIMLoss
from monai.utils import CommonKeys as Keys

from ..networks.vq import codebook_stats
from .base import run_as_forward, unwrap
from .seq2seq import Seq2SeqTrainStep

__all__ = ["VQSeq2SeqTrainStep", "info_nce", "masked_consistency"]


def masked_consistency(z_a: torch.Tensor, z_b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``mean_mask((z_a - sg(z_b))^2) + mean_mask((z_b - sg(z_a))^2)``: each latent ``(B, C, *s)`` is
    pulled towards the other where ``mask`` ``(B, 1, *s)`` is true."""
    m = mask.to(z_a.dtype)
    n = (m.sum() * z_a.shape[1]).clamp_min(1.0)
    return (((z_a - z_b.detach()) ** 2 * m).sum() + ((z_b - z_a.detach()) ** 2 * m).sum()) / n


def info_nce(z_a: torch.Tensor, z_b: torch.Tensor, mask: torch.Tensor, num_samples: int = 256,
             temperature: float = 0.07, generator: torch.Generator | None = None) -> torch.Tensor:
    """Symmetric InfoNCE between two latents ``(B, C, *s)`` at up to ``num_samples`` positions
    drawn inside ``mask`` ``(B, 1, *s)``: the same position in ``z_a`` and ``z_b`` is the positive
    pair, every other drawn position a negative (features L2-normalised, ``temperature`` 0.07)."""
    c = z_a.shape[1]
    fa = z_a.movedim(1, -1).reshape(-1, c)
    fb = z_b.movedim(1, -1).reshape(-1, c)
    idx = torch.nonzero(mask.reshape(-1), as_tuple=False).squeeze(1)
    if idx.numel() < 2:
        return z_a.sum() * 0.0
    if idx.numel() > num_samples:
        pick = torch.randperm(idx.numel(), device=idx.device, generator=generator)[:num_samples]
        idx = idx[pick]
    a, b = F.normalize(fa[idx].float(), dim=1), F.normalize(fb[idx].float(), dim=1)
    logits = a @ b.t() / temperature
    labels = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))


class VQSeq2SeqTrainStep(Seq2SeqTrainStep):
    """One VQ-Seq2Seq optimisation step (module docstring).

    Args:
        rec_weight: weight of the translation terms ``src->tgt``, ``tgt->src`` (paper: 10).
        self_weight: weight of the self-reconstructions ``src->src``, ``tgt->tgt`` (default: ``rec_weight``).
        cycle_weight: Seq2Seq's cycle term (default 0: not in the paper's VQ recipe).
        ssim_weight: weight of ``1 - SSIM`` over the four outputs (paper: 1).
        vq_weight: weight of the quantizer's commitment loss (paper: 10).
        latent_weight: weight of the latent consistency (paper: 10).
        contrastive_weight: weight of the InfoNCE latent term once switched on.
        contrastive_start_epoch: first epoch (1-based) with the InfoNCE term; ``None`` never.
        contrastive_samples, temperature: InfoNCE positions per step and temperature (paper: 0.07).
        translate_prob: probability that a source is replaced by the model's own translation
            to a random sequence, from ``translate_start_epoch`` (``None``: never).
        num_sequences: codes drawn for those translations (``0 .. num_sequences - 1``).
        perceptual_weight, perceptual_loss, loss, spatial_dims: as :class:`Seq2SeqTrainStep`.
        data_range: of the images, for SSIM (2 for [-1, 1]).

    Returns (as ``engine.state.output``): MONAI's keys (``pred`` is ``src->tgt``), ``loss_<term>``
    for every term above, ``perplexity`` and ``codebook_usage`` of the step's latent codes.
    """

    def __init__(self, rec_weight: float = 10.0, self_weight: float | None = None, cycle_weight: float = 0.0,
                 ssim_weight: float = 1.0, vq_weight: float = 10.0, latent_weight: float = 10.0,
                 contrastive_weight: float = 1.0, contrastive_start_epoch: int | None = None,
                 contrastive_samples: int = 256, temperature: float = 0.07, translate_prob: float = 0.0,
                 translate_start_epoch: int | None = None, num_sequences: int = 4, perceptual_weight: float = 0.0,
                 perceptual_loss=None, loss=None, spatial_dims: int = 2, data_range: float = 2.0) -> None:
        super().__init__(rec_weight=rec_weight, cycle_weight=cycle_weight, perceptual_weight=perceptual_weight,
                         perceptual_loss=perceptual_loss, loss=loss, spatial_dims=spatial_dims, self_weight=self_weight)
        self.ssim_weight, self.vq_weight, self.latent_weight = ssim_weight, vq_weight, latent_weight
        self.contrastive_weight, self.contrastive_start_epoch = contrastive_weight, contrastive_start_epoch
        self.contrastive_samples, self.temperature = int(contrastive_samples), float(temperature)
        self.translate_prob, self.translate_start_epoch = float(translate_prob), translate_start_epoch
        self.num_sequences = int(num_sequences)
        self.ssim = SSIMLoss(spatial_dims=spatial_dims, data_range=data_range, win_size=7) if ssim_weight else None

    @staticmethod
    def _active(start: int | None, epoch: int) -> bool:
        return start is not None and epoch >= int(start)

    @staticmethod
    def symmetric(batch: dict) -> dict:
        """Each pair in both directions: ``(B, ...)`` -> ``(2B, ...)`` with source and target swapped
        in the second half (augmented copies and codes too)."""
        src, tgt = batch[Keys.IMAGE], batch[Keys.LABEL]
        src_aug, tgt_aug = batch.get("image_aug", src), batch.get("label_aug", tgt)
        return {**batch, Keys.IMAGE: torch.cat([src, tgt]), Keys.LABEL: torch.cat([tgt, src]),
                "image_aug": torch.cat([src_aug, tgt_aug]), "label_aug": torch.cat([tgt_aug, src_aug]),
                "src_code": torch.cat([batch["src_code"], batch["tgt_code"]]),
                "tgt_code": torch.cat([batch["tgt_code"], batch["src_code"]])}

    @torch.no_grad()
    def translate_inputs(self, network, x: torch.Tensor) -> torch.Tensor:
        """With probability :attr:`translate_prob` per sample, ``x`` replaced by the model's
        translation of it to a random code (eval mode, so the codebook does not move)."""
        keep = torch.rand(x.shape[0], device=x.device) >= self.translate_prob
        if bool(keep.all()):
            return x
        net = unwrap(network)
        was_training = net.training
        net.eval()
        try:
            codes = torch.randint(0, self.num_sequences, (x.shape[0],), device=x.device)
            y = net(x, codes).to(x.dtype)
        finally:
            net.train(was_training)
        return torch.where(keep.view(-1, *([1] * (x.dim() - 1))), x, y)

    def vq_passes(self, net, x, src_code, tgt_code):
        """Encode the inputs ``x`` (``2B``: sources then targets), quantize them in one call and
        decode every latent to its target and to its own sequence (and the cycle, when weighted)."""
        z_q, vq_loss, indices = net.quantize(net.encode_continuous(x))
        if self.self_weight:
            both = net.decode(torch.cat([z_q, z_q]), torch.cat([tgt_code, src_code]))
            out_tgt, out_self = both[: x.shape[0]], both[x.shape[0]:]
        else:
            out_tgt, out_self = net.decode(z_q, tgt_code), None
        out_cyc = net(out_tgt, src_code) if self.cycle_weight else None
        return out_tgt, out_self, out_cyc, z_q, vq_loss, indices

    def outputs(self, network, batch: dict) -> dict:
        """``batch`` is the :meth:`symmetric` one (:meth:`compute` makes it)."""
        x = batch["image_aug"]
        if self.translate_prob > 0 and self._active(self.translate_start_epoch, self.epoch):
            x = self.translate_inputs(network, x)
        out_tgt, out_self, out_cyc, z_q, vq_loss, indices = run_as_forward(
            network, self.vq_passes, x, batch["src_code"], batch["tgt_code"])
        return {"pred": out_tgt, "self": out_self, "cycle": out_cyc, "latent": z_q, "vq_loss": vq_loss,
                "indices": indices, "codebook_size": unwrap(network).codebook_size}

    @staticmethod
    def head_mask(batch: dict, size, threshold: float = 0.05) -> torch.Tensor:
        """``(B, 1, *size)``: latent positions where the clean source or target is above the
        background (-1 + ``threshold``) anywhere in the position's receptive cell."""
        b = batch[Keys.IMAGE].shape[0] // 2
        fg = torch.cat([batch[Keys.IMAGE][:b], batch[Keys.LABEL][:b]], 1) > -1.0 + threshold
        pool = F.adaptive_max_pool2d if fg.dim() == 4 else F.adaptive_max_pool3d
        return pool(fg.any(1, keepdim=True).float(), tuple(size)) > 0

    def terms(self, out: dict, batch: dict) -> dict:
        terms = super().terms(out, batch)
        zero = out["vq_loss"].new_zeros(())
        preds = [out["pred"]] + ([out["self"]] if out.get("self") is not None else [])
        refs = [batch[Keys.LABEL]] + ([batch[Keys.IMAGE]] if out.get("self") is not None else [])
        ssim = self.ssim(torch.cat(preds).float(), torch.cat(refs).float()) if self.ssim is not None else zero
        z = out["latent"]
        b = z.shape[0] // 2
        mask = self.head_mask(batch, z.shape[2:])
        if not bool(mask.any()):
            mask = torch.ones_like(mask)
        contrastive = zero
        c_on = self._active(self.contrastive_start_epoch, self.epoch)
        if c_on and self.contrastive_weight:
            contrastive = info_nce(z[:b], z[b:], mask, self.contrastive_samples, self.temperature)
        terms.update({
            "ssim": (self.ssim_weight, ssim),
            "vq": (self.vq_weight, out["vq_loss"]),
            "latent": (self.latent_weight, masked_consistency(z[:b].float(), z[b:].float(), mask)),
            "contrastive": (self.contrastive_weight if c_on else 0.0, contrastive),
        })
        return terms

    def logs(self, out: dict, batch: dict) -> dict:
        perplexity, usage = codebook_stats(out["indices"], out["codebook_size"])
        return {"perplexity": perplexity, "codebook_usage": usage}

    def compute(self, network, batch: dict) -> dict:
        """The symmetric batch through :class:`Seq2SeqTrainStep`'s split; ``pred`` is ``src->tgt``
        of the original samples."""
        out = super().compute(network, self.symmetric(batch))
        out["pred"] = out["pred"][: batch[Keys.IMAGE].shape[0]]
        return out

    def losses(self, network, src, tgt, src_code, tgt_code, src_aug=None, tgt_aug=None) -> dict:
        """:meth:`compute` on one batch given as tensors (no optimiser step)."""
        batch = {Keys.IMAGE: src, Keys.LABEL: tgt, "src_code": src_code, "tgt_code": tgt_code}
        if src_aug is not None:
            batch["image_aug"] = src_aug
        if tgt_aug is not None:
            batch["label_aug"] = tgt_aug
        return self.compute(network, batch)
