#!/usr/bin/env python
"""Quality and robustness benchmark of the VQ-Seq2Seq bundle on the phantom, layered on a Seq2Seq benchmark.

For every seed of ``tools/benchmark_seq2seq.py --out DIR`` it uses that run's data and trained
Seq2Seq, trains VQ-Seq2Seq (quick.json, training seed S) on the same training set, and evaluates it
on the same unseen test subjects with ``configs/evaluate.json`` (that run's Seq2Seq beside it in
the translation study). It reports:

- the pairwise table: per (source, target) pair, r and PSNR against the noiseless target inside
  the brain, VQ-Seq2Seq beside Seq2Seq and the denoise-and-remap baseline, and the papers' PSNR
  against the noisy target beside the noise-floor limit;
- the multi-step table (t1 > t1ce > t2 > flair, each step fed the previous synthesis) beside the
  direct translation;
- the robustness table: PSNR against the noiseless target inside the brain as the source is
  corrupted more strongly (noise, bias field, ghosting, k-space spikes, Gibbs ringing), both models,
  and the drop from the clean input;
- how close one case's sequences land in each model's latent.

    python tools/benchmark_seq2seq.py --out bench_out --seeds 0
    python tools/benchmark_vq.py --seq2seq-out bench_out --seeds 0 [--epochs N] [--study-cases 1] [--report vq.md]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from benchmark_seq2seq import fmt as fmt_runs  # noqa: E402
from benchmark_seq2seq import mean_sd  # noqa: E402
from demo import TIMINGS, sh  # noqa: E402

from mrsynth.workflows.study import format_latent, format_multistep, format_robustness  # noqa: E402

def fmt(values, digits: int = 2) -> str:
    """Mean ± sd over the runs; the value alone when there is one run."""
    v = [x for x in values if x is not None]
    return f"{v[0]:.{digits}f}" if len(v) == 1 else fmt_runs(values, digits)


#: the paper's BraTS 2021 figures (PSNR dB / SSIM), for orientation only: other data, other size
PAPER = {"t1->t2": (27.1, 0.890), "t1->flair": (25.7, 0.847)}


def pairwise(vq_runs: dict, s2s_runs: dict) -> list[str]:
    n = len(vq_runs)
    first = next(iter(vq_runs.values()))
    lines = ["| source -> target | r, VQ-Seq2Seq | r, Seq2Seq | r, remap baseline | PSNR, VQ-Seq2Seq | PSNR, Seq2Seq | "
             "PSNR, remap baseline | PSNR vs noisy, VQ | PSNR vs noisy, Seq2Seq | noise-floor limit | paper (BraTS) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for pair in first["pairs"]:
        v = lambda runs, k: [r["pairs"].get(pair, {}).get(k) for r in runs.values()]  # noqa: E731
        paper = PAPER.get(pair)
        lines.append(f"| {pair} | {fmt(v(vq_runs, 'r_brain'), 3)} | {fmt(v(s2s_runs, 'r_brain'), 3)} | "
                     f"{fmt(v(vq_runs, 'affine_r_brain'), 3)} | {fmt(v(vq_runs, 'psnr_clean_brain'))} | "
                     f"{fmt(v(s2s_runs, 'psnr_clean_brain'))} | {fmt(v(vq_runs, 'affine_psnr_clean_brain'))} | "
                     f"{fmt(v(vq_runs, 'psnr'))} | {fmt(v(s2s_runs, 'psnr'))} | {fmt(v(vq_runs, 'limit_psnr'))} | "
                     f"{f'{paper[0]} dB / {paper[1]}' if paper else ''} |")
    o = lambda runs, k: [r["overall"].get(k) for r in runs.values()]  # noqa: E731
    lines.append(f"| mean | {fmt(o(vq_runs, 'r_brain'), 3)} | {fmt(o(s2s_runs, 'r_brain'), 3)} | "
                 f"{fmt(o(vq_runs, 'affine_r_brain'), 3)} | {fmt(o(vq_runs, 'psnr_clean_brain'))} | "
                 f"{fmt(o(s2s_runs, 'psnr_clean_brain'))} | {fmt(o(vq_runs, 'affine_psnr_clean_brain'))} | "
                 f"{fmt(o(vq_runs, 'psnr'))} | {fmt(o(s2s_runs, 'psnr'))} | {fmt(o(vq_runs, 'limit_psnr'))} | |")
    lines.append(f"\n({n} run{'s' if n > 1 else ''}; r and PSNR inside the brain against the noiseless target; "
                 "'PSNR vs noisy' is the papers' whole-volume PSNR against the noisy target.)")
    return lines


def markdown(vq_runs: dict, s2s_runs: dict, studies: dict, timings: dict, args) -> str:
    t = [x.get("vq_train") for x in timings.values()]
    lines = [f"VQ-Seq2Seq, quick.json{f', {args.epochs} epochs' if args.epochs else ''}"
             f"{f' with {args.overrides}' if args.overrides else ''}, on the Seq2Seq benchmark's "
             f"run{'s' if len(vq_runs) > 1 else ''} (seed{'s' if len(vq_runs) > 1 else ''} "
             f"{', '.join(map(str, vq_runs))}: phantom 2 mm, the same 16 training subjects, training seed S; 4 unseen "
             f"test subjects), beside that run's Seq2Seq (quick.json, 200 epochs)."
             + (f" Training took {fmt(t, 0)} s on 2 CPU cores." if any(x is not None for x in t) else "")
             + " Mean ± sd over the runs where there are several.", "",
             "**Pairwise** (every available pair of the 4 test subjects):", ""]
    lines += pairwise(vq_runs, s2s_runs)
    study = next(iter(studies.values()))
    lines += ["", f"**Multi-step translation** (the study's {study.get('cases', '?')} case(s); each step translates the "
              "previous step's synthesis):", "", format_multistep(study)]
    lines += ["", "**Robustness**: PSNR (dB) against the noiseless target inside the brain as the source is corrupted "
              "(strength 0 = the acquired image):", "", format_robustness(study)]
    lines += ["", "**The common latent**: relative distance between the latents of one case's sequences inside the "
              "brain (0 = identical, about 2 = unrelated):", "", format_latent(study)]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq2seq-out", required=True, help="the --out folder of tools/benchmark_seq2seq.py")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--epochs", type=int, default=None, help="training epochs (default: quick.json's max_epochs)")
    ap.add_argument("--study-cases", type=int, default=1, help="test cases in the translation study (default 1)")
    ap.add_argument("--study-pairs", default="[['t1','t2'],['t2','flair'],['flair','t1']]",
                    help="(source, target) pairs of the robustness part, as a Python list (default: 3 pairs)")
    ap.add_argument("--name", default="vq_seq2seq",
                    help="sub-folder of each run for this model (bundle root <name>/, evaluation <name>_evaluation/)")
    ap.add_argument("--overrides", default="",
                    help="bundle overrides for training and evaluation, e.g. \"--network_def#latent_norm None\"")
    ap.add_argument("--skip-train", action="store_true", help="evaluate the VQ-Seq2Seq already trained in the run folder")
    ap.add_argument("--skip-run", action="store_true", help="only analyse existing evaluations")
    ap.add_argument("--report")
    ap.add_argument("--update-metadata", action="store_true",
                    help="write the measured means into bundles/vq_seq2seq/configs/metadata.json eval_metrics")
    args = ap.parse_args(argv)
    bundle, py = REPO / "bundles" / "vq_seq2seq", sys.executable
    vq_runs, s2s_runs, studies, timings = {}, {}, {}, {}
    for seed in args.seeds:
        base = Path(args.seq2seq_out).resolve() / f"seed{seed}"
        root, s2s_ckpt, out = base / args.name, base / "seq2seq" / "models" / "model.pt", base / f"{args.name}_evaluation"
        tfile, extra = base / f"{args.name}_timings.json", shlex.split(args.overrides)
        if not args.skip_run:
            TIMINGS.clear()
            TIMINGS.update(json.loads(tfile.read_text()) if tfile.exists() else {})
            if not args.skip_train:
                sh("vq_train", [py, "-m", "monai.bundle", "run", "--config_file",
                                "['configs/train.json','configs/quick.json']", "--dataset_dir", str(base / "train"),
                                "--bundle_root", str(root), "--seed", str(seed)]
                   + (["--max_epochs", str(args.epochs)] if args.epochs else []) + extra, cwd=bundle)
            sh("vq_evaluate", [py, "-m", "monai.bundle", "run", "--config_file",
                               "['configs/train.json','configs/quick.json','configs/evaluate.json']",
                               "--dataset_dir", str(base / "test"), "--bundle_root", str(root), "--output_dir", str(out),
                               "--seq2seq_ckpt", str(s2s_ckpt), "--study_cases", str(args.study_cases),
                               "--study_pairs", args.study_pairs] + extra, cwd=bundle)
            tfile.write_text(json.dumps(TIMINGS, indent=2))
        vq_runs[seed] = json.loads((out / "summary.json").read_text())
        s2s_runs[seed] = json.loads((base / "evaluation" / "summary.json").read_text())
        studies[seed] = json.loads((out / "study" / "study.json").read_text())
        timings[seed] = json.loads(tfile.read_text()) if tfile.exists() else {}
    md = markdown(vq_runs, s2s_runs, studies, timings, args)
    print(md)
    if args.report:
        Path(args.report).write_text(md + "\n")
    if args.update_metadata:
        meta_path = bundle / "configs" / "metadata.json"
        meta = json.loads(meta_path.read_text())
        o = lambda runs, k: mean_sd([r["overall"].get(k) for r in runs.values()])[0]  # noqa: E731
        metrics = {"phantom_2mm_mean_psnr": o(vq_runs, "psnr"), "phantom_2mm_mean_ssim": o(vq_runs, "ssim"),
                   "phantom_2mm_mean_psnr_noiseless_brain": o(vq_runs, "psnr_clean_brain"),
                   "phantom_2mm_mean_r_brain": o(vq_runs, "r_brain"),
                   "phantom_2mm_remap_baseline_r_brain": o(vq_runs, "affine_r_brain"),
                   "phantom_2mm_noise_floor_psnr": o(vq_runs, "limit_psnr")}
        meta["eval_metrics"] = {k: round(v, 4 if "ssim" in k or "r_brain" in k else 2)
                                for k, v in metrics.items() if not np.isnan(v)}
        meta_path.write_text(json.dumps(meta, indent=4) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
