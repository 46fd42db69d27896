"""Automatic configuration from a dataset, as nnU-Net and nnSeq2Seq do: a fingerprint of the data,
then a plan that any bundle stacks as a config override.

Fingerprint (:func:`fingerprint`): per case, the voxel spacing and shape, the shape after cropping
to the foreground (the bounding box of voxels above 5% of a sequence's 99th percentile, over all
its sequences: MR background is noise, not zero), and per sequence a sample of foreground
intensities; then over the dataset the median spacing and cropped shape, the 10th percentile of
the spacings, how often each sequence is present, and per sequence intensity statistics.

Plan (:func:`make_plan`):

* **target spacing**: the median spacing; with anisotropic data (the coarsest axis more than 3x
  the finest) the coarse axis takes the 10th percentile of its spacings instead (nnU-Net's rule:
  resample towards the better cases, not to the median thick slice).
* **2D (2.5D) patch**: the median in-plane shape (axes 0 and 1; slabs run along axis 2, the
  thick-slice axis of anisotropic data) at the target spacing, rounded up to a multiple of the
  network's total stride ``2 ** (len(channels) - 1)`` and capped at ``max_patch_2d``.
* **3D patch**: the median shape at the target spacing, stride-divisible, shrunk (largest
  axis first) until a batch of 2 fits the memory budget, as nnU-Net does.
* **batch size**: the stated GPU-memory budget divided by an estimate of one sample's training
  memory. The estimate is measured, not guessed: the network of the bundle's config runs a
  forward pass on two small patches on the CPU, autograd's saved tensors are counted
  (``torch.autograd.graph.saved_tensors_hooks``) and split into a part linear in the voxel count
  and a constant part (see :func:`activation_bytes_per_voxel`), scaled to the patch, times
  ``forward_passes`` (the training step's forward calls) and a factor of 2 for the backward
  pass's transient tensors; the weights, gradients and Adam states are added once.
* **normalisation**: per sequence, the bundles' per-image percentile scaling, with the dataset's
  foreground statistics recorded beside it.

The plan files hold only config ids (``patch_size``, ``batch_size``, ``sw_batch_size``) plus a
``plan`` id with the reasoning, so they stack last on ``train.json`` (2D) or ``3d.json`` (3D).
"""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from .data import list_cases
from .errors import DataError
from .sequences import LABEL_KEYS

__all__ = ["fingerprint", "make_plan", "make_implicit_plan", "activation_bytes_per_voxel", "ANISOTROPY_RATIO"]

ANISOTROPY_RATIO = 3.0
_SAMPLES_PER_CASE = 10000


def _foreground_box(volumes: list[np.ndarray]) -> tuple[slice, ...]:
    mask = np.zeros(volumes[0].shape, bool)
    for v in volumes:
        hi = np.percentile(v, 99)
        mask |= v > 0.05 * hi if hi > 0 else v > 0
    if not mask.any():
        return tuple(slice(0, n) for n in mask.shape)
    idx = np.nonzero(mask)
    return tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)


def fingerprint(dataset_dir, sequences=None, layout: str = "auto", seed: int = 0) -> dict:
    """The dataset's fingerprint (JSON-serialisable; see the module doc).

    Raises:
        DataError: from the readers (no case, a geometry that disagrees within a case), naming the file.
    """
    cases = list_cases(dataset_dir, sequences, layout=layout, check_geometry=True)
    rng = np.random.default_rng(seed)
    names = sorted({k for c in cases for k in c if isinstance(c.get(k), str) and k != "case"
                    and not k.endswith(("_noiseless", "_meta")) and k not in LABEL_KEYS})
    per_case, samples = [], {n: [] for n in names}
    for c in cases:
        present = [n for n in names if n in c]
        imgs = [nib.load(c[n]) for n in present]
        vols = [np.asarray(i.dataobj, dtype=np.float32) for i in imgs]
        box = _foreground_box(vols)
        fg = np.zeros(vols[0].shape, bool)
        fg[box] = True
        for n, v in zip(present, vols):
            hi = np.percentile(v, 99)
            vals = v[box][v[box] > 0.05 * hi] if hi > 0 else v[box].ravel()
            if vals.size:
                samples[n].append(rng.choice(vals.ravel(), min(_SAMPLES_PER_CASE, vals.size), replace=False))
        per_case.append({"case": c["case"], "spacing": [float(z) for z in imgs[0].header.get_zooms()[:3]],
                         "shape": list(vols[0].shape), "cropped_shape": [s.stop - s.start for s in box],
                         "sequences": present})
    spacings = np.array([p["spacing"] for p in per_case])
    cropped = np.array([p["cropped_shape"] for p in per_case])
    stats = {}
    for n, chunks in samples.items():
        v = np.concatenate(chunks) if chunks else np.zeros(1, np.float32)
        stats[n] = {"mean": float(v.mean()), "std": float(v.std()), "median": float(np.median(v)),
                    "percentile_00_5": float(np.percentile(v, 0.5)), "percentile_99_5": float(np.percentile(v, 99.5))}
    return {
        "dataset_dir": str(dataset_dir),
        "num_cases": len(cases),
        "sequences": names,
        "presence": {n: sum(n in p["sequences"] for p in per_case) / len(per_case) for n in names},
        "median_spacing": np.median(spacings, 0).tolist(),
        "spacing_percentile_10": np.percentile(spacings, 10, axis=0).tolist(),
        "median_cropped_shape": np.median(cropped, 0).tolist(),
        "foreground_intensity": stats,
        "cases": per_case,
    }


def target_spacing(fp: dict, ratio: float = ANISOTROPY_RATIO) -> tuple[list[float], bool]:
    """nnU-Net's rule: the median spacing, but the coarsest axis of anisotropic data at the 10th
    percentile of its spacings (never finer than the finest axis). Returns (spacing, anisotropic)."""
    target = np.array(fp["median_spacing"], float)
    worst = int(np.argmax(target))
    others = [a for a in range(3) if a != worst]
    anisotropic = target[worst] > ratio * target[others].min()
    if anisotropic:
        target[worst] = max(float(fp["spacing_percentile_10"][worst]), float(target[others].min()))
    return target.round(4).tolist(), bool(anisotropic)


def _round_up(n: float, k: int) -> int:
    return int(max(k, math.ceil(n / k) * k))


def _saved_bytes(network, x, extra_args) -> int:
    total = 0
    params = {p.data_ptr() for p in network.parameters()}  # saved weights are the parameters: no new memory

    def pack(t):
        nonlocal total
        if t.data_ptr() not in params:
            total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = network(x, *extra_args)
    del out
    return total


def activation_bytes_per_voxel(network: torch.nn.Module, in_channels: int, spatial_dims: int, extra_args=(),
                               probes=(32, 64)) -> tuple[float, float]:
    """``(bytes per input voxel, bytes per sample)`` that autograd saves for one sample's forward
    pass, measured on the CPU at two patch sizes: the slope is the activations (linear in the
    voxel count), the intercept what does not grow with the patch (a hyper-network's generated
    kernels). Saved parameters are not counted: they are the weights, counted once elsewhere."""
    network.train()
    sizes, saved = [], []
    for p in probes:
        x = torch.randn(1, in_channels, *([p] * spatial_dims), requires_grad=True)
        sizes.append(p ** spatial_dims)
        saved.append(_saved_bytes(network, x, extra_args))
    slope = (saved[1] - saved[0]) / (sizes[1] - sizes[0])
    return float(slope), float(max(0.0, saved[0] - slope * sizes[0]))


def make_plan(fp: dict, network: torch.nn.Module, channels, in_channels_2d: int, network_3d: torch.nn.Module | None = None,
              gpu_memory_gb: float = 40.0, extra_args=(), forward_passes: int = 1, max_patch_2d: int = 512,
              max_batch: int = 64, in_channels_3d: int = 1) -> dict:
    """The 2D and 3D plans for fingerprint ``fp`` (see the module doc). ``network`` is the bundle's
    2D (2.5D) training network, ``network_3d`` its 3D twin (``configs/3d.json``; without it the 3D
    estimate reuses the 2D bytes per voxel); ``extra_args`` what they take besides the image."""
    stride = 2 ** (len(channels) - 1)
    spacing, anisotropic = target_spacing(fp)
    shape = (np.array(fp["median_cropped_shape"]) * np.array(fp["median_spacing"]) / np.array(spacing)).tolist()
    params = sum(p.numel() for p in network.parameters())
    fixed = params * 4 * 4  # weights, gradients, Adam's two moments (float32)
    budget = gpu_memory_gb * 1024 ** 3 * 0.85 - fixed
    if budget <= 0:
        raise DataError(f"a GPU memory budget of {gpu_memory_gb} GB does not hold the network's weights and "
                        f"optimiser state ({fixed / 1024 ** 3:.2f} GB)")
    k = 2 * forward_passes  # backward's transient tensors, and each forward call of a step
    v2, c2 = activation_bytes_per_voxel(network, in_channels_2d, 2, extra_args, probes=(4 * stride, 8 * stride))
    patch_2d = [min(_round_up(s, stride), max_patch_2d) for s in shape[:2]]
    sample_2d = k * (v2 * patch_2d[0] * patch_2d[1] + c2)
    batch_2d = int(max(1, min(max_batch, budget // sample_2d)))
    if network_3d is not None:
        v3, c3 = activation_bytes_per_voxel(network_3d, in_channels_3d, 3, extra_args, probes=(2 * stride, 4 * stride))
    else:
        v3, c3 = v2, c2
    patch_3d = [_round_up(s, stride) for s in shape]

    def sample_3d(p):
        return k * (v3 * float(np.prod(p)) + c3)

    while 2 * sample_3d(patch_3d) > budget and max(patch_3d) > stride:
        a = int(np.argmax(np.array(patch_3d) * np.array(spacing)))  # the longest side in mm first
        patch_3d[a] = max(stride, patch_3d[a] - stride)
    batch_3d = int(max(1, min(max_batch, budget // sample_3d(patch_3d))))
    per_voxel_2d, per_voxel_3d = v2 * k, v3 * k
    info = {
        "target_spacing": spacing, "anisotropic": anisotropic, "median_shape_at_target": [round(s, 1) for s in shape],
        "network_stride": stride, "gpu_memory_gb": gpu_memory_gb,
        "estimated_bytes_per_voxel_2d": round(per_voxel_2d, 1), "estimated_bytes_per_voxel_3d": round(per_voxel_3d, 1),
        "estimated_sample_bytes_2d": int(sample_2d), "estimated_sample_bytes_3d": int(sample_3d(patch_3d)),
        "weights_and_optimiser_bytes": fixed, "forward_passes": forward_passes,
        "normalisation": {n: {"scheme": "per-image percentile (ScalePercentiled, the bundles' default)",
                              "dataset_foreground": fp["foreground_intensity"][n]} for n in fp["sequences"]},
        "presence": fp["presence"],
    }
    return {
        "2d": {"_desc_": "Stack last on train.json (and quick.json): the planned 2.5D patch and batch size",
               "patch_size": patch_2d, "batch_size": batch_2d, "central_slices": None, "plan": info},
        "3d": {"_desc_": "Stack last on train.json + 3d.json: the planned 3D patch and batch size",
               "patch_size": patch_3d, "batch_size": batch_3d, "sw_batch_size": max(1, batch_3d), "plan": info},
    }


def make_implicit_plan(fp: dict, network: torch.nn.Module, inputs: tuple, gpu_memory_gb: float = 40.0,
                       forward_passes: int = 2, max_batch: int = 256) -> dict:
    """The plan for a coordinate-query network (TUMSyn stage 2): its training cube (``patch_size``)
    and query count are the method's design and stay; the batch size comes from the memory budget,
    measured as for :func:`make_plan` from one sample's saved tensors at those sizes (``inputs``:
    the network's forward arguments for one sample), times ``forward_passes`` (both translation
    directions) and 2 for the backward pass. The target spacing is recorded for ``--spacing``."""
    spacing, anisotropic = target_spacing(fp)
    params = sum(p.numel() for p in network.parameters() if p.requires_grad)
    fixed = params * 4 * 4 + sum(p.numel() * 4 for p in network.parameters() if not p.requires_grad)
    budget = gpu_memory_gb * 1024 ** 3 * 0.85 - fixed
    if budget <= 0:
        raise DataError(f"a GPU memory budget of {gpu_memory_gb} GB does not hold the network's weights and "
                        f"optimiser state ({fixed / 1024 ** 3:.2f} GB)")
    network.train()
    sample = 2 * forward_passes * _saved_bytes(network, inputs[0], inputs[1:])
    batch = int(max(1, min(max_batch, budget // sample)))
    info = {"target_spacing": spacing, "anisotropic": anisotropic, "gpu_memory_gb": gpu_memory_gb,
            "estimated_sample_bytes": int(sample), "weights_and_optimiser_bytes": int(fixed),
            "forward_passes": forward_passes, "presence": fp["presence"],
            "note": "patch_size and num_points are TUMSyn's design (random-scale cubes, query count) and are not planned"}
    return {"implicit": {"_desc_": "Stack last on train_text_encoder.json + train.json: the planned batch size",
                         "batch_size": batch, "plan": info}}
