#!/usr/bin/env python
"""Quality benchmark of the Seq2Seq bundle on the phantom, over several seeds, rerunnable by anyone.

For every seed ``S`` it runs the demo pipeline (phantom 2 mm with data seed ``S`` for training and
``S + 1`` for 4 unseen test subjects; training with quick.json and training seed ``S``; evaluation
with evaluate.json), then reports the mean and spread over the seeds of what shows whether a
synthesis *translates contrast*, per (source, target) pair:

- Pearson r with the noiseless target inside the brain, beside the denoise-and-remap baseline
  (the source smoothed and mapped by the best ``a * x + b`` fitted on the target) and the tissue
  oracle (the tissue fractions painted with the target's tissue means);
- PSNR against the noiseless target inside the brain, beside the same baseline;
- the tissue / white-matter contrast ratios of the synthesis beside the truth's;
- in how many runs the pair clears every bar (:func:`mrsynth.metrics.synthesis_checks`);
- the classic whole-volume PSNR against the noisy target beside copying the source, the
  noise-floor limit and the Rician-mean limit.

A claim is only made where it holds in every run. The differentiation maps' concentration on
the enhancing rim is measured with the phantom's brain mask.

    python tools/benchmark_seq2seq.py --out bench_s2s [--seeds 0 1 2] [--epochs N] [--report docs.md]
        [--skip-run] [--update-metadata]

Speed at the paper's width is measured by ``tools/bench_speed.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))

import demo  # noqa: E402

from mrsynth.metrics import RATIOS, synthesis_checks, worst_ratio  # noqa: E402

SEQS = ["t1", "t1ce", "t2", "flair"]


def brain_mask(case_dir: Path, cid: str) -> np.ndarray | None:
    """The phantom's brain (tissue map > 0); ``None`` where the case has no tissue map."""
    import nibabel as nib

    p = case_dir / f"{cid}_tissue.nii.gz"
    return np.asarray(nib.load(str(p)).dataobj) > 0 if p.exists() else None


def rim_concentration(eval_dir: Path, data_dir: Path) -> dict[str, float]:
    """Per target: mean over cases of (mean map value in the enhancing rim) / (mean map value in
    the rest of the brain). A map that shows what only that sequence holds peaks where only it
    sees something: for T1Gd, the enhancing rim."""
    import nibabel as nib

    ratios: dict[str, list[float]] = {s: [] for s in SEQS}
    for seg_path in sorted(data_dir.glob("*/*_seg.nii.gz")):
        cid = seg_path.parent.name
        seg = np.asarray(nib.load(str(seg_path)).dataobj)
        brain = brain_mask(seg_path.parent, cid)
        if brain is None or not (seg == 4).any():
            continue
        rest = brain & (seg == 0)
        for s in SEQS:
            p = eval_dir / "maps" / f"{cid}_{s}_diffmap.nii.gz"
            if p.exists():
                m = np.asarray(nib.load(str(p)).dataobj)
                ratios[s].append(float(m[seg == 4].mean() / max(m[rest].mean(), 1e-8)))
    return {s: float(np.mean(v)) for s, v in ratios.items() if v}


def mean_sd(values) -> tuple[float, float]:
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def fmt(values, digits: int = 2) -> str:
    m, s = mean_sd(values)
    return "n/a" if np.isnan(m) else f"{m:.{digits}f} ± {s:.{digits}f}"


def aggregate(runs: dict[int, dict]) -> dict:
    """Per pair: the values of every run, and the checks of every run."""
    pairs: dict[str, dict] = {}
    for seed, summary in runs.items():
        for pair, v in summary["pairs"].items():
            e = pairs.setdefault(pair, {"values": {}, "checks": []})
            for k, x in v.items():
                if isinstance(x, (int, float)) and not isinstance(x, bool):
                    e["values"].setdefault(k, []).append(x)
            e["checks"].append(v.get("checks") or synthesis_checks(v))
    return pairs


def markdown(runs: dict[int, dict], rims: dict[int, dict], timings: dict[int, dict], args) -> str:
    pairs = aggregate(runs)
    n = len(runs)
    t_train = [t.get("train") for t in timings.values()]
    t_all = [sum(t.values()) for t in timings.values() if t]
    lines = [
        f"Phantom 2 mm; seeds {', '.join(map(str, runs))} (data seed S: 16 training subjects, up to 1 sequence missing "
        f"per case; data seed S + 1: 4 unseen test subjects; training seed S); quick.json"
        f"{f', {args.epochs} epochs' if args.epochs else ''}; 2 CPU cores. Training took {fmt(t_train, 0)} s, "
        f"the whole pipeline {fmt(t_all, 0)} s (mean ± sd over the {n} runs). Values are mean ± sd over the runs.",
        "",
        "**Does the synthesis show the target's contrast?** Inside the brain, against the noiseless target:",
        "",
        "| source -> target | r | r, remap baseline | r, tissue oracle | r, population oracle | PSNR | PSNR, remap baseline "
        "| worst contrast ratio (synthesis / truth) | all bars, runs |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for pair, e in pairs.items():
        v = e["values"]
        means = {k: mean_sd(x)[0] for k, x in v.items()}
        found = worst_ratio({k: None if np.isnan(x) else x for k, x in means.items()})
        worst = f"{found[0]}/WM {means[found[0] + '_wm']:.2f} / {means[found[0] + '_wm_true']:.2f}" if found else None
        ok = sum(bool(c.get("all")) for c in e["checks"])
        lines.append(f"| {pair} | {fmt(v.get('r_brain', []), 3)} | {fmt(v.get('affine_r_brain', []), 3)} | "
                     f"{fmt(v.get('oracle_r_brain', []), 3)} | {fmt(v.get('population_oracle_r_brain', []), 3)} | "
                     f"{fmt(v.get('psnr_clean_brain', []))} | "
                     f"{fmt(v.get('affine_psnr_clean_brain', []))} | {worst or 'n/a'} | {ok}/{n} |")
    lines += ["", "Bars (per run, per pair): r >= 0.9 or within 0.05 of the tissue oracle; every contrast ratio on the "
              "truth's side of 1 and within 15 % of it; higher r and PSNR than the remap baseline. The population oracle "
              "paints the tissues with the other test subjects' mean contrast: the ceiling of a model that does not "
              "know the target scan's protocol.", "",
              "**Contrast ratios** (tissue / white matter, mean over runs; synthesis vs truth):", "",
              "| source -> target | " + " | ".join(f"{c}/WM" for c in RATIOS) + " |",
              "|---|" + "---|" * len(RATIOS)]
    for pair, e in pairs.items():
        v = e["values"]
        cells = []
        for c in RATIOS:
            p, t = mean_sd(v.get(f"{c}_wm", []))[0], mean_sd(v.get(f"{c}_wm_true", []))[0]
            cells.append("n/a" if np.isnan(p) or np.isnan(t) else f"{p:.2f} vs {t:.2f}")
        lines.append(f"| {pair} | " + " | ".join(cells) + " |")
    lines += ["", "**Whole volume, against the noisy target** (the papers' PSNR; it rewards smoothing, see above):", "",
              "| source -> target | PSNR | SSIM | copy source | noise-floor limit | Rician-mean limit |",
              "|---|---|---|---|---|---|"]
    for pair, e in pairs.items():
        v = e["values"]
        lines.append(f"| {pair} | {fmt(v['psnr'])} | {fmt(v['ssim'], 3)} | {fmt(v['copy_psnr'])} | "
                     f"{fmt(v.get('limit_psnr', []))} | {fmt(v.get('limit_rician_psnr', []))} |")
    regions = {}
    for summary in runs.values():
        for name, c in summary.get("contribution_regions", {}).items():
            if "rank_d" in c:
                regions.setdefault(name, []).append(" > ".join(c["rank_d"]))
    if regions:
        lines += ["", "Contribution ranking C_d (hardest to generate first) inside each tumour region, per run:", ""]
        for name, ranks in regions.items():
            lines.append(f"- {name}: " + "; ".join(ranks))
    if rims:
        lines += ["", "Differentiation-map concentration on the enhancing rim (mean in the rim / mean in the rest of the "
                  "brain), mean ± sd over runs: " + ", ".join(
                      f"{s} {fmt([r[s] for r in rims.values() if s in r])}" for s in SEQS) + "."]
    lines += ["", f"LPIPS: {next(iter(runs.values()))['lpips']}"]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench_out")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--subjects", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=None, help="training epochs (default: quick.json's max_epochs)")
    ap.add_argument("--skip-run", action="store_true", help="analyse existing runs under --out without rerunning")
    ap.add_argument("--report", help="also write the Markdown tables to this file")
    ap.add_argument("--update-metadata", action="store_true",
                    help="write the measured means into bundles/seq2seq/configs/metadata.json eval_metrics")
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    runs, rims, timings = {}, {}, {}
    for seed in args.seeds:
        run_dir = out / f"seed{seed}"
        if not args.skip_run:
            demo.main(["--out", str(run_dir), "--subjects", str(args.subjects), "--seed", str(seed)]
                      + (["--epochs", str(args.epochs)] if args.epochs else []))
        runs[seed] = json.loads((run_dir / "evaluation" / "summary.json").read_text())
        rims[seed] = rim_concentration(run_dir / "evaluation", run_dir / "test")
        t = run_dir / "timings.json"
        timings[seed] = json.loads(t.read_text()) if t.exists() else {}
    pairs = aggregate(runs)
    result = {
        "seeds": args.seeds, "rim_concentration": rims, "timings_s": timings,
        "pairs": {p: {"mean": {k: mean_sd(v)[0] for k, v in e["values"].items()},
                      "sd": {k: mean_sd(v)[1] for k, v in e["values"].items()},
                      "checks": e["checks"], "all_bars_every_run": all(c.get("all") for c in e["checks"])}
                  for p, e in pairs.items()},
    }
    (out / "benchmark.json").write_text(json.dumps(result, indent=2))
    md = markdown(runs, rims, timings, args)
    print(md)
    if args.report:
        Path(args.report).write_text(md + "\n")
    if args.update_metadata:
        meta_path = REPO / "bundles" / "seq2seq" / "configs" / "metadata.json"
        meta = json.loads(meta_path.read_text())
        over = {k: mean_sd([r["overall"].get(k) for r in runs.values()])[0]
                for k in ("psnr", "ssim", "psnr_clean_brain", "r_brain", "affine_r_brain", "limit_psnr",
                          "limit_rician_psnr", "copy_psnr")}
        meta["eval_metrics"] = {
            "phantom_2mm_mean_psnr": round(over["psnr"], 2), "phantom_2mm_mean_ssim": round(over["ssim"], 4),
            "phantom_2mm_mean_psnr_noiseless_brain": round(over["psnr_clean_brain"], 2),
            "phantom_2mm_mean_r_brain": round(over["r_brain"], 3),
            "phantom_2mm_remap_baseline_r_brain": round(over["affine_r_brain"], 3),
            "phantom_2mm_noise_floor_psnr": round(over["limit_psnr"], 2),
            "phantom_2mm_rician_mean_limit_psnr": round(over["limit_rician_psnr"], 2),
            "phantom_2mm_copy_source_psnr": round(over["copy_psnr"], 2),
        }
        meta_path.write_text(json.dumps(meta, indent=4) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
