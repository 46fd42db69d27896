#!/usr/bin/env bash
# The GPU checks of issue 8 as one script for a lent GPU machine (the device tool):
#   1. the paper-size Seq2Seq training step alone (tools/benchmark_paper_size.py --step-only): a
#      batch with four targets or one, cuDNN autotuning off and on, while the phantom data of
#      step 2 is written on the CPUs, and torch.profiler's operator table of the autotuned step
#      (SKIP_STEP=1 skips it);
#   2. paper-size Seq2Seq, 3 training seeds at once, ${TRAIN_S:-240} s of training each, snapshots
#      at ${MARKS:-60 120 TRAIN_S} seconds, every snapshot evaluated (tools/benchmark_paper_size.py).
# MIXTURE=K gives both steps the mixture output of K classes (benchmark_paper_size.py --mixture K).
# VARIANTS=1 also times the step's launch-saving variants (fused Adam, channels-last, torch.compile
# with and without CUDA graphs: benchmark_paper_size.py --step-variants, <OUT>/step_variants.jsonl).
# TUMSYN=1 also times TUMSyn on a whole 1 mm brain at the paper's width (tools/benchmark_tumsyn.py).
# Usage (repository root; wheels of the packages the machine lacks in .whl/: monai, nibabel,
# pytorch-ignite, fire, termcolor and nilearn (the phantom's template), see the device tool's README):
# bash tools/gpu_checks.sh OUT_DIR
set -u
OUT=${1:?output folder}
TRAIN_S=${TRAIN_S:-240}
MARKS=${MARKS:-60 120 $TRAIN_S}
MIX=${MIXTURE:+--mixture $MIXTURE}
DATA=/tmp/paper_size
mkdir -p "$OUT" "$DATA"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore GIT_PYTHON_REFRESH=quiet
nvidia-smi -L
python3 -c "import torch, monai; print('torch', torch.__version__, 'monai', monai.__version__, torch.cuda.get_device_name(0))" || exit 1
W=$(( $(nproc) / 2 ))
python3 tools/phantom.py --out $DATA/train --subjects 16 --spacing 2 --seed 0 --drop-max 1 --layout brats --quiet --workers $W &
python3 tools/phantom.py --out $DATA/test --subjects 4 --spacing 2 --seed 1 --layout brats --quiet --workers 4 &
if [ "${SKIP_STEP:-0}" != 1 ]; then
  timeout 180 python3 tools/benchmark_paper_size.py --out $DATA --step-only --profile $MIX > $DATA/step.log 2>&1
  echo "step rc=$?"; grep -v Warning $DATA/step.log | tail -8
  cp $DATA/step.json $DATA/step_profile.txt "$OUT/" 2>/dev/null; head -40 "$OUT/step_profile.txt" 2>/dev/null
fi
if [ "${VARIANTS:-0}" = 1 ]; then
  timeout 300 python3 tools/benchmark_paper_size.py --out $DATA --step-variants $MIX > $DATA/variants.log 2>&1
  echo "variants rc=$?"; grep '^{' $DATA/variants.log; cp $DATA/step_variants.jsonl "$OUT/" 2>/dev/null
fi
if [ "${TUMSYN:-0}" = 1 ]; then
  timeout 120 python3 tools/benchmark_tumsyn.py --device cuda --whole-brain 197 233 189 --amp --skip-window \
    --out "$OUT/tumsyn_gpu.json" > "$OUT/tumsyn_gpu.log" 2>&1
  echo "tumsyn rc=$?"; tail -25 "$OUT/tumsyn_gpu.log"
fi
wait
(nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader -l 5 > "$OUT/gpu_util.csv" 2>/dev/null &)
timeout $(( TRAIN_S + 260 )) python3 tools/benchmark_paper_size.py --out $DATA --seeds 0 1 2 --marks $(echo $MARKS $TRAIN_S | tr " " "\n" | sort -nu | tr "\n" " ") $MIX \
  --report "$OUT/paper_size.md" > "$OUT/paper_size.log" 2>&1
echo "paper size rc=$?"
grep -v -i "warn" "$OUT/paper_size.log" | tail -60
cp $DATA/paper_size.json "$OUT/" 2>/dev/null
cp $DATA/seed0/eval_t${TRAIN_S}s/grids/PHANTOM_0000.png "$OUT/grid_seed0_t${TRAIN_S}s.png" 2>/dev/null
cp $DATA/seed0/eval_t${TRAIN_S}s/summary.json "$OUT/summary_seed0_t${TRAIN_S}s.json" 2>/dev/null
pkill -f "nvidia-smi --query-gpu" 2>/dev/null
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
