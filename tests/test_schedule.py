"""Resuming with a larger --max_epochs: the learning-rate schedule follows the new horizon
(MONAI's CheckpointLoader restores the scheduler with the old one)."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine
from monai.handlers import CheckpointLoader, CheckpointSaver, LrScheduleHandler
from torch.optim.lr_scheduler import CosineAnnealingLR, PolynomialLR

from mrsynth.handlers import ScheduleHorizon


def _run(tmp_path, make_scheduler, epochs: int, resume: bool, horizon: bool):
    net = torch.nn.Linear(1, 1)
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    sched = make_scheduler(opt, epochs)
    lrs = []
    engine = Engine(lambda e, b: (lrs.append(opt.param_groups[0]["lr"]), opt.step()))
    LrScheduleHandler(sched, print_lr=False).attach(engine)
    if horizon:
        ScheduleHorizon(sched).attach(engine)
    objs = {"model": net, "optimizer": opt, "lr_scheduler": sched, "trainer": engine}
    CheckpointSaver(str(tmp_path), objs, save_interval=1, n_saved=1, epoch_level=True, file_prefix="ck").attach(engine)
    if resume:
        (ck,) = tmp_path.glob("ck*epoch=*.pt")
        CheckpointLoader(str(ck), objs).attach(engine)
    engine.run([0], max_epochs=epochs)
    return lrs


@pytest.mark.parametrize("kind", ["poly", "cosine"])
def test_resumed_run_decays_over_the_new_horizon(tmp_path, kind):
    make = {"poly": lambda o, n: PolynomialLR(o, total_iters=n, power=1.0),
            "cosine": lambda o, n: CosineAnnealingLR(o, T_max=n)}[kind]
    first = _run(tmp_path, make, 4, resume=False, horizon=True)
    assert first[0] == 1.0 and first[-1] > 0  # a fresh run is untouched: lr at epochs 1..4
    # resumed to 8 epochs without the handler: the checkpoint's 4-epoch schedule is over
    stale = _run(tmp_path, make, 8, resume=True, horizon=False)
    assert len(stale) == 4
    if kind == "poly":
        assert stale == [0.0] * 4  # decayed to 0 and stays there
    # with it: epochs 5..8 follow the 8-epoch schedule's closed form
    (tmp_path / "again").mkdir()
    _run(tmp_path / "again", make, 4, resume=False, horizon=True)
    resumed = _run(tmp_path / "again", make, 8, resume=True, horizon=True)
    fresh8 = _run(tmp_path / "fresh", make, 8, resume=False, horizon=True)
    assert resumed == pytest.approx(fresh8[4:])


def test_time_snapshots_save_at_each_mark_and_stop(tmp_path):
    """TimeSnapshots writes the weights as each training time passes, records what was seen,
    and stops the trainer after the last mark."""
    import json
    import time

    from mrsynth.handlers import TimeSnapshots

    net = torch.nn.Linear(2, 1)
    w0 = float(net.weight[0, 0])

    def step(engine, batch):
        time.sleep(0.01)
        with torch.no_grad():
            net.weight.add_(1.0)  # the weights change with every iteration
        engine.state.batch = [{"image": x} for x in batch["image"]]  # as MONAI's engines decollate it

    engine = Engine(step)
    snaps = TimeSnapshots(net, tmp_path / "snaps", [0.15, 0.05])
    snaps.attach(engine)
    batch = {"image": torch.zeros(4, 3)}
    start = time.perf_counter()
    engine.run([batch] * 10, max_epochs=1000)
    assert time.perf_counter() - start < 5  # stopped, not 10000 iterations
    recs = json.loads((tmp_path / "snaps" / "model_tsnapshots.json").read_text())
    assert [r["mark_s"] for r in recs] == [0.05, 0.15] == [r["mark_s"] for r in snaps.records]
    assert all(r["elapsed_s"] >= r["mark_s"] for r in recs)
    assert recs[0]["iteration"] < recs[1]["iteration"] == engine.state.iteration
    assert [r["samples"] for r in recs] == [4 * r["iteration"] for r in recs]
    for r in recs:  # the weights as they were at that iteration
        state = torch.load(r["path"], weights_only=True)
        assert float(state["weight"][0, 0]) == pytest.approx(w0 + r["iteration"])
    with pytest.raises(ValueError, match="positive"):
        TimeSnapshots(net, tmp_path, [0])
