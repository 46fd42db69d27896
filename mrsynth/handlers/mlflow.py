"""What MONAI's :class:`~monai.handlers.MLFlowHandler` does not log: sample images and the
executed config.

Tracking itself is MONAI's MLFlowHandler, declared in every bundle's ``train.json`` so that it
is on without ``--tracking``; these helpers add to the run it opened.
"""

from __future__ import annotations

import io
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events

__all__ = ["MLflowSampleImages", "export_run_config", "sample_grid"]

logger = logging.getLogger(__name__)


def export_run_config(output_dir, argv=None) -> str | None:
    """Write the config that ``python -m monai.bundle run`` is executing (its config files with the
    command-line overrides applied) to ``<output_dir>/config_<time>.json`` and return the path.

    It rebuilds the config from ``argv`` (default ``sys.argv``) as MONAI's ``run`` does; outside a
    ``monai.bundle run`` command line it returns ``None``.
    """
    from fire.parser import DefaultParseValue
    from monai.bundle import ConfigParser

    argv = list(sys.argv if argv is None else argv)
    if "run" not in argv:
        return None
    args, key = {}, None
    for tok in argv[argv.index("run") + 1 :]:
        if tok.startswith("--"):
            key, _, val = tok[2:].partition("=")
            if val:
                args[key], key = DefaultParseValue(val), None
            else:
                args[key] = True
        elif key is not None:
            args[key], key = DefaultParseValue(tok), None
    config_file = args.pop("config_file", None)
    if config_file is None:
        return None
    parser = ConfigParser()
    parser.read_config(config_file)
    for k in ("meta_file", "logging_file", "tracking", "args_file", "run_id", "init_id", "final_id", "workflow_type"):
        args.pop(k, None)
    parser.update(args)
    dest = Path(output_dir) / f"config_{time.strftime('%Y%m%d_%H%M%S')}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    parser.export_config_file(parser.get(), str(dest))
    return str(dest)


def _center_slice(x: torch.Tensor) -> np.ndarray:
    """A 2D view of one sample: the middle channel of ``(C, H, W)``, the middle axial slice of ``(C, H, W, D)``."""
    a = torch.as_tensor(x).detach().float().cpu()
    a = a[a.shape[0] // 2]
    if a.ndim == 3:
        a = a[..., a.shape[-1] // 2]
    return a.numpy()


def sample_grid(rows: list[tuple[str, ...]], images: list[tuple[torch.Tensor, ...]], vmin=-1.0, vmax=1.0) -> np.ndarray:
    """Render rows of (source, synthesis, target) images into one RGB uint8 array."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncol = len(images[0])
    fig, axes = plt.subplots(len(images), ncol, figsize=(2.2 * ncol, 2.2 * len(images)), squeeze=False)
    for r, (titles, imgs) in enumerate(zip(rows, images)):
        for c, (t, im) in enumerate(zip(titles, imgs)):
            axes[r][c].imshow(_center_slice(im).T, cmap="gray", vmin=vmin, vmax=vmax, origin="lower")
            axes[r][c].set_title(t, fontsize=8)
            axes[r][c].axis("off")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    buf.seek(0)
    import matplotlib.image as mpimg

    return (mpimg.imread(buf, format="png")[..., :3] * 255).astype(np.uint8)


class MLflowSampleImages:
    """Log a grid of (source, synthesis, target) images from an evaluator's last batch to the
    MLflow run of ``tracker`` (a MONAI MLFlowHandler attached to the same engine), each epoch.

    Args:
        tracker: the :class:`monai.handlers.MLFlowHandler` whose run receives the images.
        max_samples: rows in the grid.

    The file is named after ``engine.state.epoch``, which MONAI's evaluators set to the
    trainer's epoch.
    """

    def __init__(self, tracker, max_samples: int = 4) -> None:
        self.tracker, self.max_samples = tracker, int(max_samples)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        run = getattr(self.tracker, "cur_run", None)
        out = engine.state.output
        if run is None or not out:
            return
        if isinstance(out, list):  # decollated: one dict per sample
            items = out
            names = [(b.get("src_name", "source"), b.get("tgt_name", "target")) for b in engine.state.batch]
        else:  # a batch dict
            n = len(out["pred"])
            items = [{k: out[k][i] for k in ("image", "pred", "label")} for i in range(n)]
            b = engine.state.batch
            names = list(zip(b.get("src_name", ["source"] * n), b.get("tgt_name", ["target"] * n)))
        rows, imgs = [], []
        for o, (src_name, tgt_name) in list(zip(items, names))[: self.max_samples]:
            rows.append((f"{src_name}", f"{src_name}->{tgt_name}", f"{tgt_name}"))
            imgs.append((o["image"], o["pred"], o["label"]))
        epoch = engine.state.epoch
        try:
            self.tracker.client.log_image(run.info.run_id, sample_grid(rows, imgs), artifact_file=f"samples/epoch_{epoch:04d}.png")
        except Exception as e:  # tracking must never stop training
            logger.warning("could not log sample images to MLflow: %s", e)
