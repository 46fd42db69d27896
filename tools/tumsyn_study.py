#!/usr/bin/env python
"""What TUMSyn shows on the phantom, where every contrast and resolution has a known answer.

1. Data: a training phantom whose subjects are imaged with the named sequences and random
   spin-echo / gradient-echo / inversion-recovery protocols, none of them proton-density weighted
   (``--exclude-modalities PDw``); a test phantom of other subjects with every preset protocol.
2. Training: both stages of ``bundles/tumsyn`` with ``quick.json`` (and ``--overrides``).
3. Evaluation (``configs/evaluate.json`` on the test phantom): every target asked for by its
   sidecar's prompt from t1 and t2, beside the denoise-and-remap baseline and the noise-floor
   limit; ``pd_se`` is a protocol of a weighting never seen in training.
4. Physics sweeps: from a test subject's t1, prompts sweeping TE (spin echo, TR 4000), TI
   (inversion recovery, TR 9000) and the flip angle (spoiled gradient echo, TR 15): the
   synthesized grey-matter / white-matter and CSF / white-matter ratios beside the same subject
   simulated under exactly that protocol (the truth) and the nominal signal equations.
5. Super-resolution: the same subject's t1 acquired with slices three times thicker
   (``slice_thickness``), synthesized back to isotropic voxels with its own prompt, beside
   trilinear and cubic B-spline upsampling of the same input, scored against the noiseless
   high-resolution t1.

    python tools/tumsyn_study.py --out study_out [--subjects 12] [--overrides '{"features": 32}'] --report tumsyn.md
    python tools/tumsyn_study.py --out study_out --skip-train --weights final --report tumsyn_final.md

``--weights best_val`` evaluates ``models/model_best_val.pt`` (the epoch of the best validation PSNR at
the queries) instead of ``models/model.pt`` (the last epoch's); ``--weights final`` the last epoch's
training checkpoint (for study folders trained when ``model.pt`` was the best validation PSNR's).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from demo import TIMINGS, sh  # noqa: E402

BUNDLE = REPO / "bundles" / "tumsyn"


def sweeps() -> dict[str, list[tuple[float, dict]]]:
    """The swept protocols: name -> [(parameter value, protocol)]."""
    se = [(te, {"kind": "se", "TR": 4000.0, "TE": te, "TI": None, "FA": 90.0}) for te in (15, 30, 60, 90, 120, 150)]
    ir = [(ti, {"kind": "ir", "TR": 9000.0, "TE": 100.0, "TI": ti, "FA": 90.0}) for ti in (400, 800, 1500, 2200, 2600, 3200)]
    gre = [(fa, {"kind": "spgr", "TR": 15.0, "TE": 4.0, "TI": None, "FA": fa}) for fa in (3, 5, 10, 20, 30, 40)]
    return {"spin echo TR 4000, TE (ms)": se, "inversion recovery TR 9000 TE 100, TI (ms)": ir,
            "spoiled gradient echo TR 15 TE 4, flip angle (deg)": gre}


def tissue_ratios(img: np.ndarray, tissue: np.ndarray) -> dict[str, float]:
    """Mean of grey matter and CSF over the mean of white matter (tissue codes 1 CSF, 2 GM, 3 WM)."""
    m = {c: float(img[tissue == k].mean()) for c, k in (("csf", 1), ("gm", 2), ("wm", 3)) if (tissue == k).any()}
    return {"gm/wm": m["gm"] / m["wm"], "csf/wm": m["csf"] / m["wm"]}


def load_network(overrides: dict, ckpt: Path, device):
    from monai.bundle import ConfigParser

    from mrsynth.workflows import load_weights

    parser = ConfigParser()
    parser.read_config([str(BUNDLE / "configs" / "inference.json"), str(BUNDLE / "configs" / "quick.json")])
    parser.update(overrides)
    net = parser.get_parsed_content("network_def")
    load_weights(net, ckpt, map_location="cpu")
    return net.to(device).eval(), parser


def normalise(x: np.ndarray, ref: np.ndarray | None = None):
    """TUMSyn's scaling (percentiles 0.01 and 99.9 of ``ref`` over non-zero voxels onto [0, 1])."""
    from mrsynth.transforms import apply_range, percentile_range

    lo, hi = percentile_range(x if ref is None else ref, 0.01, 99.9, 1.0, True)
    return np.asarray(apply_range(x, lo, hi, 0.0, 1.0), dtype=np.float32)


def synthesize(net, inferer, tokenizer, volume: np.ndarray, affine, prompt, spacing, device, source_prompt=None) -> np.ndarray:
    from mrsynth.transforms import acquisition_features
    from mrsynth.workflows import resampled_geometry

    _, shape = resampled_geometry(affine, volume.shape, spacing)
    x = torch.as_tensor(volume)[None, None].to(device)
    with torch.no_grad():
        acq = acquisition_features(prompt)
        if getattr(net, "source_protocol", False):  # the target's vector, then the source's
            acq = torch.cat([acq, acquisition_features(source_prompt)])
        acq = acq[None, :net.acquisition_features].to(device)  # a --numbers-only loop's: 12
        return inferer(x, net, tokenizer(prompt.format()).to(device), acq, output_shape=shape)[0, 0].cpu().numpy()


def physics(net, inferer, tokenizer, subject_seed: int, spacing: float, device) -> dict:
    """Sweep rows: parameter, truth and synthesis ratios, nominal ratios."""
    from mrsynth.data.phantom import modality_of, nominal_signals, simulate_subject
    from mrsynth.transforms import Prompt

    protocols = {f"s{i}_{j}": p for i, rows in enumerate(sweeps().values()) for j, (_, p) in enumerate(rows)}
    subj = simulate_subject(subject_seed, spacing=spacing, sequences=("t1",), protocols=protocols)
    src = normalise(subj.images["t1"])
    side = subj.sidecars["t1"]
    base = Prompt.from_sidecar(side)
    fs = subj.info["field_strength"]
    out = {}
    for i, (title, rows) in enumerate(sweeps().items()):
        out[title] = []
        for j, (value, p) in enumerate(rows):
            prompt = base.replace(modality=modality_of(p), tr=p["TR"], te=p["TE"], ti=p["TI"], fa=p["FA"])
            syn = synthesize(net, inferer, tokenizer, src, subj.affine, prompt, None, device, source_prompt=base)
            truth = subj.noiseless[f"s{i}_{j}"]
            nom = nominal_signals(p, fs)
            out[title].append({"value": value, "modality": modality_of(p), "truth": tissue_ratios(truth, subj.tissue),
                               "synthesis": tissue_ratios(syn, subj.tissue),
                               "nominal": {"gm/wm": nom["gm"] / nom["wm"], "csf/wm": nom["csf"] / nom["wm"]},
                               "r_brain": float(np.corrcoef(syn[subj.brain_mask], truth[subj.brain_mask])[0, 1])})
    return out


def super_resolution(net, inferer, tokenizer, subject_seed: int, spacing: float, factor: int, device) -> dict:
    """Thick-slice t1 -> isotropic t1: TUMSyn beside trilinear and cubic B-spline, vs the noiseless HR t1."""
    from scipy import ndimage

    from mrsynth.data.phantom import simulate_subject
    from mrsynth.metrics import psnr, ssim
    from mrsynth.transforms import Prompt
    from mrsynth.workflows import resampled_geometry

    hr = simulate_subject(subject_seed, spacing=spacing, sequences=("t1",))
    lr = simulate_subject(subject_seed, spacing=spacing, sequences=("t1",), slice_thickness=factor * spacing)
    lo_img = lr.images["t1"]
    src = normalise(lo_img)
    truth = normalise(hr.noiseless["t1"], ref=lo_img)  # the same intensity scale as the input
    prompt = Prompt.from_sidecar(lr.sidecars["t1"]).replace(voxel_size=(spacing, spacing, spacing))
    source = Prompt.from_sidecar(lr.sidecars["t1"])  # the thick-slice t1's own prompt (a source_protocol network's)
    syn = synthesize(net, inferer, tokenizer, src, lr.affine, prompt, spacing, device, source_prompt=source)
    _, shape = resampled_geometry(lr.affine, src.shape, spacing)
    u = [(np.arange(m) + 0.5) * n / m - 0.5 for n, m in zip(src.shape, shape)]
    grid = np.meshgrid(*u, indexing="ij")
    interp = {f"{name}": ndimage.map_coordinates(src, grid, order=order, mode="nearest")
              for name, order in (("trilinear", 1), ("B-spline (cubic)", 3))}
    z = min(shape[2], truth.shape[2])
    truth, brain = truth[..., :z], hr.brain_mask[..., :z]
    rows = {}
    for name, img in {"TUMSyn": syn, **interp}.items():
        img = img[..., :z]
        rows[name] = {"psnr_brain": psnr(img, truth, data_range=1.0, mask=brain),
                      "ssim": ssim(img * 2 - 1, truth * 2 - 1, axis=-1),
                      "r_brain": float(np.corrcoef(img[brain], truth[brain])[0, 1])}
    return {"factor": factor, "input_voxel": [spacing, spacing, factor * spacing], "output_voxel": spacing, "rows": rows,
            "slices": {"input": src, "synthesis": syn, "truth": truth, **interp}}


def picture(sweep: dict, sr: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(13, 8))
    for ax, (title, rows) in zip(axes[0], sweep.items()):
        x = [r["value"] for r in rows]
        for key, colour in (("csf/wm", "tab:blue"), ("gm/wm", "tab:orange")):
            ax.plot(x, [r["truth"][key] for r in rows], "-", color=colour, label=f"{key} truth")
            ax.plot(x, [r["nominal"][key] for r in rows], ":", color=colour, label=f"{key} signal equation")
            ax.plot(x, [r["synthesis"][key] for r in rows], "o", color=colour, label=f"{key} TUMSyn")
        ax.axhline(1.0, color="grey", lw=0.5)
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("tissue / white matter")
    axes[0][0].legend(fontsize=7)
    sl = sr["slices"]
    x = sl["truth"].shape[0] // 2
    for ax, key in zip(axes[1], ("trilinear", "synthesis", "truth")):
        img = sl[key][x, :, : sl["truth"].shape[2]]
        ax.imshow(np.rot90(img), cmap="gray", vmin=0, vmax=1, aspect="auto")
        ax.set_title({"synthesis": "TUMSyn from thick slices", "truth": "noiseless high-resolution t1",
                      "trilinear": "trilinear from thick slices"}[key], fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def markdown(summary: dict, sweep: dict, sr: dict, args, timings: dict) -> str:
    stage1 = "stage 1 reused (`--skip-stage1`)" if args.skip_stage1 else f"stage 1 {args.epochs1}"
    lines = [f"TUMSyn, quick.json{f' with {args.overrides}' if args.overrides else ''}, {stage1} / stage 2 "
             f"{args.epochs2} epochs, {args.subjects} training subjects at {args.spacing:g} mm with "
             f"{args.protocols} random protocols each (no PD-weighted one), test on {args.test_subjects} other subjects "
             f"(`python tools/tumsyn_study.py --out DIR{' --overrides ' + repr(args.overrides) if args.overrides else ''} "
             f"--subjects {args.subjects} --epochs1 {args.epochs1} --epochs2 {args.epochs2}"
             f"{' --skip-stage1' if args.skip_stage1 else ''}`); training "
             f"{timings.get('stage1', 0) / 60:.0f} + {timings.get('stage2', 0) / 60:.0f} min on this machine's CPU; "
             + {"model": "weights: models/model.pt.", "best_val": "weights: the best validation PSNR's (`--weights best_val`).",
                "final": "weights: the last epoch's training checkpoint (`--weights final`)."}[args.weights], "",
             "**Targets asked for by prompt** (PSNR and r against the noiseless target inside the brain; "
             "the remap baseline is the source denoised and mapped by the best a*x+b fitted on the target):", "",
             "| source -> target | r | r, remap baseline | PSNR | PSNR, remap | PSNR vs noisy | noise-floor limit |",
             "|---|---|---|---|---|---|---|"]
    for pair, v in summary["pairs"].items():
        g = lambda k, d=2: "" if v.get(k) is None else f"{v[k]:.{d}f}"  # noqa: E731
        lines.append(f"| {pair} | {g('r_brain', 3)} | {g('affine_r_brain', 3)} | {g('psnr_clean_brain')} | "
                     f"{g('affine_psnr_clean_brain')} | {g('psnr')} | {g('limit_psnr')} |")
    lines += ["", "**Physics sweeps** (from t1 of one test subject; truth: the subject simulated under that "
              "protocol; the signal equation at nominal tissue parameters):", ""]
    for title, rows in sweep.items():
        lines += [f"*{title}*", "", "| value | modality | CSF/WM truth | CSF/WM TUMSyn | GM/WM truth | GM/WM TUMSyn | "
                  "GM/WM signal eq. | r |", "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['value']:g} | {r['modality']} | {r['truth']['csf/wm']:.2f} | {r['synthesis']['csf/wm']:.2f} | "
                         f"{r['truth']['gm/wm']:.2f} | {r['synthesis']['gm/wm']:.2f} | {r['nominal']['gm/wm']:.2f} | "
                         f"{r['r_brain']:.3f} |")
        lines.append("")
    errs = [abs(r["synthesis"][k] / r["truth"][k] - 1) for rows in sweep.values() for r in rows for k in ("gm/wm", "csf/wm")]
    lines += [f"Median relative error of the synthesized ratios: {100 * float(np.median(errs)):.0f} % "
              f"(90th percentile {100 * float(np.percentile(errs, 90)):.0f} %).", "",
              f"**Super-resolution** ({sr['input_voxel']} mm -> {sr['output_voxel']:g} mm isotropic, t1 to t1, against "
              "the noiseless high-resolution t1, [0, 1] scale):", "",
              "| method | PSNR (brain) | SSIM | r (brain) |", "|---|---|---|---|"]
    for name, v in sr["rows"].items():
        lines.append(f"| {name} | {v['psnr_brain']:.2f} | {v['ssim']:.3f} | {v['r_brain']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--subjects", type=int, default=12)
    ap.add_argument("--test-subjects", type=int, default=3)
    ap.add_argument("--spacing", type=float, default=3.0)
    ap.add_argument("--protocols", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs1", type=int, default=100)
    ap.add_argument("--epochs2", type=int, default=200)
    ap.add_argument("--overrides", default="", help="JSON dict of config ids for training and the study, e.g. '{\"features\": 32}'")
    ap.add_argument("--sr-factor", type=int, default=3)
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--skip-stage1", action="store_true", help="reuse <out>/bundle/models/text_encoder.pt")
    ap.add_argument("--eval-sources", default="['t1','t2']")
    ap.add_argument("--eval-targets", default=None, help="default: the named sequences and every preset")
    ap.add_argument("--skip-eval", action="store_true")
    ap.add_argument("--weights", choices=("model", "best_val", "final"), default="model",
                    help="evaluate models/model.pt (the bundle's model: the last epoch's), models/model_best_val.pt "
                         "(the best validation PSNR's) or the last epoch's training checkpoint (also in study folders "
                         "trained before model.pt was the last epoch's); the evaluation goes to <out>/eval or "
                         "<out>/eval_<weights>")
    ap.add_argument("--report", type=Path, default=None)
    args = ap.parse_args(argv)

    from mrsynth.data.phantom import PROTOCOL_PRESETS, preset_image_name, write_dataset

    out = args.out.resolve()
    overrides = json.loads(args.overrides) if args.overrides else {}
    cli = [a for k, v in overrides.items() for a in (f"--{k}", json.dumps(v) if not isinstance(v, str) else v)]
    train_dir, test_dir, root = out / "train", out / "test", out / "bundle"
    if not (train_dir / "phantom.json").is_file():
        write_dataset(train_dir, subjects=args.subjects, spacing=args.spacing, seed=args.seed, protocols=args.protocols,
                      exclude_modalities=["PDw"], progress=False)
    if not (test_dir / "phantom.json").is_file():
        write_dataset(test_dir, subjects=args.test_subjects, spacing=args.spacing, seed=args.seed + 1, protocols=2,
                      presets=list(PROTOCOL_PRESETS), progress=False)
    py = sys.executable
    timings_path = out / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    if not args.skip_train:
        common = ["--dataset_dir", str(train_dir), "--bundle_root", str(root), *cli]
        # the weights are written at validation: validate at least at the last epoch
        if not args.skip_stage1:
          sh("stage1", [py, "-m", "monai.bundle", "run", "--config_file",
                      "['configs/train_text_encoder.json','configs/quick.json']", "--max_epochs", str(args.epochs1),
                        "--val_interval", str(min(10, args.epochs1)), *common], cwd=BUNDLE)
        sh("stage2", [py, "-m", "monai.bundle", "run", "--config_file",
                      "['configs/train_text_encoder.json','configs/train.json','configs/quick.json']",
                      "--max_epochs", str(args.epochs2), "--val_interval", str(min(10, args.epochs2)), *common], cwd=BUNDLE)
        timings.update(TIMINGS)
        timings_path.write_text(json.dumps(timings, indent=2))
    ckpt = root / "models" / ("model_best_val.pt" if args.weights == "best_val" else "model.pt")
    if args.weights == "final":
        from mrsynth.handlers import latest_checkpoint

        last = latest_checkpoint(root / "models", "checkpoint")
        if last is None:
            raise FileNotFoundError(f"{root / 'models'}: no epoch checkpoint (checkpoint_*epoch=N.pt) for --weights final")
        ckpt = Path(last)
    print(f"evaluating {ckpt}")
    suffix = "" if args.weights == "model" else f"_{args.weights}"
    eval_dir = out / f"eval{suffix}"
    targets = ["t1", "t1ce", "t2", "flair", *[preset_image_name(k) for k in PROTOCOL_PRESETS]]
    targets = json.loads(args.eval_targets.replace("'", '"')) if args.eval_targets else targets
    if not args.skip_eval:
        sh("evaluate", [py, "-m", "monai.bundle", "run", "--config_file",
                        "['configs/train_text_encoder.json','configs/train.json','configs/evaluate.json','configs/quick.json']",
                        "--dataset_dir", str(test_dir), "--bundle_root", str(root), "--output_dir", str(eval_dir), "--ckpt_path", str(ckpt),
                        "--eval_sources", args.eval_sources, "--eval_targets", json.dumps(targets), *cli], cwd=BUNDLE)
    summary = json.loads((eval_dir / "summary.json").read_text())

    from mrsynth.inferers import ImplicitSlidingWindowInferer
    from mrsynth.transforms import PromptTokenizer

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net, _ = load_network(overrides, ckpt, device)
    inferer = ImplicitSlidingWindowInferer(roi_size=60, points_per_chunk=65536)
    tokenizer = PromptTokenizer()
    seeds = json.loads((test_dir / "phantom.json").read_text())["subject_seeds"]
    seed = seeds[sorted(seeds)[0]]
    t = time.time()
    sweep = physics(net, inferer, tokenizer, seed, args.spacing, device)
    sr = super_resolution(net, inferer, tokenizer, seed, args.spacing, args.sr_factor, device)
    print(f"sweeps and super-resolution: {time.time() - t:.0f} s")
    picture(sweep, sr, out / f"tumsyn_study{suffix}.png")
    (out / f"study{suffix}.json").write_text(json.dumps({"sweep": sweep, "super_resolution": {k: v for k, v in sr.items() if k != "slices"},
                                                "pairs": summary["pairs"]}, indent=2))
    text = markdown(summary, sweep, sr, args, timings)
    print(text)
    if args.report:
        args.report.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
