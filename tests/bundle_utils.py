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


def train_log(command: list[str]) -> Path | None:
    """``<output_dir>/train.log`` of a bundle command (``<bundle_root>/eval`` by default)."""
    def value(name):
        return command[command.index(name) + 1] if name in command[:-1] else None

    out = value("--output_dir")
    if out is None and value("--bundle_root") is not None:
        out = str(Path(value("--bundle_root")) / "eval")
    return None if out is None else Path(out) / "train.log"


def configs(bundle: str, *names: str) -> str:
    return "[" + ",".join(f"'configs/{n}.json'" for n in names) + "]"


def run_bundle(bundle: str, config_names, *args, check: bool = True, timeout: int = 600, cmd=None):
    """Run ``python -m monai.bundle run`` from the bundle's folder; returns the CompletedProcess."""
    cmd = cmd or [sys.executable, "-m", "monai.bundle", "run"]
    full = [*cmd, "--config_file", configs(bundle, *config_names), *map(str, args)]
    log = train_log(full)
    start = log.stat().st_size if log is not None and log.is_file() else 0
    proc = subprocess.run(full, cwd=BUNDLES / bundle, env=env(), capture_output=True, text=True, timeout=timeout)
    if log is not None and log.is_file():  # the engines' full log (EpochProgress moves it off the console)
        with open(log, encoding="utf-8", errors="replace") as f:
            f.seek(start)
            proc.stdout += f.read()
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(full)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def stop_process(proc: subprocess.Popen, timeout: float = 30) -> None:
    """Terminate a server started by a fixture; kill it if it does not exit within ``timeout`` s."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
