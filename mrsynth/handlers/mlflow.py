"""What MONAI's :class:`~monai.handlers.MLFlowHandler` does not log: sample images and the
executed config.

Tracking itself is MONAI's MLFlowHandler, declared in every bundle's ``train.json`` so that it
is on without ``--tracking``; these helpers add to the run it opened.
"""

from __future__ import annotations

import io
import logging
import sys
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.utils import ensure_tuple

__all__ = ["MLflowSampleImages", "output_values", "sample_grid", "save_execute_config"]

logger = logging.getLogger(__name__)


def save_execute_config(argv=None) -> str | None:
    """Write the config that ``python -m monai.bundle run`` is executing and return its path.

    The bundles track with MLflow by default (their ``MLFlowHandler`` is declared in
    ``train.json``), so MONAI's ``--tracking`` option, which is what makes MONAI write the
    executed config, is not needed to track; this gives the same file without it. The command
    line (default ``sys.argv``) is read by ``fire`` as MONAI's ``__main__`` reads it, the config
    files, metadata and overrides are merged by MONAI's :class:`~monai.bundle.ConfigParser`, and
    MONAI's own ``save_execute_config`` step
    (:meth:`~monai.bundle.ConfigWorkflow.patch_bundle_tracking`, here with no handlers to add)
    writes the file: ``<output_dir>/config_<time>.json`` by default, the path in the config's
    ``save_execute_config`` item if it names one, nothing if it is false. Outside a
    ``monai.bundle run`` command line it returns ``None``.
    """
    import fire
    from monai.bundle import ConfigParser, ConfigWorkflow
    from monai.bundle.scripts import update_kwargs

    argv = list(sys.argv if argv is None else argv)
    if "run" not in argv:
        return None
    called: dict = {}

    def run(run_id=None, init_id=None, final_id=None, meta_file=None, config_file=None, logging_file=None,
            tracking=None, args_file=None, **override):
        called.update(update_kwargs(args=args_file, meta_file=meta_file, config_file=config_file, **override))

    fire.Fire({"run": run}, command=argv[argv.index("run"):], name="monai.bundle")
    config_file, meta_file = called.pop("config_file", None), called.pop("meta_file", None)
    if config_file is None:
        return None
    for k in ("run_id", "init_id", "final_id", "logging_file", "tracking", "workflow_type", "workflow_name"):
        called.pop(k, None)
    parser = ConfigParser()
    parser.read_config(config_file)
    meta = meta_file or str(Path(ensure_tuple(config_file)[0]).parent / "metadata.json")
    if Path(str(meta)).is_file() or meta_file:
        parser.read_meta(meta)
    parser.update(called)
    choice = parser.get("save_execute_config", True)
    if isinstance(choice, str) and choice.strip().lower() in ("false", "0", "no", "off", "none", ""):
        parser["save_execute_config"] = False  # `--save_execute_config false` from a shell
    ConfigWorkflow.patch_bundle_tracking(parser, {"handlers_id": {}, "configs": {}})
    return parser.get_parsed_content("save_execute_config") if parser["save_execute_config"] else None


def output_values(names: dict):
    """An ``output_transform`` for MONAI's ``MLFlowHandler`` that logs several values of the
    training step's output at once: ``names`` maps output keys to metric names (e.g.
    ``{"loss": "train_loss", "perplexity": "codebook_perplexity"}``). Works on the output as the
    step returns it (a dict) and after MONAI decollated it (a list of dicts: the first item's
    values, as ``monai.handlers.from_engine(..., first=True)``); absent keys are skipped."""
    names = dict(names)

    def transform(output) -> dict:
        out = output[0] if isinstance(output, (list, tuple)) else output
        values = {}
        for key, name in names.items():
            v = out.get(key) if isinstance(out, dict) else None
            if v is None:
                continue
            values[name] = float(v.detach().float().mean()) if isinstance(v, torch.Tensor) else float(v)
        return values

    return transform


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
