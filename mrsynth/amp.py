"""Mixed precision where the device runs it natively.

* CUDA: float16 (what MONAI's engines use with ``amp=True``).
* CPU: bfloat16 when the processor has native bf16 arithmetic (AVX512-BF16 / AMX, e.g. Intel
  Sapphire Rapids and later), where oneDNN runs convolutions several times faster than in
  float32 (``tools/bench_speed.py`` measures it); on other CPUs bf16 is emulated and slower, so
  mixed precision is off there and everything runs in float32.

Use :func:`autocast` wherever a bundle's ``amp`` flag applies: the training steps
(:class:`~mrsynth.engines.TrainStep`) and the whole-volume inferer
(:class:`~mrsynth.inferers.SlabInferer`). Weights stay float32; outputs are cast back to
float32 by their callers.
"""

from __future__ import annotations

import torch

__all__ = ["amp_dtype", "autocast", "cpu_bf16_supported"]


def cpu_bf16_supported() -> bool:
    """Whether this CPU has native bf16 arithmetic that oneDNN uses (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # older or stripped builds
        return False


def amp_dtype(device) -> torch.dtype | None:
    """The autocast dtype for ``device`` (``torch.float16`` on CUDA, ``torch.bfloat16`` on a CPU
    with native bf16), or ``None`` where mixed precision would not pay off."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and cpu_bf16_supported():
        return torch.bfloat16
    return None


def autocast(device, enabled: bool = True) -> torch.autocast:
    """``torch.autocast`` for ``device`` in its :func:`amp_dtype`; disabled when ``enabled`` is
    false or the device has no native mixed precision."""
    device = torch.device(device)
    dtype = amp_dtype(device) if enabled else None
    if dtype is None:
        return torch.autocast(device_type=device.type, enabled=False)
    return torch.autocast(device_type=device.type, dtype=dtype)
