#!/usr/bin/env python
"""3D Seq2Seq (configs/3d.json) against the 2.5D quick model, on the Seq2Seq benchmark's runs.

For every seed of ``tools/benchmark_seq2seq.py --out DIR`` it trains the 3D network (quick.json's
widths, ``--patch``-cubed patches, training seed S) on that run's training set, evaluates it with
MONAI's sliding window on the first ``--cases`` unseen test subjects, and sets the result beside
the 2.5D model of the same run on the same subjects: per cross-contrast pair, the mean of Pearson r
and PSNR against the noiseless target inside the brain, the denoise-and-remap baseline, and the
whole-volume PSNR against the noisy target; mean and spread over the runs, with the times.

    python tools/benchmark_seq2seq.py --out bench_out
    python tools/benchmark_3d.py --seq2seq-out bench_out [--seeds 0 1 2] [--epochs 8] [--patch 48] [--cases 1]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

import numpy as np  # noqa: E402
from benchmark_seq2seq import fmt  # noqa: E402
from demo import TIMINGS, sh  # noqa: E402

KEYS = [("r_brain", "r, brain"), ("affine_r_brain", "r, remap baseline"), ("psnr_clean_brain", "PSNR noiseless, brain"),
        ("psnr", "PSNR whole volume (noisy target)")]


def case_means(metrics_csv: Path, cases: list[str]) -> dict[str, float]:
    """Mean over the given cases' (source, target) rows of each key."""
    with open(metrics_csv) as f:
        rows = [r for r in csv.DictReader(f) if r["case"] in cases and r["source"] != r["target"]]
    return {k: float(np.mean([float(r[k]) for r in rows if r.get(k) not in (None, "")])) for k, _ in KEYS} | \
        {"pairs": len(rows)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq2seq-out", required=True, help="the --out folder of tools/benchmark_seq2seq.py")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--patch", type=int, default=48, help="training and sliding-window patch edge (multiple of 2)")
    ap.add_argument("--cases", type=int, default=1, help="test subjects to evaluate (the first ones)")
    ap.add_argument("--skip-run", action="store_true")
    ap.add_argument("--report")
    args = ap.parse_args(argv)
    bundle, py = REPO / "bundles" / "seq2seq", sys.executable
    patch = f"[{args.patch},{args.patch},{args.patch}]"
    res: dict[str, dict[int, dict]] = {"2.5D": {}, "3D": {}}
    times: dict[int, dict] = {}
    for seed in args.seeds:
        base = Path(args.seq2seq_out).resolve() / f"seed{seed}"
        root, ev = base / "seq2seq_3d", base / "evaluation_3d"
        cases = sorted(p.name for p in (base / "test").iterdir() if p.is_dir())[: args.cases]
        if not args.skip_run:
            TIMINGS.clear()
            sh("train_3d", [py, "-m", "monai.bundle", "run", "--config_file",
                            "['configs/train.json','configs/quick.json','configs/3d.json']",
                            "--dataset_dir", str(base / "train"), "--bundle_root", str(root), "--seed", str(seed),
                            "--max_epochs", str(args.epochs), "--val_interval", "1000000", "--patch_size", patch],
               cwd=bundle)
            ckpt = sorted((root / "models").glob("checkpoint*.pt"))[-1]
            sh("evaluate_3d", [py, "-m", "monai.bundle", "run", "--config_file",
                               "['configs/train.json','configs/quick.json','configs/evaluate.json','configs/3d.json']",
                               "--dataset_dir", str(base / "test"), "--bundle_root", str(root), "--output_dir", str(ev),
                               "--ckpt_path", str(ckpt), "--patch_size", patch,
                               "--eval_cases", f"$[c for c in @cases if c['case'] in {cases}]"], cwd=bundle)
            (base / "timings_3d.json").write_text(json.dumps(TIMINGS, indent=2))
        res["3D"][seed] = case_means(ev / "metrics.csv", cases)
        res["2.5D"][seed] = case_means(base / "evaluation" / "metrics.csv", cases)
        t3, t2 = base / "timings_3d.json", base / "timings.json"
        times[seed] = {**(json.loads(t2.read_text()) if t2.exists() else {}),
                       **(json.loads(t3.read_text()) if t3.exists() else {})}
    n = len(args.seeds)
    lines = [f"Seq2Seq 2.5D (quick.json) and 3D (quick.json + 3d.json, {args.patch}^3 patches, {args.epochs} epochs, "
             f"MONAI's sliding window with Gaussian blending) on the same phantom runs (seeds "
             f"{', '.join(map(str, args.seeds))}), scored on the first {args.cases} unseen test subject(s), every "
             f"cross-contrast pair; mean ± sd over the {n} runs of the per-run mean over pairs.", "",
             "| model | training (s) | " + " | ".join(label for _, label in KEYS) + " |",
             "|---|---" + "|---" * len(KEYS) + "|"]
    for model, key in (("2.5D", "train"), ("3D", "train_3d")):
        cells = [fmt([res[model][s][k] for s in args.seeds], 3 if k.endswith("r_brain") else 2) for k, _ in KEYS]
        lines.append(f"| {model} | {fmt([times[s].get(key) for s in args.seeds], 0)} | " + " | ".join(cells) + " |")
    ev_t = fmt([times[s].get("evaluate_3d") for s in args.seeds], 0)
    lines += ["", f"3D evaluation of {args.cases} subject(s) ({res['3D'][args.seeds[0]]['pairs']} pairs): {ev_t} s."]
    md = "\n".join(lines)
    print(md)
    if args.report:
        Path(args.report).write_text(md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
