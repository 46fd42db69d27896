"""The report of tools/benchmark_paper_size.py (paper-size Seq2Seq for a time budget on a GPU):
its tables from known evaluation summaries and snapshot records. The training and evaluation it
drives are the bundle's own (tested elsewhere) and TimeSnapshots (tests/test_schedule.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

import benchmark_paper_size as bps  # noqa: E402


def _pair(r: float, psnr: float) -> dict:
    return {"r_brain": r, "oracle_r_brain": 0.97, "psnr_clean_brain": psnr, "affine_psnr_clean_brain": 25.0,
            "affine_r_brain": 0.6, "csf_wm": 2.0, "csf_wm_true": 2.1, "psnr": psnr, "ssim": 0.8, "copy_psnr": 20.0,
            "limit_psnr": 35.0, "limit_rician_psnr": 40.0}


def _write_run(root: Path, seed: int, marks_r: dict[float, float]) -> None:
    recs = []
    for i, (mark, r) in enumerate(sorted(marks_r.items()), start=1):
        # t1->t2 clears every bar when r >= 0.92 (oracle 0.97 - 0.05); t2->t1 never does (r 0.5)
        summary = {"pairs": {"t1->t2": _pair(r, 30.0), "t2->t1": _pair(0.5, 20.0)}, "overall": {"r_brain": r},
                   "lpips": "unavailable"}
        (root / f"seed{seed}" / f"eval_t{mark:g}s").mkdir(parents=True)
        (root / f"seed{seed}" / f"eval_t{mark:g}s" / "summary.json").write_text(json.dumps(summary))
        recs.append({"mark_s": mark, "elapsed_s": mark + 0.1, "iteration": 100 * i + seed, "epoch": i,
                     "samples": 1600 * i + 16 * seed, "path": f"model_t{mark:g}s.pt"})
    (root / f"seed{seed}" / "models").mkdir(parents=True)
    (root / f"seed{seed}" / "models" / "model_tsnapshots.json").write_text(json.dumps(recs))


def test_report_tables_from_known_runs(tmp_path):
    _write_run(tmp_path, 0, {10.0: 0.80, 20.0: 0.95})
    _write_run(tmp_path, 2, {10.0: 0.90, 20.0: 0.93})
    args = bps.build_parser().parse_args(["--out", str(tmp_path), "--seeds", "0", "2", "--marks", "20", "10"])
    args.marks = sorted(args.marks)
    md = bps.report(args)
    rows = {}  # the first row of each name: the pair table comes before the ratio and whole-volume tables
    for line in md.splitlines():
        if line.startswith("| "):
            rows.setdefault(line.split(" | ")[0], line)
    # the last mark's pair table: mean ± sd over the two runs, and how many runs clear every bar
    assert rows["| t1->t2"].startswith("| t1->t2 | 0.940 ± 0.014 |") and rows["| t1->t2"].endswith("| 2/2 |")
    assert rows["| t2->t1"].endswith("| 0/2 |")
    # the trend: per mark, iterations and slices, mean r over the pairs, pairs clearing the bars in every run
    assert rows["| 10 s"] == ("| 10 s | 101 ± 1 | 1616 ± 23 | 0.675 ± 0.035 | 0.600 ± 0.000 | 25.00 ± 0.00 | "
                              "25.00 ± 0.00 | 0/2 |")
    assert rows["| 20 s"].startswith("| 20 s | 201 ± 1 | 3216 ± 23 | 0.720 ± 0.007 |") and rows["| 20 s"].endswith("| 1/2 |")
    saved = json.loads((tmp_path / "paper_size.json").read_text())
    assert saved["summaries"]["0"]["20"] == {"r_brain": 0.95} and len(saved["snapshots"]["2"]) == 2


def test_report_without_the_last_mark_names_the_folder(tmp_path):
    _write_run(tmp_path, 0, {10.0: 0.8})
    args = bps.build_parser().parse_args(["--out", str(tmp_path), "--seeds", "0", "--marks", "10", "20"])
    with pytest.raises(SystemExit, match="no evaluation of the 20 s snapshots"):
        bps.report(args)


def test_step_benchmark_times_every_variant(tmp_path):
    """--step-only: the quick network's step on random tensors, four targets or one, under each
    cuDNN setting, written to step.json (here on the CPU, one timed step each)."""
    args = bps.build_parser().parse_args(["--out", str(tmp_path), "--quick", "--step-only", "--patch", "16", "16",
                                          "--batch-cases", "1", "--samples-per-case", "4", "--profile"])
    recs = bps.step_benchmark(args, steps=1, warmup=1)
    saved = json.loads((tmp_path / "step.json").read_text())
    assert saved["records"] == recs and saved["patch"] == [16, 16]
    assert [(r["cudnn_benchmark"], r["targets"]) for r in recs] == [
        (b, t) for b in (False, True) for t in ("4 targets", "1 target")]
    assert all(r["batch"] == 4 and r["ms_per_step"] > 0 for r in recs)
    table = (tmp_path / "step_profile.txt").read_text()  # the profiled step's operators, convolutions among them
    assert "convolution" in table and "CPU total" in table


def test_step_variants_time_each_variant_and_append_as_measured(tmp_path):
    """--step-variants: the quick network's autotuned four-target step with each launch-saving
    option, one JSON line per variant in step_variants.jsonl (torch.compile left out: a minute of
    compiling on a CPU); an unknown variant is refused by name."""
    args = bps.build_parser().parse_args(["--out", str(tmp_path), "--quick", "--patch", "16", "16",
                                          "--batch-cases", "1", "--samples-per-case", "4"])
    names = ["Adam (foreach)", "Adam fused", "Adam fused, channels_last"]
    out = tmp_path / "step_variants.jsonl"
    recs = bps.step_variants(args, steps=1, warmup=1, out_file=out, only=names)
    assert [r["variant"] for r in recs] == names
    assert all("error" not in r and r["batch"] == 4 and r["ms_per_step"] > 0 for r in recs), recs
    assert [json.loads(line) for line in out.read_text().splitlines()] == recs
    with pytest.raises(ValueError, match="unknown step variant"):
        bps.step_variants(args, steps=1, warmup=1, only=["Adam (sgd)"])
