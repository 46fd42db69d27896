"""Exceptions raised for bad input, always naming the file (or case) and the problem."""

from __future__ import annotations

__all__ = ["DataError", "find_data_error"]


class DataError(ValueError):
    """Input data cannot be used: an unreadable file, mismatched geometry, NaN/Inf voxels,
    an unknown or missing sequence. ``path`` names the offending file or case folder."""

    def __init__(self, message: str, path=None):
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)


def find_data_error(exc: BaseException) -> DataError | None:
    """The :class:`DataError` behind ``exc``, following ``__cause__``/``__context__`` (MONAI's
    ``Compose`` re-raises a transform's error as ``RuntimeError`` from it); ``None`` if none."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, DataError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None
