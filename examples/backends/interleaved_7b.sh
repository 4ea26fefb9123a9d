#!/usr/bin/env bash
# Issue 16, 7B generation timed interleaved (one device call, ~3 min): every precision of qwen2.5-7b
# that generates at a usable speed held in GPU memory at once, one greedy 32-token generation each
# per round in rotated order, fp16 twice (A/A). The sequential `qtrace profile` of two calls gave
# fp16 18.4 and 28.2 ms/token and NF4 2.12x and 1.00x: the host's drift, which this design shares out.
#   OUT=$OUT bash examples/backends/interleaved_7b.sh        # carry .whl/
set -u
OUT=${OUT:-/tmp/qtrace-7b-interleaved}
mkdir -p "$OUT"
source "$(dirname "$0")/../gpu_env.sh"
LOG=$OUT/log.txt
use_carried_wheels "bitsandbytes, msgspec, torchao"
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } | tee -a "$LOG"
timeout 180 "$PY" benchmarks/interleaved_generate.py qwen2.5-7b \
  --precision fp16,int8,nf4,torchao-int8wo,torchao-int4 --rounds 6 --new-tokens 32 --warmup 1 \
  2>>"$LOG" | tee "$OUT/interleaved_7b.jsonl"
