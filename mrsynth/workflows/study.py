"""A side-by-side study of one-to-one synthesis networks on data with a known answer (the
phantom): multi-step translation, robustness to corrupted sources, and how common the
networks' latent is across sequences.

For every case of ``cases`` and every network of ``networks``:

1. **Multi-step translation** along ``chain`` (default ``t1 -> t1ce -> t2 -> flair``): the first
   sequence is translated to the second, that synthesis to the third, and so on. Step ``k``
   (the ``k``-th translation) is scored against the *noiseless* target inside the brain beside
   the direct one-step translation from the chain's first sequence and the noise-floor limit
   (the noiseless target against the noisy one). Errors that a model adds at every step show
   as a widening gap between the chained and the direct scores.
2. **Robustness**: the source of every pair of ``robustness_pairs`` is corrupted with every
   kind of ``corruptions`` at every strength of ``strengths``
   (:func:`~mrsynth.transforms.corrupt`, seed ``seed + case index``), translated, and scored
   against the noiseless target inside the brain; ``input_psnr`` is the corrupted source
   against its own noiseless twin (how hard the corruption is).
3. **The common latent**: the latent of every available sequence (:func:`encode_volume`),
   written as NIfTI, and for every pair of sequences the :func:`relative_latent_distance`
   inside the brain: 0 for the same latent, about 2 for unrelated ones, whatever the latent's
   size (a 3-channel quantized latent and a 256-channel feature map compare).

Outputs in ``output_dir``: ``multistep.csv``, ``robustness.csv``, ``latent.csv`` (columns
:data:`MULTISTEP_COLUMNS`, :data:`ROBUSTNESS_COLUMNS`, :data:`LATENT_COLUMNS`),
``latents/<model>/<case>_<seq>_latent.nii.gz``, ``robustness.png`` (one panel per corruption,
PSNR against strength, one line per model), ``study.json`` (the summaries, see
:meth:`TranslationStudy.summarize`); the markdown tables of :func:`format_multistep`,
:func:`format_robustness` and :func:`format_latent` are logged, and with ``tracking_uri`` all of
it goes to an MLflow run (as :meth:`VolumeEvaluation.log_to_mlflow`).
"""

from __future__ import annotations

import itertools
import logging
import math
import re
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import find_data_error
from ..handlers.progress import CaseProgress
from ..io import atomic_path, save_json, save_nifti
from ..metrics import pearson_r, psnr, to_numpy
from ..transforms import CORRUPTIONS, STRENGTHS, corrupt, corruption_levels, extract_slab
from .evaluation import VolumeEvaluation, mean_of
from .synthesis import load_weights, synthesize_volume

__all__ = ["TranslationStudy", "encode_volume", "relative_latent_distance", "latent_affine", "downsample_mask",
           "format_multistep", "format_robustness", "format_latent", "CHAIN", "ROBUSTNESS_PAIRS",
           "MULTISTEP_COLUMNS", "ROBUSTNESS_COLUMNS", "LATENT_COLUMNS"]

logger = logging.getLogger(__name__)

#: the default translation chain
CHAIN = ("t1", "t1ce", "t2", "flair")
#: the default (source, target) pairs of the robustness part
ROBUSTNESS_PAIRS = (("t1", "t2"), ("t2", "flair"), ("flair", "t1"), ("t1ce", "t2"))
MULTISTEP_COLUMNS = ["model", "case", "step", "source", "target", "psnr_clean_brain", "r_brain",
                     "direct_psnr_clean_brain", "direct_r_brain", "limit"]
ROBUSTNESS_COLUMNS = ["model", "case", "source", "target", "kind", "strength", "input_psnr", "psnr_clean_brain",
                      "r_brain"]
LATENT_COLUMNS = ["model", "case", "seq_a", "seq_b", "distance"]


def _as_latent(z) -> torch.Tensor:
    """The latent tensor of what ``network.encode`` returned (a tensor, or a tuple whose first
    item is the latent)."""
    if isinstance(z, (tuple, list)):
        z = z[0]
    if not isinstance(z, torch.Tensor):
        raise TypeError(f"network.encode returned {type(z).__name__}; expected a tensor (B, C, *spatial)")
    return z


def _factors(padded: tuple, latent: tuple) -> tuple[int, ...]:
    """The down-sampling factor of every spatial axis: padded input size / latent size."""
    if any(p % q for p, q in zip(padded, latent)):
        raise ValueError(f"the latent {tuple(latent)} does not divide the input {tuple(padded)}: "
                         "pad the input to a multiple of the network's down-sampling factor (divisible_by)")
    return tuple(int(p // q) for p, q in zip(padded, latent))


@torch.no_grad()
def _encode(network, volume, num_slices: int, device, batch_size: int = 8,
            divisible_by: int = 4) -> tuple[np.ndarray, tuple[int, int, int]]:
    """:func:`encode_volume` and the down-sampling factors of ``(H, W, D)``."""
    v = torch.as_tensor(volume).float().as_subclass(torch.Tensor)  # a MetaTensor's meta data is not needed
    if v.ndim != 4 or v.shape[0] != 1:
        raise ValueError(f"encode_volume expects a volume (1, H, W, D), got shape {tuple(v.shape)}")
    if num_slices < 0:
        raise ValueError(f"num_slices must be >= 0 (0 = whole volume), got {num_slices}")
    k = max(int(divisible_by), 1)
    h, w, depth = (int(s) for s in v.shape[1:])
    ph, pw = (-h) % k, (-w) % k
    if num_slices == 0:
        x = F.pad(v[None], (0, (-depth) % k, 0, pw, 0, ph), value=-1.0)
        z = _as_latent(network.encode(x.to(device)))
        factors = _factors(tuple(x.shape[2:]), tuple(z.shape[2:]))
        keep = [math.ceil(s / f) for s, f in zip((h, w, depth), factors)]
        return z[0, :, : keep[0], : keep[1], : keep[2]].float().cpu().numpy(), factors
    out, factors = [], (1, 1)
    for start in range(0, depth, max(int(batch_size), 1)):
        centers = range(start, min(start + int(batch_size), depth))
        slabs = torch.stack([extract_slab(v, c, num_slices) for c in centers])
        slabs = F.pad(slabs, (0, pw, 0, ph), value=-1.0)  # (n, num_slices, H', W')
        z = _as_latent(network.encode(slabs.to(device)))
        factors = _factors(tuple(slabs.shape[2:]), tuple(z.shape[2:]))
        out.append(z[:, :, : math.ceil(h / factors[0]), : math.ceil(w / factors[1])].float().cpu())
    return torch.cat(out).permute(1, 2, 3, 0).numpy(), (*factors, 1)


def encode_volume(network, volume, num_slices: int, device, batch_size: int = 8, divisible_by: int = 4) -> np.ndarray:
    """The latent of a whole volume under ``network.encode``.

    For ``num_slices > 0`` (2D / 2.5D networks), a slab of ``num_slices`` adjacent slices around
    every axial slice ``z`` (:func:`~mrsynth.transforms.extract_slab`, edges replicated) is
    padded in-plane with -1 (background) to a multiple of ``divisible_by``, as
    :class:`~mrsynth.inferers.SlabInferer` does; the slabs are encoded ``batch_size`` at a time,
    every latent is cropped back to ``ceil(H / f), ceil(W / f)`` (``f`` the network's
    down-sampling factor, read from the shapes) and the latents are stacked along the last axis.
    For ``num_slices == 0`` (3D networks) the whole volume, padded on all three axes, is
    encoded once.

    Args:
        network: has ``encode(x)``: ``(B, num_slices, H', W')`` (or ``(1, 1, H', W', D')``) ->
            ``(B, C, H' / f, W' / f)`` (or 3D); a tuple is accepted, its first item is the latent.
        volume: ``(1, H, W, D)`` tensor (or array), normalised.
        num_slices: slices per slab, 0 for a 3D network.
        device: where the network runs.
        batch_size: slabs per ``encode`` call.
        divisible_by: the padding multiple (at least the network's down-sampling factor).

    Returns:
        float32 array ``(C, ceil(H / f), ceil(W / f), D)``; for 3D ``(C, h, w, d)``.
    """
    return _encode(network, volume, num_slices, device, batch_size, divisible_by)[0]


def latent_affine(affine, factors) -> np.ndarray:
    """The affine of a latent grid: the voxel axes of ``affine`` (4 x 4) scaled by the
    down-sampling ``factors`` (one per axis); the origin stays, as the centre of latent voxel
    ``i`` is that of input voxel ``f * i`` for a stride-``f`` convolution padded ``(k - 1) / 2``."""
    out = np.array(affine, dtype=np.float64, copy=True)
    for axis, f in enumerate(factors):
        out[:3, axis] *= f
    return out


def downsample_mask(mask, factors) -> np.ndarray:
    """A boolean mask ``(H, W, D)`` on the latent grid ``(ceil(H / f_0), ceil(W / f_1),
    ceil(D / f_2))``: a latent voxel is inside when any voxel of its block is (max pooling)."""
    m = torch.as_tensor(np.asarray(mask, dtype=np.float32))[None, None]
    f = tuple(int(x) for x in factors)
    return F.max_pool3d(m, kernel_size=f, stride=f, ceil_mode=True)[0, 0].numpy() > 0


def relative_latent_distance(a, b, mask=None) -> float:
    """Scale-free distance of two latents ``(C, *spatial)`` inside ``mask`` (``*spatial``):

    ``mean((a - b) ** 2) / (0.5 * (var(a) + var(b)))``, with ``var`` the variance of each channel
    over the masked voxels, averaged over channels. 0 for identical latents, 2 for independent
    ones with equal channel means, above 2 for anti-correlated ones or different channel means
    (4 for ``b = -a`` of zero mean); it does not change when both latents are scaled together, so
    a 3-channel quantized latent and a 256-channel feature map are comparable. NaN for an empty
    mask; for two constant latents 0 when equal, else infinity.
    """
    x, y = to_numpy(a), to_numpy(b)
    if x.shape != y.shape:
        raise ValueError(f"latent shapes differ: {x.shape} and {y.shape}")
    if x.ndim < 2:
        raise ValueError(f"latents must be (C, *spatial), got shape {x.shape}")
    if mask is None:
        x, y = x.reshape(x.shape[0], -1), y.reshape(y.shape[0], -1)
    else:
        m = np.asarray(mask, dtype=bool)
        if m.shape != x.shape[1:]:
            raise ValueError(f"mask shape {m.shape} does not fit the latent grid {x.shape[1:]}")
        x, y = x[:, m], y[:, m]
    if x.shape[1] == 0:
        return float("nan")
    num = float(np.mean((x - y) ** 2))
    den = 0.5 * float(x.var(axis=1).mean() + y.var(axis=1).mean())
    if den == 0:
        return 0.0 if num == 0 else float("inf")
    return num / den


def _network_factor(network) -> int | None:
    for obj in (network, getattr(network, "encoder", None)):
        f = getattr(obj, "downsample_factor", None)
        if isinstance(f, int) and f > 0:
            return f
    return None


class TranslationStudy(VolumeEvaluation):
    """Multi-step translation, robustness to corrupted sources and latent closeness of one or
    several one-to-one synthesis networks, side by side (module docstring).

    Args:
        networks: ``{name: network}``; every network is called as
            ``synthesize_volume(network, inferer, volume, code, device)`` (``code`` the index of
            the target in ``sequences``) and, for the latent part, has ``encode(x)``. Names are
            used in file names (letters, digits, ``_``, ``-``, ``.``).
        inferer: whole-volume inferer (e.g. :class:`~mrsynth.inferers.SlabInferer`); its
            ``divisible_by`` and ``batch_size`` are used for the latents too.
        sequences: sequence names in code order.
        cases: the data list (``mrsynth.data.list_cases``), with ``<seq>_noiseless`` keys and a
            ``tissue`` map where the phantom wrote them (scores against the known answer are empty
            without them).
        output_dir: where the tables, latents and figure go.
        ckpt_paths: ``{name: path or None}``: weights loaded into the named network first (a
            missing file raises :class:`FileNotFoundError` naming it); absent names are used as
            they are.
        device: torch device.
        num_slices: slices per slab of the networks' input (0 for 3D networks), for the latents.
        chain: the sequences of the multi-step translation, in order (at least two).
        robustness_pairs: ``[(source, target), ...]``; default :data:`ROBUSTNESS_PAIRS`. Pairs a
            case lacks are skipped.
        corruptions: corruption kinds (default all of :data:`~mrsynth.transforms.CORRUPTIONS`).
        strengths: corruption strengths (of :data:`~mrsynth.transforms.STRENGTHS`).
        latents: run the latent part.
        seed: corruption seed of the first case (case ``k`` uses ``seed + k``).
        preprocessing: the bundle's load transforms (their normalisation is reused, see
            :meth:`VolumeEvaluation.build_preprocessing`).
        max_cases: use only the first cases.
        tracking_uri, experiment_name: MLflow logging (off without ``tracking_uri``).

    A case that cannot be read is skipped with a warning naming the file; a case without some
    sequences does what it can (no step, pair or latent that needs them).
    """

    def __init__(self, networks: dict, inferer, sequences, cases, output_dir, ckpt_paths: dict | None = None,
                 device="cpu", num_slices: int = 3, chain=CHAIN, robustness_pairs=None, corruptions=None,
                 strengths=STRENGTHS, latents: bool = True, seed: int = 0, preprocessing=None,
                 max_cases: int | None = None, tracking_uri: str | None = None, experiment_name: str = "evaluation"):
        super().__init__(None, inferer, sequences, cases, output_dir, ckpt_path=None, device=device, map_previews=0,
                         preprocessing=preprocessing, tracking_uri=tracking_uri, experiment_name=experiment_name)
        self.networks = dict(networks)
        if not self.networks:
            raise ValueError("TranslationStudy needs at least one network: networks={name: network}")
        for name in self.networks:
            if not re.fullmatch(r"[\w.-]+", str(name)):
                raise ValueError(f"network name {name!r}: use letters, digits, '_', '-' and '.' (it names files)")
        self.ckpt_paths = {str(k): v for k, v in dict(ckpt_paths or {}).items()}
        unknown = sorted(set(self.ckpt_paths) - set(self.networks))
        if unknown:
            raise ValueError(f"ckpt_paths names unknown network(s) {unknown}; networks: {sorted(self.networks)}")
        if max_cases is not None:
            self.cases = self.cases[: int(max_cases)]
        if num_slices < 0:
            raise ValueError(f"num_slices must be >= 0 (0 = 3D), got {num_slices}")
        self.num_slices = int(num_slices)
        self.chain = [self._known(s) for s in chain]
        if len(self.chain) < 2:
            raise ValueError(f"chain needs at least two sequences, got {self.chain}")
        pairs = ROBUSTNESS_PAIRS if robustness_pairs is None else robustness_pairs
        self.robustness_pairs = [(self._known(s), self._known(t)) for s, t in pairs]
        self.corruptions = list(CORRUPTIONS if corruptions is None else corruptions)
        for kind in self.corruptions:
            if kind not in CORRUPTIONS:
                raise ValueError(f"unknown corruption {kind!r}; valid kinds: {', '.join(CORRUPTIONS)}")
        self.strengths = [int(s) for s in strengths]
        for s in self.strengths:
            if s not in STRENGTHS:
                raise ValueError(f"corruption strength must be one of {STRENGTHS}, got {s}")
        self.latents, self.seed = bool(latents), int(seed)
        if self.latents:
            lacking = [n for n, net in self.networks.items() if not callable(getattr(net, "encode", None))]
            if lacking:
                raise ValueError(f"network(s) {lacking} have no encode(x) for the latent part; pass latents=False")

    def _known(self, name) -> str:
        s = str(name).lower()
        if s not in self.sequences:
            raise ValueError(f"unknown sequence {name!r}; sequences: {', '.join(self.sequences)}")
        return s

    def prepare(self) -> None:
        """Load the weights of ``ckpt_paths`` and put every network in evaluation mode."""
        for name, net in self.networks.items():
            if self.ckpt_paths.get(name) is not None:
                load_weights(net, self.ckpt_paths[name], map_location=self.device,
                             hint=f"network {name!r}: train it first or fix ckpt_paths")
            net.to(self.device).eval()

    # --- the three parts ------------------------------------------------------------------------

    def translate(self, network, volume, target: str) -> np.ndarray:
        """``volume`` (``(1, H, W, D)`` tensor or ``(H, W, D)`` array) translated to ``target``;
        ``(H, W, D)`` array."""
        v = torch.as_tensor(volume).float().as_subclass(torch.Tensor)  # no MetaTensor overhead in the network
        v = v[None] if v.ndim == 3 else v
        return synthesize_volume(network, self.inferer, v, self.sequences.index(target), self.device)[0].numpy()

    def translate_chain(self, network, volume, targets) -> list[np.ndarray]:
        """Translate ``volume`` to ``targets[0]``, that synthesis to ``targets[1]``, and so on;
        the synthesis of every step, ``(H, W, D)`` arrays."""
        out, x = [], volume
        for t in targets:
            x = self.translate(network, x, t)
            out.append(x)
        return out

    def multistep_rows(self, name: str, network, cid: str, d: dict, avail: list, vols: dict, clean: dict,
                       cache: dict) -> list[dict]:
        """Rows of :data:`MULTISTEP_COLUMNS` (one per step whose target the case has)."""
        first = self.chain[0]
        if first not in avail:
            return []
        chained = self.translate_chain(network, d[first], self.chain[1:])
        cache.setdefault((name, first, self.chain[1]), chained[0])
        brain, rows = d["brain"], []
        for step, (t, pred) in enumerate(zip(self.chain[1:], chained), start=1):
            if t not in avail:
                continue
            row = {"model": name, "case": cid, "step": step, "source": ">".join(self.chain[:step]), "target": t}
            if t in clean:
                truth = clean[t]
                direct = self._synthesis(name, network, d, first, t, cache)
                row.update(psnr_clean_brain=psnr(pred, truth, mask=brain), r_brain=pearson_r(pred, truth, brain),
                           direct_psnr_clean_brain=psnr(direct, truth, mask=brain),
                           direct_r_brain=pearson_r(direct, truth, brain), limit=psnr(truth, vols[t], mask=brain))
            rows.append(row)
        return rows

    def robustness_rows(self, name: str, network, cid: str, index: int, d: dict, avail: list, vols: dict,
                        clean: dict, cache: dict) -> list[dict]:
        """Rows of :data:`ROBUSTNESS_COLUMNS`: every pair the case has, every corruption kind and
        strength (strength 0 is the uncorrupted synthesis)."""
        brain, rows = d["brain"], []
        for s, t in self.robustness_pairs:
            if s not in avail or t not in avail:
                continue
            for kind in self.corruptions:
                for strength in self.strengths:
                    if strength == 0:
                        x, pred = vols[s], self._synthesis(name, network, d, s, t, cache)
                    else:
                        key = ("corrupted", s, kind, strength)
                        if key not in cache:
                            cache[key] = corrupt(vols[s], kind, strength, seed=self.seed + index)
                        x = cache[key]
                        pred = self.translate(network, x, t)
                    row = {"model": name, "case": cid, "source": s, "target": t, "kind": kind, "strength": strength,
                           "input_psnr": psnr(x, clean[s], mask=brain) if s in clean else None}
                    if t in clean:
                        row.update(psnr_clean_brain=psnr(pred, clean[t], mask=brain),
                                   r_brain=pearson_r(pred, clean[t], brain))
                    rows.append(row)
        return rows

    def latent_rows(self, name: str, network, cid: str, d: dict, avail: list) -> list[dict]:
        """Encode every available sequence, write ``latents/<name>/<case>_<seq>_latent.nii.gz``
        (array ``(h, w, D, C)``, affine :func:`latent_affine`) and return the rows of
        :data:`LATENT_COLUMNS`, one per pair of sequences."""
        known = [f for f in (getattr(self.inferer, "divisible_by", None), _network_factor(network)) if f]
        divisible = math.lcm(*(int(f) for f in known)) if known else 4
        batch = int(getattr(self.inferer, "batch_size", 8) or 8)
        lat, factors = {}, (1, 1, 1)
        for s in avail:
            z, factors = _encode(network, d[s], self.num_slices, self.device, batch, divisible)
            save_nifti(np.moveaxis(z, 0, -1), latent_affine(np.asarray(getattr(d[s], "affine", np.eye(4))), factors),
                       self.output_dir / "latents" / name / f"{cid}_{s}_latent.nii.gz")
            lat[s] = z
        if len(lat) < 2:
            return []
        mask = downsample_mask(d["brain"], factors)
        return [{"model": name, "case": cid, "seq_a": a, "seq_b": b,
                 "distance": relative_latent_distance(lat[a], lat[b], mask)} for a, b in itertools.combinations(lat, 2)]

    def _synthesis(self, name, network, d, s, t, cache) -> np.ndarray:
        """The uncorrupted synthesis ``s -> t`` of ``network``, computed once per case."""
        if (name, s, t) not in cache:
            cache[(name, s, t)] = self.translate(network, d[s], t)
        return cache[(name, s, t)]

    def study_case(self, case: dict, index: int = 0) -> dict[str, list[dict]]:
        """The rows of the three parts for one case (``index``: its position, for the seed)."""
        d, avail, vols, clean, _ = self.load(case)
        cid, cache = case["case"], {}
        out = {"multistep": [], "robustness": [], "latent": []}
        for name, net in self.networks.items():
            out["multistep"] += self.multistep_rows(name, net, cid, d, avail, vols, clean, cache)
            out["robustness"] += self.robustness_rows(name, net, cid, index, d, avail, vols, clean, cache)
            if self.latents:
                out["latent"] += self.latent_rows(name, net, cid, d, avail)
        return out

    # --- run, tables, summaries -----------------------------------------------------------------

    def run(self) -> dict:
        """Run the study on every case; write the tables, the figure and ``study.json``; return
        the summary."""
        self.prepare()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        rows = {"multistep": [], "robustness": [], "latent": []}
        progress = CaseProgress(len(self.cases))
        for k, case in enumerate(self.cases):
            try:
                part = self.study_case(case, index=k)
            except Exception as e:
                err = find_data_error(e)
                if err is None:
                    raise
                warnings.warn(f"case {case.get('case')} skipped: {err}", stacklevel=2)
                progress.step(str(case.get("case", k)), "skipped")
                continue
            progress.step(str(case.get("case", k)))
            for key, r in part.items():
                rows[key] += r
        self.write_csv(rows["multistep"], self.output_dir / "multistep.csv", MULTISTEP_COLUMNS)
        self.write_csv(rows["robustness"], self.output_dir / "robustness.csv", ROBUSTNESS_COLUMNS)
        if self.latents:
            self.write_csv(rows["latent"], self.output_dir / "latent.csv", LATENT_COLUMNS)
        summary = self.summarize(rows)
        if summary["robustness"]:
            plot_robustness(summary, self.output_dir / "robustness.png")
        save_json(summary, self.output_dir / "study.json")
        logger.info("\n%s", self.format(summary))
        self.log_to_mlflow(summary)
        return summary

    def summarize(self, rows: dict[str, list[dict]]) -> dict:
        """The means per model.

        Returns: ``{"cases", "models", "chain", "multistep": {model: [{"step", "source", "target",
        "n", <score means>}]}, "robustness": {model: {kind: {strength (str): {"level", "n",
        "psnr_clean_brain", "r_brain", "input_psnr", "drop_db"}}}}, "latent": {model: {"n",
        "distance" (mean over cases of the per-case mean over pairs), "cases": {case: mean},
        "pairs": {"a-b": mean}}}, "overall": {flat metrics for MLflow}}``. ``drop_db`` is the
        mean PSNR at strength 0 minus that at the strength (positive: worse).
        """
        ms, rb, lt = rows["multistep"], rows["robustness"], rows["latent"]
        cases = {r["case"] for part in rows.values() for r in part}
        summary = {"cases": len(cases), "models": list(self.networks), "chain": list(self.chain),
                   "multistep": {}, "robustness": {}, "latent": {}, "overall": {}}
        overall = summary["overall"]
        for m in self.networks:
            steps = []
            for step in range(1, len(self.chain)):
                rs = [r for r in ms if r["model"] == m and r["step"] == step]
                if rs:
                    steps.append({"step": step, "source": ">".join(self.chain[:step]), "target": self.chain[step],
                                  "n": len(rs), **{k: mean_of(rs, k) for k in MULTISTEP_COLUMNS[5:]}})
                    overall[f"{m}_step{step}_psnr_clean_brain"] = steps[-1]["psnr_clean_brain"]
                    overall[f"{m}_step{step}_direct_psnr_clean_brain"] = steps[-1]["direct_psnr_clean_brain"]
            if steps:
                summary["multistep"][m] = steps
            kinds = {}
            for kind in self.corruptions:
                per = {}
                for s in self.strengths:
                    rs = [r for r in rb if r["model"] == m and r["kind"] == kind and r["strength"] == s]
                    if rs:
                        per[str(s)] = {"level": corruption_levels(kind)[s], "n": len(rs),
                                       **{k: mean_of(rs, k) for k in ("psnr_clean_brain", "r_brain", "input_psnr")}}
                base = per.get("0", {}).get("psnr_clean_brain")
                for s, v in per.items():
                    score = v["psnr_clean_brain"]
                    v["drop_db"] = None if base is None or score is None else base - score
                    overall[f"{m}_{kind}_s{s}_psnr_clean_brain"] = v["psnr_clean_brain"]
                    overall[f"{m}_{kind}_s{s}_drop_db"] = v["drop_db"]
                if per:
                    kinds[kind] = per
            if kinds:
                summary["robustness"][m] = kinds
            rs = [r for r in lt if r["model"] == m]
            if rs:
                per_case = {c: mean_of([r for r in rs if r["case"] == c], "distance")
                            for c in dict.fromkeys(r["case"] for r in rs)}
                pairs = {f"{a}-{b}": mean_of([r for r in rs if (r["seq_a"], r["seq_b"]) == (a, b)], "distance")
                         for a, b in dict.fromkeys((r["seq_a"], r["seq_b"]) for r in rs)}
                vals = [v for v in per_case.values() if v is not None]
                summary["latent"][m] = {"n": len(rs), "distance": float(np.mean(vals)) if vals else None,
                                        "cases": per_case, "pairs": pairs}
                overall[f"{m}_latent_distance"] = summary["latent"][m]["distance"]
        summary["overall"] = {k: v for k, v in overall.items() if v is not None}
        return summary

    def format(self, summary: dict) -> str:
        return "\n\n".join([format_multistep(summary), format_robustness(summary), format_latent(summary)])


# --- tables and figure (also used by docs tools) ----------------------------------------------

def _num(v, digits: int = 2) -> str:
    return "" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}f}"


def _table(header: list[str], rows: list[list[str]], align: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def format_multistep(summary: dict) -> str:
    """Markdown table of the multi-step translation: per model and step, PSNR (dB) against the
    noiseless target inside the brain and Pearson ``r`` there, chained and direct, and the
    noise-floor limit."""
    rows = [[m, str(s["step"]), s["source"], s["target"], _num(s["psnr_clean_brain"]),
             _num(s["direct_psnr_clean_brain"]), _num(s["r_brain"], 3), _num(s["direct_r_brain"], 3), _num(s["limit"])]
            for m, steps in summary.get("multistep", {}).items() for s in steps]
    if not rows:
        return "Multi-step translation: no case has the chain's first sequence."
    head = ["model", "step", "chain", "target", "PSNRc chained", "PSNRc direct", "r chained", "r direct", "limit"]
    return ("Multi-step translation (PSNRc: dB against the noiseless target inside the brain; direct: one step "
            "from the chain's first sequence; limit: the noiseless target against the noisy one)\n\n"
            + _table(head, rows, ["---"] * 4 + ["---:"] * 5))


def format_robustness(summary: dict) -> str:
    """Markdown table of the robustness part: per corruption kind and strength, the corrupted
    input's PSNR against its noiseless twin, then per model the mean PSNR of the synthesis against
    the noiseless target inside the brain and its drop from strength 0."""
    rob = summary.get("robustness", {})
    models = list(rob)
    if not models:
        return "Robustness: no pair of sequences to corrupt."
    keys = list(dict.fromkeys((kind, s) for m in models for kind, per in rob[m].items() for s in per))
    rows = []
    for kind, s in keys:
        first = next((rob[m][kind][s] for m in models if s in rob[m].get(kind, {})), {})
        row = [kind, s, first.get("level", ""), _num(first.get("input_psnr"))]
        for m in models:
            v = rob[m].get(kind, {}).get(s, {})
            row += [_num(v.get("psnr_clean_brain")), _num(v.get("drop_db"))]
        rows.append(row)
    head = ["kind", "strength", "corruption", "input PSNRc"] + [f"{m} {c}" for m in models for c in ("PSNRc", "drop")]
    return ("Robustness (input PSNRc: the corrupted source against its noiseless twin inside the brain; PSNRc: the "
            "synthesis against the noiseless target inside the brain, dB; drop: from strength 0)\n\n"
            + _table(head, rows, ["---", "---:", "---"] + ["---:"] * (1 + 2 * len(models))))


def format_latent(summary: dict) -> str:
    """Markdown table of the latent closeness: per model the mean relative distance of the latents
    of a case's sequences (0 identical, about 2 unrelated), overall and per pair."""
    lat = summary.get("latent", {})
    if not lat:
        return "Common latent: no case with two sequences (or latents=False)."
    pairs = list(dict.fromkeys(p for v in lat.values() for p in v["pairs"]))
    rows = [[m, _num(v["distance"], 3)] + [_num(v["pairs"].get(p), 3) for p in pairs] for m, v in lat.items()]
    return ("Common latent (relative distance inside the brain, mean over a case's pairs of sequences: 0 identical, "
            "about 2 unrelated)\n\n"
            + _table(["model", "distance"] + pairs, rows, ["---"] + ["---:"] * (1 + len(pairs))))


def plot_robustness(summary: dict, png_path) -> Path:
    """``robustness.png``: one panel per corruption kind, mean PSNR of the synthesis against the
    noiseless target (inside the brain) over strength, one line per model."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rob = summary["robustness"]
    kinds = list(dict.fromkeys(k for per in rob.values() for k in per))
    fig = Figure(figsize=(3.0 * len(kinds) + 0.8, 3.2), dpi=100)
    FigureCanvasAgg(fig)
    for i, kind in enumerate(kinds):
        ax = fig.add_subplot(1, len(kinds), i + 1)
        for m, per in rob.items():
            pts = [(int(s), v["psnr_clean_brain"]) for s, v in per.get(kind, {}).items()
                   if v["psnr_clean_brain"] is not None]
            if pts:
                ax.plot(*zip(*sorted(pts)), marker="o", label=m)
        ax.set_title(kind)
        ax.set_xlabel("strength")
        ax.set_xticks(sorted({int(s) for per in rob.values() for s in per.get(kind, {})}))
        if i == 0:
            ax.set_ylabel("PSNR vs noiseless, brain (dB)")
        ax.grid(alpha=0.3)
    if kinds:
        fig.axes[0].legend(fontsize="small")
    fig.tight_layout()
    png_path = Path(png_path)
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png")
    return png_path
