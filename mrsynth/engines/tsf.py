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

    def outputs(self, network, batch: dict) -> dict:
        """The target passes with and without the enhanced map (``pred``, ``plain``), the
        reconstruction of ``rec_code`` (``rec``) and its reference ``src_rec``, the fusion
        ``weights``. ``batch["image"]`` is ``(B, N * C, *S)`` or ``(B, N, C, *S)``.

        ``network`` may be wrapped in ``DistributedDataParallel``: the passes then run as the
        wrapper's forward (:func:`~mrsynth.engines.base.run_as_forward`), so that the decoder's
        and fusion's gradients are all-reduced; the frozen encoder has none."""
        x = unwrap(network).as_sources(batch[Keys.IMAGE])
        b, rec_code = x.shape[0], batch["rec_code"]
        both = run_as_forward(network, self.passes, x, batch["mask"], batch["tgt_code"], rec_code)
        return {"pred": both.image[:b], "plain": both.image_plain[:b], "rec": both.image[b:],
                "src_rec": x[torch.arange(b, device=x.device), rec_code], "weights": both.weights[:b]}

    def terms(self, out: dict, batch: dict) -> dict:
        tgt, L = batch[Keys.LABEL], self.criterion()
        perc = torch.zeros((), device=tgt.device)
        if self.perceptual_weight > 0:
            perc = self.perceptual_loss(out["pred"], tgt)
        return {"tsem": (self.weight, L(out["pred"], tgt)), "plain": (self.weight, L(out["plain"], tgt)),
                "rec": (self.weight, L(out["rec"], out["src_rec"])), "perceptual": (self.perceptual_weight, perc)}

    def logs(self, out: dict, batch: dict) -> dict:
        return {"weights": out["weights"].detach()}

    def losses(self, network, sources, mask, tgt, tgt_code, rec_code) -> dict:
        """:meth:`compute` on one batch given as tensors (no optimiser step)."""
        return self.compute(network, {Keys.IMAGE: sources, "mask": mask, Keys.LABEL: tgt, "tgt_code": tgt_code,
                                      "rec_code": rec_code})
