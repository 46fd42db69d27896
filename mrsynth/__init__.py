"""mrsynth: shared networks, data, transforms, engines and metrics for the MRI-synthesis bundles.

Every bundle's configs reference this package by ``_target_``; nothing here is bundle-specific.
"""

__version__ = "0.1.0"

from .errors import DataError  # noqa: F401
from .sequences import BRATS_SEQUENCES, SEQUENCES, sequence_index  # noqa: F401
