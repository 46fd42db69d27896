#!/usr/bin/env python
"""Benchmark the training data cache: time to the first batch and to the end of an epoch of the
Seq2Seq bundle's own training data pipeline (train.json + quick.json: loading with checks, the
papers' scaling, random slab sampling), in a new process per run as each training run is:

* ``memory``: MONAI's CacheDataset (the default): every run loads and scales every case first;
* ``disk, first run``: ``--cache_dir``: a PersistentDataset writing its cache;
* ``disk, later run``: the same cache read back.

    python tools/bench_cache.py --cases 100 --spacing 3 --out bench_cache

The model's step is the same in every mode and is left out: what the cache changes is the data.
Ratios are against the memory mode of the same run. The OS file cache is warm after the phantom
is written, for every mode alike.
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

_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
from monai.bundle import ConfigParser
p = ConfigParser()
root = sys.argv[1]
p.read_config([root + '/configs/train.json', root + '/configs/quick.json'])
p.update({'dataset_dir': sys.argv[2], 'cache_dir': None if sys.argv[3] == 'none' else sys.argv[3], 'val_fraction': 0.01})
t_import = time.perf_counter()
loader = p.get_parsed_content('train#dataloader')
first = None
n = 0
for batch in loader:
    n += 1
    if first is None:
        first = time.perf_counter()
end = time.perf_counter()
print(json.dumps({'first_batch_s': first - t_import, 'epoch_s': end - t_import, 'batches': n}))
"""


def run_mode(data: Path, cache: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(REPO / "bundles" / "seq2seq"), str(data), cache],
                          capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=100)
    p.add_argument("--spacing", type=float, default=3.0)
    p.add_argument("--out", default="bench_cache")
    p.add_argument("--repeats", type=int, default=2, help="runs per mode (the median is reported)")
    args = p.parse_args(argv)
    out = Path(args.out)
    data = out / f"phantom_{args.cases}_{args.spacing:g}mm"
    if not data.is_dir():
        from mrsynth.data.phantom import write_dataset

        write_dataset(data, subjects=args.cases, spacing=args.spacing, seed=0, layout="brats", progress=False)
    results = {}
    runs = {"memory": [], "disk, first run": [], "disk, later run": []}
    for _ in range(args.repeats):
        runs["memory"].append(run_mode(data, "none"))
        cache = out / "cache"
        shutil.rmtree(cache, ignore_errors=True)
        runs["disk, first run"].append(run_mode(data, str(cache)))
        runs["disk, later run"].append(run_mode(data, str(cache)))
    for mode, rs in runs.items():
        rs = sorted(rs, key=lambda r: r["epoch_s"])
        results[mode] = rs[len(rs) // 2]
    base = results["memory"]
    print(f"{args.cases} cases at {args.spacing:g} mm, {base['batches']} batches per epoch (train.json + quick.json)")
    print(f"{'mode':<18} {'first batch s':>14} {'epoch s':>9} {'first vs memory':>16} {'epoch vs memory':>16}")
    for mode, r in results.items():
        print(f"{mode:<18} {r['first_batch_s']:>14.2f} {r['epoch_s']:>9.2f} {r['first_batch_s'] / base['first_batch_s']:>16.2f}"
              f" {r['epoch_s'] / base['epoch_s']:>16.2f}")
    (out / "results.json").write_text(json.dumps({"cases": args.cases, "spacing": args.spacing, **results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
