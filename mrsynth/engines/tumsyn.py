"""TUMSyn's two training steps (papers.md section 4), as ignite iteration functions.

- :class:`CLIPTrainStep` (stage 1): symmetric InfoNCE between the image and text embeddings
  of a batch of (volume, prompt) pairs, with the model's learnable temperature.
- :class:`TUMSynTrainStep` (stage 2): both directions of a pair in one call, ``0.5 * L(G(src,
  prompt_tgt)(x), tgt(x)) + 0.5 * L(G(tgt, prompt_src)(x), src(x))`` at the query points ``x``,
  with ``L`` the trainer's ``loss_function`` (the paper: L1).

Batch keys are those of :class:`~mrsynth.transforms.RandImplicitPaird` followed by
:class:`~mrsynth.transforms.TokenizePromptd` on ``image_prompt_query`` (or ``image_prompt``) /
``label_prompt`` (and
:class:`~mrsynth.transforms.AcquisitionFeaturesd` on both, ``*_prompt_acquisition``, for a
network that reads the acquisition parameters; without those keys it gets ``None``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.utils import CommonKeys as Keys

from .base import TrainStep, run_as_forward

__all__ = ["CLIPTrainStep", "TUMSynTrainStep", "clip_loss", "same_prompts", "retrieval_output"]


def clip_loss(image: torch.Tensor, text: torch.Tensor, logit_scale,
              same: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric InfoNCE of L2-normalised embeddings ``(B, E)``: ``(loss, logits)``, the
    logits ``(B, B)`` image-to-text. Pair ``i`` is the positive of row and column ``i``.

    ``same`` ``(B, B)`` bool (symmetric, true on the diagonal) marks pairs whose prompts are
    identical: several cubes of one image in a batch share its prompt, and calling the others
    negatives asks for the impossible. Each row's target is then spread evenly over its
    identical prompts (soft-label cross-entropy); ``None``: all prompts differ (CLIP)."""
    logits = logit_scale * image @ text.t()
    if same is None:
        target = torch.arange(image.shape[0], device=image.device)
    else:
        target = same.to(logits.dtype)
        target = target / target.sum(dim=1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)), logits


def same_prompts(tokens: torch.Tensor) -> torch.Tensor:
    """``(B, B)`` bool: which rows of ``tokens`` ``(B, L)`` are the same prompt."""
    return (tokens[:, None, :] == tokens[None, :, :]).all(dim=-1)


def retrieval_output(output):
    """For ignite's ``Accuracy`` in stage 1's validation: ``(logits, targets)`` from an evaluator
    output whose ``pred`` is the CLIP model's ``(image, text, logit_scale)`` (batched or a
    decollated list): image-to-text retrieval within the batch."""
    if isinstance(output, list):  # decollated: one (image, text, scale) per sample
        img = torch.stack([torch.as_tensor(o[Keys.PRED][0]) for o in output])
        txt = torch.stack([torch.as_tensor(o[Keys.PRED][1]) for o in output])
    else:
        img, txt, _ = output[Keys.PRED]
    logits = img @ txt.t()
    return logits, torch.arange(img.shape[0], device=logits.device)


class CLIPTrainStep(TrainStep):
    """Stage 1: ``network(image, tokens) -> (image_emb, text_emb, logit_scale)``; one term,
    ``contrastive`` (symmetric InfoNCE, identical prompts in the batch sharing the target,
    :func:`clip_loss`). ``pred`` is the image-to-text logits; the logs add ``logit_scale`` and the
    batch's image-to-text retrieval accuracy ``retrieval_acc`` (retrieving an identical prompt
    counts).

    Args:
        tokens_key: the batch key of the prompts' tokens.

    Under DDP the negatives are those of each rank's batch (no gather across ranks).
    """

    def __init__(self, tokens_key: str = "image_prompt_tokens") -> None:
        self.tokens_key = tokens_key

    def outputs(self, network, batch: dict) -> dict:
        tokens = batch[self.tokens_key]
        img, txt, scale = run_as_forward(network, lambda net, x, t: net(x, t), batch[Keys.IMAGE], tokens)
        same = same_prompts(tokens)
        loss, logits = clip_loss(img, txt, scale, same)
        return {"pred": logits, "contrastive": loss, "logit_scale": scale, "same": same}

    def terms(self, out: dict, batch: dict) -> dict:
        return {"contrastive": (1.0, out["contrastive"])}

    def logs(self, out: dict, batch: dict) -> dict:
        logits = out["pred"].detach()
        acc = out["same"].gather(1, logits.argmax(1, keepdim=True)).float().mean()  # an identical prompt is a hit
        return {"logit_scale": out["logit_scale"].detach(), "retrieval_acc": acc}


class TUMSynTrainStep(TrainStep):
    """Stage 2: ``network(image, tokens, coords, acquisition) -> (B, N)``.

    One network call runs both directions (the batch concatenated): the source cube with the
    target prompt against the target's values, the target cube with the source prompt against
    the source's values. Terms ``forward`` and ``backward``, weight ``0.5`` each (the paper).

    Args:
        backward_weight: weight of the target -> source direction (0 runs only the forward one).
        forward_weight: weight of the source -> target direction.
        loss: the per-point loss (default: the trainer's ``loss_function``).
        max_grad_norm: clip the gradients' global norm to this before each optimiser step (0: no
            clipping; see :class:`~mrsynth.engines.TrainStep`).
    """

    def __init__(self, forward_weight: float = 0.5, backward_weight: float = 0.5, loss=None,
                 max_grad_norm: float = 0.0) -> None:
        self.forward_weight, self.backward_weight, self.loss = float(forward_weight), float(backward_weight), loss
        self.max_grad_norm = float(max_grad_norm)

    @staticmethod
    def passes(net, src, tgt, src_tokens, tgt_tokens, coords, both: bool, src_acq=None, tgt_acq=None):
        if not both:
            return net(src, tgt_tokens, coords, tgt_acq), None
        n = src.shape[0]
        acq = None if src_acq is None or tgt_acq is None else torch.cat([tgt_acq, src_acq])
        out = net(torch.cat([src, tgt]), torch.cat([tgt_tokens, src_tokens]), torch.cat([coords, coords]), acq)
        return out[:n], out[n:]

    def outputs(self, network, batch: dict) -> dict:
        # target -> source asks for the source at the queries' voxel size (image_prompt_query), not at
        # the cube's, which image_prompt states (a batch without it: image_prompt, as before)
        back_tokens = batch["image_prompt_query_tokens" if "image_prompt_query_tokens" in batch else "image_prompt_tokens"]
        fwd, bwd = run_as_forward(network, self.passes, batch[Keys.IMAGE], batch["label_lr"],
                                  back_tokens, batch["label_prompt_tokens"], batch["coords"],
                                  bool(self.backward_weight), batch.get("image_prompt_acquisition"),
                                  batch.get("label_prompt_acquisition"))
        return {"pred": fwd, "backward": bwd}

    def terms(self, out: dict, batch: dict) -> dict:
        L = self.criterion()
        zero = torch.zeros((), device=out["pred"].device)
        return {
            "forward": (self.forward_weight, L(out["pred"].float(), batch[Keys.LABEL])),
            "backward": (self.backward_weight,
                         L(out["backward"].float(), batch["image_values"]) if out["backward"] is not None else zero),
        }
