"""mrsynth: shared networks, data, transforms, engines and metrics for the MRI-synthesis bundles.

Every bundle's configs reference this package by ``_target_``; nothing here is bundle-specific.
"""

__version__ = "0.1.0"

from .errors import DataError, install_error_hook  # noqa: F401

install_error_hook()  # a bad-input error ends with one plain line naming the file (mrsynth.errors)
from .sequences import BRATS_SEQUENCES, SEQUENCES, sequence_index  # noqa: F401
