#!/usr/bin/env python
"""Quality benchmark of the TSF-Seq2Seq bundle on the phantom, layered on a Seq2Seq benchmark.

Uses the data and the trained Seq2Seq of ``tools/benchmark_seq2seq.py --out DIR``; trains
TSF-Seq2Seq (quick.json) on the same training set, evaluates every source subset -> every target
on the same unseen test subjects, and checks what the issue asks: PSNR rises with the number of
inputs, and the 3-input result beats the best single-source Seq2Seq result for the same target.

    python tools/benchmark_seq2seq.py --out bench_out
    python tools/benchmark_tsf.py --seq2seq-out bench_out [--epochs 20] [--report tsf.md]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

from demo import TIMINGS, sh  # noqa: E402


def markdown(summary: dict, epochs: int, train_s: float) -> tuple[str, dict]:
    lines = [f"TSF-Seq2Seq, quick.json, {epochs} epochs on this CPU ({train_s:.0f} s) on the Seq2Seq benchmark's "
             "training set; 4 unseen test subjects. PSNR (dB) by number of inputs, mean over all subsets of that size:",
             "", "| target | 1 input | 2 inputs | 3 inputs | Seq2Seq best single | Seq2Seq average single | noise-floor limit |",
             "|---|---|---|---|---|---|---|"]
    checks = {}
    for t, e in summary["targets"].items():
        k = e["by_num_sources"]
        s2s = e.get("seq2seq_single", {})
        cell = lambda n: f"{k[n]['psnr']:.2f}" if n in k else ""  # noqa: E731
        lines.append(f"| {t} | {cell('1')} | {cell('2')} | {cell('3')} | {s2s.get('best_psnr', float('nan')):.2f} "
                     f"({s2s.get('best_source', '')}) | {s2s.get('average_psnr', float('nan')):.2f} | {e['limit_psnr']:.2f} |")
        ps = [k[n]["psnr"] for n in ("1", "2", "3") if n in k]
        checks[t] = {"rises_with_inputs": all(a < b for a, b in zip(ps, ps[1:])),
                     "three_beat_best_single": "3" in k and k["3"]["psnr"] > s2s.get("best_psnr", float("inf"))}
    regions = [r for r in ("tumour", "enhancing") if any(f"psnr_{r}" in v for e in summary["targets"].values()
                                                            for v in e["by_num_sources"].values())]
    for region in regions:
        lines += ["", f"PSNR (dB) inside the {'whole lesion (labels > 0)' if region == 'tumour' else region + ' tumour'} "
                  "by number of inputs:", "", "| target | 1 input | 2 inputs | 3 inputs |", "|---|---|---|---|"]
        for t, e in summary["targets"].items():
            k = e["by_num_sources"]
            vals = [k[n].get(f"psnr_{region}") if n in k else None for n in ("1", "2", "3")]
            lines.append(f"| {t} | " + " | ".join("" if v is None else f"{v:.2f}" for v in vals) + " |")
    lines += ["", "Checks per target: " + "; ".join(
        f"{t}: rises {'yes' if c['rises_with_inputs'] else 'no'}, 3 inputs > best single {'yes' if c['three_beat_best_single'] else 'no'}"
        for t, c in checks.items()) + "."]
    return "\n".join(lines), checks


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq2seq-out", required=True, help="the --out folder of tools/benchmark_seq2seq.py")
    ap.add_argument("--epochs", type=int, default=None, help="training epochs (default: quick.json's max_epochs)")
    ap.add_argument("--skip-run", action="store_true")
    ap.add_argument("--report")
    args = ap.parse_args(argv)
    base = Path(args.seq2seq_out).resolve()
    root, bundle, py = base / "tsf_seq2seq", REPO / "bundles" / "tsf_seq2seq", sys.executable
    s2s_ckpt = base / "seq2seq" / "models" / "model.pt"
    if not args.skip_run:
        sh("tsf_train", [py, "-m", "monai.bundle", "run", "--config_file", "['configs/train.json','configs/quick.json']",
                         "--dataset_dir", str(base / "train"), "--bundle_root", str(root), "--seq2seq_ckpt", str(s2s_ckpt)]
           + (["--max_epochs", str(args.epochs)] if args.epochs else []), cwd=bundle)
        sh("tsf_evaluate", [py, "-m", "monai.bundle", "run", "--config_file",
                            "['configs/train.json','configs/quick.json','configs/evaluate.json']",
                            "--dataset_dir", str(base / "test"), "--bundle_root", str(root), "--seq2seq_ckpt", str(s2s_ckpt),
                            "--output_dir", str(base / "tsf_evaluation")], cwd=bundle)
        (base / "tsf_timings.json").write_text(json.dumps(TIMINGS, indent=2))
    if args.epochs is None:
        args.epochs = json.loads((bundle / "configs" / "quick.json").read_text())["max_epochs"]
    timings = json.loads((base / "tsf_timings.json").read_text())
    summary = json.loads((base / "tsf_evaluation" / "summary.json").read_text())
    md, checks = markdown(summary, args.epochs, timings.get("tsf_train", float("nan")))
    print(md)
    (base / "tsf_benchmark.json").write_text(json.dumps({"summary": summary, "checks": checks, "timings_s": timings}, indent=2))
    if args.report:
        Path(args.report).write_text(md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
