#!/usr/bin/env python
"""Quality benchmark of the Seq2Seq bundle on the phantom, rerunnable by anyone.

Runs the demo pipeline (phantom 2 mm, fixed seeds; train with quick.json for a fixed number of
epochs on this CPU; evaluate on unseen subjects), then checks what the issue asks:

- per (source, target) pair: the model's PSNR / SSIM beside the noise-floor limit and beside the
  copy-the-source baseline; the model must beat the baseline on every pair;
- the contribution ranking must follow the physics: T1Gd carries the enhancing rim that no
  other sequence shows, so T1Gd's differentiation map must concentrate on the rim (label 4)
  more than any other sequence's map does, and in the enhancing tumour (label 4) T1Gd must be
  the hardest sequence to generate (first in C_d). The rankings over whole volumes and inside
  the whole lesion, the oedema and the necrotic core are reported too.

    python tools/benchmark_seq2seq.py --out bench_out [--epochs 20] [--report docs.md]
        [--update-metadata]

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

SEQS = ["t1", "t1ce", "t2", "flair"]


def rim_concentration(eval_dir: Path, data_dir: Path) -> dict[str, float]:
    """Per target: mean over cases of (mean map value in the enhancing rim) / (mean map value in
    the rest of the head). A map that shows what only that sequence holds peaks where only it
    sees something: for T1Gd, the enhancing rim."""
    import nibabel as nib

    from mrsynth.workflows.evaluation import foreground_mask

    ratios: dict[str, list[float]] = {s: [] for s in SEQS}
    for seg_path in sorted(data_dir.glob("*/*_seg.nii.gz")):
        cid = seg_path.parent.name
        seg = np.asarray(nib.load(str(seg_path)).dataobj)
        if not (seg == 4).any():
            continue
        maps = {s: eval_dir / "maps" / f"{cid}_{s}_diffmap.nii.gz" for s in SEQS}
        vols = [np.asarray(nib.load(str(p)).dataobj) for p in maps.values() if p.exists()]
        head = foreground_mask([-v for v in vols]) | (seg > 0)  # any non-empty voxel region
        for s, p in maps.items():
            if p.exists():
                m = np.asarray(nib.load(str(p)).dataobj)
                ratios[s].append(float(m[seg == 4].mean() / max(m[head & (seg == 0)].mean(), 1e-8)))
    return {s: float(np.mean(v)) for s, v in ratios.items() if v}


def markdown(summary: dict, rim: dict, timings: dict, args) -> str:
    if args.epochs is None:
        args.epochs = json.loads((REPO / "bundles" / "seq2seq" / "configs" / "quick.json").read_text())["max_epochs"]
    lines = [
        f"Phantom 2 mm, training seed {args.seed} ({args.subjects} subjects, up to 1 sequence missing per case), "
        f"test seed {args.seed + 1} (4 unseen subjects), quick.json, {args.epochs} epochs on this machine's CPU "
        f"(training took {timings.get('train', float('nan')):.0f} s).",
        "",
        "| source -> target | PSNR | SSIM | PSNR fg | copy-source PSNR | noise-floor limit | beats copy |",
        "|---|---|---|---|---|---|---|",
    ]
    for pair, v in summary["pairs"].items():
        lines.append(f"| {pair} | {v['psnr']:.2f} | {v['ssim']:.3f} | {v['psnr_fg']:.2f} | {v['copy_psnr']:.2f} | "
                     f"{v['limit_psnr']:.2f} | {'yes' if v['psnr'] > v['copy_psnr'] else '**no**'} |")
    o = summary["overall"]
    lines.append(f"| **mean** | {o['psnr']:.2f} | {o['ssim']:.3f} | {o['psnr_fg']:.2f} | {o['copy_psnr']:.2f} | "
                 f"{o['limit_psnr']:.2f} | |")
    c = summary.get("contribution", {})
    if "rank_d" in c:
        lines += ["", f"Contribution ranking, whole volumes: C_t {' > '.join(c['rank_t'])}; "
                  f"C_d {' > '.join(c['rank_d'])}."]
    regions = {k: v for k, v in summary.get("contribution_regions", {}).items() if "rank_d" in v}
    if regions:
        lines += ["", "Contribution ranking inside each tumour region (PSNR and SSIM inside the region; labels: "
                  "tumour = any, enhancing = 4, oedema = 2, necrotic = 1):", "",
                  "| region | C_t (generates others best first) | C_d (hardest to generate first) | C_d values |",
                  "|---|---|---|---|"]
        for name, c in regions.items():
            vals = ", ".join(f"{k} {v:+.2f}" for k, v in sorted(c["C_d"].items(), key=lambda kv: -kv[1]))
            lines.append(f"| {name} | {' > '.join(c['rank_t'])} | {' > '.join(c['rank_d'])} | {vals} |")
    if rim:
        lines += ["", "Differentiation-map concentration on the enhancing rim (mean in rim / mean elsewhere in the "
                  "head): " + ", ".join(f"{s} {v:.2f}" for s, v in sorted(rim.items(), key=lambda kv: -kv[1])) + "."]
    lines += ["", f"LPIPS: {summary['lpips']}"]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench_out")
    ap.add_argument("--subjects", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=None, help="training epochs (default: quick.json's max_epochs)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-run", action="store_true", help="analyse an existing --out without rerunning")
    ap.add_argument("--report", help="also write the Markdown table to this file")
    ap.add_argument("--update-metadata", action="store_true",
                    help="write the measured means into bundles/seq2seq/configs/metadata.json eval_metrics")
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    if not args.skip_run:
        demo.main(["--out", str(out), "--subjects", str(args.subjects), "--seed", str(args.seed)]
                  + (["--epochs", str(args.epochs)] if args.epochs else []))
    summary = json.loads((out / "evaluation" / "summary.json").read_text())
    timings = json.loads((out / "timings.json").read_text()) if (out / "timings.json").exists() else {}
    rim = rim_concentration(out / "evaluation", out / "test")
    beats = {p: v["psnr"] > v["copy_psnr"] for p, v in summary["pairs"].items()}
    enhancing_rank = summary.get("contribution_regions", {}).get("enhancing", {}).get("rank_d", [])
    result = {"summary": summary, "rim_concentration": rim, "timings_s": timings, "beats_copy": beats,
              "all_beat_copy": all(beats.values()),
              "t1ce_map_most_rim_specific": bool(rim) and max(rim, key=rim.get) == "t1ce",
              "t1ce_hardest_to_generate_where_it_enhances": enhancing_rank[:1] == ["t1ce"]}
    (out / "benchmark.json").write_text(json.dumps(result, indent=2))
    md = markdown(summary, rim, timings, args)
    print(md)
    print(f"\nall pairs beat the copy baseline: {result['all_beat_copy']}; "
          f"T1Gd's map is the most rim-specific: {result['t1ce_map_most_rim_specific']}; "
          f"T1Gd first in C_d in the enhancing tumour: {result['t1ce_hardest_to_generate_where_it_enhances']}")
    if args.report:
        Path(args.report).write_text(md + "\n")
    if args.update_metadata:
        meta_path = REPO / "bundles" / "seq2seq" / "configs" / "metadata.json"
        meta = json.loads(meta_path.read_text())
        o = summary["overall"]
        meta["eval_metrics"] = {
            "phantom_2mm_mean_psnr": round(o["psnr"], 2), "phantom_2mm_mean_ssim": round(o["ssim"], 4),
            "phantom_2mm_mean_psnr_foreground": round(o["psnr_fg"], 2),
            "phantom_2mm_noise_floor_psnr": round(o["limit_psnr"], 2),
            "phantom_2mm_copy_source_psnr": round(o["copy_psnr"], 2),
        }
        meta_path.write_text(json.dumps(meta, indent=4) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
