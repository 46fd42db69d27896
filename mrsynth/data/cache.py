"""The training datasets' cache: in memory for one run (MONAI's CacheDataset, the default), or on
disk across runs (MONAI's PersistentDataset, ``--cache_dir DIR``).

Either way what is cached is the deterministic head of the preprocessing (loading with checks and
the intensity scaling); random sampling runs on every draw. On disk, an entry's key hashes the
case's dict, the size and modification time of every file it names, and the cached transforms
with their parameters, so editing an image or changing the normalisation makes a new entry
instead of serving a stale one.
"""

from __future__ import annotations

import os

from monai.data import CacheDataset, PersistentDataset
from monai.data.utils import pickle_hashing

__all__ = ["training_dataset", "file_aware_hashing"]


def file_aware_hashing(item, protocol: int = 4) -> bytes:
    """:func:`monai.data.utils.pickle_hashing` of ``item`` together with the size and modification
    time of each existing file it names."""
    files = {}
    if isinstance(item, dict):
        for k, v in item.items():
            if isinstance(v, str) and os.path.isfile(v):
                st = os.stat(v)
                files[k] = (st.st_size, st.st_mtime_ns)
    return pickle_hashing({"item": item, "files": files}, protocol=protocol)


def training_dataset(data, transform, cache_dir=None, cache_rate: float = 1.0, num_workers: int = 0):
    """``CacheDataset(data, transform, cache_rate, num_workers)`` or, with ``cache_dir``,
    ``PersistentDataset`` under ``cache_dir`` (created if needed) keyed by :func:`file_aware_hashing`
    and the cached transforms' pickled parameters."""
    if cache_dir:
        os.makedirs(cache_dir, exist_ok=True)
        return PersistentDataset(data, transform, cache_dir=str(cache_dir), hash_func=file_aware_hashing,
                                 hash_transform=pickle_hashing)
    return CacheDataset(data, transform, cache_rate=cache_rate, num_workers=num_workers, progress=False)
