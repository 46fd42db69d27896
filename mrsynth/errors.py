"""Exceptions raised for bad input, always naming the file (or case) and the problem."""

from __future__ import annotations

__all__ = ["DataError"]


class DataError(ValueError):
    """Input data cannot be used: an unreadable file, mismatched geometry, NaN/Inf voxels,
    an unknown or missing sequence. ``path`` names the offending file or case folder."""

    def __init__(self, message: str, path=None):
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)
