"""LPIPS (learned perceptual image patch similarity, AlexNet) as the Seq2Seq paper reports it.

The ``lpips`` pip package ships its calibrated linear layers, but its backbone (AlexNet, VGG16
or SqueezeNet) is torchvision's ImageNet model, which torchvision downloads at run time into
``torch.hub.get_dir()/checkpoints``. Where that file is absent (no network here) the metric is
reported as *unavailable*: :class:`LPIPS` never builds a network that would try to download,
never substitutes a random backbone, and returns ``None`` instead of a number. Copy the
checkpoint into the hub cache (or point ``TORCH_HOME`` at a cache holding it) to enable it.
"""

from __future__ import annotations

import functools
import importlib
import os
import warnings
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from .image import _drop_leading_singletons, _pair

__all__ = ["LPIPS", "lpips_or_none", "lpips_backbone_path", "check_lpips_weights"]

# lpips net name -> (torchvision weights enum, linear-layer file stem in the lpips package, label)
_NETS = {
    "alex": ("AlexNet_Weights", "alex", "AlexNet"),
    "vgg": ("VGG16_Weights", "vgg", "VGG16"),
    "vgg16": ("VGG16_Weights", "vgg", "VGG16"),
    "squeeze": ("SqueezeNet1_1_Weights", "squeeze", "SqueezeNet 1.1"),
}


def _net_info(net: str) -> tuple[str, str, str]:
    try:
        return _NETS[net]
    except KeyError:
        raise ValueError(f"unknown LPIPS network {net!r}; choose one of {sorted(_NETS)}") from None


def _backbone_url(net: str) -> str:
    from torchvision import models

    return getattr(models, _net_info(net)[0]).IMAGENET1K_V1.url


def lpips_backbone_path(net: str = "alex") -> Path:
    """Where torchvision looks for the ImageNet backbone of LPIPS network ``net``:
    ``torch.hub.get_dir()/checkpoints/<file name of the weights URL>``, e.g.
    ``~/.cache/torch/hub/checkpoints/alexnet-owt-7be5be79.pth`` (``TORCH_HOME`` moves it)."""
    import torch

    name = os.path.basename(urlparse(_backbone_url(net)).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def check_lpips_weights(net: str = "alex") -> tuple[bool, str]:
    """Whether LPIPS with backbone ``net`` can run without any download.

    Checks, without constructing a network: the ``lpips`` package imports, its linear-layer
    weights file ``weights/v0.1/<net>.pth`` exists, and torchvision's ImageNet checkpoint is in
    the torch hub cache.

    Returns:
        ``(available, reason)``; ``reason`` is ``""`` when available, else a sentence starting
        ``"LPIPS unavailable: "`` that names the missing file.
    """
    _, lin_stem, label = _net_info(net)
    try:
        pkg = importlib.import_module("lpips")
    except Exception as e:  # ImportError, or torchvision failing to import
        return False, f"LPIPS unavailable: the lpips package cannot be imported ({type(e).__name__}: {e})"
    lin = Path(pkg.__file__).parent / "weights" / "v0.1" / f"{lin_stem}.pth"
    if not lin.is_file():
        return False, f"LPIPS unavailable: the lpips package's linear-layer weights are missing at {lin}"
    path, url = lpips_backbone_path(net), _backbone_url(net)
    if not path.is_file():
        return False, (
            f"LPIPS unavailable: {label} ImageNet weights not found at {path}; torchvision downloads "
            f"them from {url} at run time and that is not reachable here. Copy the file to that path "
            f"(or set TORCH_HOME to a cache holding checkpoints/{path.name}) to enable LPIPS."
        )
    return True, ""


class LPIPS:
    """Per-slice LPIPS of a volume, or ``None`` where the backbone weights are absent.

    Args:
        net: ``"alex"`` (the paper), ``"vgg"`` or ``"squeeze"``.
        device: torch device for the network, e.g. ``"cpu"`` or ``"cuda"``.
        batch_size: slices per forward pass.

    Attributes:
        available: ``True`` when the network was built from real pretrained weights.
        reason: why it is unavailable (``""`` when available).

    Example::

        metric = LPIPS()
        value = metric(pred, target)   # float, or None with metric.reason explaining why
    """

    def __init__(self, net: str = "alex", device="cpu", batch_size: int = 16):
        _net_info(net)  # validate the name early
        self.net = net
        self.device = device
        self.batch_size = int(batch_size)
        self._model = None
        self.available, self.reason = self._check()
        if self.available:
            try:
                self._model = self._build()
            except Exception as e:  # a corrupt checkpoint, an incompatible torchvision, ...
                self.available = False
                self.reason = f"LPIPS unavailable: building the {net} network failed ({type(e).__name__}: {e})"

    def _check(self) -> tuple[bool, str]:
        """Availability check run before anything is built (see :func:`check_lpips_weights`)."""
        return check_lpips_weights(self.net)

    def _build(self):
        """Build the ``lpips`` package's network (only called once the weights are on disk)."""
        pkg = importlib.import_module("lpips")
        with warnings.catch_warnings():  # torchvision's "pretrained is deprecated" warnings
            warnings.simplefilter("ignore")
            model = pkg.LPIPS(net=self.net, version="0.1", pretrained=True, pnet_rand=False, verbose=False)
        return model.eval().to(self.device)

    def __repr__(self) -> str:
        state = "available" if self.available else self.reason
        return f"LPIPS(net={self.net!r}, device={self.device!r}: {state})"

    def __call__(self, pred, target, axis: int = -1, reduction: str = "mean"):
        """LPIPS between ``pred`` and ``target`` over 2D slices.

        Args:
            pred: image ``(H, W)`` or volume ``(H, W, D)`` (leading size-1 dims dropped), numpy
                or torch, already on the ``[-1, 1]`` scale (not rescaled here).
            target: same shape as ``pred``.
            axis: slicing axis of a volume (``-1``: axial).
            reduction: ``"mean"`` (default) or ``"sum"`` over slices (the paper's tables sum),
                or ``"none"`` for the per-slice array of shape ``(n_slices,)``.

        Returns:
            A float (or an array for ``"none"``); ``None`` when unavailable (see :attr:`reason`).
        """
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        if not self.available:
            return None
        import torch

        p, t = _pair(pred, target)
        p, t = _drop_leading_singletons(p), _drop_leading_singletons(t)
        if p.ndim == 2:
            ps, ts = p[None], t[None]
        elif p.ndim == 3:
            ps, ts = np.moveaxis(p, axis, 0), np.moveaxis(t, axis, 0)
        else:
            raise ValueError(f"LPIPS needs a 2D image or a 3D volume, got shape {p.shape}")
        values = []
        with torch.no_grad():
            for start in range(0, ps.shape[0], self.batch_size):
                # (B, H, W) grey -> (B, 3, H, W): the backbone expects RGB in [-1, 1]
                a = torch.from_numpy(np.ascontiguousarray(ps[start : start + self.batch_size], dtype=np.float32))
                b = torch.from_numpy(np.ascontiguousarray(ts[start : start + self.batch_size], dtype=np.float32))
                a = a[:, None].expand(-1, 3, -1, -1).to(self.device)
                b = b[:, None].expand(-1, 3, -1, -1).to(self.device)
                d = self._model(a, b)  # (B, 1, 1, 1)
                values.append(d.reshape(d.shape[0], -1).mean(dim=1).double().cpu().numpy())
        vals = np.concatenate(values)
        if reduction == "none":
            return vals
        return float(vals.sum() if reduction == "sum" else vals.mean())


@functools.lru_cache(maxsize=4)
def _shared(net: str, device: str) -> LPIPS:
    return LPIPS(net=net, device=device)


def lpips_or_none(pred, target, axis: int = -1, net: str = "alex", device: str = "cpu", reduction: str = "mean"):
    """Mean per-slice LPIPS of ``pred`` vs ``target`` (shapes as in :meth:`LPIPS.__call__`),
    or ``None`` when the backbone weights are absent. The network is built once per
    ``(net, device)`` and reused."""
    return _shared(net, str(device))(pred, target, axis=axis, reduction=reduction)
