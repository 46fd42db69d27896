"""The TSF-Seq2Seq training iteration (papers.md section 2).

Per batch (``image`` = the chosen sources stacked as channels, ``mask`` which ones, ``label`` the
target, ``rec_code`` one of the sources):

- ``out, out_plain = G(sources, mask, target)`` with and without the task-specific enhanced map,
- ``rec = G(sources, mask, rec_code)``, the reconstruction of a source,
- ``loss = w * (L(out, tgt) + L(out_plain, tgt) + L(rec, src_rec)) + perceptual_weight * P(out, tgt)``
  with ``L`` the trainer's ``loss_function`` (paper: SmoothL1) and ``w`` = 10 (paper).

The encoder is frozen inside :class:`~mrsynth.networks.TSFSeq2Seq`; the optimiser takes
``network.trainable_parameters()`` (fusion module and decoder).
"""

from __future__ import annotations

import torch
from monai.utils import CommonKeys as Keys

from .base import TrainStep, run_as_forward, unwrap
from .seq2seq import build_perceptual_loss

__all__ = ["TSFTrainStep"]


class TSFTrainStep(TrainStep):
    """One TSF-Seq2Seq optimisation step.

    Args:
        weight: weight of each image term (paper: 10).
        perceptual_weight: weight of the perceptual term (paper: 0.01; 0 disables it).
        perceptual_loss: ``(pred, target) -> loss``; built with
            :func:`~mrsynth.engines.build_perceptual_loss` when needed.
        loss: the per-pass image loss ``L(pred, target)``; ``None`` (default): the trainer's
            ``loss_function`` (:meth:`~mrsynth.engines.base.TrainStep.criterion`).
        spatial_dims: for the perceptual network.
    """

    def __init__(self, weight: float = 10.0, perceptual_weight: float = 0.0, perceptual_loss=None,
                 loss=None, spatial_dims: int = 2) -> None:
        self.weight, self.perceptual_weight = weight, perceptual_weight
        self.loss = loss
        self.perceptual_loss = perceptual_loss
        if perceptual_weight > 0 and perceptual_loss is None:
            self.perceptual_loss = build_perceptual_loss(spatial_dims)

    @staticmethod
    def passes(net, x, mask, tgt_code, rec_code):
        """Target and reconstruction passes of the plain network in one ``forward_all`` call
        (batch ``2B``): :class:`~mrsynth.networks.tsf.TSFOutput`."""
        return unwrap(net).forward_all(torch.cat([x, x]), torch.cat([mask, mask]), torch.cat([tgt_code, rec_code]))

    def losses(self, network, sources, mask, tgt, tgt_code, rec_code) -> dict:
        """All passes and loss terms; ``sources`` ``(B, N * C, *S)`` or ``(B, N, C, *S)``.

        ``network`` may be wrapped in ``DistributedDataParallel``: the passes then run as the
        wrapper's forward (:func:`~mrsynth.engines.base.run_as_forward`), so that the decoder's
        and fusion's gradients are all-reduced; the frozen encoder has none."""
        x = unwrap(network).as_sources(sources)
        b = x.shape[0]
        both = run_as_forward(network, self.passes, x, mask, tgt_code, rec_code)
        out, out_plain, rec = both.image[:b], both.image_plain[:b], both.image[b:]
        src_rec = x[torch.arange(b, device=x.device), rec_code]
        L = self.criterion()
        l_out, l_plain, l_rec = L(out, tgt), L(out_plain, tgt), L(rec, src_rec)
        total = self.weight * (l_out + l_plain + l_rec)
        perc = torch.zeros((), device=x.device)
        if self.perceptual_weight > 0:
            perc = self.perceptual_loss(out, tgt)
            total = total + self.perceptual_weight * perc
        return {"pred": out, "loss": total, "loss_tsem": l_out.detach(), "loss_plain": l_plain.detach(),
                "loss_rec": l_rec.detach(), "loss_perceptual": perc.detach(), "weights": both.weights[:b].detach()}

    def compute(self, network, batch: dict) -> dict:
        return self.losses(network, batch[Keys.IMAGE], batch["mask"], batch[Keys.LABEL], batch["tgt_code"],
                           batch["rec_code"])
