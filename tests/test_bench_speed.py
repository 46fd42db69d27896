"""Smoke test of the speed benchmark (tools/bench_speed.py): it runs and reports every field.

Only the tool's plumbing is checked (tiny network, one repeat); speed targets are measured by the
tool itself, against a baseline from the same run, never asserted in tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # runs a bundle command in a new process
def test_bench_speed_quick_writes_complete_json(tmp_path):
    out = tmp_path / "speed.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "bench_speed.py"), "--quick", "--repeats", "1", "--json", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| inference, one target per batch |" in proc.stdout and "| training step |" in proc.stdout

    report = json.loads(out.read_text())
    assert report["config"]["quick"] is True and report["config"]["threads"] == 2
    assert report["parameters_m"] > 0
    for impl in ("ours", "ours_amp", "baseline"):
        for kind in ("infer_same", "infer_mixed", "train"):
            m = report["results"][impl][kind]
            assert m["batch"] >= 1 and len(m["times_s"]) == 1
            for key in ("median_s", "slices_per_s", "peak_rss_gib", "rss_setup_gib"):
                assert m[key] > 0, (impl, kind, key)
    for kind in ("infer_same", "infer_mixed", "train"):
        assert report["ratios"]["ours_over_baseline"]["ours"][kind] > 0
        assert report["ratios"]["ours_over_baseline"]["ours_amp"][kind] > 0
    # the ratios against the same-run baseline are derived from this run's measurements
    for kind in ("infer_same", "train"):
        ours, base = report["results"]["ours"][kind]["slices_per_s"], report["results"]["baseline"][kind]["slices_per_s"]
        assert report["ratios"]["ours_over_baseline"]["ours"][kind] == pytest.approx(ours / base, rel=1e-9)
    # a tiny network is never compared with the published paper-size reference
    assert report["ratios"]["ours_over_reference"] == {"ours": {}, "ours_amp": {}}
    # the baseline computes the same function as our network
    assert all(v < 1e-4 for v in report["baseline_equivalence"].values()), report["baseline_equivalence"]
    # mixed precision (bf16 where the CPU has it) changes the output by rounding only
    for kind in ("infer_same", "infer_mixed"):
        d = report["amp_difference"][kind]
        assert 0 <= d["mean"] <= d["max"] < 0.1, d
