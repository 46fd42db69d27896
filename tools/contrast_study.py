#!/usr/bin/env python
"""Why a small Seq2Seq stayed at the identity, how far one source can go, and what a synthesis's error
is made of: three measurements.

``loss``: trains the quick-size Seq2Seq network (no bundle, no handlers: the bare loop) on a
phantom training folder with a chosen loss balance and pair sampling, and prints, every
``--eval-every`` steps, the Pearson r of each synthesis with the noiseless target inside the brain
of unseen phantom subjects (15 axial slices around the centre), with the r of the same synthesis
with the (noiseless) source beside it: a synthesis that correlates more with its source than with
its target is a copy::

    python tools/phantom.py --out /tmp/p --subjects 16 --spacing 2 --seed 0
    python tools/contrast_study.py loss --data /tmp/p                       # the paper's balance
    python tools/contrast_study.py loss --data /tmp/p --self 0 --cycle 0 --identity-prob 0
    python tools/contrast_study.py loss --data /tmp/p --self 0 --cycle 0 --target t2   # one target only
    python tools/contrast_study.py loss --data /tmp/p --self 0 --cycle 0 --channels 32 64   # capacity
    python tools/contrast_study.py loss --data /tmp/p --self 0 --cycle 0 --identity-prob 0.1 --mixture 8  # mixture output
    python tools/contrast_study.py loss --data /tmp/p --self 0 --cycle 0 --identity-prob 0.1 --mixture 8 --bias-aug 0.15
    python tools/contrast_study.py loss --data /tmp/p --self 0 --cycle 0 --identity-prob 0.1 --mixture 8 --lesion-prob 0.5

``ratios``: how far each subject's contrast ratios (tissue / WM, noiseless images) lie from the
other subjects' mean: what a model that knows every tissue but paints the sequence's typical
contrast, not the scan's own protocol, gets within 15 %::

    python tools/contrast_study.py ratios --data /tmp/p

``ceiling``: for one unseen subject, the correlation with the noiseless target that a *pointwise*
intensity map of the source can reach at best (a 64-bin lookup table fitted on the target: from
the noiseless source and from the noisy one), beside the tissue oracle. What a pointwise map cannot
reach, a model must get from spatial context (anatomy)::

    python tools/contrast_study.py ceiling

``errors``: what a synthesis's error is made of, per case of a phantom test folder synthesized by
the bundle's ``inference.json`` (``--source`` to ``--target``). The synthesis and the truth are each
projected on the tissue fractions (the least-squares fit ``sum_k f_k mu_k + c`` inside the brain):
the projection's r with the truth says how well the synthesis paints each tissue, the share of
the synthesis's variance the projection leaves says how much of it is not tissue at all, and the
fitted means (over white matter's) are its contrast beside the truth's::

    python -m monai.bundle run --config_file "['configs/inference.json','configs/quick.json']" \
        --dataset_dir /tmp/test --output_dir /tmp/syn --target t2 --source t1     # in bundles/seq2seq
    python tools/contrast_study.py errors --data /tmp/test --synthesized /tmp/syn --source t1 --target t2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mrsynth.data.phantom import TISSUES, simulate_subject, subject_seed  # noqa: E402
from mrsynth.metrics import (  # noqa: E402
    LESION_CLASSES,
    contrast_ratios,
    fit_tissue_means,
    pearson_r,
    tissue_contrast,
    tissue_oracle,
)
from mrsynth.transforms import PAPER, apply_range, percentile_range  # noqa: E402

SEQ = ["t1", "t1ce", "t2", "flair"]
_RANGE = {k: PAPER[k] for k in ("lower_percentile", "upper_percentile", "upper_factor")}


def normalised_subject(seed: int, index: int):
    """(noisy (4, H, W, D), noiseless (4, H, W, D), brain mask, subject) on the papers' [-1, 1] scale."""
    sub = simulate_subject(subject_seed(seed, index), spacing=2.0, sequences=SEQ)
    noisy, clean = [], []
    for s in SEQ:
        lo, hi = percentile_range(sub.images[s], **_RANGE)
        noisy.append(apply_range(torch.as_tensor(sub.images[s]), lo, hi))
        clean.append(apply_range(torch.as_tensor(sub.noiseless[s]), lo, hi))
    return torch.stack(noisy), torch.stack(clean), torch.as_tensor(sub.brain_mask), sub


def loss_study(a) -> None:
    from monai.transforms import Compose

    from mrsynth.data import list_cases
    from mrsynth.networks import Seq2Seq
    from mrsynth.transforms import LoadSequencesd, ScalePercentiled

    if a.slices < 1 or a.slices % 2 == 0:
        raise SystemExit(f"--slices must be odd, got {a.slices}")
    if a.lesion_weight != 1.0 and (a.all_targets or a.self or a.cycle):
        raise SystemExit("--lesion-weight weighs the target term alone: use it with --self 0 --cycle 0, without --all-targets")
    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    torch.set_num_threads(a.threads)
    lesions = bool(a.lesion_prob or a.lesion_weight != 1.0)  # the cases' lesion labels (BraTS seg > 0) needed
    cases_ = list_cases(a.data, SEQ)
    if lesions and any("seg" not in c for c in cases_):
        raise SystemExit(f"--lesion-prob / --lesion-weight need a seg label in every case of {a.data}")
    pre = Compose([LoadSequencesd(SEQ + (["seg"] if lesions else [])), ScalePercentiled(SEQ, **PAPER)])
    loaded = [pre(c) for c in cases_]
    vols = [torch.stack([torch.as_tensor(d[s][0]) for s in SEQ]) for d in loaded]
    H, W, D = vols[0].shape[1:]
    tests = [(*t[:3], torch.as_tensor(t[3].tissue)) for t in (normalised_subject(a.test_seed, i) for i in range(2))]
    k = a.slices // 2  # slices either side of the centre one
    segs = [d["seg"][0] > 0 for d in loaded] if lesions else None
    # the slices whose centre holds lesion voxels, per case (a case without lesions: none)
    lesion_z = [[z for z in range(k, D - k) if bool(sg[..., z].any())] for sg in segs] if lesions else None
    net = Seq2Seq(2, a.slices, a.slices, num_codes=64, channels=a.channels, num_res_blocks=a.res_blocks, num_kernels=a.kernels,
                  code_dim=16, norm=None if a.norm == "none" else a.norm, mixture_classes=a.mixture)
    print(f"network: widths {a.channels}, {a.res_blocks} residual blocks, {a.kernels} kernels, {a.norm} norm, "
          f"{sum(p.numel() for p in net.parameters()) / 1e6:.2f} M parameters")
    opt = torch.optim.Adam(net.parameters(), lr=a.lr, betas=(a.beta1, 0.999))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, a.steps) if a.cosine else None
    if a.skip:  # additive skip connections: each encoder level's output joins the decoder at its size
        enc, dec = net.encoder, net.decoder

        def forward(x, code):
            enc.check_input(x)
            skips, h = [], x
            for i in range(0, len(enc.stem), 3):
                h = enc.stem[i:i + 3](h)
                skips.append(h)
            h = enc.res_blocks(h)
            emb = dec.embed(code)
            for block in dec.res_blocks:
                h = block(h, emb)
            for block, sk in zip(dec.up_blocks, reversed(skips[:-1])):
                h = block(h, emb) + sk
            return dec.head(h, emb)

        net.forward = forward
    loss = torch.nn.SmoothL1Loss(beta=a.beta)
    pointwise = torch.nn.SmoothL1Loss(beta=a.beta, reduction="none")
    df = net.encoder.downsample_factor
    if a.bias_aug:  # an extra smooth multiplicative field on the source only (its signal scale: 0 = none)
        from monai.transforms import RandBiasField

        bias_field = RandBiasField(degree=3, coeff_range=(0.0, a.bias_aug), prob=1.0)
        bias_field.set_random_state(a.seed)
    fixed_target = SEQ.index(a.target) if a.target else -1

    def sample():
        xs, ys, sc, tc, alls, ws = [], [], [], [], [], []
        cases = np.random.choice(len(vols), a.cases, replace=False)
        for j in range(a.crops * a.cases):
            c = cases[j // a.crops]
            v = vols[c]
            s, t = np.random.randint(4), np.random.randint(4)
            if a.identity_prob is not None:
                t = s if np.random.rand() < a.identity_prob else np.random.choice([i for i in range(4) if i != s])
            if fixed_target >= 0:
                t = fixed_target
                while s == t:
                    s = np.random.randint(4)
            z = np.random.randint(k, D - k)
            if a.lesion_prob and lesion_z[c] and np.random.rand() < a.lesion_prob:
                z = int(np.random.choice(lesion_z[c]))
            x0, y0 = np.random.randint(0, H - a.patch + 1), np.random.randint(0, W - a.patch + 1)
            sl = v[:, x0:x0 + a.patch, y0:y0 + a.patch, z - k:z + k + 1].permute(0, 3, 1, 2)
            xs.append(sl[s]), ys.append(sl[t]), sc.append(s), tc.append(t), alls.append(sl)
            if a.lesion_weight != 1.0:
                ws.append(1.0 + (a.lesion_weight - 1.0) * segs[c][x0:x0 + a.patch, y0:y0 + a.patch, z - k:z + k + 1]
                          .permute(2, 0, 1).float())
        w = torch.stack(ws) if ws else None
        return torch.stack(xs), torch.stack(ys), torch.tensor(sc), torch.tensor(tc), torch.stack(alls), w

    @torch.no_grad()
    def evaluate() -> dict:
        net.eval()
        res: dict = {}
        preds: dict = {}
        for noisy, clean, bm, tis in tests:
            zs = list(range(D // 2 - 15, D // 2 + 15, 2))
            m = torch.stack([bm[..., z] for z in zs])
            tz = torch.stack([tis[..., z] for z in zs])
            for si, s in enumerate(SEQ):
                x = torch.stack([noisy[si][..., z - k:z + k + 1].permute(2, 0, 1) for z in zs])
                x = F.pad(x, (0, (-W) % df, 0, (-H) % df), value=-1.0)
                for ti, t in enumerate(SEQ):
                    if s == t:
                        continue
                    p = net(x, torch.full((len(zs),), ti))[:, k, :H, :W]
                    tru = torch.stack([clean[ti][..., z] for z in zs])
                    src = torch.stack([clean[si][..., z] for z in zs])
                    res.setdefault(f"{s}->{t}", []).append((pearson_r(p[m], tru[m]), pearson_r(p[m], src[m])))
                    pr = preds.setdefault(f"{s}->{t}", ([], [], []))
                    pr[0].append(p), pr[1].append(tru), pr[2].append(tz)
        net.train()
        # contrast ratios over both subjects' evaluated slices: (ratio, synthesis / truth - 1) per pair
        ratios = {key: {c: (v["error"], v["same_side"]) for c, v in contrast_ratios(torch.cat(p), torch.cat(t), torch.cat(z)).items()}
                  for key, (p, t, z) in preds.items()}
        return {k: tuple(np.mean(v, 0)) for k, v in res.items()}, ratios

    t0, t_eval = time.time(), 0.0
    net.train()
    for step in range(1, a.steps + 1):
        x, y, sc, tc, alls, w = sample()
        n = x.shape[0]
        if a.bias_aug:
            x = torch.stack([torch.as_tensor(bias_field(xi + 1.0)).float() - 1.0 for xi in x]).clamp(-1.0, 1.0)
        if a.all_targets:  # each source slice encoded once, decoded to each of the other three sequences
            feats = net.encode(x)
            idx = [(i, t) for i in range(n) for t in range(4) if t != int(sc[i])]
            out = net.decode(feats[[i for i, _ in idx]], torch.tensor([t for _, t in idx]))
            total = a.rec * loss(out, torch.stack([alls[i, t] for i, t in idx]))  # (no --lesion-weight here)
        elif a.self or a.cycle:
            both = net(torch.cat([x, x]), torch.cat([tc, sc]))
            out_tgt, out_src = both[:n], both[n:]
            out_cyc = net(out_tgt, sc)
            total = a.rec * loss(out_tgt, y) + a.self * loss(out_src, x) + a.cycle * loss(out_cyc, x)
        elif w is not None:  # the target term, each voxel weighted (lesion voxels --lesion-weight times)
            total = a.rec * (pointwise(net(x, tc), y) * w).sum() / w.sum()
        else:  # the target term alone: one pass, as the bundle's step
            total = a.rec * loss(net(x, tc), y)
        opt.zero_grad()
        total.backward()
        opt.step()
        if sched is not None:
            sched.step()
        if step % a.eval_every == 0 or step == a.steps:
            t1 = time.time()
            ev, ratios = evaluate()
            t_eval += time.time() - t1
            ok = [abs(e) <= 0.15 and side for r in ratios.values() for e, side in r.values()]
            les = [(abs(e) <= 0.15 and side, abs(e)) for r in ratios.values() for c, (e, side) in r.items()
                   if c.split("/")[0] in LESION_CLASSES]
            print(f"step {step} ({time.time() - t0:.0f} s, {time.time() - t0 - t_eval:.0f} s training): mean r over the 12 pairs {np.mean([v[0] for v in ev.values()]):.3f}; "
                  + ", ".join(f"{k} r {v[0]:.3f} (with source {v[1]:.3f})" for k, v in ev.items() if k.startswith("t1->"))
                  + f"; contrast ratios within 15 % of the truth's: {sum(ok)}/{len(ok)}, lesions' "
                  f"{sum(o for o, _ in les)}/{len(les)} (mean |error| {np.mean([e for _, e in les]):.3f}); t1->t2 "
                  + " ".join(f"{c} {e:+.2f}" for c, (e, _) in ratios["t1->t2"].items()), flush=True)


def quantile_bins(x: np.ndarray, ref: np.ndarray, bins: int) -> np.ndarray:
    """The bin of each value of ``x`` among ``bins`` quantile bins of ``ref`` (0 .. bins - 1)."""
    q = np.quantile(ref, np.linspace(0, 1, bins + 1))
    return np.clip(np.searchsorted(q, x, side="right") - 1, 0, bins - 1)


def lookup_table(x: np.ndarray, y: np.ndarray, m: np.ndarray, bins: int = 64) -> np.ndarray:
    """The best pointwise map of ``x`` to ``y`` (mean of ``y`` per quantile bin of ``x`` inside ``m``)."""
    idx = quantile_bins(x, x[m], bins)
    means = np.array([y[m & (idx == b)].mean() if (m & (idx == b)).any() else 0.0 for b in range(bins)])
    return means[idx]


def source_limited_oracle(fractions: np.ndarray, source: np.ndarray, target: np.ndarray, m: np.ndarray,
                          bins: int = 32) -> np.ndarray:
    """The tissue oracle told only what one source can show of the lesions: the normal tissues'
    fractions (CSF, GM, WM: anatomy a model can learn) painted with fitted means, and the rest of
    each voxel (its lesion share) painted by a lookup table of the noiseless source's intensity,
    all least-squares fitted on the target inside ``m``. A lesion the source does not show (T1Gd's
    enhancing rim in T1) is painted as what it looks like there."""
    normal = fractions[:3][:, m].T.astype(np.float64)
    rest = 1.0 - normal.sum(1, keepdims=True)
    s = source[m]
    design = np.concatenate([normal, np.eye(bins)[quantile_bins(s, s, bins)] * rest, np.ones((len(s), 1))], axis=1)
    coef, *_ = np.linalg.lstsq(design, target[m], rcond=None)
    out = np.zeros_like(target)
    out[m] = design @ coef
    return out


class PopulationPredictors:
    """What a model that cannot see the target's own protocol can reach: predictors fitted on
    *training* subjects and applied unchanged to an unseen one.

    - ``tissue``: each voxel's tissue mixture painted with the training population's mean
      (z-scored) tissue means: the tissue oracle, told every tissue of the subject but only the
      typical contrast of the target sequence, not this scan's (the phantom draws TR, TE, TI,
      flip angle, field strength and each tissue's relaxation times per subject);
    - ``lut``: a lookup table from the source's intensity rank inside the brain (a model can
      know it) to the target's z-scored intensity, pooled over the training subjects.
    """

    def __init__(self, subjects, bins: int = 64):
        self.bins = bins
        self.means: dict = {}
        sums: dict = {}
        for clean, brain, frac in subjects:
            ranks = [quantile_bins(c[brain], c[brain], bins) for c in clean]  # each sequence's, once
            for ti, t in enumerate(SEQ):
                self.means.setdefault(t, []).append(tissue_contrast(frac, clean[ti], brain))
                y = clean[ti][brain]
                z = (y - y.mean()) / y.std()
                for si, s in enumerate(SEQ):
                    if s != t:
                        acc = sums.setdefault((s, t), np.zeros((2, bins)))
                        np.add.at(acc[0], ranks[si], z)
                        np.add.at(acc[1], ranks[si], 1.0)
        self.means = {t: np.mean(v, 0) for t, v in self.means.items()}
        self.tables = {k: v[0] / np.maximum(v[1], 1.0) for k, v in sums.items()}

    def tissue(self, fractions: np.ndarray, target: str, m: np.ndarray) -> np.ndarray:
        out = np.zeros(fractions.shape[1:])
        out[m] = fractions[:, m].T @ self.means[target]
        return out

    def lut(self, source: np.ndarray, s: str, t: str, m: np.ndarray) -> np.ndarray:
        out = np.zeros(source.shape)
        out[m] = self.tables[(s, t)][quantile_bins(source[m], source[m], self.bins)]
        return out


def ceiling(a) -> None:
    noisy, clean, _, sub = normalised_subject(a.test_seed, 0)
    noisy, clean = noisy.numpy(), clean.numpy()
    brain = sub.tissue > 0
    frac = np.stack([sub.fractions[k] for k in TISSUES])
    pop = None
    if a.train_subjects:
        train = []
        for i in range(a.train_subjects):
            _, c, _, s_ = normalised_subject(a.train_seed, i)
            train.append((c.numpy(), s_.tissue > 0, np.stack([s_.fractions[k] for k in TISSUES])))
        pop = PopulationPredictors(train)
    extra = " | population lookup table, noisy source | population tissue oracle" if pop else ""
    print("| source -> target | pointwise map of the noiseless source | of the noisy source | tissue oracle "
          "| source-limited oracle" + extra + " |")
    print("|---|---|---|---|---|" + ("---|---|" if pop else ""))
    for si, s in enumerate(SEQ):
        for ti, t in enumerate(SEQ):
            if s != t:
                lut_c = pearson_r(lookup_table(clean[si], clean[ti], brain), clean[ti], brain)
                lut_n = pearson_r(lookup_table(noisy[si], clean[ti], brain), clean[ti], brain)
                orc = pearson_r(tissue_oracle(frac, clean[ti], brain), clean[ti], brain)
                lim = pearson_r(source_limited_oracle(frac, clean[si], clean[ti], brain), clean[ti], brain)
                row = f"| {s} -> {t} | {lut_c:.3f} | {lut_n:.3f} | {orc:.3f} | {lim:.3f} |"
                if pop:
                    row += (f" {pearson_r(pop.lut(noisy[si], s, t, brain), clean[ti], brain):.3f} |"
                            f" {pearson_r(pop.tissue(frac, t, brain), clean[ti], brain):.3f} |")
                print(row)


def error_decomposition(synthesis: np.ndarray, truth: np.ndarray, fractions: np.ndarray, mask: np.ndarray,
                        source_noise: np.ndarray | None = None) -> dict:
    """Split ``synthesis`` and ``truth`` inside ``mask`` into their projections on the tissue
    ``fractions`` ``(K, *spatial)`` (least-squares tissue means and an offset) and the rest.

    Returns ``r`` (synthesis with truth), ``r_projection`` (the synthesis's projection with the
    truth), ``r_oracle`` (the truth's projection with the truth: the tissue oracle), ``share`` and
    ``share_truth`` (the variance each projection leaves, over the image's), ``r_residuals`` (the
    two residuals), ``r_noise`` (the synthesis's residual with ``source_noise``, NaN without it),
    ``means`` and ``means_truth`` (the fitted tissue means, ``(K,)``)."""
    m = np.asarray(mask, bool)
    design = np.concatenate([fractions[:, m].T, np.ones((int(m.sum()), 1))], axis=1)
    mu_s, mu_t = fit_tissue_means(fractions, synthesis, m), fit_tissue_means(fractions, truth, m)
    proj_s, proj_t = design @ mu_s, design @ mu_t
    syn, tru = synthesis[m], truth[m]
    res_s, res_t = syn - proj_s, tru - proj_t
    return {
        "r": pearson_r(syn, tru), "r_projection": pearson_r(proj_s, tru), "r_oracle": pearson_r(proj_t, tru),
        "share": float(res_s.var() / syn.var()), "share_truth": float(res_t.var() / tru.var()),
        "r_residuals": pearson_r(res_s, res_t),
        "r_noise": pearson_r(res_s, source_noise[m]) if source_noise is not None else float("nan"),
        "means": mu_s[:-1], "means_truth": mu_t[:-1],
    }


def error_study(a) -> None:
    import nibabel as nib

    def load(path: Path) -> np.ndarray:
        return np.asarray(nib.load(str(path)).dataobj, dtype=np.float64)

    cases = sorted(p.name for p in Path(a.synthesized).iterdir() if p.is_dir()) if Path(a.synthesized).is_dir() else []
    if not cases:
        raise SystemExit(f"errors: no case folders in {a.synthesized}")
    print(f"{a.source} -> {a.target}; r inside the brain against the noiseless target; 'share' is the part of the "
          "image's variance that its tissue projection leaves; means are over white matter's")
    print("| case | r | r, projection | r, tissue oracle | share, synthesis | share, truth | "
          "r of the residuals | r, residual with source noise | means, synthesis | means, truth |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    wm = TISSUES.index("wm")
    fmt = lambda mu: " ".join(f"{k} {v / mu[wm]:.2f}" for k, v in zip(TISSUES, mu) if k != "wm")  # noqa: E731
    for case in cases:
        d = Path(a.data) / case
        need = [Path(a.synthesized) / case / f"{case}_{a.target}_syn.nii.gz"] + [
            d / f"{case}_{n}.nii.gz" for n in (f"{a.target}_noiseless", a.source, f"{a.source}_noiseless",
                                               "fractions", "tissue")]
        missing = [p.name for p in need if not p.exists()]
        if missing:
            print(f"| {case} | skipped: no {', '.join(missing)} |", file=sys.stderr)
            continue
        syn, truth, noisy, clean, frac, tissue = (load(p) for p in need)
        e = error_decomposition(syn, truth, np.moveaxis(frac, -1, 0), tissue > 0, noisy - clean)
        print(f"| {case} | {e['r']:.3f} | {e['r_projection']:.3f} | {e['r_oracle']:.3f} | {e['share']:.3f} | "
              f"{e['share_truth']:.3f} | {e['r_residuals']:.3f} | {e['r_noise']:.3f} | {fmt(e['means'])} | "
              f"{fmt(e['means_truth'])} |")


def population_ratios(a) -> None:
    from mrsynth.data import list_cases
    from mrsynth.metrics import RATIOS, tissue_means
    from mrsynth.transforms import LoadSequencesd

    cases = list_cases(a.data, SEQ)
    if len(cases) < 2:
        raise SystemExit(f"ratios: need two or more cases in {a.data}")
    load = LoadSequencesd(SEQ + [f"{s}_noiseless" for s in SEQ] + ["tissue"])
    ratios = {s: [] for s in SEQ}
    for c in cases:
        d = load(c)
        tissue = np.asarray(d["tissue"][0])
        for s in SEQ:  # the noiseless image on the noisy image's [-1, 1] scale, as the evaluation's
            lo, hi = percentile_range(np.asarray(d[s][0]), **_RANGE)
            m = tissue_means(apply_range(torch.as_tensor(np.asarray(d[f"{s}_noiseless"][0])), lo, hi), tissue)
            ratios[s].append([m[r] / m["wm"] if r in m else np.nan for r in RATIOS])
    print(f"{len(cases)} subjects; each subject's ratios predicted by the other subjects' mean (leave one out)")
    print("| target | " + " | ".join(f"{r}/wm: range, within 15 %" for r in RATIOS) + " | all within 15 % |")
    print("|---|" + "---|" * (len(RATIOS) + 1))
    for s in SEQ:
        v = np.array(ratios[s])
        err = np.abs(np.array([np.nanmean(np.delete(v, i, 0), 0) for i in range(len(v))]) / v - 1.0)
        cells = [f"{np.nanmin(v[:, j]):.2f}-{np.nanmax(v[:, j]):.2f}, {np.mean(err[~np.isnan(err[:, j]), j] <= 0.15):.2f}"
                 for j in range(len(RATIOS))]
        print(f"| {s} | " + " | ".join(cells) + f" | {np.mean(np.where(np.isnan(err), True, err <= 0.15).all(1)):.2f} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    lo = sub.add_parser("loss", help="train the quick network with a loss balance; print r along the way")
    lo.add_argument("--data", required=True, help="phantom training folder (tools/phantom.py, 2 mm)")
    lo.add_argument("--test-seed", type=int, default=1, help="phantom seed of the 2 unseen subjects")
    lo.add_argument("--steps", type=int, default=1200)
    lo.add_argument("--eval-every", type=int, default=400)
    lo.add_argument("--rec", type=float, default=10.0, help="weight of the target term")
    lo.add_argument("--self", type=float, default=10.0, help="weight of the self-reconstruction term")
    lo.add_argument("--cycle", type=float, default=10.0, help="weight of the cycle term")
    lo.add_argument("--identity-prob", type=float, default=None, help="P(target = source); default independent draws")
    lo.add_argument("--target", choices=SEQ, default=None, help="train one target only (every other source)")
    lo.add_argument("--lr", type=float, default=1e-3)
    lo.add_argument("--beta1", type=float, default=0.5, help="Adam's first-moment decay (the papers' and the bundles': 0.5)")
    lo.add_argument("--beta", type=float, default=0.05, help="SmoothL1's transition point (quick.json: 0.05)")
    lo.add_argument("--all-targets", action="store_true",
                    help="decode every source slice to all three other sequences (one encoding, three targets)")
    lo.add_argument("--patch", type=int, default=96)
    lo.add_argument("--seed", type=int, default=0)
    lo.add_argument("--cases", type=int, default=1, help="cases per step (quick.json: 1)")
    lo.add_argument("--crops", type=int, default=4, help="crops per case and step (quick.json: 4)")
    lo.add_argument("--cosine", action="store_true", help="cosine decay of the learning rate to 0 over --steps")
    lo.add_argument("--skip", action="store_true",
                    help="add each encoder level's output to the decoder's at the same size (not the paper's)")
    lo.add_argument("--threads", type=int, default=1)
    lo.add_argument("--slices", type=int, default=3, help="adjacent axial slices in and out, odd (the bundles': 3)")
    lo.add_argument("--bias-aug", type=float, default=0.0,
                    help="MONAI RandBiasField on each source crop (coefficients up to this; 0: off)")
    lo.add_argument("--lesion-prob", type=float, default=0.0,
                    help="probability that a crop's centre slice is drawn among the case's slices holding lesion "
                         "voxels (its seg > 0) instead of uniformly (0: uniform)")
    lo.add_argument("--lesion-weight", type=float, default=1.0,
                    help="weight of the target term on lesion voxels (seg > 0) against 1 elsewhere")
    lo.add_argument("--mixture", type=int, default=0,
                    help="Seq2Seq's mixture_classes: each output voxel a softmax mixture of this many learned "
                         "classes, one intensity per class and target (0: the paper's tanh output)")
    lo.add_argument("--channels", type=int, nargs="+", default=[16, 32], help="encoder widths (quick.json: 16 32)")
    lo.add_argument("--res-blocks", type=int, default=2, help="residual blocks (quick.json: 2)")
    lo.add_argument("--kernels", type=int, default=4, help="kernels per hyper-convolution bank (quick.json: 4)")
    lo.add_argument("--norm", default="instance", choices=["instance", "batch", "none"],
                    help="normalisation layers (the paper's and the bundles': instance)")
    ce = sub.add_parser("ceiling", help="what a pointwise map of one source can reach")
    ce.add_argument("--test-seed", type=int, default=1)
    ce.add_argument("--train-seed", type=int, default=0, help="phantom seed of the training subjects")
    ce.add_argument("--train-subjects", type=int, default=0,
                    help="fit the population predictors on this many training subjects (0: none)")
    er = sub.add_parser("errors", help="what a synthesis's error is made of, tissue by tissue")
    er.add_argument("--data", required=True, help="phantom test folder (noiseless images, fractions, tissue maps)")
    er.add_argument("--synthesized", required=True, help="inference.json's --output_dir")
    er.add_argument("--source", required=True, choices=SEQ)
    er.add_argument("--target", required=True, choices=SEQ)
    ra = sub.add_parser("ratios", help="each subject's contrast ratios against the other subjects' mean")
    ra.add_argument("--data", required=True, help="phantom folder (noiseless images and tissue maps)")
    a = ap.parse_args(argv)
    {"loss": loss_study, "ceiling": ceiling, "errors": error_study, "ratios": population_ratios}[a.cmd](a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
