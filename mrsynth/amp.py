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

__all__ = ["amp_dtype", "autocast", "cpu_bf16_supported", "as_bool", "cudnn_autotune"]

_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off", "none", "")


def as_bool(value, name: str = "amp") -> bool:
    """A flag that may arrive from the command line as text: ``--amp false`` reaches a bundle as
    the string ``'false'`` (only ``False`` is parsed as a boolean), which plain ``bool()`` would
    take as true. Accepts booleans, numbers and ``true/false/yes/no/on/off/1/0`` in any case.

    Raises:
        ValueError: naming the flag, for any other value.
    """
    if isinstance(value, str):
        v = value.strip().lower()
        if v in _TRUE:
            return True
        if v in _FALSE:
            return False
        raise ValueError(f"--{name} must be true or false, got {value!r}")
    if value is None:
        return False
    if isinstance(value, (bool, int, float)):
        return bool(value)
    raise ValueError(f"--{name} must be true or false, got {value!r}")


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


def cudnn_autotune(enabled=True) -> bool:
    """Let cuDNN time its convolution algorithms and keep the fastest (``benchmark``), or hold it
    to deterministic ones. Call it after :func:`monai.utils.set_determinism`, which turns
    autotuning off and determinism on whenever it is given a seed. Training configs call it with
    their ``cudnn_benchmark`` flag (default true, as in MONAI's model-zoo bundles: training crops
    have a fixed size, so each layer is timed once): seeds still fix the data and the weights'
    initialisation, but GPU runs are no longer bit-for-bit repeatable. No effect on a CPU.
    Returns the flag as set."""
    flag = as_bool(enabled, "cudnn_benchmark")
    torch.backends.cudnn.benchmark = flag
    torch.backends.cudnn.deterministic = not flag
    return flag
