#!/usr/bin/env bash
# The GPU checks of issues 8 and 12 as one script for a lent GPU machine (the device tool):
#   1. TUMSyn at the paper's width: a whole 1 mm brain (197 x 233 x 189), fp32 and amp, while the
#      phantom data of step 2 is written on the CPUs;
#   2. paper-size Seq2Seq, 3 training seeds at once, 200 s of training each, snapshots at 60 / 120 /
#      200 s, every snapshot evaluated (tools/benchmark_paper_size.py).
# Usage (repository root; wheels of the packages the machine lacks in .whl/, see the device tool's
# README): bash tools/gpu_checks.sh OUT_DIR
set -u
OUT=${1:?output folder}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore GIT_PYTHON_REFRESH=quiet
nvidia-smi -L
python3 -c "import torch, monai; print('torch', torch.__version__, 'monai', monai.__version__, torch.cuda.get_device_name(0))" || exit 1
DATA=/tmp/paper_size
W=$(( $(nproc) / 2 ))
python3 tools/phantom.py --out $DATA/train --subjects 16 --spacing 2 --seed 0 --drop-max 1 --layout brats --quiet --workers $W &
python3 tools/phantom.py --out $DATA/test --subjects 4 --spacing 2 --seed 1 --layout brats --quiet --workers 4 &
timeout 120 python3 tools/benchmark_tumsyn.py --device cuda --whole-brain 197 233 189 --amp --skip-window \
  --out "$OUT/tumsyn_gpu.json" > "$OUT/tumsyn_gpu.log" 2>&1
echo "tumsyn rc=$?"; tail -25 "$OUT/tumsyn_gpu.log"
wait
timeout 400 python3 tools/benchmark_paper_size.py --out $DATA --seeds 0 1 2 --marks 60 120 200 --report "$OUT/paper_size.md" \
  > "$OUT/paper_size.log" 2>&1
echo "paper size rc=$?"
tail -60 "$OUT/paper_size.log"
cp $DATA/paper_size.json "$OUT/" 2>/dev/null
cp $DATA/seed0/eval_t200s/grids/PHANTOM_0000.png "$OUT/grid_seed0_t200s.png" 2>/dev/null
cp $DATA/seed0/eval_t200s/summary.json "$OUT/summary_seed0_t200s.json" 2>/dev/null
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
