"""Smoke test of the TUMSyn speed benchmark (tools/benchmark_tumsyn.py): tiny model, one small
window, every variant in this process. Only the plumbing is checked; speed targets are measured
by the tool against the reference variant of the same run, never asserted in tests."""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

import benchmark_tumsyn  # noqa: E402


def test_benchmark_tumsyn_tiny_in_process(tmp_path, capsys):
    out = tmp_path / "bench.json"
    report = benchmark_tumsyn.main([
        "--roi", "12", "--chunk", "500", "--features", "8", "--blocks", "1", "--decoder", "16", "16",
        "--text-layers", "1", "--threads", "2", "--no-warmup", "--in-process", "--amp", "--out", str(out),
    ])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert "| reference |" in capsys.readouterr().out

    assert report["paper_width"] is False and report["isolated"] is False
    assert report["settings"]["roi"] == 12 and report["settings"]["chunk"] == 500
    env = report["environment"]
    assert env["device_name"] and env["torch"] and env["threads"] == 2
    for v in ("reference", "chunked"):
        r = report["results"][v]
        assert r["seconds"] > 0 and len(r["times_s"]) == 1 and r["peak_rss_mb"] > 0 and r["rss_setup_mb"] > 0
        assert r["input_shape"] == [12, 12, 12]
    # the chunked inferer really chunked: 12^3 = 1728 points in chunks of 500
    assert report["results"]["chunked"]["windows"] == 1 and report["results"]["chunked"]["decoder_calls"] == 4
    assert report["results"]["reference"]["points_per_call"] == 12**3
    amp = report["results"]["chunked_amp"]
    assert ("skipped" in amp) or (amp["seconds"] > 0 and amp["amp_dtype"])
    # ratios against the same-run reference, none against the published paper-width figure
    ref_s = report["results"]["reference"]["seconds"]
    assert abs(report["speedup_vs_reference"]["chunked"] - ref_s / report["results"]["chunked"]["seconds"]) < 1e-9
    assert report["speedup_vs_published"] == {}
    # same weights and input: the chunked inferer reproduces the one-call reference
    assert report["reference_output_max_abs"] > 0
    assert report["max_abs_diff_vs_reference"]["chunked"] <= 1e-5 * max(1.0, report["reference_output_max_abs"])
    assert report["max_rel_diff_vs_reference"]["chunked"] < 1e-4
    assert set(report["checks"]["peak_rss_under_bound"]) >= {"reference", "chunked"}
