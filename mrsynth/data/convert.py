"""Conversion between the two dataset layouts, and from a folder of NIfTI files described by a CSV.

Files are copied byte for byte (or linked, ``link=True``); only a file whose ending differs from
the target dataset's single ``file_ending`` (``.nii`` beside ``.nii.gz``) is re-saved, with its
header and voxels unchanged. So a round trip BraTS -> nnSeq2Seq -> BraTS gives back every voxel,
affine and sidecar. Everything a reader lists travels: sequences, ``_noiseless`` twins, JSON
sidecars, ``seg``, the phantom's ``tissue`` and ``fractions`` maps, and the dataset folder's own
files (but ``dataset.json``, which is written for the nnSeq2Seq layout).

A destination case is written in a temporary folder and renamed into place, so an interrupted
conversion never leaves a half-written case. Problems (a file missing, a duplicate row, a
geometry that disagrees) skip that case, the others are written, then :class:`DataError` lists
what was skipped.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import nibabel as nib

from ..errors import DataError
from ..sequences import LABEL_KEYS, SEQUENCES, canonical_order
from .datasets import check_case_geometry, detect_layout, image_names, list_cases

__all__ = ["convert_dataset", "dataset_from_csv", "BRATS_LABELS"]

#: BraTS label values, written to an nnSeq2Seq ``dataset.json`` converted from the BraTS layout
BRATS_LABELS = {"background": 0, "necrotic_core": 1, "edema": 2, "enhancing_tumor": 4}
_NN_FOLDERS = {"seg": "labelsTr", "tissue": "tissueTr", "fractions": "fractionsTr"}
_SEQ_ATTRS = ("", "_noiseless", "_meta")


def _ending(path) -> str:
    return ".nii.gz" if str(path).lower().endswith(".nii.gz") else ".nii"


def _put(src, dest: Path, link: bool) -> None:
    """``src`` at ``dest``: a byte copy (or a symlink), or a re-save where the ending changes."""
    src = Path(src)
    if not src.is_file():
        raise DataError("file not found", src)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if src.suffix == ".json" or _ending(src) == _ending(dest):
        if link:
            os.symlink(src.resolve(), dest)
        else:
            shutil.copyfile(src, dest)
        return
    img = nib.load(str(src))  # .nii <-> .nii.gz: same header and voxels, other compression
    nib.save(type(img)(img.dataobj, img.affine, img.header), str(dest))


def _write_brats_case(case: dict, sequences, dest_root: Path, ending: str, link: bool) -> None:
    cid = case["case"]
    tmp = dest_root / f".{cid}.part"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for seq in sequences:
        for attr in _SEQ_ATTRS:
            if f"{seq}{attr}" in case:
                suffix = ".json" if attr == "_meta" else ending
                name = f"{cid}_{seq}{'_noiseless' if attr == '_noiseless' else ''}{suffix}"
                _put(case[f"{seq}{attr}"], tmp / name, link)
    for key in LABEL_KEYS:
        if key in case:
            _put(case[key], tmp / f"{cid}_{key}{ending}", link)
    final = dest_root / cid
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def _write_nn_case(case: dict, channels: list[str], dest_root: Path, ending: str, link: bool) -> None:
    """An nnSeq2Seq case spreads over several folders: its files are written under temporary names
    and renamed when all of them are in place."""
    cid = case["case"]
    moves = []
    try:
        for idx, seq in enumerate(channels):
            stem = f"{cid}_{idx:04d}"
            targets = {"": dest_root / "imagesTr" / f"{stem}{ending}",
                       "_noiseless": dest_root / "noiselessTr" / f"{stem}{ending}",
                       "_meta": dest_root / "imagesTr" / f"{stem}.json"}
            for attr, final in targets.items():
                if f"{seq}{attr}" in case:
                    part = final.with_name(f".part.{final.name}")
                    _put(case[f"{seq}{attr}"], part, link)
                    moves.append((part, final))
        for key, folder in _NN_FOLDERS.items():
            if key in case:
                final = dest_root / folder / f"{cid}{ending}"
                part = final.with_name(f".part.{final.name}")
                _put(case[key], part, link)
                moves.append((part, final))
    except Exception:
        for part, _ in moves:
            part.unlink(missing_ok=True)
        raise
    for part, final in moves:
        os.replace(part, final)


def _write(cases: list[dict], sequences, dest, to: str, link: bool, ending: str | None, labels: dict | None,
           name: str) -> tuple[list[str], list[str]]:
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    present = [s for s in sequences if any(s in c for c in cases)]
    if ending is None:  # the most common ending of the source images
        endings = [_ending(c[s]) for c in cases for s in present if s in c]
        ending = max(set(endings), key=endings.count) if endings else ".nii.gz"
    written, failed = [], []
    channels = canonical_order(present) if to == "nnseq2seq" else present
    for case in cases:
        try:
            if to == "brats":
                _write_brats_case(case, present, dest, ending, link)
            else:
                _write_nn_case(case, channels, dest, ending, link)
            written.append(case["case"])
        except DataError as e:
            failed.append(f"case {case['case']}: {e}")
            shutil.rmtree(dest / f".{case['case']}.part", ignore_errors=True)
    if to == "nnseq2seq" and written:
        spec = {"name": name, "channel_names": {str(i): s.upper() if s in SEQUENCES else s for i, s in enumerate(channels)},
                "file_ending": ending, "numTraining": len(written), "labels": labels or {"background": 0}}
        tmp = dest / ".dataset.json.part"
        tmp.write_text(json.dumps(spec, indent=2) + "\n")
        os.replace(tmp, dest / "dataset.json")
    return written, failed


def convert_dataset(src, dest, to: str, sequences=None, link: bool = False, ending: str | None = None) -> list[str]:
    """Convert the dataset at ``src`` (either layout, detected) to layout ``to`` (``"brats"`` or
    ``"nnseq2seq"``) at ``dest``; returns the case ids written.

    Args:
        sequences: the sequence names to carry (default: every one the source has).
        link: symlink the files instead of copying them (same ending only).
        ending: ``".nii.gz"`` or ``".nii"`` for the destination (default: the source's most common).

    Raises:
        DataError: ``to`` is unknown, the source has no case, or some cases were skipped (the
        others are written; the message lists each skipped case and why).
    """
    if to not in ("brats", "nnseq2seq"):
        raise DataError(f"unknown layout {to!r}; use 'brats' or 'nnseq2seq'")
    src = Path(src)
    layout = detect_layout(src)
    if sequences is None:
        if layout == "brats":
            sequences = image_names(src, require_sidecar=False)
        else:
            spec = json.loads((src / "dataset.json").read_text()) if (src / "dataset.json").is_file() else {}
            sequences = canonical_order(str(v) for v in spec.get("channel_names", {}).values()) or None
    cases = list_cases(src, sequences, layout=layout, check_geometry=False)
    sequences = [s.lower() for s in sequences] if sequences else canonical_order(
        k for c in cases for k in c if k not in ("case", "available", *LABEL_KEYS) and not k.endswith(("_noiseless", "_meta")))
    labels = None
    if (src / "dataset.json").is_file():
        labels = json.loads((src / "dataset.json").read_text()).get("labels")
    elif any("seg" in c for c in cases):
        labels = BRATS_LABELS
    written, failed = _write(cases, sequences, dest, to, link, ending, labels, src.name)
    for f in sorted(src.iterdir()):  # dataset-level files (a README, the phantom's phantom.json) travel too
        if f.is_file() and f.name != "dataset.json" and not f.name.startswith("."):
            shutil.copyfile(f, Path(dest) / f.name)
    if failed:
        raise DataError(f"{len(failed)} case(s) skipped, {len(written)} written:\n  " + "\n  ".join(failed), dest)
    return written


def dataset_from_csv(csv_path, dest, to: str = "brats", base_dir=None, link: bool = False,
                     check_geometry: bool = True) -> list[str]:
    """Build a dataset in layout ``to`` at ``dest`` from a CSV with columns ``case``, ``sequence``
    and ``path`` (relative paths are relative to ``base_dir``, default the CSV's folder). A
    ``sequence`` of ``seg`` is the label map. Returns the case ids written.

    Raises:
        DataError: the CSV lacks a column; or rows were bad (a missing file, an empty or invalid
        name, a duplicate case and sequence, a geometry that disagrees within a case): those
        cases are skipped, the others written, and the message names each row and file.
    """
    csv_path = Path(csv_path)
    base = Path(base_dir) if base_dir is not None else csv_path.parent
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read the CSV ({e})", csv_path) from e
    missing = {"case", "sequence", "path"} - set(rows[0] if rows else {})
    if missing:
        raise DataError(f"the CSV needs the columns case, sequence and path; missing: {sorted(missing)}", csv_path)
    cases: dict[str, dict] = {}
    bad: dict[str, list[str]] = {}
    for line, row in enumerate(rows, start=2):
        cid, seq, rel = (row[k].strip() for k in ("case", "sequence", "path"))
        seq = seq.lower()
        where = f"{csv_path.name} line {line}"
        if not cid or not seq or not seq.replace("_", "").isalnum() or seq.endswith(("_noiseless", "_meta")):
            bad.setdefault(cid or f"<line {line}>", []).append(f"{where}: invalid case or sequence name ({cid!r}, {seq!r})")
            continue
        path = Path(rel) if Path(rel).is_absolute() else base / rel
        case = cases.setdefault(cid, {"case": cid})
        if seq in case:
            bad.setdefault(cid, []).append(f"{where}: {cid} has {seq} twice ({case[seq]} and {path})")
        elif not path.is_file():
            bad.setdefault(cid, []).append(f"{where}: {path}: file not found")
        else:
            case[seq] = str(path)
    sequences = canonical_order({k for c in cases.values() for k in c if k not in ("case",) + LABEL_KEYS})
    good = []
    for cid, case in cases.items():
        if cid in bad:
            continue
        if check_geometry:
            try:
                check_case_geometry(case, sequences)
            except DataError as e:
                bad.setdefault(cid, []).append(str(e))
                continue
        good.append(case)
    written, failed = _write(good, sequences, dest, to, link, None,
                             BRATS_LABELS if any("seg" in c for c in good) else None, Path(dest).name)
    problems = [p for ps in bad.values() for p in ps] + failed
    if problems:
        raise DataError(f"{len(problems)} problem(s), {len(written)} case(s) written:\n  " + "\n  ".join(problems), csv_path)
    return written
