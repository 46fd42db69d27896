#!/usr/bin/env python
"""Write a phantom dataset: simulated multi-sequence brain MRI with tumours and a known answer.

Example (from the repository root, with or without the package installed)::

    python tools/phantom.py --out data/phantom --subjects 20 --spacing 2 --seed 0 --layout brats

Images under other protocols (brats layout; TUMSyn-style training data), e.g. 4 random
protocols per case without PD-weighted ones, plus two named evaluation protocols::

    python tools/phantom.py --out data/phantom --protocols 4 --exclude-modalities PDw --presets flair t1_se

See :mod:`mrsynth.data.phantom` for the physics and the files written.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

try:
    import mrsynth  # noqa: F401
except ImportError:  # running from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mrsynth.data.phantom import (  # noqa: E402
    LAYOUTS,
    PROTOCOL_KINDS,
    PROTOCOL_MODALITIES,
    PROTOCOL_PRESETS,
    write_dataset,
)
from mrsynth.sequences import BRATS_SEQUENCES  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--subjects", type=int, default=20, help="number of cases")
    p.add_argument("--spacing", type=float, default=2.0, help="isotropic voxel size, mm")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (different seeds give disjoint subjects)")
    p.add_argument("--layout", choices=LAYOUTS, default="brats", help="folder layout")
    p.add_argument("--snr", type=float, default=30.0, help="mean white-matter signal / noise sigma")
    p.add_argument("--drop-max", type=int, default=0, help="drop 0..N random sequences per case (never all)")
    p.add_argument("--pd", action="store_true", help="add the proton-density sequence")
    p.add_argument("--slice-thickness", type=float, default=None, help="average axial slices into slabs of this thickness, mm")
    p.add_argument("--protocols", type=int, default=0, help="random imaging protocols per case (brats layout), named p00, p01, ...")
    p.add_argument("--protocol-kinds", nargs="+", choices=PROTOCOL_KINDS, default=list(PROTOCOL_KINDS), help="kinds of the random protocols")
    p.add_argument(
        "--exclude-modalities", nargs="+", choices=PROTOCOL_MODALITIES, default=[], help="modalities the random protocols never have (held out)"
    )
    p.add_argument("--presets", nargs="+", choices=sorted(PROTOCOL_PRESETS), default=[], help="named protocols imaged in every case (brats layout)")
    p.add_argument("--dce", type=int, default=0, metavar="FRAMES",
                   help="also a DCE series with this many post-contrast frames (brats layout; 4D <case>_dce.nii.gz, "
                        "wash-in and wash-out maps)")
    p.add_argument("--dce-interval", type=float, default=30.0, help="seconds between DCE frames")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--workers", type=int, default=0, help="write the cases in this many processes (same files)")
    args = p.parse_args(argv)
    if args.subjects < 1:
        p.error("--subjects must be at least 1")
    if args.drop_max < 0:
        p.error("--drop-max must be non-negative")
    if args.protocols < 0:
        p.error("--protocols must be non-negative")
    if args.layout != "brats" and (args.protocols or args.presets or args.dce):
        p.error("protocols and DCE series are written in the brats layout only (--protocols, --presets, --dce)")
    if args.dce < 0:
        p.error("--dce must be non-negative")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    sequences = BRATS_SEQUENCES + (("pd",) if args.pd else ())
    start = time.perf_counter()
    cases = write_dataset(
        args.out,
        subjects=args.subjects,
        spacing=args.spacing,
        seed=args.seed,
        layout=args.layout,
        snr=args.snr,
        sequences=sequences,
        drop_max=args.drop_max,
        slice_thickness=args.slice_thickness,
        progress=not args.quiet,
        protocols=args.protocols,
        protocol_kinds=tuple(args.protocol_kinds),
        exclude_modalities=tuple(args.exclude_modalities),
        presets=args.presets or None,
        dce={"frames": args.dce, "interval_s": args.dce_interval} if args.dce else None,
        workers=args.workers,
    )
    elapsed = time.perf_counter() - start
    extra = ""
    if args.protocols or args.presets:
        extra = f" + {args.protocols} random protocol(s)" + (f", presets {', '.join(args.presets)}" if args.presets else "")
    if args.dce:
        extra += f" + DCE ({args.dce} post-contrast frames every {args.dce_interval:g} s)"
    print(f"wrote {len(cases)} case(s) ({args.layout} layout, {', '.join(sequences)}{extra}) to {args.out.resolve()} in {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
