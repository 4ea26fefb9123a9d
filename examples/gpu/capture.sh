#!/usr/bin/env bash
# How examples/gpu/*.run.json and traces/*_qtrace_* were captured: one visit to an offline
# GPU host (see ../../../shared/gpu/README.md for bringing bitsandbytes as a wheel).
# Usage, from the repository root: OUT=/some/dir bash examples/gpu/capture.sh
# Each run is tarred as soon as it ends, so a run cut short still leaves the earlier ones.
set -u
OUT=${OUT:-/tmp/qtrace-gpu}
RUNS=/tmp/qtrace-gpu-runs
rm -rf "$RUNS"
mkdir -p "$OUT" "$RUNS"
export PYTHONUNBUFFERED=1 QTRACE_CACHE=/tmp/qtrace-cache
LOG=$OUT/log.txt
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,power.limit,clocks.max.sm --format=csv
  python3 -c "import torch, transformers, bitsandbytes as b; print('torch', torch.__version__, 'transformers', transformers.__version__, 'bitsandbytes', b.__version__)"
} 2>&1 | tee -a "$LOG"

run() {  # run <name> <timeout s> <qtrace profile args...>
  local name=$1 limit=$2
  shift 2
  echo "=== $name: qtrace profile $*" | tee -a "$LOG"
  timeout "$limit" python3 -m qtrace profile "$@" --out "$RUNS/$name" 2>&1 | tee -a "$LOG"
  (cd "$RUNS" && tar cf "$OUT/$name.tar" "$name")
}

run qwen_bs1 150 qwen2.5-0.5b --precision fp16,int8,nf4 --task classify --iters 30
run qwen_bs1_outliers 120 qwen2.5-0.5b --precision fp16,int8,nf4 --task classify --iters 30 --outlier-dims 6 --profile-steps 2
run qwen_gen 120 qwen2.5-0.5b --precision fp16,int8,nf4 --task generate --new-tokens 8 --iters 10 --profile-steps 1
run modernbert_bs1_outliers 90 modernbert-base --precision fp16,int8,nf4 --task classify --iters 30 --outlier-dims 6 \
  --profile-steps 2
echo "=== done" | tee -a "$LOG"
