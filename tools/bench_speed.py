#!/usr/bin/env python
"""Speed and memory of Seq2Seq at the paper's width on this machine's CPU, against a baseline
measured in the same run.

What is measured (each in a fresh subprocess, so that peak memory is that measurement's own;
``--quick`` runs them all in one):

- **inference, one target**: ``net(x, code)`` under ``torch.inference_mode`` for a batch of
  ``--batch`` (8) 2.5D slices ``3 x --size x --size`` (192), every sample with the same target;
- **inference, mixed targets**: the same batch with targets ``0, 1, 2, 3, 0, 1, ...``;
- **training step**: one full :class:`~mrsynth.engines.Seq2SeqTrainStep` step at batch
  ``--train-batch`` (1): the three generator passes, backward and an Adam step (the bundle's
  ``train.json`` optimiser: Adam, lr 2e-4, betas (0.5, 0.999)), perceptual weight 0.

Each is run three times: by our network as users call it, in float32 ("ours") and in the
bundles' mixed precision ("ours_amp": :func:`mrsynth.amp.autocast`, bf16 on a CPU with
AVX512-BF16 / AMX, fp16 on CUDA, with ``channels_last`` input as :class:`~mrsynth.inferers.SlabInferer`
feeds it; float32 where the device has no native mixed precision), and by the **baseline**: our own
modules and weights driven the way the reference implementation runs them
(:func:`reference_style_forward`): one target code per call, so a batch with mixed targets is
processed sample by sample (batch-1 calls), the kernel banks mixed on every call, and the plain
PyTorch layers (``F.instance_norm``, reflect pad + convolution); its training step makes the
three passes as three separate calls. (Ours, on the CPU: a batch also runs sample by sample, but
each bank is mixed once per target, instance norm runs as a group norm, and layers with few
output channels use ``channels_last``; see ``mrsynth/networks``.) The baseline computes the same
function (checked in every run on a small input: ``baseline_equivalence``, which also reports
the largest and mean difference of the mixed-precision output), so the ratios ours / baseline are
what our execution gains, on this machine, in this run.

Speeds are slices per second: batch / wall time of one call (inference) or one step (training),
the median of ``--repeats`` timed repeats after ``--warmup`` untimed ones (over all ``--rounds``:
with more than one round every measurement is repeated in new subprocesses, ours and the
baseline alternating, which spreads them over the same load). Peak memory is the
subprocess's peak resident set size (``ru_maxrss``: Python, torch, the model, the optimiser state
and the activations; ``rss_setup`` is what it held before the first timed call). The reference's
published figures (issue: 1.7 slices/s inference at batch 8, 0.14 slices/s for a training step at
batch 1, both with 2 threads, torch 2.14.1, 2.1 / 4.9 GB peak) are printed beside ours.

The CPU is shared: run-to-run noise is large. Ours and the baseline are measured back to back
for each row and the load average is recorded with every measurement; compare ratios within one
run, and repeat the run when the load was high.

    python tools/bench_speed.py [--threads 2] [--repeats 3] [--rounds 1] [--json speed.json]
    python tools/bench_speed.py --quick --repeats 1        # smoke test, tiny network (~20 s)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# the reference implementation's figures, as published in the issue (same machine, 2 threads)
REFERENCE_PUBLISHED = {
    "infer_same": {"slices_per_s": 1.7, "peak_rss_gb": 2.1, "batch": 8},
    "train": {"slices_per_s": 0.14, "peak_rss_gb": 4.9, "batch": 1},
}

PAPER = dict(channels=(64, 128, 256), num_res_blocks=6, num_kernels=16, code_dim=64, num_codes=64)
QUICK = dict(channels=(8, 16, 32), num_res_blocks=1, num_kernels=4, code_dim=8, num_codes=64)

MEASUREMENTS = ("infer_same", "infer_mixed", "train")
IMPLS = ("ours", "ours_amp", "baseline")
TITLES = {
    "infer_same": "inference, one target per batch",
    "infer_mixed": "inference, mixed targets",
    "train": "training step",
}


def _import_mrsynth():
    try:
        import mrsynth  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(REPO))
        import mrsynth  # noqa: F401


# --------------------------------------------------------------------------------------------
# the baseline: our modules, driven the way the reference implementation runs them
# --------------------------------------------------------------------------------------------


def _ref_norm(norm, x):
    import torch.nn as nn
    import torch.nn.functional as F

    if isinstance(norm, nn.modules.instancenorm._InstanceNorm) and not norm.track_running_stats:
        return F.instance_norm(x, None, None, norm.weight, norm.bias, True, 0.0, norm.eps)
    return norm(x)


def _ref_act(act, x):
    import torch.nn as nn
    import torch.nn.functional as F

    if isinstance(act, nn.LeakyReLU):
        return F.leaky_relu(x, act.negative_slope)  # out of place
    if isinstance(act, nn.ReLU):
        return F.relu(x)
    return act(x)


def _ref_hyperconv(conv, x, embedding):
    """One hyper-convolution for a batch that shares one code (``embedding``: ``(1, code_dim)``):
    mix the bank for this call, reflect-pad, convolve."""
    import torch.nn.functional as F

    weight, bias = conv.mix(conv.coefficients(embedding))
    if conv.padding_mode != "zeros":
        x = F.pad(x, [p for p in reversed(conv.padding) for _ in range(2)], mode=conv.padding_mode)
        padding = 0
    else:
        padding = list(conv.padding)
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[conv.spatial_dims]
    return fn(x, weight[0], None if bias is None else bias[0], list(conv.stride), padding)


def _ref_encoder(enc, x):
    import torch.nn as nn

    for m in enc.stem:
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            x = m(x)
        elif isinstance(m, (nn.LeakyReLU, nn.ReLU)):
            x = _ref_act(m, x)
        else:
            x = _ref_norm(m, x)
    for blk in enc.res_blocks:
        y = _ref_act(blk.act1, _ref_norm(blk.norm1, blk.conv1(x)))
        x = x + _ref_norm(blk.norm2, blk.conv2(y))
    return x


def _ref_decoder(dec, f, code):
    """``code``: ``(1,)`` integer index or ``(1, num_codes)``: one target for the whole batch."""
    e = dec.embedding(code)
    x = f
    for blk in dec.res_blocks:
        y = _ref_act(blk.act1, _ref_norm(blk.norm1, _ref_hyperconv(blk.conv1, x, e)))
        x = x + _ref_norm(blk.norm2, _ref_hyperconv(blk.conv2, y, e))
    for blk in dec.up_blocks:
        x = _ref_act(blk.act, _ref_norm(blk.norm, _ref_hyperconv(blk.conv, blk.up(x), e)))
    return dec.final_act(_ref_hyperconv(dec.final_conv, x, e))


def reference_style_forward(net, x, code):
    """Run :class:`~mrsynth.networks.Seq2Seq` ``net`` the way the reference implementation runs.

    The reference supports one target code per batch: a batch whose samples share one code is
    one call; otherwise every sample is a batch-1 call. Every call mixes each layer's kernel bank
    anew. Computes the same function as ``net(x, code)``.

    Args:
        net: a :class:`~mrsynth.networks.Seq2Seq`.
        x: ``(B, in_channels, *spatial)``.
        code: ``(B,)`` integer targets or ``(B, num_codes)`` codes.
    """
    import torch

    if code.shape[0] == 1 or bool((code == code[:1]).all()):
        return _ref_decoder(net.decoder, _ref_encoder(net.encoder, x), code[:1])
    outs = [_ref_decoder(net.decoder, _ref_encoder(net.encoder, x[i : i + 1]), code[i : i + 1]) for i in range(x.shape[0])]
    return torch.cat(outs)


def reference_style_losses(step, net, src, tgt, src_code, tgt_code):
    """:meth:`Seq2SeqTrainStep.losses` (perceptual weight 0) with the three passes as three
    reference-style calls (the reference cannot batch two different targets in one call)."""
    out_tgt = reference_style_forward(net, src, tgt_code)
    out_src = reference_style_forward(net, src, src_code)
    out_cyc = reference_style_forward(net, out_tgt, src_code)
    L = step.criterion()
    rec = L(out_tgt, tgt) + L(out_src, src)
    cyc = L(out_cyc, src)
    return {"pred": out_tgt, "loss": step.rec_weight * rec + step.cycle_weight * cyc}


# --------------------------------------------------------------------------------------------
# one measurement (runs in its own subprocess)
# --------------------------------------------------------------------------------------------


def _build(cfg):
    import torch

    from mrsynth.networks import Seq2Seq

    torch.manual_seed(0)
    arch = QUICK if cfg["quick"] else PAPER
    return Seq2Seq(2, 3, 3, **arch)


def _codes(kind, n):
    import torch

    if kind == "infer_same":
        return torch.full((n,), 2, dtype=torch.long)
    return torch.arange(n) % 4


def _rss_gib(kb: int) -> float:
    return kb / 2**20  # ru_maxrss is in KiB on Linux


def run_worker(spec: dict) -> dict:
    """Time ``spec["kind"]`` for ``spec["impl"]``; returns times, median speed and peak memory."""
    import resource

    import torch

    _import_mrsynth()
    from mrsynth.amp import autocast
    from mrsynth.engines import Seq2SeqTrainStep

    torch.set_num_threads(spec["threads"])
    kind, impl, size = spec["kind"], spec["impl"], spec["size"]
    amp = impl == "ours_amp"
    load0 = os.getloadavg()[0]
    net = _build(spec)
    g = torch.Generator().manual_seed(1)
    if kind == "train":
        n = spec["train_batch"]
        net.train()
        opt = torch.optim.Adam(net.parameters(), lr=2e-4, betas=(0.5, 0.999))
        step = Seq2SeqTrainStep(rec_weight=10.0, cycle_weight=10.0, perceptual_weight=0.0)
        src = torch.rand(n, 3, size, size, generator=g) * 2 - 1
        tgt = torch.rand(n, 3, size, size, generator=g) * 2 - 1
        src_code, tgt_code = torch.zeros(n, dtype=torch.long), torch.full((n,), 3, dtype=torch.long)
        losses = step.losses if impl != "baseline" else (lambda *a: reference_style_losses(step, *a))

        def once():
            opt.zero_grad(set_to_none=True)
            with autocast("cpu", enabled=amp):  # as TrainStep runs it with amp
                out = losses(net, src, tgt, src_code, tgt_code)
            out["loss"].backward()
            opt.step()

    else:
        n = spec["batch"]
        net.eval()
        x = torch.rand(n, 3, size, size, generator=g) * 2 - 1
        if amp:
            x = x.contiguous(memory_format=torch.channels_last)  # as SlabInferer(amp=True) feeds it
        code = _codes(kind, n)
        forward = net if impl != "baseline" else (lambda a, b: reference_style_forward(net, a, b))

        def once():
            with torch.inference_mode(), autocast("cpu", enabled=amp):
                forward(x, code)

    rss_setup = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(spec["warmup"]):
        once()
    times = []
    for _ in range(spec["repeats"]):
        t = time.perf_counter()
        once()
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    return {
        "kind": kind,
        "impl": impl,
        "batch": n,
        "times_s": times,
        "median_s": med,
        "slices_per_s": n / med,
        "peak_rss_gib": _rss_gib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss),
        "rss_setup_gib": _rss_gib(rss_setup),
        "loadavg_1min": [load0, os.getloadavg()[0]],
    }


def _merge(runs: list) -> dict:
    """One measurement from its rounds: median over all timed repeats, the largest peak."""
    times = [t for r in runs for t in r["times_s"]]
    med = statistics.median(times)
    return {
        **{k: runs[0][k] for k in ("kind", "impl", "batch")},
        "times_s": times,
        "median_s": med,
        "slices_per_s": runs[0]["batch"] / med,
        "peak_rss_gib": max(r["peak_rss_gib"] for r in runs),
        "rss_setup_gib": max(r["rss_setup_gib"] for r in runs),
        "loadavg_1min": [min(min(r["loadavg_1min"]) for r in runs), max(max(r["loadavg_1min"]) for r in runs)],
        "rounds": len(runs),
    }


def _run_worker_process(specs: list) -> list:
    """Run ``specs`` one after another in one new subprocess; returns their results."""
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[k] = str(specs[0]["threads"])
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_worker", json.dumps(specs)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(REPO))
    if proc.returncode != 0:
        names = ", ".join(f"{s['kind']}/{s.get('impl', '-')}" for s in specs)
        raise RuntimeError(f"measurement {names} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _run_all(specs: list, one_process: bool) -> list:
    """Every spec in its own fresh subprocess (so that each peak is its own), or, for the smoke
    test, all in one (peaks then accumulate)."""
    if one_process:
        return _run_worker_process(specs)
    results = []
    for s in specs:
        name = f"{s['kind']} / {s.get('impl', '-')} (round {s.get('round', 0) + 1})"
        print(f"measuring {name} ...", file=sys.stderr, flush=True)
        results += _run_worker_process([s])
    return results


# --------------------------------------------------------------------------------------------
# the same-function check and the report
# --------------------------------------------------------------------------------------------


def baseline_equivalence(cfg) -> dict:
    """Max |ours - baseline| on a small input (batch 4 of 3 x 32 x 32) at the measured width:
    outputs for one and for mixed targets, and the training loss. Also the parameter count and
    versions (run as the ``check`` worker)."""
    import torch

    _import_mrsynth()
    from mrsynth.amp import amp_dtype, autocast
    from mrsynth.engines import Seq2SeqTrainStep

    torch.set_num_threads(cfg["threads"])
    net = _build(cfg).eval()
    g = torch.Generator().manual_seed(2)
    x = torch.rand(4, 3, 32, 32, generator=g) * 2 - 1
    res, amp_diff = {}, {}
    with torch.inference_mode():
        for kind in ("infer_same", "infer_mixed"):
            c = _codes(kind, 4)
            fp32 = net(x, c)
            res[kind] = float((fp32 - reference_style_forward(net, x, c)).abs().max())
            with autocast("cpu"):
                mixed = net(x.contiguous(memory_format=torch.channels_last), c).float()
            amp_diff[kind] = {"max": float((mixed - fp32).abs().max()), "mean": float((mixed - fp32).abs().mean())}
    net.train()
    step = Seq2SeqTrainStep(perceptual_weight=0.0)
    tgt = torch.rand(4, 3, 32, 32, generator=g) * 2 - 1
    args = (net, x, tgt, torch.tensor([0, 1, 2, 3]), torch.tensor([3, 1, 0, 2]))
    with torch.no_grad():
        res["train_loss"] = float((step.losses(*args)["loss"] - reference_style_losses(step, *args)["loss"]).abs())
    return {
        "kind": "check",
        "baseline_equivalence": res,
        "amp_difference": amp_diff,
        "amp_dtype": str(amp_dtype("cpu")),
        "parameters_m": sum(p.numel() for p in net.parameters()) / 1e6,
        "torch": torch.__version__,
    }


def _fmt(v, spec="{:.3f}"):
    return "n/a" if v is None else spec.format(v)


def markdown(report: dict) -> str:
    cfg, res = report["config"], report["results"]
    lines = [
        f"Seq2Seq {'(quick, tiny)' if cfg['quick'] else 'at the paper width'}: {report['parameters_m']:.1f} M parameters, "
        f"input 3 x {cfg['size']} x {cfg['size']}, {cfg['threads']} threads, torch {report['environment']['torch']}, "
        f"median of {cfg['repeats']} timed repeats x {cfg['rounds']} round(s) after {cfg['warmup']} warm-up, "
        + ("all in one process (smoke test)." if cfg["quick"] else "each measurement in a fresh process."),
        "",
        "| measurement | batch | baseline fp32 slices/s | ours fp32 slices/s | ours amp slices/s "
        "| ours fp32 / baseline | ours amp / baseline | reference (published) slices/s | ours fp32 / reference "
        "| ours amp / reference | peak RSS GiB baseline / fp32 / amp | reference peak GB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rb, rr = report["ratios"]["ours_over_baseline"], report["ratios"]["ours_over_reference"]
    for kind in MEASUREMENTS:
        o, a, b = res["ours"][kind], res["ours_amp"][kind], res["baseline"][kind]
        ref = REFERENCE_PUBLISHED.get(kind) if not cfg["quick"] else None
        ref_s = ref["slices_per_s"] if ref else None
        lines.append(
            f"| {TITLES[kind]} | {o['batch']} | {b['slices_per_s']:.3f} | {o['slices_per_s']:.3f} | "
            f"{a['slices_per_s']:.3f} | {rb['ours'][kind]:.2f} | {rb['ours_amp'][kind]:.2f} | {_fmt(ref_s, '{:.2f}')} | "
            f"{_fmt(rr['ours'].get(kind), '{:.2f}')} | {_fmt(rr['ours_amp'].get(kind), '{:.2f}')} | "
            f"{b['peak_rss_gib']:.2f} / {o['peak_rss_gib']:.2f} / {a['peak_rss_gib']:.2f} | "
            f"{_fmt(ref['peak_rss_gb'] if ref else None, '{:.1f}')} |"
        )
    eq = report["baseline_equivalence"]
    ad = report["amp_difference"]
    loads = [m["loadavg_1min"] for impl in IMPLS for m in res[impl].values()]
    setup = max(m["rss_setup_gib"] for impl in IMPLS for m in res[impl].values())
    hi_load = max(max(x) for x in loads)
    lines += [
        "",
        f"Peak RSS includes Python, torch and the model: up to {setup:.2f} GiB was held before the first timed call.",
        f"Baseline computes the same function: max |ours - baseline| = {eq['infer_same']:.1e} (one target), "
        f"{eq['infer_mixed']:.1e} (mixed), training loss {eq['train_loss']:.1e}.",
        f"Mixed precision ({report['amp_dtype']}; float32 where the CPU has no native bf16) against float32, same "
        f"weights, untrained: max / mean |difference| {ad['infer_same']['max']:.1e} / {ad['infer_same']['mean']:.1e} "
        f"(one target), {ad['infer_mixed']['max']:.1e} / {ad['infer_mixed']['mean']:.1e} (mixed) on the [-1, 1] scale.",
        f"1-minute load average during the measurements: {min(min(x) for x in loads):.2f} to {hi_load:.2f} on "
        f"{report['environment']['cpu_count']} CPUs"
        + (
            f": above the benchmark's own {cfg['threads']} threads, other work shared the cores; repeat the run."
            if hi_load > cfg["threads"] + 0.5
            else f" (the benchmark's own {cfg['threads']} threads count in it)."
        ),
    ]
    if not cfg["quick"]:
        lines.append(
            "Reference figures are the issue's (one target per batch at batch 8; training at batch 1), not remeasured "
            "here; the reference has 155 M parameters (it also builds two 3-layer ConvLSTMs for single-frame data), "
            "so the same-run baseline, not the published figure, is the like-for-like comparison."
        )
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats per measurement; the median is reported")
    ap.add_argument("--warmup", type=int, default=1, help="untimed warm-up iterations per measurement")
    ap.add_argument(
        "--rounds", type=int, default=1,
        help="fresh subprocesses per measurement, ours and baseline alternating; the median is over all repeats",
    )
    ap.add_argument("--batch", type=int, default=8, help="inference batch (default 8)")
    ap.add_argument("--train-batch", type=int, default=1, help="training batch (default 1)")
    ap.add_argument("--size", type=int, default=192, help="slice size (default 192)")
    ap.add_argument(
        "--quick", action="store_true",
        help="smoke test: tiny network, 32 x 32, batch 2, all measurements in one subprocess (peaks accumulate)",
    )
    ap.add_argument("--only", nargs="+", choices=MEASUREMENTS, default=list(MEASUREMENTS), help="measure only these")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--_worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args._worker:
        specs = json.loads(args._worker)
        print(json.dumps([baseline_equivalence(s) if s["kind"] == "check" else run_worker(s) for s in specs]))
        return {}

    if args.quick:
        args.size, args.batch = 32, 2
    cfg = {
        "quick": args.quick, "threads": args.threads, "repeats": args.repeats, "warmup": args.warmup, "rounds": args.rounds,
        "batch": args.batch, "train_batch": args.train_batch, "size": args.size,
        "architecture": {k: list(v) if isinstance(v, tuple) else v for k, v in (QUICK if args.quick else PAPER).items()},
    }
    # ours and the baseline back to back (and alternating over rounds), so that they see the same load;
    # --quick runs everything in one subprocess: a smoke test
    specs = [{**cfg, "kind": "check"}]
    specs += [{**cfg, "kind": k, "impl": i, "round": r} for r in range(args.rounds) for k in args.only for i in IMPLS]
    check, *measured = _run_all(specs, one_process=args.quick)
    results: dict = {
        impl: {kind: _merge([m for m in measured if m["kind"] == kind and m["impl"] == impl]) for kind in args.only}
        for impl in IMPLS
    }
    ratios = {"ours_over_baseline": {"ours": {}, "ours_amp": {}}, "ours_over_reference": {"ours": {}, "ours_amp": {}}}
    for impl in ("ours", "ours_amp"):
        for kind in args.only:
            ours = results[impl][kind]["slices_per_s"]
            ratios["ours_over_baseline"][impl][kind] = ours / results["baseline"][kind]["slices_per_s"]
            if kind in REFERENCE_PUBLISHED and not args.quick:
                ratios["ours_over_reference"][impl][kind] = ours / REFERENCE_PUBLISHED[kind]["slices_per_s"]
    report = {
        "config": cfg,
        "parameters_m": check["parameters_m"],
        "environment": {
            "torch": check["torch"], "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
        },
        "results": results,
        "ratios": ratios,
        "reference_published": REFERENCE_PUBLISHED,
        "baseline_equivalence": check["baseline_equivalence"],
        "amp_difference": check["amp_difference"],
        "amp_dtype": check["amp_dtype"],
    }
    if set(args.only) == set(MEASUREMENTS):
        print(markdown(report))
    else:
        print(json.dumps(report["ratios"], indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
