"""What every training step shares: moving the batch, the optimiser step (with AMP), and the
events MONAI's handlers listen to. A method's step only says how to compute its losses."""

from __future__ import annotations

from typing import Any, Callable

import torch
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys
from torch.nn.parallel import DistributedDataParallel

from ..amp import as_bool, autocast

__all__ = ["TrainStep", "unwrap", "run_as_forward"]


def unwrap(network):
    """The module inside a ``DistributedDataParallel`` (or ``DataParallel``) wrapper, else ``network``."""
    return network.module if isinstance(network, (DistributedDataParallel, torch.nn.DataParallel)) else network


def run_as_forward(network, passes: Callable[..., Any], *args) -> Any:
    """``passes(module, *args)``, run as one forward call of ``network``.

    ``passes`` may call the plain module several times and use its other methods (a step's
    forward passes); it returns every tensor the loss needs. Without a wrapper it is simply
    called. For a :class:`~torch.nn.parallel.DistributedDataParallel` network it runs *inside*
    the wrapper's forward: for that one call it stands in for the wrapped module's ``forward``
    (then the module's own ``forward`` is back, also for the calls ``passes`` makes). DDP thus
    sees exactly one forward per backward, which is its contract: it arms the gradient
    all-reduce for the backward, rebuilds its buckets and finds unused parameters (when asked
    to) from the outputs of all the passes. Calling DDP's ``.module`` directly would skip the
    all-reduce (the ranks would drift apart); calling the wrapper once per pass runs that
    set-up once per pass, before a single backward.
    """
    if not isinstance(network, DistributedDataParallel):
        return passes(network, *args)
    module = network.module
    own = module.__dict__.get("forward")  # normally absent: the class's forward

    def restore() -> None:
        if own is None:
            module.__dict__.pop("forward", None)
        else:
            module.forward = own

    def forward(*inputs):
        restore()  # the passes call the module's real forward
        return passes(module, *inputs)

    module.forward = forward
    try:
        return network(*args)
    finally:
        restore()


class TrainStep:
    """Base ignite iteration function for :class:`monai.engines.SupervisedTrainer` (``iteration_update``).

    A step is split in two, so that a method adds passes or loss terms without copying another's:

    - :meth:`outputs` ``(network, batch) -> dict``: every tensor the network passes produce
      (run through :func:`run_as_forward`, so ``network`` may be wrapped in
      ``DistributedDataParallel``), with at least ``pred`` (the output reported as MONAI's ``pred``);
    - :meth:`terms` ``(outputs, batch) -> {name: (weight, value)}``: the loss terms. The loss is
      ``sum(weight * value)``; a term of weight 0 is reported but not added.

    ``engine.state.output`` keeps MONAI's keys ``image``, ``label``, ``pred``, ``loss`` and gets
    every term detached as ``loss_<name>``, plus what :meth:`logs` adds (e.g. codebook usage),
    for handlers such as MLflow.

    The per-pass image loss ``L`` of a step is :attr:`loss` when one was given, else the trainer's
    ``loss_function`` (so ``train#trainer#loss_function`` in a bundle is the loss that is trained),
    else SmoothL1 (a step used outside a trainer). :attr:`epoch` is the trainer's current epoch
    (terms switched on later in training read it).

    :attr:`max_grad_norm` ``> 0`` clips the gradients' global norm to that value before the
    optimiser step (after unscaling under AMP), :func:`torch.nn.utils.clip_grad_norm_`; the norm
    before clipping is then reported as ``grad_norm``. ``0`` (default): no clipping.
    """

    loss: Callable | None = None
    max_grad_norm: float = 0.0
    _engine_loss: Callable = torch.nn.SmoothL1Loss()  # replaced by the trainer's loss_function when it has one
    epoch: int = 0

    def criterion(self) -> Callable:
        """The per-pass image loss: the step's own, else the trainer's ``loss_function``, else SmoothL1."""
        return self.loss if self.loss is not None else self._engine_loss

    def outputs(self, network, batch: dict) -> dict:
        """The network passes of one step: a dict of tensors with at least ``pred``."""
        raise NotImplementedError

    def terms(self, out: dict, batch: dict) -> dict[str, tuple[float, torch.Tensor]]:
        """The loss terms ``{name: (weight, value)}`` from :meth:`outputs`' ``out``."""
        raise NotImplementedError

    def logs(self, out: dict, batch: dict) -> dict:
        """Extra detached values for ``engine.state.output`` (none by default)."""
        return {}

    def compute(self, network, batch: dict) -> dict:
        """:meth:`outputs`, then :meth:`terms` summed: ``{"pred", "loss", "loss_<name>"..., **logs}``."""
        out = self.outputs(network, batch)
        terms = self.terms(out, batch)
        total = None
        for weight, value in terms.values():
            if weight:
                total = weight * value if total is None else total + weight * value
        if total is None:
            raise ValueError(f"{type(self).__name__}: every loss term has weight 0 ({sorted(terms)})")
        return {"pred": out["pred"], "loss": total, **{f"loss_{k}": v.detach() for k, (_, v) in terms.items()},
                **self.logs(out, batch)}

    def __call__(self, engine, batchdata: dict) -> dict:
        device, nb = engine.state.device, engine.non_blocking
        if engine.loss_function is not None:
            self._engine_loss = engine.loss_function
        self.epoch = int(engine.state.epoch)
        batch = {k: v.to(device, non_blocking=nb) if isinstance(v, torch.Tensor) else v for k, v in batchdata.items()}
        engine.state.output = {Keys.IMAGE: batch[Keys.IMAGE], Keys.LABEL: batch[Keys.LABEL]}
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        with autocast(device, enabled=as_bool(engine.amp)):  # fp16 on CUDA, bf16 on CPUs with native bf16
            out = self.compute(engine.network, batch)
        loss = out.pop("loss")
        engine.state.output.update({Keys.PRED: out.pop("pred"), Keys.LOSS: loss, **out})
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        if engine.scaler is not None and engine.amp:
            engine.scaler.scale(loss).backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            self.clip(engine, unscale=True)
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            loss.backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            self.clip(engine)
            engine.optimizer.step()
        engine.state.output[Keys.LOSS] = loss.detach()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)  # MONAI may decollate the output here
        return engine.state.output

    def clip(self, engine, unscale: bool = False) -> None:
        """Clip the gradients' global norm to :attr:`max_grad_norm` (nothing when it is 0)."""
        if not self.max_grad_norm > 0:
            return
        if unscale:  # the scaler's step then knows the gradients are unscaled already
            engine.scaler.unscale_(engine.optimizer)
        params = [p for g in engine.optimizer.param_groups for p in g["params"] if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        engine.state.output["grad_norm"] = norm.detach()
