"""EpochProgress: one console line per epoch with loss, validation metrics, speed and time left;
the engines' per-iteration log moved to a file."""

from __future__ import annotations

import logging

import torch
from ignite.engine import Engine, Events
from monai.handlers import StatsHandler

from mrsynth.handlers.progress import EpochProgress, format_duration


def test_format_duration():
    assert [format_duration(s) for s in (4.2, 75, 3725, float("inf"))] == ["4s", "1m15s", "1h02m", "?"]


def test_one_line_per_epoch_and_the_full_log_in_the_file(tmp_path, caplog):
    losses = iter([4.0, 2.0, 3.0, 1.0, 0.5, 0.5])
    trainer = Engine(lambda e, b: {"loss": torch.tensor(next(losses))})
    validator = Engine(lambda e, b: None)
    validator.state.key_metric_name, validator.state.best_metric, validator.state.best_metric_epoch = "val_psnr", -1, -1

    @validator.on(Events.COMPLETED)
    def metrics(engine):
        engine.state.metrics = {"val_psnr": 20.0 + trainer.state.epoch, "val_ssim": 0.5}
        engine.state.best_metric, engine.state.best_metric_epoch = engine.state.metrics["val_psnr"], trainer.state.epoch

    trainer.add_event_handler(Events.EPOCH_COMPLETED(every=2), lambda e: validator.run([0]))
    StatsHandler(tag_name="train_loss", output_transform=lambda o: o["loss"]).attach(trainer)
    log = tmp_path / "eval" / "train.log"
    EpochProgress(log_file=log, validator=validator).attach(trainer)
    with caplog.at_level(logging.INFO, logger="mrsynth.progress"):
        trainer.run([0, 1], max_epochs=3)
    lines = [r.getMessage() for r in caplog.records if r.name == "mrsynth.progress"]
    assert len(lines) == 3
    assert lines[0].startswith("epoch 1/3  loss 3.0000  ") and "val_psnr" not in lines[0]
    assert lines[1].startswith("epoch 2/3  loss 2.0000  val_psnr 22 (best 22 at 2)  val_ssim 0.5  ")
    assert lines[2].startswith("epoch 3/3  loss 0.5000  ") and lines[2].endswith("eta 0s")
    assert all(" it/s  " in l and " s/epoch  eta " in l for l in lines)
    text = log.read_text()
    # the per-iteration lines went to the file, not to the console loggers
    assert text.count("train_loss: ") == 6 and "Epoch: 3/3, Iter: 2/2" in text
    assert not any("train_loss" in r.getMessage() for r in caplog.records if r.name == "mrsynth.progress")
    assert trainer.logger.propagate is False and logging.getLogger("monai.handlers.StatsHandler").propagate is False


def test_case_progress_lines(caplog):
    from mrsynth.handlers.progress import CaseProgress

    p = CaseProgress(3)
    with caplog.at_level(logging.INFO, logger="mrsynth.progress"):
        a = p.step("C0", "12 pairs")
        b = p.step("C1", "skipped")
        c = p.step("C2")
    assert a.startswith("case 1/3 C0: 12 pairs  ") and " eta " in a
    assert b.startswith("case 2/3 C1: skipped  ")
    assert c.startswith("case 3/3 C2  ") and c.endswith("eta 0s")
    assert [r.getMessage() for r in caplog.records if r.name == "mrsynth.progress"] == [a, b, c]


def test_inference_reports_each_case(tmp_path, caplog):
    """SynthesisInference logs one progress line per case, skipped cases included."""
    from conftest import write_case
    from mrsynth.inferers import SlabInferer
    from mrsynth.networks import Seq2Seq
    from mrsynth.errors import DataError
    from mrsynth.workflows import SynthesisInference

    root = tmp_path / "data"
    write_case(root, "C0", shape=(16, 16, 4))
    write_case(root, "C1", shape=(16, 16, 4))
    (root / "C1" / "C1_t1.nii.gz").write_bytes(b"garbage")
    net = Seq2Seq(spatial_dims=2, in_channels=1, out_channels=1, channels=(4, 8), num_res_blocks=1)
    inf = SynthesisInference(network=net, inferer=SlabInferer(num_slices=1), dataset_dir=root, output_dir=tmp_path / "out",
                             sequences=["t1", "t1ce", "t2", "flair"], target="flair", source="t1", device="cpu")
    with caplog.at_level(logging.INFO, logger="mrsynth.progress"):
        try:
            inf.run()
        except DataError as e:  # C1 is unreadable: reported after the others are written
            assert "C1_t1.nii.gz" in str(e)
    lines = [r.getMessage() for r in caplog.records if r.name == "mrsynth.progress"]
    assert [l.split("  ")[0] for l in lines] == ["case 1/2 C0: written", "case 2/2 C1: skipped"]
