#!/usr/bin/env python
"""Convert a dataset between the BraTS and nnSeq2Seq layouts, or build one from a CSV.

    python tools/convert.py SRC DEST --to nnseq2seq          # either layout in, detected
    python tools/convert.py files.csv DEST --to brats          # CSV columns: case, sequence, path

Files are copied byte for byte (``--link`` symlinks them); a round trip changes no voxel. Bad
cases are skipped and named at the end (exit status 1); the good ones are written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mrsynth.data import convert_dataset, dataset_from_csv  # noqa: E402
from mrsynth.errors import DataError  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("src", help="a dataset folder (BraTS or nnSeq2Seq layout) or a CSV (case, sequence, path)")
    p.add_argument("dest", help="the new dataset folder")
    p.add_argument("--to", choices=["brats", "nnseq2seq"], required=True)
    p.add_argument("--link", action="store_true", help="symlink files instead of copying them")
    p.add_argument("--base-dir", default=None, help="CSV only: what relative paths are relative to (default: the CSV's folder)")
    args = p.parse_args(argv)
    try:
        if str(args.src).lower().endswith(".csv"):
            written = dataset_from_csv(args.src, args.dest, to=args.to, base_dir=args.base_dir, link=args.link)
        else:
            written = convert_dataset(args.src, args.dest, to=args.to, link=args.link)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{len(written)} case(s) written to {args.dest} ({args.to} layout)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
