"""Run a bundle's own inference on one study, for the serving apps (MONAI Deploy, MONAI Label).

The apps do not re-implement a bundle: they lay the study out as a one-case BraTS folder (links to
the user's files, nothing copied or converted) and run the bundle's ``configs/inference.json``
through MONAI's :class:`~monai.bundle.ConfigWorkflow`, exactly as ``python -m monai.bundle run``
would, with ``dataset_dir`` and ``output_dir`` overridden. So every bundle is served by the same
code, and an app's output is the bundle's output, byte for byte.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..errors import DataError

__all__ = ["sequence_from_filename", "stage_study", "run_bundle_inference", "bundle_sequences", "image_datalist",
           "default_image_sequence"]

_NIFTI = re.compile(r"\.nii(\.gz)?$", re.IGNORECASE)


def sequence_from_filename(path) -> str | None:
    """The sequence a NIfTI file name announces: the last ``_``-separated word of the name before
    ``.nii[.gz]``, lower-cased (``BraTS_001_t1ce.nii.gz`` and ``T1CE.nii.gz`` give ``t1ce``);
    ``None`` for a name that is not NIfTI."""
    name = Path(path).name
    if not _NIFTI.search(name):
        return None
    return _NIFTI.sub("", name).rsplit("_", 1)[-1].lower()


def stage_study(files: Mapping[str, os.PathLike | str], work_dir, case_id: str = "study") -> Path:
    """Lay out one study as a one-case BraTS-layout folder, ``<work_dir>/<case_id>/<case_id>_<seq>.nii.gz``,
    with symbolic links to ``files`` (``{sequence: path}``); returns ``work_dir``.

    Raises:
        DataError: no file given, or a file that does not exist (named).
    """
    if not files:
        raise DataError("the study holds no image of a sequence this bundle knows", work_dir)
    case = Path(work_dir) / case_id
    case.mkdir(parents=True, exist_ok=True)
    for seq, src in files.items():
        src = Path(src).resolve()
        if not src.is_file():
            raise DataError("no such file", src)
        ext = ".nii.gz" if src.name.lower().endswith(".gz") else ".nii"
        link = case / f"{case_id}_{seq.lower()}{ext}"
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(src)
    return Path(work_dir)


def _bundle_files(bundle_root: Path, config_files: Sequence[str]) -> tuple[list[str], str | None]:
    configs = [str(bundle_root / c) for c in config_files]
    for c in configs:
        if not Path(c).is_file():
            raise FileNotFoundError(f"{c}: not a bundle config (is {bundle_root} a bundle folder?)")
    meta = bundle_root / "configs" / "metadata.json"
    return configs, str(meta) if meta.is_file() else None


def bundle_sequences(bundle_root, config_files: Sequence[str] = ("configs/inference.json",)) -> list[str] | None:
    """The sequence names a bundle's inference config lists, or ``None`` when they are computed
    from the data (TUMSyn takes whatever images a case has)."""
    from monai.bundle import ConfigParser

    configs, _ = _bundle_files(Path(bundle_root), config_files)
    parser = ConfigParser()
    parser.read_config(configs)
    seqs = parser.get("sequences")
    return [str(s).lower() for s in seqs] if isinstance(seqs, (list, tuple)) else None


def run_bundle_inference(bundle_root, dataset_dir, output_dir, config_files: Sequence[str] = ("configs/inference.json",),
                         logging_file: str | bool = False, **overrides) -> list[Path]:
    """Run a bundle's inference config on ``dataset_dir`` (a BraTS-layout folder, e.g. from
    :func:`stage_study`) and return the syntheses written under ``output_dir``.

    ``overrides`` are config ids, as ``--id value`` on the command line (``target="t2"``,
    ``ckpt_path=...``, ``device=...``). A packaged bundle carries its own ``mrsynth`` copy at its
    root; the bundle root goes first on ``sys.path`` as ``monai.bundle run`` from that folder does.
    ``logging_file``: by default the host's logging is left alone (a server keeps its own); ``None``
    applies the bundle's ``configs/logging.conf`` as ``monai.bundle run`` does.
    """
    from monai.bundle import ConfigWorkflow

    bundle_root = Path(bundle_root).resolve()
    configs, meta = _bundle_files(bundle_root, config_files)
    if str(bundle_root) not in sys.path and (bundle_root / "mrsynth").is_dir():
        sys.path.insert(0, str(bundle_root))
    workflow = ConfigWorkflow(config_file=configs, meta_file=meta, logging_file=logging_file, workflow_type=None,
                              bundle_root=str(bundle_root), dataset_dir=str(dataset_dir), output_dir=str(output_dir),
                              layout="brats", **overrides)
    workflow.initialize()
    try:
        results = workflow.run()
    finally:
        workflow.finalize()
    written = [Path(p) for r in results or [] if isinstance(r, (list, tuple)) for p in r]
    return written or sorted(Path(output_dir).glob("*/*_syn.nii.gz"))


def default_image_sequence(sequences: Sequence[str], target: str | None = None) -> str:
    """The source of MONAI's standard inference path when none is named: the bundle's first
    sequence other than ``target``."""
    others = [str(s).lower() for s in sequences if str(s).lower() != str(target).lower()]
    if not others:
        raise DataError(f"no source sequence: the bundle lists {list(sequences)} and the target is {target}")
    return others[0]


def image_datalist(dataset_dir, sequence: str, layout: str = "auto", sequences: Sequence[str] | None = None) -> list[dict]:
    """The data of MONAI's standard inference path (an ``inference.json``'s ``dataset``): one
    ``{"image": <the case's sequence file>, "case": <case id>}`` per case of ``dataset_dir`` that
    has ``sequence`` (``sequences``: the bundle's sequence names, for the folder listing). Cases without it are named in a log line and left out.

    Raises:
        DataError: no case of ``dataset_dir`` has ``sequence`` (naming the folder).
    """
    import logging

    from ..data import list_cases

    sequence = str(sequence).lower()
    known = [str(s).lower() for s in sequences] if sequences else None
    cases = list_cases(dataset_dir, sequences=(known + [sequence]) if known and sequence not in known else known, layout=layout,
                       check_geometry=False)
    data = [{"image": c[sequence], "case": c["case"]} for c in cases if sequence in c]
    missing = [c["case"] for c in cases if sequence not in c]
    if missing:
        logging.getLogger(__name__).warning("%s: %d case(s) have no %s image and are left out: %s", dataset_dir,
                                            len(missing), sequence, ", ".join(missing[:10]))
    if not data:
        raise DataError(f"no case has a {sequence} image (--image_sequence names the source)", dataset_dir)
    return data
