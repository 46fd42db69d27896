"""Sequence names and their fixed indices (the target codes of the hyper-networks).

The BraTS work indexes 0 = T1, 1 = T1Gd (``t1ce``), 2 = T2, 3 = FLAIR; PD is appended as 4.
The index of a name is its position in :data:`SEQUENCES`, so codes stay stable whichever
subset a dataset holds.
"""

from __future__ import annotations

from .errors import DataError

__all__ = ["SEQUENCES", "BRATS_SEQUENCES", "LABEL_KEYS", "sequence_index", "canonical_order"]

SEQUENCES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair", "pd")
BRATS_SEQUENCES: tuple[str, ...] = SEQUENCES[:4]
#: names of a case's label map, tissue map and compartment fractions: not sequences (any shape, may be constant)
LABEL_KEYS: tuple[str, ...] = ("seg", "tissue", "fractions")


def canonical_order(names) -> list[str]:
    """``names`` lower-cased, the known sequences first in :data:`SEQUENCES` order, then the others sorted."""
    names = {str(n).lower() for n in names}
    return [s for s in SEQUENCES if s in names] + sorted(names - set(SEQUENCES))


def sequence_index(name: str, sequences=SEQUENCES) -> int:
    """Index of sequence ``name`` in ``sequences``; :class:`DataError` for an unknown name."""
    try:
        return list(sequences).index(str(name).lower())
    except ValueError:
        raise DataError(f"unknown sequence {name!r}; known sequences: {', '.join(sequences)}") from None
