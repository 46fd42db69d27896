"""Dataset readers for the two on-disk layouts, tolerant of missing sequences.

Both readers return MONAI-style data lists: one ``dict`` per case, holding a file path under
the name of every sequence the case *has* (missing sequences are simply absent, which is what
``allow_missing_keys=True`` transforms expect), plus

- ``case``: the case id,
- ``available``: the availability mask over ``sequences`` (list of 0/1, the papers' bitmask),
- ``seg``: the label map path, where one exists,
- ``tissue``, ``fractions``: the phantom's tissue map and compartment fractions, where they exist
  (the evaluation's per-tissue contrast and tissue oracle),
- ``<seq>_noiseless``: the phantom's noiseless image, where one exists (for the noise-floor limit),
- ``<seq>_meta``: the JSON sidecar path, where one exists (TUMSyn's prompt fields).

Layouts:

- BraTS: ``<root>/<case>/<case>_<seq>.nii.gz`` (``t1``, ``t1ce``, ``t2``, ``flair``, ``pd``), ``_seg``.
- nnSeq2Seq: ``<root>/dataset.json`` (``channel_names``, ``file_ending``),
  ``<root>/imagesTr/<case>_<XXXX><file_ending>``, ``labelsTr/<case><file_ending>``,
  ``noiselessTr/``, ``tissueTr/``, ``fractionsTr/`` (phantom only).

Headers are checked while listing (cheap: no voxel data is read), so a case whose sequences
disagree in shape or affine fails before any training starts, naming the file.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import DataError
from ..sequences import BRATS_SEQUENCES, LABEL_KEYS, canonical_order

__all__ = ["list_brats_cases", "list_nnseq2seq_cases", "list_cases", "detect_layout", "check_case_geometry", "split_cases"]

_NIFTI_ENDINGS = (".nii.gz", ".nii")
logger = logging.getLogger(__name__)


def _find_file(folder: Path, stem: str) -> Path | None:
    for ending in _NIFTI_ENDINGS:
        p = folder / f"{stem}{ending}"
        if p.is_file():
            return p
    return None


def detect_layout(root) -> str:
    """``"nnseq2seq"`` when ``root/dataset.json`` and ``root/imagesTr`` exist, else ``"brats"``."""
    root = Path(root)
    if (root / "dataset.json").is_file() and (root / "imagesTr").is_dir():
        return "nnseq2seq"
    return "brats"


def check_case_geometry(case: dict, sequences, atol: float = 1e-3) -> None:
    """Raise :class:`DataError` if the images of ``case`` differ in shape or affine.

    Only headers are read. The first available sequence is the reference; the error names the
    file that disagrees and both shapes/affines.
    """
    ref_path = ref_shape = ref_affine = None
    keys = [s for s in sequences if s in case] + (["seg"] if "seg" in case else [])
    for key in keys:
        path = Path(case[key])
        try:
            img = nib.load(str(path))
            shape, affine = tuple(img.shape[:3]), img.affine
        except Exception as e:
            raise DataError(f"cannot read NIfTI header ({type(e).__name__}: {e})", path) from e
        if ref_path is None:
            ref_path, ref_shape, ref_affine = path, shape, affine
            continue
        if shape != ref_shape:
            raise DataError(f"shape {shape} differs from {ref_shape} of {ref_path.name} in the same case", path)
        if not np.allclose(affine, ref_affine, atol=atol):
            raise DataError(
                f"affine differs from that of {ref_path.name} in the same case "
                f"(max difference {np.abs(affine - ref_affine).max():.4g}); resample the case onto one grid",
                path,
            )


def _finish_case(case: dict, sequences, where: Path, check_geometry: bool) -> dict | None:
    present = [s for s in sequences if s in case]
    if not present:
        warnings.warn(f"{where}: no usable sequence among {list(sequences)}; case skipped", stacklevel=3)
        return None
    case["available"] = [int(s in case) for s in sequences]
    if check_geometry:
        check_case_geometry(case, sequences)
    return case


def _brats_name(path: Path, case_id: str) -> str:
    """``t1`` for ``<case>/<case>_t1.nii.gz``."""
    return path.name[len(case_id) + 1:].removesuffix(".gz").removesuffix(".nii").lower()


def list_brats_cases(root, sequences=BRATS_SEQUENCES, check_geometry: bool = True) -> list[dict]:
    """List the cases of a BraTS-layout folder.

    Args:
        root: folder holding one sub-folder per case, ``<case>/<case>_<seq>.nii.gz``.
        sequences: the sequence names to look for (other images are ignored, with a warning
            naming them).
        check_geometry: read the headers and fail on a shape/affine mismatch within a case.

    Returns:
        one dict per case (sorted by case id); cases with none of ``sequences`` are skipped
        with a warning.

    Raises:
        DataError: ``root`` is not a folder, it holds no case, or a case's geometry disagrees.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError("dataset folder not found", root)
    sequences = [s.lower() for s in sequences]
    cases, unknown = [], {}
    for case_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        cid = case_dir.name
        case: dict = {"case": cid}
        for seq in sequences:
            f = _find_file(case_dir, f"{cid}_{seq}")
            if f is not None:
                case[seq] = str(f)
                clean = _find_file(case_dir, f"{cid}_{seq}_noiseless")
                if clean is not None:
                    case[f"{seq}_noiseless"] = str(clean)
                side = case_dir / f"{cid}_{seq}.json"
                if side.is_file():
                    case[f"{seq}_meta"] = str(side)
        for key in LABEL_KEYS:
            f = _find_file(case_dir, f"{cid}_{key}")
            if f is not None:
                case[key] = str(f)
        for f in sorted(case_dir.glob(f"{cid}_*.nii*")):
            name = _brats_name(f, cid)
            if name not in (*sequences, *_NOT_IMAGES) and not name.endswith("_noiseless"):
                unknown.setdefault(name, []).append(f)
        case = _finish_case(case, sequences, case_dir, check_geometry)
        if case is not None:
            cases.append(case)
    if unknown:  # one line for the folder, not one per case
        logger.warning(f"{root}: images that are not a sequence this bundle knows ({', '.join(sequences)}) are "
                       "ignored: " + "; ".join(f"{n} ({len(fs)} case(s), e.g. {fs[0]})" for n, fs in sorted(unknown.items())))
    if not cases:
        raise DataError(f"no case with any of {sequences} (expected <case>/<case>_<seq>.nii.gz)", root)
    return cases


def _read_dataset_json(root: Path) -> dict:
    path = root / "dataset.json"
    try:
        spec = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError("dataset.json not found (nnSeq2Seq layout)", path) from None
    except json.JSONDecodeError as e:
        raise DataError(f"not valid JSON: {e}", path) from e
    if not isinstance(spec.get("channel_names"), dict) or not spec["channel_names"]:
        raise DataError("'channel_names' is missing or empty", path)
    return spec


def list_nnseq2seq_cases(root, sequences=None, check_geometry: bool = True) -> list[dict]:
    """List the cases of an nnSeq2Seq-layout dataset folder (``DatasetXXX_Name``).

    Channel names in ``dataset.json`` become sequence keys (lower-cased). ``sequences`` fixes
    the order of the availability mask and must contain every channel name; by default it is
    :data:`~mrsynth.sequences.SEQUENCES` restricted to the dataset's channels, followed by
    any channel name not in it.

    Raises:
        DataError: no ``dataset.json``, an unknown channel name, or no case found.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError("dataset folder not found", root)
    spec = _read_dataset_json(root)
    ending = spec.get("file_ending", ".nii.gz")
    channels = {int(k): str(v).lower() for k, v in spec["channel_names"].items()}
    if sequences is None:
        sequences = canonical_order(channels.values())
    sequences = [s.lower() for s in sequences]
    unknown = sorted(set(channels.values()) - set(sequences))
    if unknown:
        raise DataError(f"channel name(s) {unknown} not among the sequences {sequences}", root / "dataset.json")
    images = root / "imagesTr"
    if not images.is_dir():
        raise DataError("imagesTr folder not found", images)
    ids = sorted({p.name[: -len(ending)].rsplit("_", 1)[0] for p in images.glob(f"*_[0-9][0-9][0-9][0-9]{ending}")})
    cases = []
    for cid in ids:
        case: dict = {"case": cid}
        for idx, seq in sorted(channels.items()):
            stem = f"{cid}_{idx:04d}"
            f = images / f"{stem}{ending}"
            if f.is_file():
                case[seq] = str(f)
                clean = root / "noiselessTr" / f"{stem}{ending}"
                if clean.is_file():
                    case[f"{seq}_noiseless"] = str(clean)
                side = images / f"{stem}.json"
                if side.is_file():
                    case[f"{seq}_meta"] = str(side)
        for key, folder in (("seg", "labelsTr"), ("tissue", "tissueTr"), ("fractions", "fractionsTr")):
            f = root / folder / f"{cid}{ending}"
            if f.is_file():
                case[key] = str(f)
        case = _finish_case(case, sequences, images / cid, check_geometry)
        if case is not None:
            cases.append(case)
    if not cases:
        raise DataError(f"no case found (expected imagesTr/<case>_XXXX{ending})", root)
    return cases


def list_cases(root, sequences=None, layout: str = "auto", check_geometry: bool = True) -> list[dict]:
    """List the cases of ``root`` in either layout (``layout="auto"`` detects it).

    ``sequences`` defaults to the BraTS four for the BraTS layout and to the dataset's
    channels for the nnSeq2Seq layout.
    """
    layout = detect_layout(root) if layout == "auto" else layout
    if layout == "brats":
        return list_brats_cases(root, sequences or BRATS_SEQUENCES, check_geometry=check_geometry)
    if layout == "nnseq2seq":
        return list_nnseq2seq_cases(root, sequences, check_geometry=check_geometry)
    raise DataError(f"unknown layout {layout!r}; use 'brats', 'nnseq2seq' or 'auto'")


def split_cases(cases: list[dict], val_fraction: float = 0.2, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Shuffle ``cases`` with ``seed`` and split off ``val_fraction`` of them for validation.

    At least one case goes to each side when there are two or more cases (a tiny phantom still
    validates); a single case is used for both.
    """
    n = len(cases)
    if n < 2:
        return list(cases), list(cases)
    order = np.random.default_rng(seed).permutation(n)
    n_val = min(max(int(round(n * val_fraction)), 1), n - 1)
    val = sorted(order[:n_val].tolist())
    train = sorted(order[n_val:].tolist())
    return [cases[i] for i in train], [cases[i] for i in val]


_NOT_IMAGES = LABEL_KEYS


def image_names(root, exclude=(), require_sidecar: bool = True) -> list[str]:
    """The image names of a BraTS-layout folder (``<case>/<case>_<name>.nii.gz``), over all its
    cases, sorted: the named sequences and any other acquisition (the phantom's protocols
    ``p00``..., presets), without labels, tissue maps and ``_noiseless`` twins.

    Args:
        exclude: names to leave out (e.g. held-out protocols).
        require_sidecar: only images with a JSON sidecar (``<case>_<name>.json``), i.e. those a
            prompt can describe (TUMSyn).

    Raises:
        DataError: ``root`` is not a folder or holds no image.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError("dataset folder not found", root)
    names = set()
    for case_dir in (p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        prefix = f"{case_dir.name}_"
        for f in case_dir.iterdir():
            n = f.name
            if not n.startswith(prefix) or not (n.endswith(".nii.gz") or n.endswith(".nii")):
                continue
            name = n[len(prefix):].removesuffix(".gz").removesuffix(".nii")
            if name in _NOT_IMAGES or name.endswith("_noiseless") or name in exclude:
                continue
            if require_sidecar and not (case_dir / f"{prefix}{name}.json").is_file():
                continue
            names.add(name)
    if not names:
        raise DataError("no image with a sidecar (<case>/<case>_<name>.nii.gz and .json)" if require_sidecar
                        else "no image (<case>/<case>_<name>.nii.gz)", root)
    return sorted(names)
