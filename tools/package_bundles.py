#!/usr/bin/env python
"""Package the bundles as the MONAI model zoo does: ``<name>_v<version>.zip`` and ``model_info.json``.

Each zip holds one folder, ``<name>/``, with the bundle's files (``configs/``, ``docs/``,
``LICENSE``, ``large_files.yml``; ``models/model.pt`` and ``models/model.ts`` when present) and a
copy of the ``mrsynth`` package at the bundle's root, so that ``python -m monai.bundle run`` from
the unzipped folder imports it without this repository (Python puts the working directory first on
``sys.path``). The bytes are deterministic: entries sorted, fixed timestamps and permissions, so the
same files give the same zip and the same sha1.

``model_info.json`` is the model zoo's index: ``{"<name>_v<version>": {"checksum": <sha1>,
"source": <base_url>/<name>_v<version>.zip}}``. A zip is then fetched with MONAI's own command::

    python tools/package_bundles.py --out dist --base-url https://example.org/bundles
    python -m monai.bundle download --name seq2seq --version 0.4.0 \\
        --url https://example.org/bundles/seq2seq_v0.4.0.zip --bundle_dir ./bundles

Local runs, checkpoints, evaluation outputs and caches (``eval/``, ``runs/``, ``mlruns*``,
``__pycache__``, ``*.pyc``) are never packaged; other files under ``models/`` are left out too.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "bundles"
PACKAGE = REPO / "mrsynth"

#: what of ``models/`` is packaged (the weights the configs and export commands name)
WEIGHTS = ("model.pt", "model.ts", "text_encoder.pt")
_SKIP_DIRS = {"eval", "runs", "__pycache__", ".pytest_cache", "mlruns"}
_DATE = (1980, 1, 1, 0, 0, 0)  # the earliest a zip can store


def _skipped(rel: Path) -> bool:
    parts = rel.parts
    if any(p in _SKIP_DIRS or p.startswith("mlruns") for p in parts) or rel.suffix == ".pyc":
        return True
    return parts[0] == "models" and (len(parts) != 2 or parts[1] not in WEIGHTS)


def bundle_files(bundle_dir: Path, package_dir: Path = PACKAGE) -> dict[str, Path]:
    """Archive name -> file, for one bundle: its files and the ``mrsynth`` package, under ``<name>/``."""
    bundle_dir = Path(bundle_dir)
    name = bundle_dir.name
    if not (bundle_dir / "configs" / "metadata.json").is_file():
        raise FileNotFoundError(f"{bundle_dir}: not a bundle (no configs/metadata.json)")
    files = {}
    for f in sorted(bundle_dir.rglob("*")):
        rel = f.relative_to(bundle_dir)
        if f.is_file() and not _skipped(rel):
            files[f"{name}/{rel.as_posix()}"] = f
    for f in sorted(Path(package_dir).rglob("*")):
        rel = f.relative_to(package_dir)
        if f.is_file() and not _skipped(rel):
            files[f"{name}/mrsynth/{rel.as_posix()}"] = f
    return files


def write_zip(files: dict[str, Path], path: Path) -> str:
    """Write ``files`` (archive name -> file) to ``path`` deterministically; returns its sha1."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for arcname in sorted(files):
            info = zipfile.ZipInfo(arcname, date_time=_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3  # unix, whatever the packaging machine
            info.external_attr = 0o644 << 16
            zf.writestr(info, files[arcname].read_bytes(), compresslevel=9)
    return hashlib.sha1(path.read_bytes()).hexdigest()


def package(bundle_dir: Path, out_dir: Path, package_dir: Path = PACKAGE) -> tuple[str, str, Path, str]:
    """Package one bundle: ``(name, version, zip path, sha1)``."""
    bundle_dir = Path(bundle_dir)
    meta = json.loads((bundle_dir / "configs" / "metadata.json").read_text())
    version = meta.get("version")
    if not version:
        raise ValueError(f"{bundle_dir / 'configs' / 'metadata.json'}: no version")
    name = bundle_dir.name
    path = Path(out_dir) / f"{name}_v{version}.zip"
    return name, version, path, write_zip(bundle_files(bundle_dir, package_dir), path)


def package_all(bundles, out_dir: Path, base_url: str, package_dir: Path = PACKAGE) -> dict:
    """Package ``bundles`` (folders) into ``out_dir`` and write ``out_dir/model_info.json``; returns the index."""
    out_dir = Path(out_dir)
    info = {}
    for b in bundles:
        name, version, path, sha1 = package(b, out_dir, package_dir)
        info[f"{name}_v{version}"] = {"checksum": sha1, "source": f"{base_url.rstrip('/')}/{path.name}"}
    (out_dir / "model_info.json").write_text(json.dumps(info, indent=4, sort_keys=True) + "\n")
    return info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for the zips and model_info.json")
    ap.add_argument("--base-url", default="http://127.0.0.1:8000", help="where the zips will be served from")
    ap.add_argument("--bundles", nargs="*", default=None, help="bundle folders (default: every bundle in bundles/)")
    args = ap.parse_args(argv)
    bundles = [Path(b) for b in args.bundles] if args.bundles else sorted(
        p for p in BUNDLES.iterdir() if (p / "configs" / "metadata.json").is_file())
    info = package_all(bundles, args.out, args.base_url)
    for key, v in info.items():
        print(f"{key}: {v['checksum']}  {v['source']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
