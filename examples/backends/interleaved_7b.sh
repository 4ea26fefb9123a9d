#!/usr/bin/env bash
# Issue 16, 7B generation timed interleaved (one device call, ~3 min): every precision of qwen2.5-7b
# that generates at a usable speed held in GPU memory at once, one greedy 32-token generation each
# per round in rotated order, fp16 twice (A/A). The sequential `qtrace profile` of two calls gave
# fp16 18.4 and 28.2 ms/token and NF4 2.12x and 1.00x: the host's drift, which this design shares out.
#   OUT=$OUT bash examples/backends/interleaved_7b.sh        # carry .whl/
set -u
OUT=${OUT:-/tmp/qtrace-7b-interleaved}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 QTRACE_CACHE=/tmp/qtrace-cache TOKENIZERS_PARALLELISM=false
PY=${PY:-/opt/torch/.venv/bin/python3}
[ -x "$PY" ] || PY=python3
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  > "$OUT/log.txt" 2>&1
export PYTHONPATH=/tmp/site:$PWD
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } | tee -a "$OUT/log.txt"
timeout 180 "$PY" benchmarks/interleaved_generate.py qwen2.5-7b \
  --precision fp16,int8,nf4,torchao-int8wo,torchao-int4 --rounds 6 --new-tokens 32 --warmup 1 \
  2>>"$OUT/log.txt" | tee "$OUT/interleaved_7b.jsonl"
