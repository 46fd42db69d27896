"""Many-to-one evaluation (TSF-Seq2Seq): every non-empty subset of the other available
sequences -> every target, scored beside the one-to-one Seq2Seq's best and average single-source
results and the noise-floor limit; the learned per-task sequence weights; TSEM maps.

Outputs in ``output_dir``:

- ``metrics.csv``: one row per (case, source subset, target): ``psnr``, ``ssim``, ``psnr_fg``,
  ``limit_psnr`` and the fusion weight of every sequence (``w_<seq>``);
- ``seq2seq_metrics.csv``: the single-source Seq2Seq rows (when its weights are given);
- ``summary.json``: per target and subset size the means, the Seq2Seq best/average single-source
  PSNR, the limit;
- ``weights.csv`` / ``weights.png``: the weight table of every (subset, target), like the
  paper's Fig. 3 (the weights depend on the task only, not on the image);
- ``maps/<case>_<target>_tsem.nii.gz`` (+ PNG previews): |G with TSEM - G without| for the
  largest subset, where the enhanced map refined the synthesis.
"""

from __future__ import annotations

import itertools
import logging

import numpy as np
import torch

from ..io import atomic_path, write_csv
from ..metrics import psnr, ssim
from ..metrics import synthesis_checks
from .evaluation import CONTRAST_COLUMNS, VolumeEvaluation, format_contrast_table, mean_of
from .synthesis import load_weights, synthesize_volume

__all__ = ["SubsetEvaluation", "weight_table"]

logger = logging.getLogger(__name__)


def _subsets(items: list[int]) -> list[list[int]]:
    return [list(c) for k in range(1, len(items) + 1) for c in itertools.combinations(items, k)]


@torch.no_grad()
def weight_table(network, sequences) -> list[dict]:
    """The fusion weight of every sequence for every (non-empty source subset, target) task."""
    n = len(sequences)
    rows = []
    for t in range(n):
        for sub in _subsets([i for i in range(n) if i != t]):
            mask = torch.zeros(1, n)
            mask[0, sub] = 1
            w = network.sequence_weights(mask, torch.tensor([t]))[0].tolist()
            rows.append({"sources": "+".join(sequences[i] for i in sub), "target": sequences[t],
                         **{f"w_{s}": w[i] for i, s in enumerate(sequences)}})
    return rows


class _TSEMMap(torch.nn.Module):
    """Adapter so that the slab inferer returns TSF's TSEM map instead of the image."""

    def __init__(self, network):
        super().__init__()
        self.network = network

    def forward(self, x, mask, target):
        return self.network.forward_all(x, mask, target).tsem_map


class SubsetEvaluation(VolumeEvaluation):
    """Score a many-to-one network on every source subset of every case.

    Args:
        network: a :class:`~mrsynth.networks.TSFSeq2Seq`.
        inferer: whole-volume inferer taking ``(x, network, mask, code)``.
        sequences, cases, output_dir, ckpt_path, device, map_previews: as
            :class:`~mrsynth.workflows.PairwiseEvaluation`.
        seq2seq: a one-to-one network for the single-source comparison (optional), with its
            weights at ``seq2seq_ckpt``.
        regions: label regions (as :class:`~mrsynth.workflows.PairwiseEvaluation`): every row
            gets ``psnr_<region>`` where the case has that region, and the summary its mean per
            number of inputs.
    """

    def __init__(self, network, inferer, sequences, cases, output_dir, ckpt_path=None, device="cpu",
                 seq2seq=None, seq2seq_ckpt=None, map_previews: int = 2, regions: dict | None = None,
                 preprocessing=None, tracking_uri: str | None = None, experiment_name: str = "evaluation"):
        super().__init__(network, inferer, sequences, cases, output_dir, ckpt_path, device, map_previews, regions,
                         preprocessing, tracking_uri, experiment_name)
        self.columns = ["case", "sources", "n_sources", "target", "psnr", "ssim", "psnr_fg", "limit_psnr"] + [
            f"psnr_{name}" for name in self.regions] + [f"w_{s}" for s in self.sequences] + CONTRAST_COLUMNS
        self.seq2seq, self.seq2seq_ckpt = seq2seq, seq2seq_ckpt
        self.single_rows: list[dict] = []

    def prepare(self) -> None:
        super().prepare()
        if self.seq2seq is not None:
            if self.seq2seq_ckpt is not None:
                load_weights(self.seq2seq, self.seq2seq_ckpt, map_location=self.device)
            self.seq2seq.to(self.device).eval()

    def evaluate_case(self, case: dict, preview: bool = False) -> list[dict]:
        d, avail, vols, clean, head = self.load(case)
        cid = case["case"]
        idx = {s: i for i, s in enumerate(self.sequences)}
        zeros = torch.zeros_like(torch.as_tensor(d[avail[0]]))
        rows, grid = [], []
        z = self.grid_slice(d, vols[avail[0]])
        for t in avail:
            tgt, code = vols[t], idx[t]
            limit = psnr(clean[t], tgt) if t in clean else None
            others = [idx[s] for s in avail if s != t]
            for sub in _subsets(others):
                mask = torch.zeros(len(self.sequences))
                mask[sub] = 1
                stack = torch.cat([torch.as_tensor(d[s]) if idx[s] in sub else zeros for s in self.sequences])
                pred = synthesize_volume(self.network, self.inferer, stack, code, self.device, mask)[0].numpy()
                w = self.network.sequence_weights(mask[None].to(self.device), torch.tensor([code], device=self.device))
                rows.append({
                    "case": cid, "sources": "+".join(self.sequences[i] for i in sub), "n_sources": len(sub),
                    "target": t, "psnr": psnr(pred, tgt), "ssim": ssim(pred, tgt, axis=-1),
                    "psnr_fg": psnr(pred, tgt, mask=head), "limit_psnr": limit,
                    **{f"psnr_{name}": None if m is None else psnr(pred, tgt, mask=m) for name, m in d["regions"].items()},
                    **{f"w_{s}": float(w[0, i]) for i, s in enumerate(self.sequences)},
                    **self.contrast_scores(cid, pred, [vols[self.sequences[i]] for i in sub], t, vols, clean, d),
                })
                if preview and (len(sub) == 1 or len(sub) == len(others)):
                    grid.append((f"{'+'.join(self.sequences[i] for i in sub)} -> {t}",
                                 [vols[self.sequences[i]][..., z] for i in sub], pred[..., z], clean.get(t, tgt)[..., z]))
                if len(sub) == len(others) and preview:
                    tsem = synthesize_volume(_TSEMMap(self.network), self.inferer, stack, code, self.device, mask)
                    self.save_map(tsem[0].numpy(), d[t].affine, f"{cid}_{t}_tsem", True,
                                  f"{cid}: TSEM map, {'+'.join(self.sequences[i] for i in sub)} -> {t}")
            if self.seq2seq is not None:
                for s in avail:
                    if s != t:
                        p = synthesize_volume(self.seq2seq, self.inferer, d[s], code, self.device)[0].numpy()
                        self.single_rows.append({"case": cid, "source": s, "target": t, "psnr": psnr(p, tgt),
                                                 "ssim": ssim(p, tgt, axis=-1)})
        self.save_grid(cid, grid, f"{cid}, axial slice {z}: sources, synthesis, truth, difference")
        return rows

    def summarize(self, rows: list[dict]) -> dict:
        self._write_weights()
        if self.single_rows:
            cols, self.columns = self.columns, ["case", "source", "target", "psnr", "ssim"]
            self.write_csv(self.single_rows, self.output_dir / "seq2seq_metrics.csv")
            self.columns = cols
        targets = {}
        for t in self.sequences:
            rt = [r for r in rows if r["target"] == t]
            if not rt:
                continue
            by_k = {}
            for k in sorted({r["n_sources"] for r in rt}):
                rk = [r for r in rt if r["n_sources"] == k]
                by_k[str(k)] = {"n": len(rk), "psnr": mean_of(rk, "psnr"), "ssim": mean_of(rk, "ssim"),
                                "psnr_fg": mean_of(rk, "psnr_fg"),
                                **{f"psnr_{name}": mean_of(rk, f"psnr_{name}") for name in self.regions},
                                **{c: mean_of(rk, c) for c in CONTRAST_COLUMNS}}
                if by_k[str(k)].get("r_brain") is not None:
                    by_k[str(k)]["checks"] = synthesis_checks(by_k[str(k)])
            entry = {"by_num_sources": by_k, "limit_psnr": mean_of(rt, "limit_psnr"),
                     "limit_rician_psnr": mean_of(rt, "limit_rician_psnr")}
            singles = [r for r in self.single_rows if r["target"] == t]
            if singles:
                per_src = {s: mean_of([r for r in singles if r["source"] == s], "psnr")
                           for s in self.sequences if any(r["source"] == s for r in singles)}
                best = max(per_src, key=per_src.get)
                entry["seq2seq_single"] = {"best_source": best, "best_psnr": per_src[best],
                                           "average_psnr": float(np.mean(list(per_src.values()))),
                                           "per_source_psnr": per_src}
            targets[t] = entry
        return {"cases": len({r["case"] for r in rows}), "targets": targets,
                "by_num_sources": {str(k): {"psnr": mean_of([r for r in rows if r["n_sources"] == k], "psnr"),
                                            "ssim": mean_of([r for r in rows if r["n_sources"] == k], "ssim")}
                                   for k in sorted({r["n_sources"] for r in rows})}}

    def _write_weights(self) -> None:
        table = weight_table(self.network, self.sequences)
        cols = ["sources", "target"] + [f"w_{s}" for s in self.sequences]
        write_csv(table, self.output_dir / "weights.csv", cols)
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        w = np.array([[r[f"w_{s}"] for s in self.sequences] for r in table])
        fig = Figure(figsize=(1.1 * len(self.sequences) + 3, 0.22 * len(table) + 1.5), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        im = ax.imshow(w, cmap="viridis", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(len(self.sequences)))
        ax.set_xticklabels(self.sequences)
        ax.set_yticks(range(len(table)))
        ax.set_yticklabels([f"{r['sources']} -> {r['target']}" for r in table], fontsize=7)
        for (i, j), v in np.ndenumerate(w):
            if v > 0:
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="white" if v < 0.5 else "black")
        ax.set_title("TSF weights per task (source subset -> target)")
        fig.colorbar(im, ax=ax)
        fig.tight_layout()
        with atomic_path(self.output_dir / "weights.png") as tmp:
            fig.savefig(tmp, format="png")

    def format(self, summary: dict) -> str:
        counts = sorted({k for e in summary["targets"].values() for k in e["by_num_sources"]}, key=int)
        lines = [f"{'target':<8}" + "".join(f"{k + ' in':>9}" for k in counts) + f"{'s2s best':>10}"
                 f"{'s2s avg':>9}{'limit':>8}"]
        for t, e in summary["targets"].items():
            ks = e["by_num_sources"]
            cells = "".join(f"{ks[k]['psnr']:>9.2f}" if k in ks else f"{'':>9}" for k in counts)
            s2s = e.get("seq2seq_single", {})
            lines.append(f"{t:<8}{cells}{s2s.get('best_psnr', float('nan')):>10.2f}"
                         f"{s2s.get('average_psnr', float('nan')):>9.2f}"
                         f"{e['limit_psnr'] if e['limit_psnr'] is not None else float('nan'):>8.2f}")
        groups = {f"{t} <- {k} in": v for t, e in summary["targets"].items() for k, v in e["by_num_sources"].items()}
        return "PSNR (dB) by number of inputs\n" + "\n".join(lines) + "\n" + format_contrast_table(groups)
