"""Helpers for the bundles' ``multi_gpu_train.json`` (DistributedDataParallel training)."""

from __future__ import annotations

import gc
import logging
import os

import torch
import torch.distributed as dist

from ..engines.base import unwrap

__all__ = ["check_ranks_in_sync", "shutdown_distributed"]

logger = logging.getLogger(__name__)


def check_ranks_in_sync(network, save_dir=None, atol: float = 0.0) -> float:
    """Check at the end of a DDP run that every rank holds rank 0's weights; collective, so call
    it on every rank (the multi-GPU configs do, in ``finalize``).

    DDP keeps the replicas equal only when every step's forward ran through the wrapper; a step
    that bypasses it trains each rank on its own shard without a word. This compares every
    floating tensor of the plain module's state dict with rank 0's (one broadcast and one
    all-reduce), logs the result and raises ``RuntimeError`` when the largest difference
    exceeds ``atol`` (equal gradients and optimiser steps give identical weights, so 0 by
    default). With ``save_dir`` each rank also writes its state dict to
    ``<save_dir>/rank<r>_final.pt`` (for checks outside the run). Outside a process group it
    returns 0 and does nothing else.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return 0.0
    state = unwrap(network).state_dict()
    rank, world = dist.get_rank(), dist.get_world_size()
    if save_dir:
        os.makedirs(save_dir, exist_ok=True)
        torch.save({k: v.detach().cpu() for k, v in state.items()}, os.path.join(save_dir, f"rank{rank}_final.pt"))
    tensors = [v.detach().flatten().float() for v in state.values() if torch.is_floating_point(v)]
    if not tensors:
        return 0.0
    flat = torch.cat(tensors)
    ref = flat.clone()
    dist.broadcast(ref, src=0)
    diff = (flat - ref).abs().max().reshape(1)
    dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    value = float(diff.item())
    if value > atol:
        raise RuntimeError(
            f"DDP ranks ended with different weights (max |difference| to rank 0: {value:.3g}): a training step "
            "ran forward passes outside the DistributedDataParallel wrapper, so gradients were not all-reduced"
        )
    if rank == 0:
        logger.info(f"weights identical on all {world} ranks (max |difference| {value:.3g}, {flat.numel()} values)")
    return value


def shutdown_distributed() -> None:
    """End a DDP run cleanly on every rank (the multi-GPU configs call it last in ``finalize``).

    All ranks meet at a barrier first, so no rank tears its communicators down while another still
    sends; then the process group is destroyed and the collected garbage (the DDP reducer's
    finished gloo work objects) is freed while the interpreter is fully alive. Objects left to
    interpreter finalization can abort the process (``terminate called without an active
    exception``) after a run that otherwise succeeded; CI saw this once on 2 CPU ranks.
    Outside a process group it does nothing.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()
    dist.destroy_process_group()
    gc.collect()
