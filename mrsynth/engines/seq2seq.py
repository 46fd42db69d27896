"""The Seq2Seq training iteration (papers.md section 1), as an ignite iteration function.

Use it with MONAI's :class:`~monai.engines.SupervisedTrainer` through ``iteration_update``; the
trainer keeps providing the network, optimiser, AMP scaler, handlers and events, and only the
step itself is ours::

    trainer = SupervisedTrainer(..., iteration_update=Seq2SeqTrainStep(rec_weight=10, cycle_weight=10))

Per batch (``image`` = source, ``label`` = target, codes per sample):

- ``out_tgt = G(src, code_tgt)``, ``out_src = G(src, code_src)`` (one call, batch concatenated),
- ``out_cyc = G(out_tgt, code_src)``,
- ``loss = rec_weight * (L(out_tgt, tgt) + self_weight / rec_weight * L(out_src, src))
  + cycle_weight * L(out_cyc, src) + perceptual_weight * (P(out_tgt, tgt) + P(out_src, src))``
  with ``L`` the trainer's ``loss_function`` (the paper: SmoothL1, ``self_weight = rec_weight = cycle_weight = 10``).
"""

from __future__ import annotations

import torch
from monai.utils import CommonKeys as Keys

from .base import TrainStep, run_as_forward

__all__ = ["Seq2SeqTrainStep", "build_perceptual_loss"]


def build_perceptual_loss(spatial_dims: int = 2, network_type: str = "vgg"):
    """MONAI's :class:`~monai.losses.PerceptualLoss` (VGG by default, as the papers).

    Its ImageNet weights are downloaded at run time; where they cannot be had this raises a
    ``RuntimeError`` that says so and how to go on (set ``perceptual_weight`` to 0).
    """
    from monai.losses import PerceptualLoss

    try:
        return PerceptualLoss(spatial_dims=spatial_dims, network_type=network_type, is_fake_3d=spatial_dims == 3)
    except Exception as e:  # no network, no cached weights
        raise RuntimeError(
            f"perceptual loss ({network_type}) needs pretrained ImageNet weights that could not be loaded "
            f"({type(e).__name__}: {e}). Put them in the torch hub cache ({torch.hub.get_dir()}) or train "
            "without it: --perceptual_weight 0"
        ) from e


class Seq2SeqTrainStep(TrainStep):
    """One Seq2Seq optimisation step: target, self-reconstruction and cycle passes.

    Args:
        rec_weight: weight of the target term ``G(src, tgt)`` vs ``tgt`` (paper: 10).
        cycle_weight: weight of the cycle term ``G(G(src, tgt), src)`` vs ``src`` (paper: 10).
        perceptual_weight: weight of the perceptual term (paper: 0.01; 0 disables it).
        perceptual_loss: a callable ``(pred, target) -> loss``; built lazily with
            :func:`build_perceptual_loss` when ``perceptual_weight > 0`` and none is given.
        loss: the per-pass image loss ``L(pred, target)``; ``None`` (default): the trainer's
            ``loss_function`` (:meth:`~mrsynth.engines.base.TrainStep.criterion`).
        spatial_dims: for the perceptual network.
        self_weight: weight of the self-reconstruction term ``G(src, src)`` vs ``src``; ``None``
            (default) = ``rec_weight``, as in the paper. The self and cycle terms are both
            satisfied by copying the input: weighted like the target term they hold a small
            model near the identity (measured in the Seq2Seq bundle's docs), so the CPU recipe
            lowers them.

    Returns (as ``engine.state.output``): ``image``, ``label``, ``pred`` (= ``out_tgt``),
    ``loss`` and the detached parts ``loss_rec``, ``loss_cyc``, ``loss_perceptual``.
    """

    def __init__(
        self,
        rec_weight: float = 10.0,
        cycle_weight: float = 10.0,
        perceptual_weight: float = 0.0,
        perceptual_loss=None,
        loss=None,
        spatial_dims: int = 2,
        self_weight: float | None = None,
    ) -> None:
        self.rec_weight, self.cycle_weight, self.perceptual_weight = rec_weight, cycle_weight, perceptual_weight
        self.self_weight = rec_weight if self_weight is None else float(self_weight)
        self.loss = loss
        self.perceptual_loss = perceptual_loss
        if perceptual_weight > 0 and perceptual_loss is None:
            self.perceptual_loss = build_perceptual_loss(spatial_dims)

    def passes(self, net, src, src_code, tgt_code) -> tuple:
        """The passes of the plain network: ``(out_tgt, out_src, out_cyc)``. A pass whose term
        has weight 0 is not run (``None``): the step then costs one forward instead of three."""
        n = src.shape[0]
        if self.self_weight:
            both = net(torch.cat([src, src]), torch.cat([tgt_code, src_code]))
            out_tgt, out_src = both[:n], both[n:]
        else:
            out_tgt, out_src = net(src, tgt_code), None
        out_cyc = net(out_tgt, src_code) if self.cycle_weight else None
        return out_tgt, out_src, out_cyc

    def outputs(self, network, batch: dict) -> dict:
        """``pred`` = ``G(src, tgt)``, ``self`` = ``G(src, src)``, ``cycle`` = ``G(pred, src)`` (``None``
        where the term's weight is 0). Under ``DistributedDataParallel`` the passes run as one
        forward of the wrapper (:func:`~mrsynth.engines.base.run_as_forward`)."""
        out_tgt, out_src, out_cyc = run_as_forward(network, self.passes, batch[Keys.IMAGE], batch["src_code"],
                                                   batch["tgt_code"])
        return {"pred": out_tgt, "self": out_src, "cycle": out_cyc}

    def terms(self, out: dict, batch: dict) -> dict:
        """``target`` ``L(pred, label)``, ``self`` ``L(self, image)``, ``cyc`` ``L(cycle, image)``
        and ``perceptual``, each with its weight; ``image`` and ``label`` are the references
        (a method that augments its inputs keeps the clean images there)."""
        src, tgt, L = batch[Keys.IMAGE], batch[Keys.LABEL], self.criterion()
        zero = torch.zeros((), device=src.device)
        terms = {
            "target": (self.rec_weight, L(out["pred"], tgt)),
            "self": (self.self_weight, L(out["self"], src) if out.get("self") is not None else zero),
            "cyc": (self.cycle_weight, L(out["cycle"], src) if out.get("cycle") is not None else zero),
        }
        perc = zero
        if self.perceptual_weight > 0:
            perc = self.perceptual_loss(out["pred"], tgt)
            if out.get("self") is not None:
                perc = perc + self.perceptual_loss(out["self"], src)
        terms["perceptual"] = (self.perceptual_weight, perc)
        return terms

    def compute(self, network, batch: dict) -> dict:
        out = super().compute(network, batch)
        out["loss_rec"] = out["loss_target"] + out["loss_self"]  # the paper's reconstruction term
        return out

    def losses(self, network, src, tgt, src_code, tgt_code) -> dict:
        """:meth:`compute` on one batch given as tensors (no optimiser step)."""
        return self.compute(network, {Keys.IMAGE: src, Keys.LABEL: tgt, "src_code": src_code, "tgt_code": tgt_code})
