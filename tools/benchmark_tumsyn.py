#!/usr/bin/env python
"""Speed and memory of TUMSyn inference at the paper's width, against the reference's way of
running it, measured in the same run.

What is measured, each in a fresh subprocess (the script re-invokes itself with ``--child
VARIANT`` and reads one JSON line from its stdout), so that each peak resident set size is that
measurement's own:

- ``reference``: the reference implementation's way: encode one ``--roi`` (60) window and query
  all ``roi^3`` (216k) voxel centres in ONE decoder call,
  ``network(x, tokens, voxel_centers((roi,) * 3)[None])``, float32;
- ``chunked``: our :class:`~mrsynth.inferers.ImplicitSlidingWindowInferer` (``roi_size=roi``,
  ``points_per_chunk=--chunk``) on the same single window (input exactly ``roi^3``, output
  ``roi^3``), float32;
- ``chunked_amp`` (``--amp``): the same in the device's native mixed precision
  (:mod:`mrsynth.amp`: bf16 autocast on a CPU with AVX512-BF16 / AMX, fp16 on CUDA); skipped on a
  CPU without native bf16;
- ``whole_brain`` (``--whole-brain X Y Z``; with ``--amp`` also ``whole_brain_amp``): the
  inferer over a whole phantom-like head of that shape (1 mm in, 1 mm out), 50% overlap
  (``--overlap``), background windows skipped as the inferer does; meant for a GPU
  (``--device cuda``). Its warm-up is one single-window call.

Every child seeds the model init with ``torch.manual_seed(0)`` (the same weights in every
subprocess) and draws the same input and prompt tokens from ``--seed``; runs under
``torch.no_grad()`` with ``torch.set_num_threads(--threads)``. Times are wall seconds, the
median of ``--repeats`` after one untimed warm-up (``--no-warmup`` leaves it out), including
the prompt's text encoding (both ways encode it once per call). Memory is the child's peak RSS
(``ru_maxrss``: Python, torch, the model and the activations) in MB (10^6 bytes), beside what it
held before the first call (``rss_setup_mb``); on CUDA also ``torch.cuda.max_memory_allocated``.
The single-window outputs are compared: max |chunked - reference| (same weights, same input),
also relative to max |reference| (a randomly initialised model's outputs are small).

The reference's published figures on this CPU (issue: 170 s per 60^3 window with 216k points at
once and 2 threads, 12.6 GB peak) and the targets (>= 2x faster than 170 s, peak < 4 GB; on a GPU
a whole 1 mm brain in < 30 s) are printed beside ours; the comparison with the published 170 s
is only made at the paper's width and window. The machine is shared and its absolute times are
noisy: the ratio against the ``reference`` variant of the same run is the one to trust.

    python tools/benchmark_tumsyn.py --threads 2 --out results.json [--amp]
    python tools/benchmark_tumsyn.py --device cuda --whole-brain 197 233 189 --amp --out gpu.json
    python tools/benchmark_tumsyn.py --roi 20 --features 8 --blocks 1 --decoder 16 16 --text-layers 1  # tiny
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

PAPER = {"features": 64, "blocks": 8, "decoder": [256, 256, 256, 256], "text_layers": 12, "roi": 60}
REFERENCE_PUBLISHED = {"window_s": 170.0, "peak_rss_gb": 12.6, "threads": 2, "points_per_call": 216000}
TARGETS = {"speedup_vs_published": 2.0, "peak_rss_gb": 4.0, "whole_brain_gpu_s": 30.0}
WINDOW_VARIANTS = ("reference", "chunked", "chunked_amp")
RESULT_TAG = "TUMSYN_BENCH_RESULT "
CONTEXT_LENGTH, VOCAB = 128, 49408


# --------------------------------------------------------------------------------------------
# inputs and model (identical in every child)
# --------------------------------------------------------------------------------------------


def build_model(args):
    from mrsynth.networks import TextEncoder, TUMSyn
    from mrsynth.transforms import ACQUISITION_FEATURES

    torch.manual_seed(0)
    text = TextEncoder(vocab_size=VOCAB, context_length=CONTEXT_LENGTH, layers=args.text_layers)
    net = TUMSyn(text, features=args.features, num_blocks=args.blocks, decoder_channels=tuple(args.decoder),
                 acquisition_features=ACQUISITION_FEATURES)
    return net.eval()


def phantom(shape, seed: int, fill: float = 0.42) -> torch.Tensor:
    """A phantom-like head ``(1, 1, *shape)``: an ellipsoid (semi-axes ``fill * shape``) of smooth
    random tissue contrast in about [0.3, 1] with a little noise, background 0."""
    g = torch.Generator().manual_seed(seed)
    axes = [(torch.arange(n, dtype=torch.float32) + 0.5) / n * 2 - 1 for n in shape]
    grid = torch.meshgrid(*axes, indexing="ij")
    r2 = sum((a / (2 * fill)) ** 2 for a in grid)
    low = torch.rand((1, 1, 6, 6, 6), generator=g)
    smooth = torch.nn.functional.interpolate(low, size=tuple(shape), mode="trilinear", align_corners=False)[0, 0]
    tissue = 0.3 + 0.7 * smooth + 0.02 * torch.randn(tuple(shape), generator=g)
    return (tissue.clamp_min(0) * (r2 <= 1))[None, None].contiguous()


def window_input(roi: int, seed: int) -> torch.Tensor:
    """One ``roi^3`` window: the middle of a phantom head (brain to the edges)."""
    return phantom((roi,) * 3, seed, fill=0.6)


def prompt_tokens(seed: int, length: int = 40) -> torch.Tensor:
    """A prompt-like token row ``(1, 128)``: start token, random BPE ids, end-of-text (the
    highest id, CLIP's convention), zero padding."""
    g = torch.Generator().manual_seed(seed + 1)
    row = torch.zeros(1, CONTEXT_LENGTH, dtype=torch.long)
    row[0, 0] = VOCAB - 2
    row[0, 1:length - 1] = torch.randint(1, VOCAB - 2, (length - 2,), generator=g)
    row[0, length - 1] = VOCAB - 1
    return row


class CountingNetwork:
    """Delegates to a TUMSyn, counting windows encoded and decoder calls."""

    def __init__(self, net):
        self.net, self.windows, self.query_calls = net, 0, 0

    def encode_text(self, tokens, acquisition=None):
        return self.net.encode_text(tokens, acquisition)

    def encode(self, image, text):
        self.windows += 1
        return self.net.encode(image, text)

    def query(self, features, coords):
        self.query_calls += 1
        return self.net.query(features, coords)


# --------------------------------------------------------------------------------------------
# one measurement (normally in its own subprocess)
# --------------------------------------------------------------------------------------------


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6  # ru_maxrss: KiB on Linux


def _amp_dtype_name(device) -> str | None:
    from mrsynth.amp import amp_dtype

    dt = amp_dtype(device)
    return None if dt is None else str(dt).replace("torch.", "")


def run_variant(args, variant: str) -> tuple[dict, torch.Tensor | None]:
    """Time ``variant``; returns its result and, for a single-window variant, its output
    ``(roi, roi, roi)`` on the CPU."""
    from mrsynth.inferers import ImplicitSlidingWindowInferer
    from mrsynth.networks import voxel_centers
    from mrsynth.transforms import acquisition_features

    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    amp = variant.endswith("_amp")
    roi = args.roi
    net = build_model(args).to(dev)
    tokens = prompt_tokens(args.seed).to(dev)
    acquisition = acquisition_features("TR/TE/TI/FA: (9000, 110, 2480, 90)")[None].to(dev)
    win = window_input(roi, args.seed).to(dev)
    counter = CountingNetwork(net)

    def sync():
        if cuda:
            torch.cuda.synchronize(dev)

    if variant == "reference":
        def call(x):
            coords = voxel_centers((roi,) * 3, device=dev)[None]
            return net(x, tokens, coords, acquisition).view(roi, roi, roi)
    else:
        inferer = ImplicitSlidingWindowInferer(
            roi_size=roi, overlap=args.overlap, points_per_chunk=args.chunk, amp=amp)

        def call(x):
            return inferer(x, counter, tokens, acquisition, output_shape=tuple(x.shape[2:]))[0, 0]

    if variant.startswith("whole_brain"):
        timed_input = phantom(tuple(args.whole_brain), args.seed).to(dev)
    else:
        timed_input = win

    times, out = [], None
    with torch.no_grad():
        rss_setup = _rss_mb()
        if cuda:
            torch.cuda.reset_peak_memory_stats(dev)
        if args.warmup:
            out = call(win)  # a whole-brain run warms up on one window
            sync()
            del out
        for _ in range(args.repeats):
            counter.windows = counter.query_calls = 0
            out = None
            sync()
            t0 = time.perf_counter()
            out = call(timed_input)
            sync()
            times.append(time.perf_counter() - t0)
    result = {
        "variant": variant,
        "seconds": statistics.median(times),
        "times_s": times,
        "peak_rss_mb": _rss_mb(),
        "rss_setup_mb": rss_setup,
        "input_shape": list(timed_input.shape[2:]),
        "amp_dtype": _amp_dtype_name(dev) if amp else None,
        "points_per_call": roi**3 if variant == "reference" else args.chunk,
        "loadavg_1min": os.getloadavg()[0],
    }
    if variant != "reference":
        result["windows"], result["decoder_calls"] = counter.windows, counter.query_calls
    if cuda:
        result["cuda_max_memory_allocated_mb"] = torch.cuda.max_memory_allocated(dev) / 1e6
    single = None if variant.startswith("whole_brain") else out.detach().float().cpu()
    return result, single


def child_main(args) -> None:
    result, out = run_variant(args, args.child)
    if out is not None and args.save:
        torch.save(out, args.save)
    print(RESULT_TAG + json.dumps(result), flush=True)


def settings_argv(args) -> list[str]:
    """The command-line settings a child needs to rebuild the same model, input and call."""
    argv = ["--threads", str(args.threads), "--device", args.device, "--roi", str(args.roi),
            "--chunk", str(args.chunk), "--overlap", str(args.overlap), "--repeats", str(args.repeats),
            "--seed", str(args.seed), "--features", str(args.features), "--blocks", str(args.blocks),
            "--text-layers", str(args.text_layers), "--decoder", *map(str, args.decoder)]
    if args.whole_brain:
        argv += ["--whole-brain", *map(str, args.whole_brain)]
    if not args.warmup:
        argv.append("--no-warmup")
    return argv


def run_child_process(args, variant: str, save: Path) -> dict:
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[k] = str(args.threads)
    cmd = [sys.executable, str(Path(__file__).resolve()), *settings_argv(args), "--child", variant, "--save", str(save)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(REPO))
    if proc.returncode != 0:
        raise RuntimeError(f"variant {variant} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_TAG)]
    if not lines:
        raise RuntimeError(f"variant {variant} printed no result:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return json.loads(lines[-1][len(RESULT_TAG):])


# --------------------------------------------------------------------------------------------
# the report
# --------------------------------------------------------------------------------------------


def device_name(device: str) -> str:
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine()


def is_paper_width(args) -> bool:
    return (args.features == PAPER["features"] and args.blocks == PAPER["blocks"] and list(args.decoder) == PAPER["decoder"]
            and args.text_layers == PAPER["text_layers"] and args.roi == PAPER["roi"])


def _f(v, spec="{:.2f}", none="n/a"):
    return none if v is None else spec.format(v)


def markdown(report: dict) -> str:
    s = report["settings"]
    res = report["results"]
    bound_mb = TARGETS["peak_rss_gb"] * 1000
    lines = [
        f"TUMSyn inference on {report['environment']['device_name']} ({s['device']}, {s['threads']} threads, torch "
        f"{report['environment']['torch']}), features {s['features']}, {s['blocks']} blocks, decoder "
        f"{'x'.join(map(str, s['decoder']))}, text encoder {s['text_layers']} layers"
        f"{' (paper width)' if report['paper_width'] else ''}; one {s['roi']}^3 window "
        f"({s['roi'] ** 3} query points), chunks of {s['chunk']}. Median of {s['repeats']} "
        f"{'after a warm-up' if s['warmup'] else 'without warm-up'}; each variant in "
        f"{'its own subprocess' if report['isolated'] else 'one process (peaks accumulate)'}.",
        "",
        "| variant | seconds | peak RSS MB | speed-up vs reference (this run) | speed-up vs paper's 170 s "
        "| memory vs 4 GB bound | max abs diff vs reference |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in res.items():
        if "skipped" in r:
            lines.append(f"| {name} | skipped: {r['skipped']} | | | | | |")
            continue
        single = not name.startswith("whole_brain")
        vs_ref = report["speedup_vs_reference"].get(name)
        vs_pub = report["speedup_vs_published"].get(name)
        mem = f"{r['peak_rss_mb'] / bound_mb:.2f}x ({'under' if r['peak_rss_mb'] < bound_mb else 'OVER'})"
        diff = report["max_abs_diff_vs_reference"].get(name)
        label = name + (f" ({r['amp_dtype']})" if r.get("amp_dtype") else "")
        if not single:
            label += f" {'x'.join(map(str, r['input_shape']))}, {r['windows']} windows"
        lines.append(f"| {label} | {r['seconds']:.2f} | {r['peak_rss_mb']:.0f} | {_f(vs_ref, '{:.2f}x')} | "
                     f"{_f(vs_pub, '{:.1f}x')} | {mem} | {_f(diff, '{:.2e}', '-')} |")
    cuda_rows = [(n, r) for n, r in res.items() if "cuda_max_memory_allocated_mb" in r]
    if cuda_rows:
        lines += ["", "CUDA max memory allocated: "
                  + ", ".join(f"{n} {r['cuda_max_memory_allocated_mb']:.0f} MB" for n, r in cuda_rows)]
    lines += ["", f"Published reference: {REFERENCE_PUBLISHED['window_s']:.0f} s per window "
              f"({REFERENCE_PUBLISHED['points_per_call']} points at once, {REFERENCE_PUBLISHED['threads']} threads), "
              f"{REFERENCE_PUBLISHED['peak_rss_gb']} GB peak. Targets: >= {TARGETS['speedup_vs_published']:.0f}x "
              f"faster, peak < {TARGETS['peak_rss_gb']:.0f} GB; whole 1 mm brain on a GPU < "
              f"{TARGETS['whole_brain_gpu_s']:.0f} s. Load average (1 min) during the run: "
              + ", ".join(f"{n} {r['loadavg_1min']:.1f}" for n, r in res.items() if "loadavg_1min" in r) + "."]
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, help="write the JSON report here")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--roi", type=int, default=PAPER["roi"], help="window edge (paper 60: 216k query points)")
    p.add_argument("--chunk", type=int, default=65536, help="query points per decoder call of the chunked inferer")
    p.add_argument("--overlap", type=float, default=0.5, help="window overlap of the whole-brain run")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--no-warmup", dest="warmup", action="store_false")
    p.add_argument("--seed", type=int, default=0, help="input and prompt seed (the weights are always seed 0)")
    p.add_argument("--features", type=int, default=PAPER["features"])
    p.add_argument("--blocks", type=int, default=PAPER["blocks"])
    p.add_argument("--decoder", type=int, nargs="+", default=list(PAPER["decoder"]))
    p.add_argument("--text-layers", type=int, default=PAPER["text_layers"])
    p.add_argument("--amp", action="store_true", help="also the mixed-precision variant(s), where the device has it natively")
    p.add_argument("--whole-brain", type=int, nargs=3, metavar=("X", "Y", "Z"),
                   help="also time the inferer over a whole head of this shape (e.g. 197 233 189)")
    p.add_argument("--skip-window", action="store_true",
                   help="leave out the single-window variants (a whole-brain-only run)")
    p.add_argument("--in-process", action="store_true",
                   help="run every variant in this process (for tests; the peak RSS then accumulates)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--save", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.repeats < 1 or args.threads < 1 or args.roi < 1 or args.chunk < 1:
        p.error("--repeats, --threads, --roi and --chunk must be >= 1")
    if args.skip_window and not args.whole_brain:
        p.error("--skip-window needs --whole-brain")
    return args


def main(argv=None) -> dict | None:
    args = parse_args(argv)
    if args.child:
        child_main(args)
        return None

    from mrsynth.amp import amp_dtype

    variants = [] if args.skip_window else ["reference", "chunked"]
    if args.amp and not args.skip_window:
        variants.append("chunked_amp")
    if args.whole_brain:
        variants.append("whole_brain")
        if args.amp:
            variants.append("whole_brain_amp")
    native_amp = amp_dtype(args.device) is not None

    results, outputs = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for v in variants:
            if v.endswith("_amp") and not native_amp:
                results[v] = {"skipped": f"no native mixed precision on {args.device}"}
                continue
            print(f"measuring {v} ...", file=sys.stderr, flush=True)
            if args.in_process:
                results[v], out = run_variant(args, v)
            else:
                save = Path(tmp) / f"{v}.pt"
                results[v] = run_child_process(args, v, save)
                out = torch.load(save) if save.exists() else None
            if out is not None:
                outputs[v] = out
            print(f"  {v}: {results[v]['seconds']:.2f} s, peak RSS {results[v]['peak_rss_mb']:.0f} MB",
                  file=sys.stderr, flush=True)

    ran = {k: r for k, r in results.items() if "skipped" not in r}
    ref = ran.get("reference")
    paper = is_paper_width(args)
    speedup_vs_reference = {k: ref["seconds"] / r["seconds"] for k, r in ran.items()
                            if ref and not k.startswith("whole_brain")}
    speedup_vs_published = {k: REFERENCE_PUBLISHED["window_s"] / r["seconds"] for k, r in ran.items()
                            if paper and torch.device(args.device).type == "cpu" and not k.startswith("whole_brain")}
    diffs = {}
    if "reference" in outputs:
        scale = float(outputs["reference"].abs().max())
        for k, o in outputs.items():
            if k != "reference":
                diffs[k] = float((o - outputs["reference"]).abs().max())
    else:
        scale = None
    bound_mb = TARGETS["peak_rss_gb"] * 1000
    report = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("child", "save")},
        "paper_width": paper,
        "isolated": not args.in_process,
        "environment": {
            "device_name": device_name(args.device), "torch": torch.__version__, "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "threads": args.threads, "amp_dtype": str(amp_dtype(args.device)).replace("torch.", "") if native_amp else None,
        },
        "results": results,
        "speedup_vs_reference": speedup_vs_reference,
        "speedup_vs_published": speedup_vs_published,
        "max_abs_diff_vs_reference": diffs,
        "reference_output_max_abs": scale,
        "max_rel_diff_vs_reference": {k: d / scale for k, d in diffs.items()} if scale else {},
        "reference_published": REFERENCE_PUBLISHED,
        "targets": TARGETS,
        "checks": {
            "peak_rss_under_bound": {k: r["peak_rss_mb"] < bound_mb for k, r in ran.items()},
            "speedup_vs_published_at_least_2x": {k: v >= TARGETS["speedup_vs_published"] for k, v in speedup_vs_published.items()},
            "whole_brain_gpu_under_30s": {k: r["seconds"] < TARGETS["whole_brain_gpu_s"] for k, r in ran.items()
                                          if k.startswith("whole_brain") and torch.device(args.device).type == "cuda"},
        },
    }
    print(markdown(report))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
