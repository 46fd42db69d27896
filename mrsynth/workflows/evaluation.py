"""Pairwise evaluation of a one-to-one synthesis model: every available (source, target) pair
of every case, scored as the papers do, beside the noise-floor limit and a copy-the-source
baseline; then the sequence-contribution ranking and the imaging-differentiation maps.

Outputs in ``output_dir``:

- ``metrics.csv``: one row per (case, source, target) with ``psnr``, ``ssim``, ``psnr_fg``
  (foreground-masked), ``lpips`` (empty when its weights are absent), ``limit_psnr`` and
  ``limit_psnr_fg`` (the noise floor, where the phantom's noiseless image exists),
  ``copy_psnr`` / ``copy_ssim`` (the source itself as the prediction);
- ``summary.json``: per-pair means, overall means, LPIPS availability, the ranking;
- ``contribution.csv`` and ``contribution.png``: ``C_t`` / ``C_d`` per sequence over whole
  volumes; where cases have a label map (``seg``), for every region of ``regions`` (default:
  the lesion, labels > 0; the bundle's ``evaluate.json`` adds the BraTS sub-regions) the
  columns ``psnr_<region>`` / ``ssim_<region>`` (inside that region) and
  ``contribution_<region>.csv`` / ``.png``: the ranking from that region alone, where the
  sequences differ in what they show (whole-volume metrics are dominated by global contrast and
  background);
- ``maps/<case>_<target>_diffmap.nii.gz`` (+ ``.png`` previews for the first cases);
- where the phantom's known answer exists (noiseless images, ``tissue`` map, ``fractions``),
  the columns of :data:`CONTRAST_COLUMNS`: scores against the *noiseless* target (whole volume
  and inside the brain), Pearson ``r_brain``, the tissue/WM contrast ratios of the synthesis
  beside the truth's, the denoise-and-remap baseline (``affine_*``), the tissue oracle
  (``oracle_*``), the same oracle with the other cases' mean contrast (``population_oracle_r_brain``)
  and the Rician-mean limit; the summary's ``checks`` say per pair whether the
  synthesis clears the bars of :func:`~mrsynth.metrics.synthesis_checks`;
- ``grids/<case>.png``: source, synthesis, truth and difference for every pair (first cases);
- with ``tracking_uri``, all of it logged to an MLflow run (``run_name`` ``evaluate``).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import torch
from monai.transforms import Compose
from scipy.ndimage import binary_fill_holes
from skimage.filters import threshold_otsu

from ..handlers.progress import CaseProgress
from ..io import save_json, save_nifti, write_csv
from ..metrics import (LPIPS, RATIOS, affine_remap_baseline, contrast_ratios, contribution_ranking,
                       differentiation_map, pearson_r, psnr, rician_mean, rician_sigma, save_map_preview, save_pair_grid,
                       ssim, ssim_map, synthesis_checks, tissue_contrast, tissue_oracle, worst_ratio,
                       write_contribution)
from ..transforms import PAPER, LoadSequencesd, ScalePercentiled
from .conditioning import TargetCode
from .synthesis import load_weights, synthesize

__all__ = ["VolumeEvaluation", "PairwiseEvaluation", "TissueStats", "foreground_mask", "format_table", "format_contrast_table", "mean_of",
           "COLUMNS", "CONTRAST_COLUMNS", "LESION"]

logger = logging.getLogger(__name__)

COLUMNS = ["case", "source", "target", "psnr", "ssim", "psnr_fg", "lpips", "limit_psnr", "limit_psnr_fg",
           "copy_psnr", "copy_ssim"]
#: scores against the known answer (empty where a case has no noiseless image / tissue map)
CONTRAST_COLUMNS = (["psnr_clean", "psnr_clean_brain", "r_brain", "affine_psnr_clean_brain", "affine_r_brain",
                     "oracle_psnr_clean_brain", "oracle_r_brain", "population_oracle_r_brain", "limit_rician_psnr"]
                    + [f"{c}_wm{sfx}" for c in RATIOS for sfx in ("", "_true")])
#: the default evaluation region: the whole lesion (any label > 0)
LESION = {"tumour": None}


class TissueStats:
    """What the leave-one-out population oracle needs of one (case, target), without keeping the
    volumes: the target's z-scored tissue means (:func:`~mrsynth.metrics.tissue_contrast`, the
    tissue oracle's fit over the fractions ``F`` inside the brain) and the sums that give Pearson r of ``F m`` with the target
    for any means ``m``: ``n``, ``F^T 1``, ``F^T F``, ``F^T y``, ``sum y``, ``sum y^2``."""

    def __init__(self, fractions, target, mask):
        self.means = tissue_contrast(fractions, target, mask)
        f = np.asarray(fractions, np.float64)[:, np.asarray(mask, bool)].T
        y = np.asarray(target, np.float64)[np.asarray(mask, bool)]
        self.n, self.f1, self.ff, self.fy = len(y), f.sum(0), f.T @ f, f.T @ y
        self.y1, self.yy = float(y.sum()), float(y @ y)

    def r(self, means) -> float:
        """Pearson r of the fractions painted with ``means`` against the target."""
        m = np.asarray(means, np.float64)
        sp, spp, spy = self.f1 @ m, m @ self.ff @ m, self.fy @ m
        cov = spy - sp * self.y1 / self.n
        var_p, var_y = spp - sp ** 2 / self.n, self.yy - self.y1 ** 2 / self.n
        return float(cov / np.sqrt(var_p * var_y)) if var_p > 0 and var_y > 0 else float("nan")


def foreground_mask(volumes: list[np.ndarray]) -> np.ndarray:
    """Head foreground: Otsu threshold of the mean of ``volumes`` ([-1, 1] scale), holes filled
    slice by slice."""
    mean = np.mean(np.stack(volumes), axis=0)
    mask = mean > threshold_otsu(mean)
    for z in range(mask.shape[-1]):
        mask[..., z] = binary_fill_holes(mask[..., z])
    return mask


class VolumeEvaluation:
    """Shared plumbing of the evaluations: weights, loading with the noiseless twins scaled like
    their noisy images, the foreground mask, the CSV and the run loop. Subclasses implement
    :meth:`evaluate_case` (rows), :meth:`summarize` and :meth:`format`."""

    columns: list[str] = COLUMNS
    #: label regions scored separately (name -> labels, ``None``: any label > 0)
    regions: dict = LESION

    def __init__(self, network, inferer, sequences, cases, output_dir, ckpt_path=None, device="cpu",
                 map_previews: int = 2, regions: dict | None = None, preprocessing=None,
                 tracking_uri: str | None = None, experiment_name: str = "evaluation"):
        self.network, self.inferer = network, inferer
        self.tracking_uri, self.experiment_name = tracking_uri, experiment_name
        if regions is not None:
            self.regions = {str(k): (None if v is None else [int(x) for x in v]) for k, v in dict(regions).items()}
        self.sequences = [s.lower() for s in sequences]
        self.cases, self.output_dir = list(cases), Path(output_dir)
        self.ckpt_path, self.device = ckpt_path, torch.device(device)
        self.map_previews = int(map_previews)
        self.preprocessing = self.build_preprocessing(preprocessing)
        self._oracles: dict = {}
        self._tissue_stats: dict = {}

    def build_preprocessing(self, load_transforms=None) -> Compose:
        """Loading and normalisation of a case for scoring.

        ``load_transforms`` is the bundle's own (``train.json``'s ``load_transforms``: a
        :class:`LoadSequencesd` then a :class:`ScalePercentiled` over the sequences): its
        normalisation settings are reused, extended to the noiseless twins (scaled with their noisy
        image's range, so the two stay comparable), the label and the phantom's tissue maps.
        ``None`` uses the papers' scaling (:data:`~mrsynth.transforms.PAPER`)."""
        scale = dict(PAPER)
        for t in (load_transforms or []):
            if isinstance(t, ScalePercentiled):
                scale = dict(lower_percentile=t.lower_percentile, upper_percentile=t.upper_percentile,
                             upper_factor=t.upper_factor, b_min=t.b_min, b_max=t.b_max, signed_keys=sorted(t.signed_keys))
        noiseless = [f"{s}_noiseless" for s in self.sequences]
        return Compose([
            LoadSequencesd(self.sequences + noiseless + ["seg", "tissue", "fractions"]),
            ScalePercentiled(self.sequences + noiseless, ref_keys=[None] * len(self.sequences) + self.sequences, **scale),
        ])

    def conditioning(self, target: str, d: dict | None = None):
        """What the network is asked for to synthesize ``target`` of the preprocessed case ``d``
        (:mod:`mrsynth.workflows.conditioning`): its code by default; a bundle whose network is
        conditioned otherwise (TUMSyn: the target's prompt) overrides this."""
        return TargetCode(target, self.sequences)

    def to_score(self, x: np.ndarray) -> np.ndarray:
        """Map an image from the network's intensity scale to the scoring scale ([-1, 1], the
        papers'); identity for networks that work on [-1, 1]."""
        return x

    def prepare(self) -> None:
        """Load weights and put the network in evaluation mode (called by :meth:`run`)."""
        if self.ckpt_path is not None:
            load_weights(self.network, self.ckpt_path, map_location=self.device)
        self.network.to(self.device).eval()

    def load(self, case: dict):
        """``(d, avail, vols, clean, mask)``: the preprocessed case, its available sequences, the
        normalised volumes ``(H, W, D)``, the noiseless ones where present, the head mask.
        ``d["regions"]`` maps every region of ``self.regions`` to its mask where the case has a
        label map and the region is not empty there, else to ``None``."""
        d = self.preprocessing(case)
        avail = [s for s in self.sequences if s in d]
        vols = {s: self.to_score(d[s][0].numpy()) for s in avail}
        clean = {s: self.to_score(d[f"{s}_noiseless"][0].numpy()) for s in avail if f"{s}_noiseless" in d}
        seg = np.asarray(d["seg"][0]) if "seg" in d else None
        d["regions"] = {}
        for name, labels in self.regions.items():
            m = None if seg is None else (seg > 0 if labels is None else np.isin(seg, list(labels)))
            d["regions"][name] = m if m is not None and m.any() else None
        head = foreground_mask(list(clean.values()) or list(vols.values()))
        d["tissue"] = np.rint(np.asarray(d["tissue"][0])).astype(np.int16) if "tissue" in d else None
        d["fractions"] = np.asarray(d["fractions"]) if "fractions" in d else None
        # where contrast is measured: the brain (tissue map) where the phantom wrote one, else the head
        d["brain"] = d["tissue"] > 0 if d["tissue"] is not None and (d["tissue"] > 0).any() else head
        return d, avail, vols, clean, head

    def contrast_scores(self, case_id: str, pred: np.ndarray, sources: list[np.ndarray], t: str, vols: dict,
                        clean: dict, d: dict) -> dict:
        """The :data:`CONTRAST_COLUMNS` of one synthesis ``pred`` of target ``t`` from the
        normalised ``sources`` (one or several volumes), against the known answer. Empty where
        the case has no noiseless target."""
        if t not in clean:
            return {}
        truth, brain, tissue = clean[t], d["brain"], d["tissue"]
        out = {"psnr_clean": psnr(pred, truth), "psnr_clean_brain": psnr(pred, truth, mask=brain),
               "r_brain": pearson_r(pred, truth, brain)}
        base, _ = affine_remap_baseline(sources, vols[t], brain)
        out["affine_psnr_clean_brain"] = psnr(base, truth, mask=brain)
        out["affine_r_brain"] = pearson_r(base, truth, brain)
        key = (case_id, t)
        if key not in self._oracles:
            o = {"limit_rician_psnr": psnr(rician_mean(truth, rician_sigma(vols[t], truth)), vols[t])}
            if d["fractions"] is not None:
                orc = tissue_oracle(d["fractions"], truth, brain)
                o.update(oracle_psnr_clean_brain=psnr(orc, truth, mask=brain), oracle_r_brain=pearson_r(orc, truth, brain))
                self._tissue_stats[key] = TissueStats(d["fractions"], truth, brain)
            self._oracles[key] = o
        out.update(self._oracles[key])
        if tissue is not None:
            for name, v in contrast_ratios(pred, truth, tissue).items():
                c = name.split("/")[0]
                out[f"{c}_wm"], out[f"{c}_wm_true"] = v["pred"], v["true"]
        return out

    @staticmethod
    def grid_slice(d: dict, ref: np.ndarray) -> int:
        """The axial slice shown in the picture grids: the one with the most lesion where the
        case has a label map, else the one with the most brain."""
        seg = np.asarray(d["seg"][0]) if "seg" in d else None
        if seg is not None and (seg > 0).any():
            return int((seg > 0).sum(axis=(0, 1)).argmax())
        if d.get("brain") is not None:
            return int(np.asarray(d["brain"]).sum(axis=(0, 1)).argmax())
        return ref.shape[-1] // 2

    def save_grid(self, case_id: str, rows: list, title: str) -> None:
        if rows:
            save_pair_grid(rows, self.output_dir / "grids" / f"{case_id}.png", title=title)

    def log_to_mlflow(self, summary: dict) -> None:
        """Log the summary's overall means and the output files to an MLflow run named
        ``evaluate`` (only with ``tracking_uri``)."""
        if not self.tracking_uri:
            return
        import mlflow

        mlflow.set_tracking_uri(self.tracking_uri)
        if mlflow.get_experiment_by_name(self.experiment_name) is None and str(self.tracking_uri).startswith("sqlite:///"):
            # as MONAI's MLFlowHandler does: a local database keeps its artifacts beside it, not in the cwd
            from monai.utils import path_to_uri

            db = Path(str(self.tracking_uri)[len("sqlite:///"):])
            mlflow.create_experiment(self.experiment_name, artifact_location=path_to_uri(db.parent / "mlruns"))
        mlflow.set_experiment(self.experiment_name)
        with mlflow.start_run(run_name="evaluate"):
            metrics = {f"eval_{k}": float(v) for k, v in (summary.get("overall") or {}).items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
            if metrics:
                mlflow.log_metrics(metrics)
            for f in sorted(self.output_dir.glob("*.csv")) + sorted(self.output_dir.glob("*.json")) + \
                    sorted(self.output_dir.glob("*.png")):
                mlflow.log_artifact(str(f))
            if (self.output_dir / "grids").is_dir():
                mlflow.log_artifacts(str(self.output_dir / "grids"), artifact_path="grids")

    def population_oracle(self, rows: list[dict]) -> None:
        """Fill ``population_oracle_r_brain`` in ``rows``: the tissue oracle of a case painted with
        the *other* evaluated cases' mean (z-scored) tissue means of the same target, not its own.

        The tissue oracle fits the means on the target itself, so it knows the target scan's
        protocol (the phantom draws TR, TE, TI, flip angle, field strength and relaxation times per
        subject), which a model told only the target's name cannot see; this one knows every
        tissue of the case but only the typical contrast of the target: the fairer ceiling for
        such a model (``bundles/seq2seq/docs/README.md``). Needs two cases or more with a
        tissue map; left empty otherwise."""
        by_target: dict = {}
        for (case_id, t), st in self._tissue_stats.items():
            by_target.setdefault(t, {})[case_id] = st
        for row in rows:
            stats = by_target.get(row.get("target"), {})
            own = stats.get(row.get("case"))
            others = [st.means for c, st in stats.items() if c != row.get("case")]
            if own is not None and others:
                row["population_oracle_r_brain"] = own.r(np.mean(others, axis=0))

    def run(self) -> dict:
        self.prepare()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        rows = []
        progress = CaseProgress(len(self.cases))
        for k, case in enumerate(self.cases):
            new = self.evaluate_case(case, preview=k < self.map_previews)
            rows += new
            progress.step(str(case.get("case", k)), f"{len(new)} pairs")
        self.population_oracle(rows)
        self.write_csv(rows, self.output_dir / "metrics.csv")
        summary = self.summarize(rows)
        save_json(summary, self.output_dir / "summary.json")
        logger.info("\n%s", self.format(summary))
        self.log_to_mlflow(summary)
        return summary

    def write_csv(self, rows: list[dict], path, columns: list[str] | None = None) -> None:
        """Write ``rows`` as CSV with ``columns`` (default :attr:`columns`; empty cells for missing values)."""
        write_csv(rows, path, self.columns if columns is None else columns)

    def save_map(self, volume, affine, name: str, preview: bool, title: str) -> None:
        out = self.output_dir / "maps" / f"{name}.nii.gz"
        save_nifti(volume, np.asarray(affine), out)
        if preview:
            save_map_preview(volume, out.with_suffix("").with_suffix(".png"), title=title)

    def evaluate_case(self, case: dict, preview: bool = False) -> list[dict]:
        raise NotImplementedError

    def summarize(self, rows: list[dict]) -> dict:
        raise NotImplementedError

    def format(self, summary: dict) -> str:
        return json.dumps(summary, indent=1)


def mean_of(rows: list[dict], key: str):
    """Mean of ``key`` over ``rows`` (``None`` values skipped; ``None`` if there are none)."""
    vals = [r[key] for r in rows if r.get(key) is not None]
    return float(np.mean(vals)) if vals else None


class PairwiseEvaluation(VolumeEvaluation):
    """Score every available (source, target) pair of ``cases`` with a one-to-one ``network``.

    Args:
        network, inferer: as for :class:`~mrsynth.workflows.SynthesisInference`.
        sequences: sequence names in code order.
        cases: the data list (``mrsynth.data.list_cases``), with ``<seq>_noiseless`` keys
            where the phantom wrote noiseless images.
        output_dir: where the tables, ranking and maps go.
        ckpt_path: weights to load first (``None``: use ``network`` as it is).
        device: torch device.
        lpips_net: LPIPS backbone (``"alex"``, the paper); ``None`` skips LPIPS.
        map_previews: number of cases whose differentiation maps get PNG previews.
        regions: label regions scored and ranked separately where a case has a label map:
            ``{name: [labels]}`` (``None`` for any label > 0); default the whole lesion,
            ``{"tumour": None}``. For BraTS labels, e.g. ``{"tumour": None, "enhancing": [4],
            "oedema": [2], "necrotic": [1]}``.
        sources, targets: restrict the pairs to these sources / targets (``None``: every
            available sequence). The differentiation map of a target is made from the syntheses
            of the sources scored (and the target's own reconstruction).
    """

    def __init__(self, network, inferer, sequences, cases, output_dir, ckpt_path=None, device="cpu",
                 lpips_net: str | None = "alex", map_previews: int = 2, regions: dict | None = None,
                 preprocessing=None, tracking_uri: str | None = None, experiment_name: str = "evaluation",
                 sources=None, targets=None):
        super().__init__(network, inferer, sequences, cases, output_dir, ckpt_path, device, map_previews, regions,
                         preprocessing, tracking_uri, experiment_name)
        self.sources = None if sources is None else [str(x).lower() for x in sources]
        self.targets = None if targets is None else [str(x).lower() for x in targets]
        self.lpips = LPIPS(lpips_net, device=str(self.device)) if lpips_net else None
        self.columns = COLUMNS + [f"{m}_{name}" for name in self.regions for m in ("psnr", "ssim")] + CONTRAST_COLUMNS

    def format(self, summary: dict) -> str:
        return format_table(summary) + "\n" + format_contrast_table(summary["pairs"])

    def evaluate_case(self, case: dict, preview: bool = False) -> list[dict]:
        d, avail, vols, clean, mask = self.load(case)
        cid = case["case"]
        rows, grid = [], []
        z = self.grid_slice(d, vols[avail[0]])
        for t in avail:
            if self.targets is not None and t not in self.targets:
                continue
            condition = self.conditioning(t, d)
            srcs = [s for s in avail if self.sources is None or s in self.sources or s == t]
            preds = {s: self.to_score(synthesize(self.network, self.inferer, condition, d, [s], self.sequences,
                                                 self.device)[0].numpy()) for s in srcs}
            tgt = vols[t]
            for s in srcs:
                if s == t:
                    continue
                p = preds[s]
                smap = ssim_map(p, tgt, axis=-1) if any(m is not None for m in d["regions"].values()) else None
                regional = {}
                for name, m in d["regions"].items():
                    regional[f"psnr_{name}"] = None if m is None else psnr(p, tgt, mask=m)
                    regional[f"ssim_{name}"] = None if m is None else float(smap[m].mean())
                rows.append({
                    "case": cid, "source": s, "target": t,
                    "psnr": psnr(p, tgt), "ssim": ssim(p, tgt, axis=-1), "psnr_fg": psnr(p, tgt, mask=mask),
                    "lpips": self.lpips(p, tgt, axis=-1) if self.lpips is not None else None,
                    "limit_psnr": psnr(clean[t], tgt) if t in clean else None,
                    "limit_psnr_fg": psnr(clean[t], tgt, mask=mask) if t in clean else None,
                    "copy_psnr": psnr(vols[s], tgt), "copy_ssim": ssim(vols[s], tgt, axis=-1), **regional,
                    **self.contrast_scores(cid, p, [vols[s]], t, vols, clean, d),
                })
                if preview:
                    grid.append((f"{s} -> {t}", vols[s][..., z], p[..., z], clean.get(t, tgt)[..., z]))
            self.save_map(differentiation_map(preds, tgt), d[t].affine, f"{cid}_{t}_diffmap", preview,
                          f"{cid}: differentiation map of {t}")
        self.save_grid(cid, grid, f"{cid}, axial slice {z}: source, synthesis, truth, difference")
        return rows

    def summarize(self, rows: list[dict]) -> dict:
        mean = mean_of

        keys = self.columns[3:]
        pairs = {}
        for s in self.sequences:
            for t in self.sequences:
                rs = [r for r in rows if r["source"] == s and r["target"] == t]
                if rs:
                    pairs[f"{s}->{t}"] = {"n": len(rs), **{k: mean(rs, k) for k in keys}}
                    if pairs[f"{s}->{t}"].get("r_brain") is not None:
                        pairs[f"{s}->{t}"]["checks"] = synthesis_checks(pairs[f"{s}->{t}"])
        summary = {
            "cases": len({r["case"] for r in rows}),
            "pairs": pairs,
            "overall": {k: mean(rows, k) for k in keys},
            "lpips": "available" if self.lpips is not None and self.lpips.available
            else (self.lpips.reason if self.lpips is not None else "not requested"),
        }
        if rows:
            summary["contribution"] = self.rank(rows, "psnr", "ssim", "lpips", "contribution")
        summary["contribution_regions"] = {}
        for name in self.regions:
            region_rows = [r for r in rows if r.get(f"psnr_{name}") is not None]
            if region_rows:
                summary["contribution_regions"][name] = self.rank(region_rows, f"psnr_{name}", f"ssim_{name}", None,
                                                                  f"contribution_{name}")
        return summary

    def rank(self, rows: list[dict], psnr_key: str, ssim_key: str, lpips_key: str | None, name: str) -> dict:
        """The contribution ranking of ``rows`` from the given metric columns, written to
        ``<name>.csv`` / ``<name>.png``; its summary (or ``{"error": ...}`` when it cannot be
        computed, e.g. a sequence never paired: the evaluation still completes)."""
        records = [{"source": r["source"], "target": r["target"], "psnr": r[psnr_key], "ssim": r[ssim_key],
                    "lpips": r[lpips_key] if lpips_key else None} for r in rows]
        present = [s for s in self.sequences if any(r["source"] == s or r["target"] == s for r in rows)]
        try:
            rank = contribution_ranking(records, present)
        except Exception as e:
            return {"error": str(e)}
        write_contribution(rank, self.output_dir / f"{name}.csv", self.output_dir / f"{name}.png")
        return {
            "metrics_used": list(rank["metrics_used"]),
            "C_t": dict(zip(rank["sequences"], map(float, rank["C_t"]))),
            "C_d": dict(zip(rank["sequences"], map(float, rank["C_d"]))),
            "rank_t": rank["rank_t"], "rank_d": rank["rank_d"],
        }


def format_contrast_table(groups: dict) -> str:
    """A plain-text table of the scores against the known answer, one line per group (pair, or
    target and number of inputs): PSNR against the noiseless target inside the brain, ``r``
    inside the brain, both for the denoise-and-remap baseline and the tissue oracle, the worst
    contrast-ratio error and whether the bars are cleared."""
    rows = {k: v for k, v in groups.items() if v.get("r_brain") is not None}
    if not rows:
        return "no known answer (noiseless images and tissue maps) to score contrast against"
    lines = [f"{'':<16}{'PSNRc':>7}{'affine':>7}{'r':>7}{'affine':>7}{'oracle':>7}{'pop.':>7}  {'worst ratio error':<22}{'bars':>5}"]
    for name, v in rows.items():
        worst = worst_ratio(v)
        w = f"{worst[0]}/wm {worst[1]:+.0%}" if worst else ""
        chk = v.get("checks") or synthesis_checks(v)
        f = lambda x: f"{x:>7.2f}" if x is not None else f"{'':>7}"  # noqa: E731
        r = lambda x: f"{x:>7.3f}" if x is not None else f"{'':>7}"  # noqa: E731
        lines.append(f"{name:<16}{f(v.get('psnr_clean_brain'))}{f(v.get('affine_psnr_clean_brain'))}"
                     f"{r(v.get('r_brain'))}{r(v.get('affine_r_brain'))}{r(v.get('oracle_r_brain'))}"
                     f"{r(v.get('population_oracle_r_brain'))}  {w:<22}"
                     f"{'ok' if chk['all'] else 'FAIL':>5}")
    lines.append("PSNRc: PSNR against the noiseless target inside the brain; affine: the source denoised and "
                 "remapped by the best a*x+b fitted on the target; oracle: tissue fractions painted with the target's "
                 "tissue means; pop.: the same with the other cases' mean contrast (the scan's protocol unknown); bars: r >= 0.9 (or oracle - 0.05), contrast ratios right side of 1 and within 15%, "
                 "beats affine in PSNRc and r")
    return "\n".join(lines)


def format_table(summary: dict) -> str:
    """A plain-text table of the per-pair means (model vs copy baseline vs noise-floor limit)."""
    nan = float("nan")
    g = lambda v, k: nan if v.get(k) is None else v[k]  # noqa: E731
    lines = [f"{'pair':<14}{'n':>4}{'PSNR':>8}{'SSIM':>8}{'PSNR_fg':>9}{'copy':>8}{'limit':>8}{'Rician':>8}"]
    for name, v in list(summary["pairs"].items()) + [("overall", {"n": "", **summary["overall"]})]:
        lines.append(f"{name:<14}{v['n']:>4}{v['psnr']:>8.2f}{v['ssim']:>8.3f}{v['psnr_fg']:>9.2f}"
                     f"{v['copy_psnr']:>8.2f}{g(v, 'limit_psnr'):>8.2f}{g(v, 'limit_rician_psnr'):>8.2f}")
    lines.append("limit: the noiseless image as the prediction; Rician: its expected magnitude at the target's noise "
                 "level (the best prediction of a noisy magnitude image)")
    if "contribution" in summary and "rank_d" in summary["contribution"]:
        c = summary["contribution"]
        lines.append(f"C_t ranking (generates others best first): {' > '.join(c['rank_t'])}")
        lines.append(f"C_d ranking (hardest to generate first):   {' > '.join(c['rank_d'])}")
    for name, c in summary.get("contribution_regions", {}).items():
        if "rank_d" in c:
            lines.append(f"In region '{name}': C_t {' > '.join(c['rank_t'])}; C_d {' > '.join(c['rank_d'])}")
    lines.append(f"LPIPS: {summary['lpips']}")
    return "\n".join(lines)
