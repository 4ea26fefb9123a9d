#!/usr/bin/env bash
# Issue 14, fourth visit (one device call, <= ~4 min): what CUPTI costs per CUDA call, and whether a
# longer in-session warm-up or turning external correlation off removes the lean pass's 1.24-1.33x.
# benchmarks/cupti_cost.py in three processes: qwen2.5-0.5b classify batch 1 with TEARDOWN_CUPTI=1
# (qtrace's default) and =0, and batch 32 with =1. Called first by examples/gpu_visit_2026_12_02a.sh.
#   OUT=$OUT bash examples/lean/cupti_session.sh        # carry .whl/ (bitsandbytes, msgspec)
set -u
OUT=${OUT:-/tmp/qtrace-cupti}
mkdir -p "$OUT"
source "$(dirname "$0")/../gpu_env.sh"
LOG=$OUT/log.txt
use_carried_wheels "bitsandbytes, msgspec"
{
  date -u; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv; nproc; uptime
} 2>&1 | tee -a "$LOG"
probe() {  # probe <teardown> <limit s> <args...>
  local td=$1 limit=$2; shift 2
  echo "=== TEARDOWN_CUPTI=$td cupti_cost.py $*" | tee -a "$LOG"
  TEARDOWN_CUPTI=$td timeout "$limit" "$PY" benchmarks/cupti_cost.py qwen2.5-0.5b "$@" 2>&1 \
    | grep -v "^INFO\|Warning" | tee -a "$OUT/cupti.jsonl" | tee -a "$LOG"
}
probe 1 90 --precision fp16,int8,nf4 --batch-size 1 --rounds 5
probe 0 75 --precision fp16,int8,nf4 --batch-size 1 --rounds 4
probe 1 70 --precision fp16,int8,nf4 --batch-size 32 --rounds 3
