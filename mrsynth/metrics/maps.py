"""Imaging-differentiation maps of the Seq2Seq paper, a PNG preview of any map, and the picture
grid of an evaluation (source, synthesis, truth, difference per pair).

For a target sequence ``t`` the map is ``M_d = (1/|S|) sum_{s in S} |G(s -> t) - t|``, the mean
absolute synthesis error over all sources ``s`` (``t`` itself included when present, as in the
paper): bright where ``t`` holds information no other sequence holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..io import atomic_path
from .image import _drop_leading_singletons, _mask_like, to_numpy

__all__ = ["differentiation_map", "save_map_preview", "save_pair_grid"]


def differentiation_map(synth_by_source: Mapping[str, object], target, mask=None) -> np.ndarray:
    """Imaging-differentiation map ``M_d`` of one target.

    Args:
        synth_by_source: ``{source name: G(source -> t)}``, each an array or tensor of the
            target's shape ``S`` on the target's scale. Include the target's own
            reconstruction ``G(t -> t)`` under its name to follow the paper.
        target: the real target image, shape ``S``.
        mask: optional boolean array broadcastable to ``S``; voxels outside are set to 0.

    Returns:
        float32 array of shape ``S``: the mean over sources of ``|G(s -> t) - target|``.

    Raises:
        DataError: no source, or a synthesis whose shape differs from the target's.
    """
    if not synth_by_source:
        raise DataError("differentiation map needs at least one synthesised image")
    t = to_numpy(target)
    acc = np.zeros(t.shape, dtype=np.float64)
    for name, g in synth_by_source.items():
        ga = to_numpy(g)
        if ga.shape != t.shape:
            raise DataError(f"synthesis from {name!r} has shape {ga.shape}, target has {t.shape}")
        acc += np.abs(ga - t)
    acc /= len(synth_by_source)
    if mask is not None:
        acc = np.where(_mask_like(mask, t.shape), acc, 0.0)
    return acc.astype(np.float32)


def _central_slices(vol: np.ndarray, axis: int) -> list[tuple[str, np.ndarray]]:
    """Central 2D slices: along ``axis`` first, then along the two other axes (3D input)."""
    if vol.ndim == 2:
        return [("", vol)]
    axis = axis % 3
    out = []
    for ax in [axis] + [a for a in range(3) if a != axis]:
        k = vol.shape[ax] // 2
        out.append((f"axis {ax}, slice {k}", np.take(vol, k, axis=ax)))
    return out


def save_map_preview(volume, png_path, title: str | None = None, axis: int = -1, cmap: str = "magma") -> Path:
    """Save a PNG of a map (or any image): three orthogonal central slices with a colour bar.

    Args:
        volume: ``(H, W, D)`` volume (leading size-1 dims dropped) or a ``(H, W)`` image.
        png_path: destination ``.png``; written atomically, parent folders created.
        title: figure title.
        axis: the axial axis, shown first; the other two panels are the central slices along
            the remaining axes. All panels share one colour scale.
        cmap: matplotlib colour map name.

    Returns:
        ``png_path`` as a :class:`~pathlib.Path`.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    vol = _drop_leading_singletons(to_numpy(volume))
    if vol.ndim not in (2, 3):
        raise DataError(f"map preview needs a 2D image or a 3D volume, got shape {vol.shape}")
    finite = vol[np.isfinite(vol)]
    vmin = float(finite.min()) if finite.size else 0.0
    vmax = float(finite.max()) if finite.size else 1.0
    vmin = 0.0 if vmin >= 0 else vmin  # error maps are non-negative: anchor the scale at 0
    if not vmax > vmin:
        vmax = vmin + 1.0
    panels = _central_slices(vol, axis)
    fig = Figure(figsize=(3.2 * len(panels) + 1.0, 3.4), dpi=100)
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, len(panels), k + 1) for k in range(len(panels))]
    im = None
    for ax, (label, sl) in zip(axes, panels):
        im = ax.imshow(sl.T, origin="lower", cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_title(label, fontsize="small")
        ax.set_axis_off()
    fig.colorbar(im, ax=axes, shrink=0.85)
    if title:
        fig.suptitle(title)
    png_path = Path(png_path)
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png")
    return png_path


def save_pair_grid(rows, png_path, title: str | None = None, diff_range: float = 0.5) -> Path:
    """Save a picture grid: one row per (source, target) pair, columns source, synthesis, truth
    and difference (synthesis - truth).

    Args:
        rows: a list of ``(label, source, synthesis, truth)``: ``label`` a string (e.g.
            ``"t1 -> t2"``), the images 2D slices on the ``[-1, 1]`` scale (the source may be
            ``None`` for a many-to-one synthesis, or a list of slices, shown side by side).
        png_path: destination ``.png`` (written atomically).
        title: figure title.
        diff_range: the difference is shown on ``[-diff_range, diff_range]`` (blue-red).

    Grey levels: the synthesis is shown on the truth's scale ``[-1, v]`` (``v`` the truth's 99.5th
    percentile), so that a brightness error shows; the source on its own scale.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not rows:
        raise ValueError("save_pair_grid: no rows")
    fig = Figure(figsize=(2.2 * 4 + 0.6, 2.3 * len(rows) + 0.4), dpi=90)
    FigureCanvasAgg(fig)

    def show(ax, img, cmap="gray", vmin=-1.0, vmax=None):
        img = _drop_leading_singletons(to_numpy(img))
        if vmax is None:
            vmax = max(float(np.percentile(img, 99.5)), vmin + 1e-3)
        ax.imshow(img.T, origin="lower", cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])

    for i, (label, src, syn, truth) in enumerate(rows):
        axes = [fig.add_subplot(len(rows), 4, 4 * i + k + 1) for k in range(4)]
        if src is None:
            axes[0].set_axis_off()
        else:
            srcs = src if isinstance(src, (list, tuple)) else [src]
            show(axes[0], np.concatenate([_drop_leading_singletons(to_numpy(s)) for s in srcs], axis=0))
        vmax = max(float(np.percentile(_drop_leading_singletons(to_numpy(truth)), 99.5)), -1.0 + 1e-3)
        show(axes[1], syn, vmax=vmax)
        show(axes[2], truth, vmax=vmax)
        diff = _drop_leading_singletons(to_numpy(syn)) - _drop_leading_singletons(to_numpy(truth))
        show(axes[3], diff, cmap="RdBu_r", vmin=-diff_range, vmax=diff_range)
        axes[0].set_ylabel(label, fontsize="small")
        if i == 0:
            for ax, name in zip(axes, ("source", "synthesis", "truth (noiseless)", "synthesis - truth")):
                ax.set_title(name, fontsize="small")
    top = 1.0 - 0.35 / fig.get_figheight() if title else 1.0
    if title:
        fig.suptitle(title, fontsize="small")
    fig.tight_layout(rect=(0, 0, 1, top))
    png_path = Path(png_path)
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png")
    return png_path
