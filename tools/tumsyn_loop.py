#!/usr/bin/env python
"""Why TUMSyn's stage 2 stays a copy of its source on the phantom: the bare training loop with
variants, evaluated on whole volumes every ``--every`` steps.

The loop is stage 2 of the bundle (``configs/train_text_encoder.json`` + ``train.json`` +
``quick.json``, the data pipeline of ``train#dataloader``, the frozen stage-1 text encoder from
``<study>/bundle/models/text_encoder.pt``, loss ``0.5 L1`` in both directions) without the engine,
on the data of a finished ``tools/tumsyn_study.py`` run (``<study>/train``, ``<study>/test``), at
that study's widths (24 channels, 3 blocks, a 3 x 128 decoder, 16^3 cubes, 4000 queries). Variants:

* ``--source-acquisition``: the source's acquisition numbers beside the target's (the network
  reads 24 numbers instead of 12): does knowing the source's contrast help?
* ``--query-to-decoder``: the text query also enters the implicit decoder
  (``TUMSyn(query_to_decoder=True)``);
* ``--signal-head``: the decoder reads the target out of the canonical tissues' signals
  (``TUMSyn(signal_head=True)``); ``--source-mixture``: with the tissue mixture computed from the
  source alone, the prompt setting only the signals, a gain and an offset
  (``TUMSyn(signal_head=True, source_mixture=True)``); ``--source-protocol``: that mixture also
  reads the source's protocol (``TUMSyn(source_protocol=True)``, the source's canonical signals
  beside the image features);
* ``--no-identity-pairs``: never the same image as source and target;
* ``--scale1``: no super-resolution (``scale_range`` [1, 1]): contrast translation alone;
* ``--images t1 t2``: train on those images only (here two pairs, each with one fixed target
  prompt): can the network learn one translation when the prompt need not choose among many?
* ``--init PT``: continue from the weights of an earlier ``--save`` (a fresh optimizer);
* ``--targets-per-source K``: the 8 cubes of a step come in groups of K that share the source
  cube and the queries and differ only in the target (``targets_per_source``), so that the
  target's prompt is all that tells the K samples of a group apart.

Every ``--every`` steps it synthesizes whole volumes of one training and one test subject (the
first of each) for a few (source, target) pairs and prints Pearson r inside the brain with the
noiseless target and, beside it, with the (noisy) source: a synthesis that correlates more with
its source than with its target is a copy. Beside it, on the training batches (every tenth step,
averaged since the last evaluation): the forward L1 with each cube's own target prompt and with
the target prompt of the cube before it in the batch (another target, or in a ``--targets-per-source``
group the same source with another target): a network that ignores the prompt scores the same
with both::

    python tools/tumsyn_study.py --out study ...            # data and stage 1 (see the bundle docs)
    python tools/tumsyn_loop.py --study study --steps 600 [--query-to-decoder --no-identity-pairs --scale1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CONFIGS = REPO / "bundles" / "tumsyn" / "configs"
PAIRS = [("t1", "t2"), ("t1", "flair"), ("t2", "t1"), ("t1", "p00"), ("t2", "p01")]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", type=Path, required=True, help="a tools/tumsyn_study.py output folder")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--every", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--lr", type=float, default=1e-3, help="AdamW's learning rate (the bundle's quick.json: 1e-3)")
    ap.add_argument("--clip", type=float, default=0.0,
                    help="clip the gradient's global norm to this (0: no clipping, the bundle's); the largest norm "
                         "before clipping since the last evaluation is printed either way")
    ap.add_argument("--source-acquisition", action="store_true")
    ap.add_argument("--numbers-only", action="store_true",
                    help="the acquisition vector's 12 numbers only, without the canonical tissues' signals")
    ap.add_argument("--query-to-decoder", action="store_true")
    ap.add_argument("--signal-head", action="store_true",
                    help="the decoder reads the target out of the canonical tissues' signals (TUMSyn(signal_head=True))")
    ap.add_argument("--source-mixture", action="store_true",
                    help="--signal-head with the tissue mixture from the source alone; the prompt sets gain, offset and "
                         "the signals only (TUMSyn(signal_head=True, source_mixture=True))")
    ap.add_argument("--source-protocol", action="store_true",
                    help="--source-mixture whose mixture also reads the source's protocol (its canonical signals; "
                         "TUMSyn(source_protocol=True), the acquisition vector the target's then the source's)")
    ap.add_argument("--mixture-scale", type=float, default=1.0,
                    help="with --source-mixture: the composition logits times this (TUMSyn(mixture_scale=...))")
    ap.add_argument("--no-identity-pairs", action="store_true")
    ap.add_argument("--scale1", action="store_true")
    ap.add_argument("--targets-per-source", type=int, default=1, choices=(1, 2, 4, 8),
                    help="cubes of a step (8) that share one source cube, each with another target")
    ap.add_argument("--images", nargs="+", default=None,
                    help="train on these images of each case only (e.g. t1 t2: two pairs, two fixed prompts); "
                         "default every image the study wrote")
    ap.add_argument("--patch", type=int, default=16, help="cube size (the study's: 16)")
    ap.add_argument("--points", type=int, default=4000, help="queries per cube (the study's: 4000)")
    ap.add_argument("--sweeps", action="store_true",
                    help="at every evaluation, tools/tumsyn_study.py's TE / TI / flip-angle sweeps from the test subject's t1")
    ap.add_argument("--init", type=Path, default=None,
                    help="start from these weights (a --save of the same variant; the optimizer starts afresh)")
    ap.add_argument("--save", type=Path, default=None, help="the network's weights after the last step")
    ap.add_argument("--picture", type=Path, default=None,
                    help="PNG of the last evaluation's test subject: source, synthesis, truth per pair (middle axial slice)")
    return ap


def _read(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).get_fdata(), dtype=np.float32)


@torch.no_grad()
def evaluate(net, tokenizer, case_dir: Path, source_acq: bool, volumes: dict | None = None, width: int | None = None) -> dict:
    """r with the noiseless target and r with the source, inside the brain, per pair of PAIRS;
    ``volumes``, where given, receives ``{pair: (source, synthesis, truth)}`` on the [0, 1] scale."""
    from mrsynth.metrics import pearson_r
    from mrsynth.networks.tumsyn import voxel_centers
    from mrsynth.transforms import Prompt, acquisition_features, apply_range, percentile_range

    def value_range(img):  # TUMSyn's [0, 1] scale, percentiles over all voxels (training: non-zero ones)
        return percentile_range(img, 0.01, 99.9, 1.0, nonzero=False)

    net.eval()
    case = case_dir.name
    brain = _read(case_dir / f"{case}_tissue.nii.gz") > 0
    res = {}
    for s, t in PAIRS:
        src = torch.as_tensor(_read(case_dir / f"{case}_{s}.nii.gz"))
        x = apply_range(src, *value_range(src), b_min=0.0, b_max=1.0)[None, None]
        lo, hi = value_range(_read(case_dir / f"{case}_{t}.nii.gz"))
        truth = (_read(case_dir / f"{case}_{t}_noiseless.nii.gz") - lo) / (hi - lo)  # unclipped
        sp, tp = (Prompt.from_sidecar(case_dir / f"{case}_{n}.json") for n in (s, t))
        acq = acquisition_features(tp)[:width]
        if source_acq:
            acq = torch.cat([acq, acquisition_features(sp)[:width]])
        f = net.encode(x, net.encode_text(tokenizer([tp]), acq[None]))
        c = voxel_centers(list(x.shape[2:]))[None]
        out = torch.cat([net.query(f, c[:, i:i + 65536]) for i in range(0, c.shape[1], 65536)], 1)
        out = out.reshape(x.shape[2:]).numpy()
        if volumes is not None:
            volumes[f"{s}->{t}"] = (x[0, 0].numpy(), out, truth)
        res[f"{s}->{t}"] = (float(pearson_r(torch.as_tensor(out[brain]), torch.as_tensor(truth[brain]))),
                            float(pearson_r(torch.as_tensor(out[brain]), x[0, 0][torch.as_tensor(brain)])))
    net.train()
    return res


def picture(volumes: dict, ev: dict, path: Path, title: str) -> None:
    """One row per pair: source, synthesis, noiseless truth (middle axial slice, [0, 1])."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 2.4 * len(volumes)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(volumes), 3, squeeze=False)
    for row, (pair, vols) in zip(axes, volumes.items()):
        z = vols[0].shape[2] // 2
        for ax, img, label in zip(row, vols, ("source", f"synthesis (r {ev[pair][0]:.2f})", "truth")):
            ax.imshow(np.rot90(img[:, :, z]), cmap="gray", vmin=0, vmax=1)
            ax.set_title(f"{pair}: {label}", fontsize=8)
            ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)


@torch.no_grad()
def prompt_gain(net, b: dict, acq: torch.Tensor, l1) -> tuple[float, float]:
    """Forward L1 of batch ``b`` with each cube's own target prompt and with the next cube's."""
    net.eval()
    tokens, roll = b["label_prompt_tokens"], lambda x: torch.roll(x, 1, 0)
    own = l1(net(b["image"], tokens, b["coords"], acq), b["label"]).item()
    other = l1(net(b["image"], roll(tokens), b["coords"], roll(acq)), b["label"]).item()
    net.train()
    return own, other


def main(argv=None) -> int:
    run(build_parser().parse_args(argv))
    return 0


def run(a) -> list[tuple[int, str, dict]]:
    """Train as ``a`` says; returns ``(step, "training subject" | "test subject", {pair: (r, r with
    source)})`` for every evaluation, then ``(step, "prompt gain", {"own", "other"})`` and with
    ``--sweeps`` ``(step, "sweeps", {title: rows})``."""
    a.source_mixture = a.source_mixture or a.source_protocol
    a.source_acquisition = a.source_acquisition or a.source_protocol
    a.signal_head = a.signal_head or a.source_mixture
    if a.signal_head and a.numbers_only:
        raise SystemExit("--signal-head reads the target's signal features: leave out --numbers-only")
    if a.sweeps and a.source_acquisition and not a.source_protocol:
        raise SystemExit("--sweeps prompts with the target's acquisition numbers only: leave out --source-acquisition")
    from monai.bundle import ConfigParser

    from mrsynth.engines import TUMSynTrainStep
    from mrsynth.transforms import ACQUISITION_FEATURES, NUMBER_FEATURES

    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    torch.set_num_threads(a.threads)
    width = NUMBER_FEATURES if a.numbers_only else ACQUISITION_FEATURES
    p = ConfigParser()
    p.read_config([str(CONFIGS / f) for f in ("train_text_encoder.json", "train.json", "quick.json")])
    over = {"dataset_dir": str(a.study / "train"), "bundle_root": str(a.study / "loop"), "mlflow": False,
            "num_workers": 0, "features": 24, "num_blocks": 3, "patch_size": a.patch, "num_points": a.points,
            "decoder_channels": [128, 128, 128], "identity_pairs": not a.no_identity_pairs, "seed": a.seed,
            "acquisition_features": width * (2 if a.source_acquisition else 1),
            "query_to_decoder": a.query_to_decoder, "signal_head": a.signal_head,
            "source_mixture": a.source_mixture, "mixture_scale": a.mixture_scale, "source_protocol": a.source_protocol,
            "text_encoder_ckpt": str(a.study / "bundle" / "models" / "text_encoder.pt")}
    if a.scale1:
        over["scale_range"] = [1.0, 1.0]
    if a.images:
        over["sequences"] = list(a.images)
    if a.targets_per_source > 1:  # still 8 cubes per step: 8 / K cases, K samples each
        over.update(targets_per_source=a.targets_per_source, samples_per_case=a.targets_per_source,
                    batch_size=8 // a.targets_per_source)
    for k, v in over.items():
        p[k] = v
    loader = p.get_parsed_content("train#dataloader")
    p.get_parsed_content("load_text_encoder")  # the study's stage 1 into text_encoder_def
    tokenizer = p.get_parsed_content("tokenizer")
    net = p.get_parsed_content("network_def")  # the bundle's network at the widths above, on that text encoder
    if a.init is not None:
        net.load_state_dict(torch.load(a.init, map_location="cpu", weights_only=True))
    opt = torch.optim.AdamW([q for q in net.parameters() if q.requires_grad], lr=a.lr)
    l1 = torch.nn.L1Loss()
    train_case = sorted(d for d in (a.study / "train").iterdir() if d.is_dir())[0]
    test_case = sorted(d for d in (a.study / "test").iterdir() if d.is_dir())[0]
    print(f"variant: {vars(a)}", flush=True)
    t0, step, evals, gain, max_norm = time.time(), 0, [], [], 0.0
    net.train()
    while step < a.steps:
        for b in loader:
            step += 1
            sa, ta = b["image_prompt_acquisition"][:, :width], b["label_prompt_acquisition"][:, :width]
            fwd, bwd = (torch.cat([ta, sa], 1), torch.cat([sa, ta], 1)) if a.source_acquisition else (ta, sa)
            if step % 10 == 0:
                gain.append(prompt_gain(net, b, fwd, l1))
            out_fwd, out_bwd = TUMSynTrainStep.passes(net, b["image"], b["label_lr"], b["image_prompt_query_tokens"],
                                                      b["label_prompt_tokens"], b["coords"], True, bwd, fwd)
            loss = 0.5 * l1(out_fwd, b["label"]) + 0.5 * l1(out_bwd, b["image_values"])
            opt.zero_grad()
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(net.parameters(), a.clip if a.clip > 0 else float("inf"))
            max_norm = max(max_norm, float(norm))
            opt.step()
            if step % a.every == 0 or step == a.steps:
                for name, case in (("training subject", train_case), ("test subject", test_case)):
                    volumes = {} if a.picture is not None and name == "test subject" and step >= a.steps else None
                    ev = evaluate(net, tokenizer, case, a.source_acquisition, volumes, width)
                    if volumes:
                        picture(volumes, ev, a.picture, f"{test_case.name}, step {step}")
                    evals.append((step, name, ev))
                    print(f"step {step} ({time.time() - t0:.0f} s, loss {loss.item():.4f}, largest gradient norm "
                          f"{max_norm:.3g}) {name}: "
                          + ", ".join(f"{k} r {v[0]:.3f} (with source {v[1]:.3f})" for k, v in ev.items()), flush=True)
                if gain:
                    own, other = np.mean(gain, axis=0)
                    print(f"step {step}: training batches, forward L1 with the own target prompt {own:.4f}, with "
                          f"another cube's {other:.4f} (ratio {other / own:.2f})", flush=True)
                    evals.append((step, "prompt gain", {"own": float(own), "other": float(other)}))
                    gain = []
                max_norm = 0.0
                if a.sweeps:
                    evals.append((step, "sweeps", sweeps(net, tokenizer, a.study, step)))
            if step >= a.steps:
                break
    if a.save is not None:
        a.save.parent.mkdir(parents=True, exist_ok=True)
        torch.save(net.state_dict(), a.save)
    return evals


def sweeps(net, tokenizer, study: Path, step: int) -> dict:
    """tools/tumsyn_study.py's physics sweeps from the t1 of the study's first test subject, printed
    as the synthesized CSF / WM and GM / WM ratios beside the truth's."""
    import json

    from tumsyn_study import physics

    from mrsynth.inferers import ImplicitSlidingWindowInferer

    seeds = json.loads((study / "test" / "phantom.json").read_text())["subject_seeds"]
    spacing = float(json.loads((study / "test" / "phantom.json").read_text()).get("spacing", 3.0))
    net.eval()
    out = physics(net, ImplicitSlidingWindowInferer(roi_size=60, points_per_chunk=65536), tokenizer,
                  seeds[sorted(seeds)[0]], spacing, torch.device("cpu"))
    net.train()
    for title, rows in out.items():
        print(f"step {step}, {title}: " + "; ".join(f"{r['value']:g}: CSF/WM {r['synthesis']['csf/wm']:.2f} (truth {r['truth']['csf/wm']:.2f}), "
                                      f"GM/WM {r['synthesis']['gm/wm']:.2f} ({r['truth']['gm/wm']:.2f})" for r in rows), flush=True)
    return out


if __name__ == "__main__":
    sys.exit(main())
