"""Exceptions raised for bad input, always naming the file (or case) and the problem."""

from __future__ import annotations

import sys

__all__ = ["DataError", "find_data_error", "input_error_line", "install_error_hook"]


class DataError(ValueError):
    """Input data cannot be used: an unreadable file, mismatched geometry, NaN/Inf voxels,
    an unknown or missing sequence. ``path`` names the offending file or case folder."""

    def __init__(self, message: str, path=None):
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)


def _in_chain(exc: BaseException | None, types) -> BaseException | None:
    """The first exception of ``types`` in ``exc``'s ``__cause__``/``__context__`` chain."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, types):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def find_data_error(exc: BaseException) -> DataError | None:
    """The :class:`DataError` behind ``exc``, following ``__cause__``/``__context__`` (MONAI's
    ``Compose`` re-raises a transform's error as ``RuntimeError`` from it); ``None`` if none."""
    return _in_chain(exc, DataError)


def input_error_line(exc: BaseException) -> str | None:
    """``"error: <file>: <problem>"`` for an exception caused by bad input (a :class:`DataError`
    or a missing file anywhere in its chain), else ``None``."""
    err = find_data_error(exc) or _in_chain(exc, FileNotFoundError)
    if err is None:
        return None
    text = " ".join(str(err).split())  # one line, whatever the message held
    return f"error: {text}"


def install_error_hook() -> None:
    """Make an uncaught bad-input error end with one plain line.

    ``python -m monai.bundle run`` prints the whole traceback, whose last line is MONAI's
    ``RuntimeError: Failed to evaluate ConfigExpression ...`` wrapping ours. After the usual
    traceback, this hook prints :func:`input_error_line` (``error: /data/C0/C0_t1.nii.gz: not a
    NIfTI file ...``) to standard error. Other exceptions are left as they are; installing it twice
    changes nothing. Installed when :mod:`mrsynth` is imported."""
    previous = sys.excepthook
    if getattr(previous, "_mrsynth", False):
        return

    def hook(exc_type, exc, tb):
        previous(exc_type, exc, tb)
        line = input_error_line(exc) if exc is not None else None
        if line:
            print(line, file=sys.stderr, flush=True)

    hook._mrsynth = True
    sys.excepthook = hook
