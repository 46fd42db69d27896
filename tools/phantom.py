#!/usr/bin/env python
"""Write a phantom dataset: multi-sequence brain MRI with a known answer.

    python tools/phantom.py --out DIR --subjects N --spacing MM --seed S --layout {brats,nnseq2seq}
        [--snr 30] [--drop-max K] [--pd] [--slice-thickness MM]

Anatomy from nilearn's MNI152 templates, warped per subject; tumours; T1w, T1Gd, T2w, FLAIR
(and PD) from MR signal equations; bias field, Rician noise at ``--snr``; the noiseless image
beside every noisy one, and a JSON sidecar with the acquisition fields (TUMSyn's prompt).
See :mod:`mrsynth.data.phantom`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

try:
    import mrsynth  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mrsynth.data.phantom import write_dataset  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--subjects", type=int, default=20, help="number of subjects (default 20)")
    ap.add_argument("--spacing", type=float, default=2.0, help="isotropic voxel size in mm (default 2)")
    ap.add_argument("--seed", type=int, default=0, help="random seed: same seed, same data (default 0)")
    ap.add_argument("--layout", choices=("brats", "nnseq2seq"), default="brats")
    ap.add_argument("--snr", type=float, default=30.0, help="white-matter signal / noise sigma (default 30)")
    ap.add_argument("--drop-max", type=int, default=0,
                    help="drop up to this many sequences per case, never all (the papers' incomplete cases)")
    ap.add_argument("--pd", action="store_true", help="also write a proton-density sequence")
    ap.add_argument("--slice-thickness", type=float, default=None, help="simulate thick axial slices (mm)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    if args.subjects < 1:
        ap.error("--subjects must be at least 1")
    seqs = ("t1", "t1ce", "t2", "flair") + (("pd",) if args.pd else ())
    t = time.time()
    cases = write_dataset(args.out, subjects=args.subjects, spacing=args.spacing, seed=args.seed, layout=args.layout,
                          snr=args.snr, sequences=seqs, drop_max=args.drop_max,
                          slice_thickness=args.slice_thickness, progress=not args.quiet)
    print(f"wrote {len(cases)} {args.layout}-layout case(s) to {Path(args.out).resolve()} in {time.time() - t:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
