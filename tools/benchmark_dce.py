#!/usr/bin/env python
"""4D synthesis on the phantom's DCE series: train the Seq2Seq bundle's 4D configuration
(``configs/dce.json``, pre-contrast frame + T2 -> the post-contrast frames), evaluate it on unseen
subjects and print the tables of ``bundles/seq2seq/docs/README.md``.

    python tools/benchmark_dce.py --out dce_bench [--train 8 --test 3 --frames 6 --epochs 60] [--report dce.md]

Every step is the bundle run through ``python -m monai.bundle run`` (train.json + quick.json +
dce.json, then inference.json and train.json + evaluate.json with the same stack).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "seq2seq"


def bundle_run(configs: list[str], *args: str) -> float:
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file",
           "[" + ",".join(f"'{BUNDLE / 'configs' / c}'" for c in configs) + "]", *args]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    start = time.time()
    subprocess.run(cmd, check=True, env=env, cwd=BUNDLE)
    return time.time() - start


def tables(summary: dict, frames_s: list[float]) -> str:
    lines = ["| frame | time (s) | PSNR, synthesis | PSNR, copy baseline | noise-floor limit |", "|---|---|---|---|---|"]
    for f, row in summary["per_frame"].items():
        t = frames_s[int(f)] if int(f) < len(frames_s) else "-"
        lines.append(f"| {f} | {t} | {row['psnr']:.2f} | {row['psnr_copy']:.2f} | {row['psnr_limit']:.2f} |")
    lines.append(f"| mean | | {summary['psnr']:.2f} | {summary['psnr_copy']:.2f} | {summary['psnr_limit']:.2f} |")
    lines += ["", "| region / method | curve error (% of baseline) | peak-enhancement error (points) | time-to-peak error (s) |",
              "|---|---|---|---|"]
    for key, v in summary["curves"].items():
        lines.append(f"| {key} | {v['curve_error_pct']:.1f} | {v['peak_enhancement_error_pct']:+.1f} | "
                     f"{v['time_to_peak_error_s']:.0f} |")
    lines += ["", "| input | PSNR lost without it (dB) |", "|---|---|"]
    for name in summary["contribution_ranking"]:
        lines.append(f"| {name} | {summary['contribution_db'][name]:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--train", type=int, default=8, help="training subjects")
    ap.add_argument("--test", type=int, default=3, help="unseen test subjects")
    ap.add_argument("--frames", type=int, default=6, help="post-contrast frames")
    ap.add_argument("--interval", type=float, default=30.0, help="seconds between frames")
    ap.add_argument("--spacing", type=float, default=4.0)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--report", type=Path, default=None)
    ap.add_argument("--set", nargs="*", default=[], metavar="ID=VALUE",
                    help="more config ids for every run, e.g. lstm_layers=1 samples_per_case=2")
    args = ap.parse_args(argv)

    sys.path.insert(0, str(REPO))
    from mrsynth.data.phantom import write_dataset

    out = args.out.resolve()
    dce = {"frames": args.frames, "interval_s": args.interval}
    for name, n, seed in (("train", args.train, 0), ("test", args.test, 1000)):
        if not (out / name / "phantom.json").is_file():
            write_dataset(out / name, subjects=n, spacing=args.spacing, seed=seed, sequences=("t1", "t2"), dce=dce,
                          progress=False)
    extra = [a for kv in args.set for a in (f"--{kv.split('=', 1)[0]}", kv.split("=", 1)[1])]
    common = [*extra, "--out_frames", str(args.frames), "--bundle_root", str(out / "bundle"), "--mlflow", "false"]
    (out / "bundle").mkdir(parents=True, exist_ok=True)
    t_train = bundle_run(["train.json", "quick.json", "dce.json"], "--dataset_dir", str(out / "train"), "--max_epochs",
                         str(args.epochs), "--val_interval", "10", "--output_dir", str(out / "train_out"), *common)
    t_eval = bundle_run(["train.json", "evaluate.json", "quick.json", "dce.json"], "--dataset_dir", str(out / "test"),
                        "--output_dir", str(out / "eval"), "--ckpt_path", str(out / "bundle" / "models" / "model.pt"),
                        *common)
    bundle_run(["inference.json", "quick.json", "dce.json"], "--dataset_dir", str(out / "test"), "--output_dir",
               str(out / "synth"), "--ckpt_path", str(out / "bundle" / "models" / "model.pt"), *common[:-2])
    summary = json.loads((out / "eval" / "summary.json").read_text())
    frames_s = [args.interval * (i + 1) for i in range(args.frames)]
    text = (f"{args.train} training and {args.test} unseen test subjects at {args.spacing:g} mm, {args.frames} "
            f"post-contrast frames every {args.interval:g} s; {args.epochs} epochs ({t_train / 60:.1f} min), "
            f"evaluation {t_eval / 60:.1f} min; settings: {' '.join(args.set) or 'quick.json'}.\n\n"
            + tables(summary, frames_s))
    print(text)
    if args.report:
        args.report.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
