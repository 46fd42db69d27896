"""tools/auto.py: a user's CSV of files -> converted dataset -> plan -> trained bundle -> evaluation
on the held-out cases, in one command (Seq2Seq, CPU-size and tiny)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from bundle_utils import REPO, TINY, env
from mrsynth.data import list_cases


@pytest.mark.slow
def test_one_command_from_a_csv_to_an_evaluated_model(phantom, tmp_path):
    table = tmp_path / "my_files.csv"
    with open(table, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case", "sequence", "path"])
        for c in list_cases(phantom, check_geometry=False):
            w.writerows((c["case"], s, c[s]) for s in ("t1", "t1ce", "t2", "flair") if s in c)
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "auto.py"), str(table), "--bundle", "seq2seq",
                           "--out", str(out), "--quick", "--", "--max_epochs", "1", "--val_interval", "1",
                           "--mlflow", "false", *TINY], env=env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert len(list_cases(out / "data", check_geometry=False)) == 4  # converted from the CSV
    plan = json.loads((out / "seq2seq" / "configs" / "plan.json").read_text())
    assert plan["plan"]["target_spacing"] == [4.0, 4.0, 4.0]  # the 4 mm phantom, planned
    state = torch.load(out / "seq2seq" / "models" / "model.pt", weights_only=True)
    parser = ConfigParser()
    parser.read_config([str(out / "seq2seq" / "configs" / f"{n}.json") for n in ("train", "quick", "plan")])
    parser.get_parsed_content("network_def").load_state_dict(state)  # the trained bundle's own network
    summary = json.loads((out / "evaluation" / "summary.json").read_text())
    evaluated = {r["case"] for r in summary.get("cases", [])} if isinstance(summary.get("cases"), list) else None
    assert (out / "evaluation" / "metrics.csv").is_file()
    with open(out / "evaluation" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    cases = {r["case"] for r in rows if "case" in r}
    assert cases and len(cases) == 1, cases  # the held-out validation case only (val_fraction 0.2 of 4)
    assert evaluated is None or evaluated == cases
    for step in ("plan_seq2seq", "train_1_seq2seq", "evaluate"):
        assert (out / "logs" / f"{step}.log").is_file()
    assert "trained bundle:" in proc.stdout
