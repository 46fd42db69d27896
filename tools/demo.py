#!/usr/bin/env python
"""The README's demo: phantom data -> train Seq2Seq (quick config) -> synthesize -> evaluate.

Every step is the command a user would type; each is printed before it runs, so the demo
doubles as a walk-through. Outputs go to ``demo_out/`` (override with ``--out``).

    python tools/demo.py [--out demo_out] [--epochs N] [--subjects N]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


TIMINGS: dict[str, float] = {}


def sh(name: str, cmd: list[str], cwd: Path = REPO) -> None:
    """Print and run one step; its wall time goes to ``TIMINGS[name]``."""
    print(f"\n$ (cd {os.path.relpath(cwd, Path.cwd())} && {' '.join(shlex.quote(c) for c in cmd)})", flush=True)
    t = time.time()
    env = dict(os.environ, PYTHONWARNINGS="ignore", GIT_PYTHON_REFRESH="quiet")
    proc = subprocess.run(cmd, cwd=cwd, env=env)
    if proc.returncode != 0:
        sys.exit(f"demo step failed ({proc.returncode}): {' '.join(cmd)}")
    TIMINGS[name] = time.time() - t
    print(f"  [{TIMINGS[name]:.0f} s]", flush=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    ap.add_argument("--subjects", type=int, default=16, help="training subjects (default 16)")
    ap.add_argument("--epochs", type=int, default=None, help="training epochs (default: quick.json's)")
    ap.add_argument("--target", default="flair", help="sequence to synthesize for the test cases")
    ap.add_argument("--seed", type=int, default=0, help="phantom seed of the training set (test set: seed + 1)")
    args = ap.parse_args(argv)

    out = Path(args.out).resolve()
    py = sys.executable
    bundle = REPO / "bundles" / "seq2seq"
    root = out / "seq2seq"
    t0 = time.time()

    print("== 1. phantom data: multi-sequence brains with a known answer (noiseless images beside the noisy ones)")
    sh("phantom_train", [py, "tools/phantom.py", "--out", str(out / "train"), "--subjects", str(args.subjects), "--spacing", "2",
        "--seed", str(args.seed), "--layout", "brats", "--drop-max", "1"])
    sh("phantom_test", [py, "tools/phantom.py", "--out", str(out / "test"), "--subjects", "4", "--spacing", "2",
        "--seed", str(args.seed + 1), "--layout", "brats"])

    print("\n== 2. train Seq2Seq (any sequence -> any sequence) with the CPU-size quick config; MLflow tracks it")
    train = [py, "-m", "monai.bundle", "run", "--config_file", "['configs/train.json','configs/quick.json']",
             "--dataset_dir", str(out / "train"), "--bundle_root", str(root), "--seed", str(args.seed)]
    if args.epochs:
        train += ["--max_epochs", str(args.epochs)]
    sh("train", train, cwd=bundle)

    print(f"\n== 3. synthesize {args.target} for every test case from whatever sequences it has")
    sh("inference", [py, "-m", "monai.bundle", "run", "--config_file", "['configs/inference.json','configs/quick.json']",
        "--dataset_dir", str(out / "test"), "--bundle_root", str(root), "--output_dir", str(out / "synthesized"),
        "--target", args.target], cwd=bundle)

    print("\n== 4. evaluate every (source, target) pair beside the noise-floor limit; rank the sequences")
    sh("evaluate", [py, "-m", "monai.bundle", "run", "--config_file",
        "['configs/train.json','configs/quick.json','configs/evaluate.json']",
        "--dataset_dir", str(out / "test"), "--bundle_root", str(root), "--output_dir", str(out / "evaluation")],
       cwd=bundle)

    sys.path.insert(0, str(REPO))
    from mrsynth.workflows.evaluation import format_contrast_table, format_table

    (out / "timings.json").write_text(json.dumps(TIMINGS, indent=2))
    summary = json.loads((out / "evaluation" / "summary.json").read_text())
    print("\n== Results on 4 unseen phantom subjects (PSNR/SSIM on [-1, 1]; 'copy' = the source itself as the "
          "prediction; 'limit' = the noise floor)")
    print(format_table(summary))
    print("\n== Does each synthesis show the target's contrast? Inside the brain, against the noiseless target, beside "
          "the source denoised and remapped by the best a*x+b (fitted on the target) and a tissue oracle:")
    print(format_contrast_table(summary["pairs"]))
    grids = sorted((out / "evaluation" / "grids").glob("*.png"))
    print(f"\nsyntheses:      {out / 'synthesized'}")
    print(f"metrics:        {out / 'evaluation' / 'metrics.csv'}, summary.json, contribution.png, maps/")
    if grids:
        print(f"pictures:       {grids[0]}  (source | synthesis | truth | difference, every pair; open it to look)")
    print(f"MLflow:         mlflow ui --backend-store-uri sqlite:///{root / 'eval' / 'mlruns.db'}")
    print(f"total time:     {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
