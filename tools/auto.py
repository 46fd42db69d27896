#!/usr/bin/env python
"""From a user's folder to a trained and evaluated model, in one command (nnSeq2Seq style):

    python tools/auto.py DATA --bundle seq2seq --out runs/mine [--quick] [--gpu-memory 40] [-- --max_epochs 50 ...]

1. DATA is a dataset folder (BraTS or nnSeq2Seq layout) or a CSV (case, sequence, path), which
   is converted to the BraTS layout under ``OUT/data`` (:mod:`mrsynth.data.convert`).
2. ``tools/plan.py`` fingerprints it and plans the bundle (``OUT/plans``); the 2D plan (for
   TUMSyn the stage-2 batch size) is copied into the run's bundle as ``configs/plan.json``.
3. The bundle is copied to ``OUT/<bundle>`` and trained there with
   ``python -m monai.bundle run`` (train.json [+ quick.json] + plan.json + the overrides after
   ``--``); TSF-Seq2Seq first trains the Seq2Seq it starts from (``OUT/seq2seq``), TUMSyn its
   text encoder (stage 1) then the synthesis (stage 2).
4. The model is evaluated on the validation cases the training held out (evaluate.json), and
   the summary is printed. ``OUT/<bundle>`` is then a complete bundle with its weights: run its
   inference, package it (``tools/package_bundles.py``), serve it (``apps/``).

Each step is a subprocess whose log goes to ``OUT/logs/<step>.log``; a failing step stops the
pipeline with its last lines and the log's path.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BUNDLES = ("seq2seq", "vq_seq2seq", "tsf_seq2seq", "tumsyn")


def stages(bundle: str) -> list[tuple[str, list[str]]]:
    """(bundle folder, configs before quick/plan) of each training stage."""
    if bundle == "tsf_seq2seq":
        return [("seq2seq", ["train"]), ("tsf_seq2seq", ["train"])]
    if bundle == "tumsyn":
        return [("tumsyn", ["train_text_encoder"]), ("tumsyn", ["train_text_encoder", "train"])]
    return [(bundle, ["train"])]


def config_list(names) -> str:
    return "[" + ",".join(f"'configs/{n}.json'" for n in names) + "]"


def run_step(name: str, cmd: list[str], cwd: Path, logs: Path) -> None:
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{name}.log"
    t = time.monotonic()
    print(f"[{name}] {' '.join(map(str, cmd))}", flush=True)
    with open(log, "w") as f:
        proc = subprocess.run([str(c) for c in cmd], cwd=cwd, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        print("\n".join(tail), file=sys.stderr)
        raise SystemExit(f"error: step {name} failed (exit {proc.returncode}); full log: {log}")
    print(f"[{name}] done in {time.monotonic() - t:.0f} s (log: {log})", flush=True)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", help="a dataset folder (either layout) or a CSV (case, sequence, path)")
    p.add_argument("--bundle", choices=BUNDLES, default="seq2seq")
    p.add_argument("--out", required=True, help="the run's folder: data, plans, the trained bundle(s), logs")
    p.add_argument("--quick", action="store_true", help="stack configs/quick.json (a CPU-size model)")
    p.add_argument("--gpu-memory", type=float, default=40.0, help="GPU memory budget for the plan, GB")
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    py = sys.executable

    data = Path(args.data).resolve()
    if data.suffix.lower() == ".csv":
        from mrsynth.data import dataset_from_csv

        written = dataset_from_csv(data, out / "data", to="brats")
        print(f"[convert] {len(written)} case(s) -> {out / 'data'}")
        data = out / "data"

    quick = ["quick"] if args.quick else []
    planned = set()
    for i, (bundle, configs) in enumerate(stages(args.bundle)):
        dest = out / bundle
        if not dest.exists():
            shutil.copytree(REPO / "bundles" / bundle, dest, ignore=shutil.ignore_patterns("models", "eval", "runs"))
        plans = out / "plans" / bundle
        if bundle not in planned:  # once per bundle folder (TUMSyn's two stages share one)
            planned.add(bundle)
            run_step(f"plan_{bundle}", [py, REPO / "tools" / "plan.py", data, "--bundle", bundle, "--out", plans,
                                        "--gpu-memory", args.gpu_memory,
                                        *(a for q in quick for a in ("--config", f"configs/{q}.json"))], out, out / "logs")
            shutil.copyfile(plans / ("plan_implicit.json" if bundle == "tumsyn" else "plan_2d.json"),
                            dest / "configs" / "plan.json")
        plan = [] if configs == ["train_text_encoder"] else ["plan"]  # TUMSyn: the plan is stage 2's batch
        run_step(f"train_{i + 1}_{bundle}", [py, "-m", "monai.bundle", "run", "--config_file",
                                            config_list([*configs, *quick, *plan]), "--dataset_dir", data,
                                            "--bundle_root", ".", *extra], dest, out / "logs")

    bundle, configs = stages(args.bundle)[-1]
    dest = out / bundle
    held_out = ("$[c for c in mrsynth.data.list_cases(@dataset_dir, @eval_sequences, layout=@layout) "
                "if c['case'] in [v['case'] for v in @split[1]]]") if bundle == "tumsyn" else "$@split[1]"
    plan = ["plan"]
    run_step("evaluate", [py, "-m", "monai.bundle", "run", "--config_file",
                          config_list([*configs, *quick, *plan, "evaluate"]), "--dataset_dir", data,
                          "--bundle_root", ".", "--output_dir", out / "evaluation", "--eval_cases", held_out,
                          *extra], dest, out / "logs")
    summary = out / "evaluation" / "summary.json"
    print(f"trained bundle: {dest} (models/model.pt); evaluation on the held-out cases: {out / 'evaluation'}")
    if summary.is_file():
        print(json.dumps(json.loads(summary.read_text()), indent=1)[:2000])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
