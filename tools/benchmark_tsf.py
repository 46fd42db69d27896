#!/usr/bin/env python
"""Quality benchmark of the TSF-Seq2Seq bundle on the phantom, layered on a Seq2Seq benchmark.

For every seed of ``tools/benchmark_seq2seq.py --out DIR`` it uses that run's data and trained
Seq2Seq, trains TSF-Seq2Seq (quick.json, training seed S) on the same training set, evaluates
every source subset -> every target on the same unseen test subjects, and reports the mean and
spread over the runs: per target and number of inputs, the correlation and PSNR against the
noiseless target inside the brain beside the denoise-and-remap baseline (fitted on all inputs)
and the tissue oracle, the contrast ratios, the bars cleared; the whole-volume PSNR by number of
inputs beside the best single-source Seq2Seq; whether PSNR rises with every input.

    python tools/benchmark_seq2seq.py --out bench_out
    python tools/benchmark_tsf.py --seq2seq-out bench_out [--seeds 0 1 2] [--epochs 20] [--report tsf.md]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

import numpy as np  # noqa: E402
from benchmark_seq2seq import fmt, mean_sd  # noqa: E402
from demo import TIMINGS, sh  # noqa: E402

sys.path.insert(0, str(REPO))
from mrsynth.metrics import RATIOS, synthesis_checks  # noqa: E402


def run_checks(summary: dict) -> dict:
    """Per target: PSNR rises with every added input; the largest subset beats the best single-source
    Seq2Seq; every number of inputs clears the synthesis bars."""
    checks = {}
    for t, e in summary["targets"].items():
        k = e["by_num_sources"]
        counts = sorted(k, key=int)
        ps = [k[n]["psnr"] for n in counts]
        s2s = e.get("seq2seq_single", {})
        checks[t] = {"rises_with_inputs": all(a < b for a, b in zip(ps, ps[1:])),
                     "most_inputs_beat_best_single": bool(ps) and ps[-1] > s2s.get("best_psnr", float("inf")),
                     "bars": {n: bool((k[n].get("checks") or synthesis_checks(k[n])).get("all")) for n in counts}}
    return checks


def markdown(runs: dict[int, dict], checks: dict[int, dict], timings: dict[int, dict], epochs) -> str:
    n = len(runs)
    first = next(iter(runs.values()))
    counts = sorted({c for e in first["targets"].values() for c in e["by_num_sources"]}, key=int)
    vals = lambda t, c, key: [r["targets"][t]["by_num_sources"].get(c, {}).get(key) for r in runs.values()  # noqa: E731
                              if t in r["targets"]]
    lines = [f"TSF-Seq2Seq, quick.json{f', {epochs} epochs' if epochs else ''}, on the Seq2Seq benchmark's runs "
             f"(seeds {', '.join(map(str, runs))}: the same training set, the frozen encoder of that run's Seq2Seq, "
             f"training seed S; 4 unseen test subjects). Training took {fmt([t.get('tsf_train') for t in timings.values()], 0)} s. "
             "Mean ± sd over the runs, mean over all source subsets of each size.", "",
             "**Does the synthesis show the target's contrast?** Inside the brain, against the noiseless target:", "",
             "| target | inputs | r | r, remap baseline | r, tissue oracle | r, population oracle | PSNR | PSNR, remap baseline "
             "| all bars, runs |",
             "|---|---|---|---|---|---|---|---|---|"]
    for t in first["targets"]:
        for c in counts:
            ok = sum(ch[t]["bars"].get(c, False) for ch in checks.values() if t in ch)
            lines.append(f"| {t} | {c} | {fmt(vals(t, c, 'r_brain'), 3)} | {fmt(vals(t, c, 'affine_r_brain'), 3)} | "
                         f"{fmt(vals(t, c, 'oracle_r_brain'), 3)} | {fmt(vals(t, c, 'population_oracle_r_brain'), 3)} | "
                         f"{fmt(vals(t, c, 'psnr_clean_brain'))} | "
                         f"{fmt(vals(t, c, 'affine_psnr_clean_brain'))} | {ok}/{n} |")
    lines += ["", "**Contrast ratios** (tissue / white matter, synthesis vs truth, mean over runs):", "",
              "| target | inputs | " + " | ".join(f"{c}/WM" for c in RATIOS) + " |", "|---|---|" + "---|" * len(RATIOS)]
    for t in first["targets"]:
        for c in counts:
            cells = []
            for cls in RATIOS:
                p, q = mean_sd(vals(t, c, f"{cls}_wm"))[0], mean_sd(vals(t, c, f"{cls}_wm_true"))[0]
                cells.append("n/a" if np.isnan(p) or np.isnan(q) else f"{p:.2f} vs {q:.2f}")
            lines.append(f"| {t} | {c} | " + " | ".join(cells) + " |")
    lines += ["", "**Whole volume, against the noisy target** (PSNR, dB), beside the one-to-one Seq2Seq of the same run:", "",
              "| target | " + " | ".join(f"{c} input{'s' if c != '1' else ''}" for c in counts)
              + " | Seq2Seq best single | noise-floor limit | Rician-mean limit | rises, runs | most inputs > best single, runs |",
              "|---|" + "---|" * (len(counts) + 5)]
    for t, e in first["targets"].items():
        best = [r["targets"][t].get("seq2seq_single", {}).get("best_psnr") for r in runs.values()]
        rises = sum(ch[t]["rises_with_inputs"] for ch in checks.values())
        beats = sum(ch[t]["most_inputs_beat_best_single"] for ch in checks.values())
        lines.append(f"| {t} | " + " | ".join(fmt(vals(t, c, "psnr")) for c in counts)
                     + f" | {fmt(best)} | {fmt([r['targets'][t]['limit_psnr'] for r in runs.values()])} | "
                     f"{fmt([r['targets'][t].get('limit_rician_psnr') for r in runs.values()])} | {rises}/{n} | {beats}/{n} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq2seq-out", required=True, help="the --out folder of tools/benchmark_seq2seq.py")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=None, help="training epochs (default: quick.json's max_epochs)")
    ap.add_argument("--skip-run", action="store_true")
    ap.add_argument("--report")
    ap.add_argument("--update-metadata", action="store_true",
                    help="write the measured means into bundles/tsf_seq2seq/configs/metadata.json eval_metrics")
    args = ap.parse_args(argv)
    bundle, py = REPO / "bundles" / "tsf_seq2seq", sys.executable
    runs, checks, timings = {}, {}, {}
    for seed in args.seeds:
        base = Path(args.seq2seq_out).resolve() / f"seed{seed}"
        root, s2s_ckpt = base / "tsf_seq2seq", base / "seq2seq" / "models" / "model.pt"
        if not args.skip_run:
            TIMINGS.clear()
            sh("tsf_train", [py, "-m", "monai.bundle", "run", "--config_file", "['configs/train.json','configs/quick.json']",
                             "--dataset_dir", str(base / "train"), "--bundle_root", str(root),
                             "--seq2seq_ckpt", str(s2s_ckpt), "--seed", str(seed)]
               + (["--max_epochs", str(args.epochs)] if args.epochs else []), cwd=bundle)
            sh("tsf_evaluate", [py, "-m", "monai.bundle", "run", "--config_file",
                                "['configs/train.json','configs/quick.json','configs/evaluate.json']",
                                "--dataset_dir", str(base / "test"), "--bundle_root", str(root),
                                "--seq2seq_ckpt", str(s2s_ckpt), "--output_dir", str(base / "tsf_evaluation")], cwd=bundle)
            (base / "tsf_timings.json").write_text(json.dumps(TIMINGS, indent=2))
        runs[seed] = json.loads((base / "tsf_evaluation" / "summary.json").read_text())
        checks[seed] = run_checks(runs[seed])
        t = base / "tsf_timings.json"
        timings[seed] = json.loads(t.read_text()) if t.exists() else {}
    md = markdown(runs, checks, timings, args.epochs)
    print(md)
    (Path(args.seq2seq_out) / "tsf_benchmark.json").write_text(json.dumps({"checks": checks, "timings_s": timings}, indent=2))
    if args.report:
        Path(args.report).write_text(md + "\n")
    if args.update_metadata:
        meta_path = bundle / "configs" / "metadata.json"
        meta = json.loads(meta_path.read_text())
        metrics = {}
        for t, e in next(iter(runs.values()))["targets"].items():
            for c in e["by_num_sources"]:
                for key, name in (("psnr", "psnr"), ("r_brain", "r_brain"), ("affine_r_brain", "remap_baseline_r_brain")):
                    m = mean_sd([r["targets"][t]["by_num_sources"].get(c, {}).get(key) for r in runs.values()])[0]
                    if not np.isnan(m):
                        metrics[f"phantom_2mm_{t}_{name}_{c}_inputs"] = round(m, 3 if "r_brain" in key else 2)
        meta["eval_metrics"] = metrics
        meta_path.write_text(json.dumps(meta, indent=4) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
