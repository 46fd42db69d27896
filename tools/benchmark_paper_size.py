#!/usr/bin/env python
"""Seq2Seq at the paper's width on a GPU, for a fixed training time: does it synthesize the
target's contrast, and how does that change with training time? (Issue 8's GPU table.)

One command, meant for one GPU (it runs on a CPU too, slowly; ``--quick`` makes a smoke test):

1. phantom data at ``--spacing`` mm (data seed 0: ``--subjects`` training subjects with up to one
   sequence missing per case; data seed 1: 4 unseen test subjects), written by ``--workers``
   processes;
2. one training per ``--seeds`` seed, **all at once on the same GPU** (each process gets a share
   of it), through the bundle's own ``configs/train.json`` (the paper's network, unchanged) with
   the loss recipe of ``quick.json`` (target term only, cross-contrast pairs: ``self_weight 0,
   cycle_weight 0, identity_prob 0.1``, SmoothL1 beta 0.05) and a crop that fits the phantom's
   slices (``--patch``, default 96 x 112 at 2 mm: the paper's 192 x 192 would be mostly
   padding). Validation, per-epoch checkpoints and MLflow are off; the learning rate is the
   paper's 2e-4, held (no decay within the budget). :class:`mrsynth.handlers.TimeSnapshots`
   saves the weights when each process's training time passes each of ``--marks`` seconds and
   stops it after the last;
3. every snapshot evaluated by the bundle's ``configs/evaluate.json``
   (``python -m monai.bundle run``) on the unseen subjects, all at once;
4. the tables of ``tools/benchmark_seq2seq.py`` at the last mark (mean ± sd over the seeds), and
   the trend: per mark, the training slices seen, the mean r over the cross-contrast pairs
   beside the remap baseline's, and how many pairs clear every bar in every run.

    python tools/benchmark_paper_size.py --out gpu_bench [--seeds 0 1 2] [--marks 60 120 240]
        [--report gpu.md] [--skip-run]
    python tools/benchmark_paper_size.py --out smoke --quick        # CPU smoke test (~3 minutes)
    python tools/benchmark_paper_size.py --out gpu_bench --step-only   # the training step alone

``--step-only`` times the training step alone (the same network, crop, batch, loss and mixed
precision, on random tensors: no data loading, no engine) for a batch with four targets (every
hyper-convolution one grouped convolution) and, for reference, with one target (ordinary
convolutions), with cuDNN autotuning off (what ``set_determinism`` leaves) and on (what the
training configs set, ``cudnn_benchmark``), and writes ``<out>/step.json``: where the time of a
training step goes on a GPU, against the whole loop's rate that the snapshot records give.
``--profile`` adds torch.profiler's operator table of the autotuned four-target step
(``<out>/step_profile.txt``). ``--step-variants`` times that step with fused Adam, channels-last
memory and ``torch.compile`` (``<out>/step_variants.jsonl``).

Outputs: ``<out>/seed<S>/models/model_t<M>s.pt`` and ``model_tsnapshots.json``,
``<out>/seed<S>/eval_t<M>s/summary.json`` (and the evaluation's other files),
``<out>/paper_size.json`` and the Markdown on stdout (and ``--report``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "seq2seq"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))


def training_overrides(args, seed: int, run_dir: Path) -> dict:
    """The command-line overrides of ``train.json`` for one seed's run."""
    o = {
        "dataset_dir": str(Path(args.out).resolve() / "train"), "bundle_root": str(run_dir), "seed": seed,
        "mlflow": False, "self_weight": 0.0, "cycle_weight": 0.0, "identity_prob": 0.1, "loss_beta": 0.05,
        "patch_size": list(args.patch), "batch_size": args.batch_cases, "samples_per_case": args.samples_per_case,
        "central_slices": None, "max_epochs": 100000, "val_interval": 100000, "num_workers": args.num_workers,
        "learning_rate": args.lr, "train#checkpoint_saver#save_interval": 100000,
    }
    if args.quick:
        o.update({"learning_rate": 1e-3, "num_workers": 0})
    o.update(network_overrides(args))
    return o


def network_overrides(args) -> dict:
    """The network options that training, evaluation and the step benchmark must share."""
    return {} if args.mixture is None else {"network_def#mixture_classes": args.mixture}


def configs(args, *names: str) -> list[str]:
    files = ["train.json"] + (["quick.json"] if args.quick else []) + list(names)
    return [str(BUNDLE / "configs" / f) for f in files]


def child_train(args, seed: int) -> None:
    """Train one seed until its last mark (in this process), then evaluate every snapshot."""
    from monai.bundle import ConfigWorkflow

    from mrsynth.handlers import TimeSnapshots

    run_dir = Path(args.out).resolve() / f"seed{seed}"
    over = training_overrides(args, seed, run_dir)
    wf = ConfigWorkflow(config_file=configs(args), meta_file=str(BUNDLE / "configs" / "metadata.json"),
                        logging_file=str(BUNDLE / "configs" / "logging.conf"), workflow_type="train", **over)
    wf.initialize()
    trainer = wf.parser.get_parsed_content("train#trainer")
    snaps = TimeSnapshots(wf.parser.get_parsed_content("network"), run_dir / "models", args.marks)
    snaps.attach(trainer)
    t = time.time()
    wf.run()
    wf.finalize()
    print(f"[seed {seed}] trained {time.time() - t:.0f} s: {snaps.records}", flush=True)
    del wf, trainer
    # every snapshot at once (the GPU has room; the metrics are CPU work): threads shared out
    threads = max(1, (os.cpu_count() or 1) // max(1, len(args.seeds) * len(snaps.records)))
    procs = [(rec, evaluate(args, seed, run_dir, rec, threads)) for rec in reversed(snaps.records)]
    failed = [rec["path"] for rec, (proc, t0) in procs if not _finished(seed, rec, proc, t0)]
    if failed:
        raise SystemExit(f"[seed {seed}] evaluation failed: {failed}")


def _finished(seed: int, rec: dict, proc, t0: float) -> bool:
    out, err = proc.communicate()
    if proc.returncode != 0:
        print(out[-3000:], err[-6000:], sep="\n", file=sys.stderr)
        return False
    print(f"[seed {seed}] evaluated the {rec['mark_s']:g} s snapshot in {time.time() - t0:.0f} s", flush=True)
    return True


def evaluate(args, seed: int, run_dir: Path, rec: dict, threads: int):
    """Start the bundle's evaluation of one snapshot; return the process and its start time."""
    out = run_dir / f"eval_t{rec['mark_s']:g}s"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file",
           "[" + ",".join(repr(c) for c in configs(args, "evaluate.json")) + "]",
           "--dataset_dir", str(Path(args.out).resolve() / "test"), "--bundle_root", str(run_dir),
           "--ckpt_path", rec["path"], "--output_dir", str(out), "--mlflow", "false"]
    for k, v in network_overrides(args).items():
        cmd += [f"--{k}", json.dumps(v)]
    env = dict(os.environ, PYTHONWARNINGS="ignore", GIT_PYTHON_REFRESH="quiet", OMP_NUM_THREADS=str(threads))
    return subprocess.Popen(cmd, cwd=BUNDLE, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), time.time()


def _step_inputs(args):
    """What both step benchmarks share: the parsed configs (with the network options), the device,
    whether mixed precision is on, a random batch and its target, and the runs' loss."""
    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(configs(args))
    parser.update(network_overrides(args))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    batch = args.batch_cases * args.samples_per_case
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(batch, 3, *args.patch, generator=g) * 2 - 1).to(device)
    y = (torch.rand(batch, 3, *args.patch, generator=g) * 2 - 1).to(device)
    loss_fn = torch.nn.SmoothL1Loss(beta=training_overrides(args, 0, Path(args.out))["loss_beta"])  # the runs' loss
    return parser, device, device.type == "cuda", x, y, loss_fn


def _training_step(model, opt, x, code, y, loss_fn, device, amp: bool):
    """One training step as the engine takes it: float16 autocast and gradient scaling on a GPU."""
    import torch

    scaler = torch.amp.GradScaler(device.type, enabled=amp)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            loss = loss_fn(model(x, code).float(), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    return step


def _ms_per_step(step, steps: int, amp: bool) -> float:
    import torch

    if amp:
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if amp:
        torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - t) / steps


def step_benchmark(args, steps: int = 10, warmup: int = 3) -> list[dict]:
    """Time the training step alone (see the module docstring); returns one record per variant."""
    import torch

    from mrsynth.amp import cudnn_autotune

    parser, device, amp, x, y, loss_fn = _step_inputs(args)
    batch = x.shape[0]
    codes = {"4 targets": torch.arange(batch) % 4, "1 target": torch.zeros(batch, dtype=torch.long)}
    records = []
    for autotune in (False, True):
        cudnn_autotune(autotune)
        for code_name in codes:
            torch.manual_seed(0)
            net = parser.get_parsed_content("network_def", instantiate=True, lazy=False).to(device)
            opt = torch.optim.Adam(net.parameters(), lr=args.lr, betas=(0.5, 0.999))
            step = _training_step(net, opt, x, codes[code_name].to(device), y, loss_fn, device, amp)
            for _ in range(warmup):
                step()
            ms = _ms_per_step(step, steps, amp)
            if getattr(args, "profile", False) and autotune and code_name == "4 targets":
                profile_step(step, Path(args.out) / "step_profile.txt", cuda=amp)
            rec = {"cudnn_benchmark": autotune, "targets": code_name, "batch": batch,
                   "ms_per_step": round(ms, 2), "slices_per_s": round(1000 * batch / ms, 1)}
            print(json.dumps(rec), flush=True)
            records.append(rec)
            del net, opt
            if amp:
                torch.cuda.empty_cache()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name(0) if amp else "CPU"
    (out / "step.json").write_text(json.dumps({"device": name, "patch": list(args.patch), "records": records}, indent=1))
    return records


def step_variants(args, steps: int = 10, warmup: int = 3, out_file: Path | None = None,
                  only: list[str] | None = None) -> list[dict]:
    """Time the autotuned four-target step (as :func:`step_benchmark`) with the launch-saving
    options the profile points to: Adam's fused kernel (``fused=True``), the network and batch in
    channels-last memory format, and ``torch.compile`` of the network, by default and with CUDA
    graphs (``mode="reduce-overhead"``: the step is launch-bound, and the forward has no graph break
    or host synchronisation left on a GPU) (their compile time, the warm-up, recorded apart). One JSON line per variant, appended to ``out_file`` as it is measured; ``only``
    names a subset of the variants."""
    import torch

    from mrsynth.amp import cudnn_autotune

    parser, device, amp, x, y, loss_fn = _step_inputs(args)
    cudnn_autotune(True)
    batch = x.shape[0]
    code = (torch.arange(batch) % 4).to(device)
    variants = {"Adam (foreach)": {}, "Adam fused": {"fused": True},
                "Adam fused, channels_last": {"fused": True, "channels_last": True},
                "Adam fused, torch.compile": {"fused": True, "compile": True},
                "Adam fused, torch.compile reduce-overhead": {"fused": True, "compile": "reduce-overhead"}}
    unknown = set(only or ()) - set(variants)
    if unknown:
        raise ValueError(f"unknown step variant(s) {sorted(unknown)}; known: {list(variants)}")
    records = []
    for name, opts in variants.items():
        if only is not None and name not in only:
            continue
        torch.manual_seed(0)
        net = parser.get_parsed_content("network_def", instantiate=True, lazy=False).to(device)
        xin = x
        if opts.get("channels_last"):  # the 4-D weights (the hyper-convolutions' banks are 5-D) and the batch
            for p in net.parameters():
                if p.dim() == 4:
                    p.data = p.data.contiguous(memory_format=torch.channels_last)
            xin = x.contiguous(memory_format=torch.channels_last)
        opt = torch.optim.Adam(net.parameters(), lr=args.lr, betas=(0.5, 0.999), fused=opts.get("fused"))
        mode = opts["compile"] if isinstance(opts.get("compile"), str) else None  # reduce-overhead: CUDA graphs
        model = torch.compile(net, mode=mode) if opts.get("compile") else net
        step = _training_step(model, opt, xin, code, y, loss_fn, device, amp)
        t = time.perf_counter()
        try:
            for _ in range(warmup):
                step()
        except Exception as e:  # noqa: BLE001 - a variant that cannot run is reported, the rest go on
            rec = {"variant": name, "error": f"{type(e).__name__}: {e}"[:500]}
        else:
            if amp:
                torch.cuda.synchronize()
            warm_s = time.perf_counter() - t
            ms = _ms_per_step(step, steps, amp)
            rec = {"variant": name, "batch": batch, "warmup_s": round(warm_s, 1), "ms_per_step": round(ms, 2),
                   "slices_per_s": round(1000 * batch / ms, 1)}
        print(json.dumps(rec), flush=True)
        records.append(rec)
        if out_file is not None:
            out_file.parent.mkdir(parents=True, exist_ok=True)
            with open(out_file, "a") as f:
                f.write(json.dumps(rec) + "\n")
        del net, model, opt
        if amp:
            torch.cuda.empty_cache()
    return records


def profile_step(step, path: Path, cuda: bool, steps: int = 3, rows: int = 25) -> str:
    """torch.profiler over ``steps`` calls of ``step``: the operators by total device time (CPU
    time on a CPU), written to ``path`` and returned; the next GPU measurement of issue 8 (the
    autotuned step runs far below the card's matrix rate)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        for _ in range(steps):
            step()
        if cuda:
            torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total" if cuda else "cpu_time_total", row_limit=rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(table)
    return table


def make_data(args) -> None:
    out = Path(args.out).resolve()
    common = ["--spacing", str(args.spacing), "--layout", "brats", "--quiet", "--workers", str(args.workers)]
    jobs = []
    if not (out / "train" / "phantom.json").exists():
        jobs.append([sys.executable, str(REPO / "tools" / "phantom.py"), "--out", str(out / "train"), "--subjects",
                     str(args.subjects), "--seed", "0", "--drop-max", "1", *common])
    if not (out / "test" / "phantom.json").exists():
        jobs.append([sys.executable, str(REPO / "tools" / "phantom.py"), "--out", str(out / "test"), "--subjects",
                     str(args.test_subjects), "--seed", "1", *common])
    for p in [subprocess.Popen(j) for j in jobs]:
        if p.wait() != 0:
            raise SystemExit("phantom generation failed")


def trend(runs: dict[int, dict[float, dict]], snapshots: dict[int, list[dict]]) -> list[str]:
    from benchmark_seq2seq import fmt
    from mrsynth.metrics import synthesis_checks

    lines = ["| training time per run | iterations per run | training slices seen per run | mean r, cross pairs | "
             "mean r, remap baseline | mean PSNR (noiseless, brain) | mean PSNR, remap baseline | "
             "pairs clearing every bar in every run |",
             "|---|---|---|---|---|---|---|---|"]
    marks = sorted({m for r in runs.values() for m in r})
    for m in marks:
        summaries = [r[m] for r in runs.values() if m in r]
        recs = [rec for recs in snapshots.values() for rec in recs if rec["mark_s"] == m]
        its, samples = [rec["iteration"] for rec in recs], [rec["samples"] for rec in recs]
        r_syn, r_aff, p_syn, p_aff, ok = [], [], [], [], None
        for s in summaries:
            pairs = s["pairs"].values()
            r_syn.append(sum(v["r_brain"] for v in pairs) / len(pairs))
            r_aff.append(sum(v["affine_r_brain"] for v in pairs) / len(pairs))
            p_syn.append(sum(v["psnr_clean_brain"] for v in pairs) / len(pairs))
            p_aff.append(sum(v["affine_psnr_clean_brain"] for v in pairs) / len(pairs))
            passed = {p for p, v in s["pairs"].items() if (v.get("checks") or synthesis_checks(v)).get("all")}
            ok = passed if ok is None else ok & passed
        n_pairs = len(summaries[0]["pairs"])
        lines.append(f"| {m:g} s | {fmt(its, 0)} | {fmt(samples, 0)} | {fmt(r_syn, 3)} | {fmt(r_aff, 3)} | {fmt(p_syn)} | "
                     f"{fmt(p_aff)} | {len(ok or ())}/{n_pairs} |")
    return lines


def report(args) -> str:
    from benchmark_seq2seq import markdown

    out = Path(args.out).resolve()
    runs, snapshots = {}, {}
    for seed in args.seeds:
        run_dir = out / f"seed{seed}"
        f = run_dir / "models" / "model_tsnapshots.json"
        snapshots[seed] = json.loads(f.read_text()) if f.exists() else []
        runs[seed] = {}
        for m in args.marks:
            s = run_dir / f"eval_t{m:g}s" / "summary.json"
            if s.exists():
                runs[seed][float(m)] = json.loads(s.read_text())
    last = max(args.marks)
    final = {seed: r[float(last)] for seed, r in runs.items() if float(last) in r}
    if not final:
        raise SystemExit(f"no evaluation of the {last:g} s snapshots under {out}")
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    head = (f"Paper-size Seq2Seq (`configs/train.json`'s network{', with quick.json' if args.quick else ''}) on "
            f"{device}; {len(args.seeds)} run(s) (training seeds {', '.join(map(str, args.seeds))}) trained at the "
            f"same time on the one device, {last:g} s of training each; phantom {args.spacing:g} mm, {args.subjects} training "
            f"subjects (data seed 0), {args.test_subjects} unseen test subjects (data seed 1); crops "
            f"{args.patch[0]} x {args.patch[1]}, {args.batch_cases} cases x {args.samples_per_case} slices per step"
            + ("" if args.mixture is None else f"; output a mixture of {args.mixture} classes (`--mixture`)") + ".")

    md = [head, "", markdown(final, {}, {}, argparse.Namespace(epochs=None)).split("\n", 2)[2], "", "**Trend with training time** (mean ± sd over "
          "the runs; r and PSNR inside the brain against the noiseless target, mean over the 12 pairs):", ""]
    md += trend(runs, snapshots)
    json.dump({"device": device, "args": {k: v for k, v in vars(args).items()}, "snapshots": snapshots,
               "summaries": {str(k): {f"{m:g}": v["overall"] for m, v in r.items()} for k, r in runs.items()}},
              open(out / "paper_size.json", "w"), indent=1, default=str)
    return "\n".join(md)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="gpu_bench")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--marks", type=float, nargs="+", default=[60, 120, 240], help="snapshot times, s of training")
    ap.add_argument("--subjects", type=int, default=16)
    ap.add_argument("--test-subjects", type=int, default=4)
    ap.add_argument("--spacing", type=float, default=2.0)
    ap.add_argument("--patch", type=int, nargs=2, default=[96, 112])
    ap.add_argument("--batch-cases", type=int, default=2)
    ap.add_argument("--samples-per-case", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--num-workers", type=int, default=4, help="data-loader workers per run")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="phantom-writing processes")
    ap.add_argument("--mixture", type=int, help="network_def#mixture_classes for training, evaluation and the "
                    "step benchmark (quick.json's output: each voxel a softmax mixture of K classes painted with "
                    "the target's class intensities; default: train.json's, 0, the paper's tanh output)")
    ap.add_argument("--quick", action="store_true", help="stack quick.json (CPU smoke test)")
    ap.add_argument("--skip-run", action="store_true", help="only report on the runs under --out")
    ap.add_argument("--step-only", action="store_true", help="time the training step alone (<out>/step.json) and stop")
    ap.add_argument("--profile", action="store_true",
                    help="with --step-only: also profile the autotuned four-target step (<out>/step_profile.txt)")
    ap.add_argument("--step-variants", action="store_true",
                    help="time the autotuned four-target step with fused Adam, channels-last and torch.compile "
                    "(<out>/step_variants.jsonl) and stop")
    ap.add_argument("--report", help="also write the Markdown here")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    return ap


def main(argv=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    args.marks = sorted(args.marks)
    if args.step_only:
        step_benchmark(args)
        return 0
    if args.step_variants:
        step_variants(args, out_file=Path(args.out) / "step_variants.jsonl")
        return 0
    if args.child is not None:
        child_train(args, args.child)
        return 0
    if not args.skip_run:
        t = time.time()
        make_data(args)
        print(f"phantom data: {time.time() - t:.0f} s", flush=True)
        argv = sys.argv[1:] if argv is None else list(argv)
        procs = [subprocess.Popen([sys.executable, __file__, *argv, "--child", str(s)]) for s in args.seeds]
        codes = [p.wait() for p in procs]
        if any(codes):
            print(f"runs failed: {dict(zip(args.seeds, codes))}", file=sys.stderr)
    md = report(args)
    print(md)
    if args.report:
        Path(args.report).write_text(md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
