#!/usr/bin/env python
"""The Seq2Seq bundle on the phantom's DCE series: train a configuration, evaluate it on unseen
subjects and print the tables of ``bundles/seq2seq/docs/README.md``. Tasks (``--task``):

- ``post`` (``configs/dce.json``): pre-contrast frame + T2 -> the post-contrast frames (4D);
- ``washin`` (``dce.json`` + ``dce_washin.json``): the whole series -> its wash-in map (4D -> 3D);
- ``maps`` (``dce_maps.json``): the 3D Seq2Seq over T1, T1Gd, T2, FLAIR and the series' wash-in and
  wash-out maps, every pair, and the contribution ranking across them.

    python tools/benchmark_dce.py --out dce_bench [--task post --train 8 --test 3 --frames 6 --epochs 60] [--report dce.md]

Every step is the bundle run through ``python -m monai.bundle run`` (train.json + quick.json + the
task's configs, then inference.json and train.json + evaluate.json with the same stack).
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


def tables(summary: dict, frames_s: list, baseline: str = "copy baseline") -> str:
    lines = [f"| frame | time (s) | PSNR, synthesis | PSNR, {baseline} | noise-floor limit |", "|---|---|---|---|---|"]
    for f, row in summary["per_frame"].items():
        t = frames_s[int(f)] if int(f) < len(frames_s) else "-"
        lines.append(f"| {f} | {t} | {row['psnr']:.2f} | {row['psnr_copy']:.2f} | {row['psnr_limit']:.2f} |")
    lines.append(f"| mean | | {summary['psnr']:.2f} | {summary['psnr_copy']:.2f} | {summary['psnr_limit']:.2f} |")
    r = {k: "-" if summary[k] != summary[k] else f"{summary[k]:.3f}" for k in ("r", "r_copy", "r_limit")}  # NaN: constant
    lines.append(f"| r inside the brain | | {r['r']} | {r['r_copy']} | {r['r_limit']} |")
    lines += ["", f"| region: mean over the frames (training scale) | truth | synthesis | {baseline} | noisy truth |",
              "|---|---|---|---|---|"]
    for name, m in summary["region_means"].items():
        lines.append(f"| {name} | {m['truth']:.3f} | {m['synthesis']:.3f} | {m['copy']:.3f} | {m['limit']:.3f} |")
    if summary["curves"]:
        lines += ["", "| region / method | curve error (% of baseline) | peak-enhancement error (points) | time-to-peak error (s) |",
                  "|---|---|---|---|"]
    for key, v in summary["curves"].items():
        lines.append(f"| {key} | {v['curve_error_pct']:.1f} | {v['peak_enhancement_error_pct']:+.1f} | "
                     f"{v['time_to_peak_error_s']:.0f} |")
    lines += ["", "| input | PSNR lost without it (dB) |", "|---|---|"]
    for name in summary["contribution_ranking"]:
        lines.append(f"| {name} | {summary['contribution_db'][name]:.2f} |")
    return "\n".join(lines)


TASKS = {"post": ["dce.json"], "washin": ["dce.json", "dce_washin.json"], "maps": ["dce_maps.json"]}


def maps_tables(summary: dict) -> str:
    """Per pair r and PSNR inside the brain against the noiseless target beside the remap baseline, and the ranking."""
    lines = ["| source -> target | r | r, remap baseline | PSNR vs noiseless, brain | PSNR, remap baseline | copy-source PSNR (whole volume) | PSNR (whole volume) |",
             "|---|---|---|---|---|---|---|"]
    for pair, m in summary["pairs"].items():
        lines.append(f"| {pair} | {m['r_brain']:.3f} | {m['affine_r_brain']:.3f} | {m['psnr_clean_brain']:.2f} | "
                     f"{m['affine_psnr_clean_brain']:.2f} | {m['copy_psnr']:.2f} | {m['psnr']:.2f} |")
    c = summary["contribution"]
    lines += ["", "| sequence | C_t (generates the others) | C_d (hard to generate) |", "|---|---|---|"]
    for name in c["rank_d"]:
        lines.append(f"| {name} | {c['C_t'][name]:+.2f} | {c['C_d'][name]:+.2f} |")
    lines += ["", f"Ranking by C_d (hardest to generate first): {' > '.join(c['rank_d'])}; by C_t: {' > '.join(c['rank_t'])}."]
    for region, rc in (summary.get("contribution_regions") or {}).items():
        lines.append(f"- {region}: C_d {' > '.join(rc['rank_d'])}")
    return "\n".join(lines)


def picture(test_dir: Path, synth_dir: Path, task: str, dest: Path) -> Path:
    """The first test subject at the axial slice with the most enhancing tumour: for ``washin`` the
    map from the noisy frames (the formula), the synthesis, the noiseless truth and their
    difference; for ``post`` the true and synthesized first, middle and last post-contrast frames."""
    import nibabel as nib
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    case = sorted(p.name for p in test_dir.iterdir() if p.is_dir())[0]
    load = lambda path: np.asarray(nib.load(str(path)).get_fdata(), dtype=np.float32)  # noqa: E731
    seg = load(test_dir / case / f"{case}_seg.nii.gz")
    z = int(np.argmax((seg == 4).sum(axis=(0, 1))))
    if task == "washin":
        noisy, truth = (load(test_dir / case / f"{case}_dce_washin{s}.nii.gz")[..., z] for s in ("", "_noiseless"))
        syn = load(synth_dir / case / f"{case}_dce_washin_syn.nii.gz")[..., z]
        panels = [("wash-in from the noisy frames", noisy), ("synthesis", syn), ("truth (noiseless)", truth),
                  ("synthesis - truth", syn - truth)]
        rows = [panels]
        vmax = float(np.percentile(np.abs(truth), 99.5))
    else:
        truth = load(test_dir / case / f"{case}_dce_noiseless.nii.gz")[..., z, 1:]
        syn = load(synth_dir / case / f"{case}_dce_post_syn.nii.gz")[..., z, :]
        idx = sorted({0, truth.shape[-1] // 2, truth.shape[-1] - 1})
        rows = [[(f"truth, frame {i + 1}", truth[..., i]) for i in idx], [(f"synthesis, frame {i + 1}", syn[..., i]) for i in idx]]
        vmax = float(np.percentile(truth, 99.5))
    fig = Figure(figsize=(3 * len(rows[0]), 3.2 * len(rows)))
    FigureCanvasAgg(fig)
    for r, row in enumerate(rows):
        for c, (title, img) in enumerate(row):
            ax = fig.add_subplot(len(rows), len(row), r * len(row) + c + 1)
            signed = task == "washin"
            ax.imshow(np.rot90(img), cmap="RdBu_r" if signed else "gray", vmin=-vmax if signed else 0, vmax=vmax)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    fig.suptitle(f"{case}, axial slice {z} ({task})", fontsize=10)
    fig.tight_layout()
    dest.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(dest), dpi=90)
    return dest


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--task", choices=sorted(TASKS), default="post")
    ap.add_argument("--train", type=int, default=8, help="training subjects")
    ap.add_argument("--test", type=int, default=3, help="unseen test subjects")
    ap.add_argument("--frames", type=int, default=6, help="post-contrast frames")
    ap.add_argument("--interval", type=float, default=30.0, help="seconds between frames")
    ap.add_argument("--spacing", type=float, default=4.0)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--report", type=Path, default=None)
    ap.add_argument("--picture", type=Path, default=None, help="PNG of the first test subject (post, washin)")
    ap.add_argument("--set", nargs="*", default=[], metavar="ID=VALUE",
                    help="more config ids for every run, e.g. lstm_layers=1 samples_per_case=2")
    args = ap.parse_args(argv)

    sys.path.insert(0, str(REPO))
    from mrsynth.data.phantom import write_dataset

    out = args.out.resolve()
    dce = {"frames": args.frames, "interval_s": args.interval}
    for name, n, seed in (("train", args.train, 0), ("test", args.test, 1000)):
        if not (out / name / "phantom.json").is_file():
            write_dataset(out / name, subjects=n, spacing=args.spacing, seed=seed,
                          sequences=("t1", "t1ce", "t2", "flair") if args.task == "maps" else ("t1", "t2"), dce=dce,
                          progress=False)
    extra = [a for kv in args.set for a in (f"--{kv.split('=', 1)[0]}", kv.split("=", 1)[1])]
    frames_out = {"post": args.frames, "washin": 1}.get(args.task)
    common = [*extra, *(["--out_frames", str(frames_out)] if frames_out else []), "--bundle_root", str(out / "bundle"),
              "--mlflow", "false"]
    (out / "bundle").mkdir(parents=True, exist_ok=True)
    task = TASKS[args.task]
    t_train = bundle_run(["train.json", "quick.json", *task], "--dataset_dir", str(out / "train"), "--max_epochs",
                         str(args.epochs), "--val_interval", "10", "--output_dir", str(out / "train_out"), *common)
    t_eval = bundle_run(["train.json", "evaluate.json", "quick.json", *task], "--dataset_dir", str(out / "test"),
                        "--output_dir", str(out / "eval"), "--ckpt_path", str(out / "bundle" / "models" / "model.pt"),
                        *common)
    if args.task != "maps":
        bundle_run(["inference.json", "quick.json", *task], "--dataset_dir", str(out / "test"), "--output_dir",
                   str(out / "synth"), "--ckpt_path", str(out / "bundle" / "models" / "model.pt"), *common[:-2])
    summary = json.loads((out / "eval" / "summary.json").read_text())
    frames_s = [args.interval * (i + 1) for i in range(args.frames)] if args.task == "post" else ["map"]
    text = (f"Task {args.task} ({' + '.join(['train.json', 'quick.json', *task])}): {args.train} training and "
            f"{args.test} unseen test subjects at {args.spacing:g} mm, a series of 1 + {args.frames} frames every "
            f"{args.interval:g} s; {args.epochs} epochs ({t_train / 60:.1f} min), evaluation {t_eval / 60:.1f} min; "
            f"settings: {' '.join(args.set) or 'quick.json'}.\n\n"
            + (maps_tables(summary) if args.task == "maps" else
               tables(summary, frames_s, "zero-map baseline" if args.task == "washin" else "copy baseline")))
    if args.picture and args.task != "maps":
        picture(out / "test", out / "synth", args.task, args.picture)
    print(text)
    if args.report:
        args.report.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
