"""NIfTI and JSON input/output with clear errors and atomic writes.

Reading: :func:`load_nifti` raises :class:`~mrsynth.errors.DataError` naming the file for an
unreadable file or NaN/Inf voxels. Writing: :func:`save_nifti`, :func:`save_series` (4D, with the
frame interval), :func:`save_json` and :func:`write_csv` write to a
temporary name beside the destination and move it into place, so a crash never leaves a
half-written file and never clobbers a good one.
"""

from __future__ import annotations

import csv
import json
import math
import os
import secrets
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np

from .errors import DataError

__all__ = ["load_nifti", "save_nifti", "save_series", "save_json", "write_csv", "atomic_path"]


def load_nifti(path, dtype=np.float32, check_finite: bool = True):
    """Load ``path`` and return ``(array, affine, header)``.

    Raises:
        DataError: the file is missing or unreadable, or holds NaN/Inf voxels (``check_finite``).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", path)
    try:
        img = nib.load(str(path))
        arr = np.asarray(img.dataobj, dtype=dtype)
    except Exception as e:  # nibabel raises many types for corrupt files
        raise DataError(f"cannot read as NIfTI ({type(e).__name__}: {e})", path) from e
    if check_finite and not np.isfinite(arr).all():
        n = int((~np.isfinite(arr)).sum())
        raise DataError(f"{n} NaN/Inf voxel(s); clean the image or drop this sequence", path)
    return arr, img.affine.copy(), img.header


@contextmanager
def atomic_path(dest, suffix: str = ""):
    """Yield a temporary path beside ``dest``; move it onto ``dest`` only if the block succeeds.
    The temporary file is created as ``open`` creates files (``0o666`` less the umask), so that
    ``dest`` is not left owner-only as a :func:`tempfile.mkstemp` file would be."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    suffix = suffix or "".join(dest.suffixes)
    tmp = str(dest.parent / f".{dest.name}.{secrets.token_hex(8)}{suffix}")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # never another writer's file
    try:
        yield Path(tmp)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_nifti(array, affine, dest, header=None, dtype=np.float32) -> Path:
    """Write ``array`` with ``affine`` to ``dest`` atomically (temporary file, then rename)."""
    arr = np.asarray(array, dtype=dtype)
    img = nib.Nifti1Image(arr, np.asarray(affine, dtype=np.float64), header=header)
    img.set_data_dtype(dtype)
    with atomic_path(dest) as tmp:
        nib.save(img, str(tmp))
    return Path(dest)


def save_series(array, affine, dest, interval_s: float | None = None) -> Path:
    """Write a dynamic series ``array`` ``(X, Y, Z, T)`` as a 4D NIfTI atomically; the frame
    interval in seconds, when known, is its fourth voxel size (time unit: seconds)."""
    img = nib.Nifti1Image(np.asarray(array, dtype=np.float32), np.asarray(affine, dtype=np.float64))
    img.set_data_dtype(np.float32)
    if interval_s:
        img.header.set_zooms((*img.header.get_zooms()[:3], float(interval_s)))
        img.header.set_xyzt_units("mm", "sec")
    with atomic_path(dest, ".nii.gz") as tmp:
        nib.save(img, str(tmp))
    return Path(dest)


def _cell(v):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return v if isinstance(v, (str, int)) else f"{v:.6g}"


def write_csv(rows, path, columns=None) -> Path:
    """Write ``rows`` (dicts) as CSV atomically: ``columns`` (default the first row's keys), numbers
    with 6 significant digits, empty cells for missing values and NaN."""
    rows = list(rows)
    columns = list(rows[0]) if columns is None else list(columns)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for r in rows:
            w.writerow([_cell(r.get(c)) for c in columns])
    return Path(path)


def save_json(obj, dest, indent: int = 2) -> Path:
    """Write ``obj`` as JSON to ``dest`` atomically."""
    with atomic_path(dest, suffix=".json") as tmp:
        tmp.write_text(json.dumps(obj, indent=indent, default=_json_default) + "\n")
    return Path(dest)


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
