"""4D synthesis: a stack of input frames -> a series of output frames (the Seq2Seq paper's dynamic
series, e.g. pre-contrast + T2 -> the post-contrast frames of a DCE series), for every case of a
folder, and its evaluation per frame and over the time-intensity curve."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from ..data import list_cases
from ..errors import DataError
from ..io import save_json, save_nifti, save_series, write_csv
from ..metrics.contrast import pearson_r
from ..metrics.image import psnr
from ..transforms import invert_range, parse_frames, scaled_signed, signed_range, stack_frames
from .synthesis import load_weights

__all__ = ["SeriesInference", "SeriesEvaluation", "curve_metrics"]

logger = logging.getLogger(__name__)


def _save_series(array: np.ndarray, affine, dest: Path, interval_s: float | None) -> Path:
    """``array`` ``(T, X, Y, Z)`` as a 4D NIfTI ``(X, Y, Z, T)``; the fourth voxel size is the frame
    interval in seconds when known. One frame without timing (a derived map such as wash-in) is
    written as a 3D image."""
    data = np.moveaxis(np.asarray(array, dtype=np.float32), 0, -1)
    if data.shape[-1] == 1 and not interval_s:
        return save_nifti(data[..., 0], affine, dest)
    return save_series(data, affine, dest, interval_s)


class SeriesInference:
    """For every case under ``dataset_dir``: stack the frames of ``inputs``, synthesize the
    ``out_frames`` output frames with ``network`` (``inferer(x (1, T_in, X, Y, Z), network, code)``
    -> ``(1, T_out, X, Y, Z)``, e.g. :class:`~mrsynth.inferers.SlabInferer` with ``out_frames``),
    map them back to the intensity scale of ``scale_of`` and write
    ``<output_dir>/<case>/<case>_<output_name>_syn.nii.gz``: a 4D NIfTI on the first input's grid,
    the frame interval as its fourth voxel size, with a JSON sidecar (inputs, code, frame times); a
    single output frame without timing (a map) is a 3D NIfTI.

    Args:
        network: the series network (weights from ``ckpt_path`` at :meth:`run`).
        inferer: see above.
        sequences: the image names to list and load for a case (e.g. ``["t1", "t2", "dce"]``).
        inputs: the input images in order (parts of a series, e.g. ``dce_pre``, or sequences).
        code: the target code.
        output_name: the name in output files (``dce_post``).
        dataset_dir, output_dir, layout: as :class:`~mrsynth.workflows.SynthesisInference`.
        preprocessing: loading (:class:`~mrsynth.transforms.LoadSequencesd` with ``series``),
            :class:`~mrsynth.transforms.SplitFramesd` and scaling.
        scale_of: the image whose scale the output is mapped back with (default the first input).
        signed_output: the output is a signed map, trained on the range ``(-h, h)`` of the
            ``scale_of`` image's upper bound ``h``, and mapped back with it (default: whether
            ``preprocessing`` scales ``output_name`` as signed,
            :class:`~mrsynth.transforms.ScalePercentiled` ``signed_keys``).
        frame_times_from: ``(series, frames)``: the output frames' times are those ``frames``
            (:func:`~mrsynth.transforms.parse_frames`) of the series' sidecar ``frame_times_s``
            (e.g. ``("dce", "1:")``); ``None``: no timing.
        ckpt_path, device: the weights and the torch device.

    A case that lacks an input is skipped with a warning naming it; the others are written, then
    :meth:`run` raises :class:`DataError` listing the skipped cases.
    """

    def __init__(self, network, inferer, sequences, inputs, code: int, output_name: str, dataset_dir, output_dir,
                 preprocessing, ckpt_path=None, device="cpu", layout: str = "auto", scale_of: str | None = None,
                 frame_times_from=None, signed_output: bool | None = None):
        self.network, self.inferer = network, inferer
        self.sequences = [str(s).lower() for s in sequences]
        self.inputs, self.code, self.output_name = [str(s) for s in inputs], int(code), str(output_name)
        self.dataset_dir, self.output_dir, self.layout = Path(dataset_dir), Path(output_dir), layout
        self.preprocessing, self.ckpt_path, self.device = preprocessing, ckpt_path, torch.device(device)
        self.scale_of = scale_of or self.inputs[0]
        self.frame_times_from = tuple(frame_times_from) if frame_times_from else None
        self.signed_output = scaled_signed(preprocessing, self.output_name) if signed_output is None else bool(signed_output)

    def cases(self) -> list[dict]:
        return list_cases(self.dataset_dir, self.sequences, layout=self.layout)

    def prepare(self):
        if self.ckpt_path is not None:
            load_weights(self.network, self.ckpt_path)
        self.network.to(self.device).eval()

    @torch.no_grad()
    def synthesize(self, d: dict, inputs=None) -> torch.Tensor:
        """The output frames ``(T_out, X, Y, Z)`` (network scale) for the preprocessed case ``d``;
        ``inputs`` replaces the stacked inputs (occlusion studies)."""
        x = stack_frames(d, self.inputs, d.get("case")).float() if inputs is None else inputs
        code = torch.tensor([self.code], device=self.device)
        return self.inferer(x[None].to(self.device), self.network, code)[0].float().cpu()

    def frame_times(self, case: dict) -> list[float] | None:
        if not self.frame_times_from:
            return None
        series, frames = self.frame_times_from
        side = case.get(f"{series}_meta")
        if not side:
            return None
        times = json.loads(Path(side).read_text()).get("frame_times_s")
        return None if times is None else [float(t) for t in times[parse_frames(frames)]]

    def output_path(self, case_id: str) -> Path:
        return self.output_dir / case_id / f"{case_id}_{self.output_name}_syn.nii.gz"

    def _one(self, case: dict) -> Path:
        d = self.preprocessing(dict(case))
        pred = self.synthesize(d).numpy()
        lo, hi, b_min, b_max = d[f"{self.scale_of}_scale"]
        if self.signed_output:
            lo, hi = signed_range(lo, hi)
        ref = d[self.inputs[0]]
        times = self.frame_times(case)
        if times is not None and len(times) != pred.shape[0]:
            logger.warning("case %s: the sidecar lists %d output frame times, the network gives %d frames; timing left out",
                           case["case"], len(times), pred.shape[0])
            times = None
        interval = float(np.diff(times).mean()) if times and len(times) > 1 else None
        out = _save_series(invert_range(pred, lo, hi, b_min, b_max), np.asarray(ref.affine), self.output_path(case["case"]),
                           interval)
        save_json({"case": case["case"], "output": self.output_name, "code": self.code, "inputs": self.inputs,
                   "input_files": [str(case[s]) for s in self.sequences
                                   if s in case and any(i == s or i.startswith(f"{s}_") for i in self.inputs)],
                   "frames": int(pred.shape[0]), "frame_times_s": times, "intensity_scale_of": self.scale_of,
                   "scale": [lo, hi, b_min, b_max]}, out.with_name(out.name.replace(".nii.gz", ".json")))
        logger.info("%s: %s <- %s (%d frames)", out, self.output_name, "+".join(self.inputs), pred.shape[0])
        return out

    def run(self) -> list[Path]:
        self.prepare()
        written, skipped = [], []
        for case in self.cases():
            try:
                written.append(self._one(case))
            except DataError as e:
                logger.warning("case %s skipped: %s", case["case"], e)
                skipped.append(f"{case['case']}: {e}")
        if skipped:
            raise DataError(f"{len(skipped)} case(s) skipped (the others are written): " + "; ".join(skipped),
                            self.dataset_dir)
        return written


def curve_metrics(pred_curve, true_curve, baseline: float, times_s) -> dict:
    """Time-intensity curve errors: ``curve_error`` (mean absolute difference over the frames, in
    percent of the pre-contrast ``baseline``), ``peak_enhancement`` of each ((max - baseline) /
    baseline, percent) and its error, ``time_to_peak`` of each (seconds) and its absolute error."""
    p, t = np.asarray(pred_curve, dtype=np.float64), np.asarray(true_curve, dtype=np.float64)
    times = np.asarray(times_s, dtype=np.float64)
    base = float(baseline) if abs(baseline) > 1e-12 else 1e-12
    pe_p, pe_t = 100 * (p.max() - base) / abs(base), 100 * (t.max() - base) / abs(base)
    ttp_p, ttp_t = float(times[int(p.argmax())]), float(times[int(t.argmax())])
    return {"curve_error_pct": float(100 * np.abs(p - t).mean() / abs(base)), "peak_enhancement_pct": pe_p,
            "peak_enhancement_true_pct": pe_t, "peak_enhancement_error_pct": pe_p - pe_t, "time_to_peak_s": ttp_p,
            "time_to_peak_true_s": ttp_t, "time_to_peak_error_s": abs(ttp_p - ttp_t)}


class SeriesEvaluation(SeriesInference):
    """The series synthesis of every case that has the truth, scored on the network's scale
    ([-1, 1] with the scale of ``scale_of``, as in training):

    * per output frame, PSNR inside the brain against the noiseless truth, beside the noise-floor
      limit (the noisy truth against the noiseless one) and the **copy baseline** (the
      pre-contrast input ``copy_of`` as every frame: what a model that ignores the contrast
      agent gives);
    * Pearson r inside the brain (all frames pooled) of the synthesis, the noisy truth and the
      baseline with the noiseless truth, and the mean of each over each region of ``regions``
      (label values of the case's ``seg``, e.g. ``{"enhancing": 4}``) and the rest of the brain:
      PSNR inside the brain is dominated by normal tissue, these show whether the tumour is there;
    * with more than one frame, the time-intensity curve inside each region: :func:`curve_metrics`
      of the synthesized and the true curves (baseline: the noiseless pre-contrast frame's mean
      there), and the copy baseline's;
    * the contribution of every input: PSNR lost when that input is replaced by background
      (-1), ranked.

    Args:
        targets: the truth's images in order (``dce_post``); their ``_noiseless`` twins are read.
        copy_of: the input used as the copy baseline (default the first input), or a number: a
            constant image on the network's scale (``0.0`` for a signed map: "no enhancement").
        regions: name -> label value of ``seg``.
        other arguments: as :class:`SeriesInference`.

    Writes ``<output_dir>/series_metrics.csv`` (one row per case and frame), ``regions.csv`` (per
    case and region: the means), ``curves.csv`` (per case and region, several frames) and
    ``summary.json`` (means, r, and the contribution ranking).
    """

    def __init__(self, *args, targets=("dce_post",), copy_of: str | float | None = None, regions=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.targets = [str(t) for t in targets]
        self.copy_of = self.inputs[0] if copy_of is None else copy_of
        self.regions = {"enhancing": 4} if regions is None else dict(regions)

    def _score(self, case: dict) -> tuple[list[dict], list[dict], dict, dict]:
        d = self.preprocessing(dict(case))
        cid = case["case"]
        truth = stack_frames(d, [f"{t}_noiseless" for t in self.targets], cid).numpy()
        noisy = stack_frames(d, self.targets, cid).numpy()
        x = stack_frames(d, self.inputs, cid).float()
        pred = self.synthesize(d, x).numpy()
        if pred.shape != truth.shape:
            raise DataError(f"the network gives {pred.shape[0]} frames, the truth has {truth.shape[0]}", cid)
        if isinstance(self.copy_of, (int, float)):
            copy = np.full(truth.shape, float(self.copy_of), dtype=np.float32)
        else:
            copy = np.broadcast_to(torch.as_tensor(d[self.copy_of]).numpy()[:1], truth.shape)
        brain = np.asarray(d["tissue"][0] > 0) if "tissue" in d else np.asarray(truth[0] > -0.99)
        times = self.frame_times(case) or list(range(truth.shape[0]))
        rows = []
        for f in range(truth.shape[0]):
            rows.append({"case": cid, "frame": f, "time_s": times[f],
                         "psnr": psnr(pred[f], truth[f], 2.0, brain), "psnr_copy": psnr(copy[f], truth[f], 2.0, brain),
                         "psnr_limit": psnr(noisy[f], truth[f], 2.0, brain)})
        curves = []
        seg = np.asarray(d["seg"][0]) if "seg" in d else None
        pooled = np.broadcast_to(brain, truth.shape)
        scores = {"case": cid, **{f"r{k}": pearson_r(v, truth, pooled)
                                  for k, v in (("", pred), ("_limit", noisy), ("_copy", copy))}}
        masks = {name: seg == value for name, value in self.regions.items() if seg is not None and (seg == value).any()}
        if seg is not None:
            masks["rest of brain"] = brain & (seg == 0)
        scores["regions"] = [{"case": cid, "region": name, "voxels": int(m.sum()),
                              **{k: float(v[:, m].mean()) for k, v in (("truth", truth), ("synthesis", pred),
                                                                       ("limit", noisy), ("copy", copy))}}
                             for name, m in masks.items()]
        pre_true = f"{self.copy_of}_noiseless"
        for name, value in self.regions.items():
            if seg is None or not (seg == value).any() or truth.shape[0] < 2:
                continue
            m = seg == value
            base = float(np.asarray(d[pre_true][0])[m].mean()) if pre_true in d else float(copy[0][m].mean())
            # curves on the [0, 2] scale (background 0), so that the baseline is positive
            true_c, pred_c, copy_c = ([float(v[f][m].mean()) + 1 for f in range(truth.shape[0])] for v in (truth, pred, copy))
            for what, c in (("synthesis", pred_c), ("copy", copy_c)):
                curves.append({"case": cid, "region": name, "voxels": int(m.sum()), "method": what,
                               **curve_metrics(c, true_c, base + 1, times)})
        # contribution: each input replaced by background
        full = float(np.mean([r["psnr"] for r in rows]))
        contrib = {}
        offsets = np.cumsum([0] + [int(torch.as_tensor(d[n]).shape[0]) for n in self.inputs])
        for i, name in enumerate(self.inputs):
            xo = x.clone()
            xo[offsets[i]:offsets[i + 1]] = -1.0
            po = self.synthesize(d, xo).numpy()
            contrib[name] = full - float(np.mean([psnr(po[f], truth[f], 2.0, brain) for f in range(truth.shape[0])]))
        return rows, curves, contrib, scores

    def run(self) -> dict:
        self.prepare()
        rows, curves, contribs, skipped, scores = [], [], [], [], []
        for case in self.cases():
            try:
                r, c, k, sc = self._score(case)
            except DataError as e:
                logger.warning("case %s skipped: %s", case["case"], e)
                skipped.append(case["case"])
                continue
            rows += r
            curves += c
            contribs.append(k)
            scores.append(sc)
            logger.info("case %s: PSNR %.2f dB over %d frames (copy %.2f, limit %.2f)", case["case"],
                        np.mean([x["psnr"] for x in r]), len(r), np.mean([x["psnr_copy"] for x in r]),
                        np.mean([x["psnr_limit"] for x in r]))
        if not rows:
            raise DataError("no case with the series truth (" + ", ".join(self.targets) + ") to evaluate", self.dataset_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        write_csv(rows, self.output_dir / "series_metrics.csv")
        if curves:
            write_csv(curves, self.output_dir / "curves.csv")
        regional = [r for sc in scores for r in sc["regions"]]
        if regional:
            write_csv(regional, self.output_dir / "regions.csv")
        region_means = {name: {k: float(np.mean([r[k] for r in regional if r["region"] == name]))
                               for k in ("truth", "synthesis", "limit", "copy")}
                        for name in dict.fromkeys(r["region"] for r in regional)}
        frames = sorted({r["frame"] for r in rows})
        per_frame = {f: {k: float(np.mean([r[k] for r in rows if r["frame"] == f])) for k in ("psnr", "psnr_copy", "psnr_limit")}
                     for f in frames}
        curve_means = {}
        for region in sorted({c["region"] for c in curves}):
            for method in ("synthesis", "copy"):
                sel = [c for c in curves if c["region"] == region and c["method"] == method]
                curve_means[f"{region}/{method}"] = {k: float(np.mean([c[k] for c in sel])) for k in
                                                     ("curve_error_pct", "peak_enhancement_error_pct", "time_to_peak_error_s")}
        contribution = {n: float(np.mean([c[n] for c in contribs])) for n in self.inputs}
        summary = {"cases": len(contribs), "skipped": skipped, "inputs": self.inputs, "targets": self.targets,
                   "psnr": float(np.mean([r["psnr"] for r in rows])), "psnr_copy": float(np.mean([r["psnr_copy"] for r in rows])),
                   "psnr_limit": float(np.mean([r["psnr_limit"] for r in rows])),
                   **{k: float(np.nanmean([sc[k] for sc in scores])) if any(np.isfinite(sc[k]) for sc in scores)
                      else float("nan") for k in ("r", "r_limit", "r_copy")},
                   "region_means": region_means, "per_frame": per_frame,
                   "curves": curve_means, "contribution_db": contribution,
                   "contribution_ranking": sorted(contribution, key=contribution.get, reverse=True)}
        save_json(summary, self.output_dir / "summary.json")
        return summary
