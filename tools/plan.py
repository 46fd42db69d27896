#!/usr/bin/env python
"""Fingerprint a dataset and plan a bundle's training for it (nnU-Net / nnSeq2Seq style).

    python tools/plan.py DATASET_DIR [--bundle seq2seq] [--gpu-memory 40] [--out plans/]

Writes ``fingerprint.json``, ``plan_2d.json`` and ``plan_3d.json`` (TUMSyn: ``plan_implicit.json``,
its stage-2 batch size) to ``--out`` (default
``DATASET_DIR_plans`` beside the dataset, which stays untouched). Stack a plan last:

    python -m monai.bundle run --config_file "['configs/train.json','/data/mine_plans/plan_2d.json']" ...
    python -m monai.bundle run --config_file "['configs/train.json','configs/3d.json','/data/mine_plans/plan_3d.json']" ...

See :mod:`mrsynth.planning` for the rules (target spacing with nnU-Net's anisotropy rule, patch
sizes divisible by the network's stride, batch size from the memory budget).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from monai.bundle import ConfigParser  # noqa: E402

from mrsynth.errors import DataError  # noqa: E402
from mrsynth.planning import fingerprint, make_implicit_plan, make_plan  # noqa: E402

PLANNABLE = ("seq2seq", "vq_seq2seq", "tsf_seq2seq", "tumsyn")


def tumsyn_network(configs=()):
    """TUMSyn stage 2's network (stage 1 + stage 2 configs) and one training sample's inputs."""
    root = REPO / "bundles" / "tumsyn"
    parser = ConfigParser()
    parser.read_config([str(root / "configs" / "train_text_encoder.json"), str(root / "configs" / "train.json"),
                        *[str(root / c) for c in configs]])
    parser["load_text_encoder"] = False  # memory does not depend on the stage-1 weights
    net = parser.get_parsed_content("network_def")
    patch, points = int(parser.get_parsed_content("patch_size")), int(parser.get_parsed_content("num_points"))
    tokens = torch.zeros(1, int(parser.get_parsed_content("context_length")), dtype=torch.long)
    acq = int(parser.get_parsed_content("acquisition_features") or 0)
    inputs = (torch.randn(1, 1, patch, patch, patch), tokens, torch.rand(1, points, 3) * 2 - 1,
              torch.zeros(1, acq) if acq else None)
    return net, inputs


def bundle_networks(bundle: str, configs=()):
    """The bundle's 2D training network, its 3D twin (or None), the channel widths, 2D input
    channels, the extra forward arguments and the forward passes of one training step."""
    root = REPO / "bundles" / bundle
    files = [root / "configs" / "train.json", *[root / c for c in configs]]
    parser = ConfigParser()
    parser.read_config([str(f) for f in files])
    if bundle == "tsf_seq2seq":  # memory is the same with untrained weights: no Seq2Seq checkpoint needed to plan
        parser["seq2seq"] = "@seq2seq_def"
    net_key = "seq2seq_def" if bundle == "tsf_seq2seq" else "network_def"
    channels = parser.get(f"{net_key}#channels") or parser.get("network_def#channels")
    n = len(parser.get_parsed_content("sequences"))
    code = torch.tensor([0])
    extra = (torch.ones(1, n), code) if bundle == "tsf_seq2seq" else (code,)
    net2d = parser.get_parsed_content("network_def")
    in2d = int(parser.get_parsed_content("num_slices")) * (n if bundle == "tsf_seq2seq" else 1)
    passes = 1
    if bundle == "seq2seq":
        passes = 1 + (float(parser.get_parsed_content("self_weight")) > 0) + 2 * (float(parser.get_parsed_content("cycle_weight")) > 0)
    net3d = None
    if (root / "configs" / "3d.json").is_file():
        p3 = ConfigParser()
        p3.read_config([str(f) for f in files] + [str(root / "configs" / "3d.json")])
        if bundle == "tsf_seq2seq":
            p3["seq2seq"] = "@seq2seq_def"
        net3d = p3.get_parsed_content("network_def")
    return net2d, net3d, channels, in2d, extra, passes


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dataset_dir")
    p.add_argument("--bundle", default="seq2seq", choices=PLANNABLE)
    p.add_argument("--config", action="append", default=[], help="configs stacked on train.json, e.g. configs/quick.json")
    p.add_argument("--gpu-memory", type=float, default=40.0, help="GPU memory budget in GB (default 40)")
    p.add_argument("--layout", default="auto")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    src = Path(args.dataset_dir).resolve()
    out = Path(args.out) if args.out else src.with_name(f"{src.name}_plans")
    try:
        fp = fingerprint(args.dataset_dir, layout=args.layout)
        if args.bundle == "tumsyn":
            net, inputs = tumsyn_network(args.config)
            plans = make_implicit_plan(fp, net, inputs, gpu_memory_gb=args.gpu_memory)
        else:
            net2d, net3d, channels, in2d, extra, passes = bundle_networks(args.bundle, args.config)
            plans = make_plan(fp, net2d, channels, in2d, network_3d=net3d, gpu_memory_gb=args.gpu_memory,
                              extra_args=extra, forward_passes=passes)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    out.mkdir(parents=True, exist_ok=True)
    (out / "fingerprint.json").write_text(json.dumps(fp, indent=2) + "\n")
    for k, plan in plans.items():
        plan["plan"] = {**plan["plan"], "bundle": args.bundle, "configs": ["configs/train.json", *args.config]}
        (out / f"plan_{k}.json").write_text(json.dumps(plan, indent=2) + "\n")
    if args.bundle == "tumsyn":
        info = plans["implicit"]["plan"]
        print(f"{fp['num_cases']} cases, images {fp['sequences']}; target spacing {info['target_spacing']} mm; "
              f"stage-2 batch {plans['implicit']['batch_size']} ({args.gpu_memory:g} GB); written to {out}")
        return 0
    info = plans["2d"]["plan"]
    print(f"{fp['num_cases']} cases, sequences {fp['sequences']}; target spacing {info['target_spacing']} mm"
          f"{' (anisotropic)' if info['anisotropic'] else ''}; 2D patch {plans['2d']['patch_size']} x batch "
          f"{plans['2d']['batch_size']}; 3D patch {plans['3d']['patch_size']} x batch {plans['3d']['batch_size']} "
          f"({args.gpu_memory:g} GB); written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
