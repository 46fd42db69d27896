"""Helpers to run a bundle as a user does: ``python -m monai.bundle run`` in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "bundles"

#: overrides that shrink quick.json further for tests on the 4 mm phantom
TINY = ["--patch_size", "[48,48]", "--central_slices", "16", "--samples_per_case", "2", "--batch_size", "2"]


def env() -> dict:
    e = dict(os.environ)
    e.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", MPLBACKEND="Agg", GIT_PYTHON_REFRESH="quiet")
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    return e


def configs(bundle: str, *names: str) -> str:
    return "[" + ",".join(f"'configs/{n}.json'" for n in names) + "]"


def run_bundle(bundle: str, config_names, *args, check: bool = True, timeout: int = 600, cmd=None):
    """Run ``python -m monai.bundle run`` from the bundle's folder; returns the CompletedProcess."""
    cmd = cmd or [sys.executable, "-m", "monai.bundle", "run"]
    full = [*cmd, "--config_file", configs(bundle, *config_names), *map(str, args)]
    proc = subprocess.run(full, cwd=BUNDLES / bundle, env=env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(full)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc
