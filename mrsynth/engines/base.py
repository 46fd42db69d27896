"""What every training step shares: moving the batch, the optimiser step (with AMP), and the
events MONAI's handlers listen to. A method's step only says how to compute its losses."""

from __future__ import annotations

import torch
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys

__all__ = ["TrainStep"]


class TrainStep:
    """Base ignite iteration function for :class:`monai.engines.SupervisedTrainer` (``iteration_update``).

    Subclasses implement :meth:`compute` ``(network, batch) -> dict`` returning at least ``pred``
    and ``loss`` (a scalar with grad); other entries (detached loss parts) are copied into
    ``engine.state.output`` for handlers such as MLflow. ``engine.state.output`` keeps MONAI's
    keys: ``image``, ``label``, ``pred``, ``loss``.
    """

    def compute(self, network, batch: dict) -> dict:
        raise NotImplementedError

    def __call__(self, engine, batchdata: dict) -> dict:
        device, nb = engine.state.device, engine.non_blocking
        batch = {k: v.to(device, non_blocking=nb) if isinstance(v, torch.Tensor) else v for k, v in batchdata.items()}
        engine.state.output = {Keys.IMAGE: batch[Keys.IMAGE], Keys.LABEL: batch[Keys.LABEL]}
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        with torch.autocast(device_type=torch.device(device).type, enabled=bool(engine.amp)):
            out = self.compute(engine.network, batch)
        loss = out.pop("loss")
        engine.state.output.update({Keys.PRED: out.pop("pred"), Keys.LOSS: loss, **out})
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        if engine.scaler is not None and engine.amp:
            engine.scaler.scale(loss).backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            loss.backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.optimizer.step()
        engine.state.output[Keys.LOSS] = loss.detach()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)  # MONAI may decollate the output here
        return engine.state.output
