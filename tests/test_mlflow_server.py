"""Training tracked to a live ``mlflow server`` on loopback, read back with the MLflow client."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from bundle_utils import TINY, env, run_bundle, stop_process
from mrsynth.data.phantom import write_dataset


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    port = _free_port()
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen(
        [str(mlflow_bin), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}", "--artifacts-destination", str(tmp_path / "art")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env(),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                urllib.request.urlopen(url + "/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"mlflow server did not start (exit {proc.poll()})")
                time.sleep(0.5)
        yield url
    finally:
        stop_process(proc, timeout=20)


def test_training_tracked_on_live_server(mlflow_server, tmp_path):
    import mlflow

    data = tmp_path / "data"
    write_dataset(data, subjects=3, spacing=4.0, seed=3, layout="brats", progress=False)
    root = tmp_path / "bundle"
    run_bundle("seq2seq", ["train", "quick"], "--dataset_dir", data, "--bundle_root", root, "--max_epochs", 1, "--val_interval", 1,
               "--tracking_uri", mlflow_server, "--experiment_name", "live", *TINY)
    assert not (root / "eval" / "mlruns.db").exists()  # went to the server, not the default store
    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    (run,) = client.search_runs([client.get_experiment_by_name("live").experiment_id])
    assert run.info.status == "FINISHED"
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) >= 1
    (val,) = client.get_metric_history(run.info.run_id, "val_psnr")
    assert 0 < val.value < 100
    assert run.data.params["sequences"] == "t1,t1ce,t2,flair"
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "samples" in arts and any(p.endswith(".json") for p in arts)
