#!/usr/bin/env bash
# Issue 16, the 0.5B batch-1 generation figures earlier visits lost to their deadlines (torchao
# w8a8 / int4 / fp8, awq-int4-marlin), one device call: GPTQ + AWQ checkpoints calibrated while
# Marlin compiles, then a profiled generation (lean traces: measured and explained), then the same
# precisions timed interleaved with an fp16 A/A arm if time is left.
# Visit 8 ran it once with w8a8 among them: one w8a8 generation took 50.2 s and cut everything
# after it, so w8a8 now comes last, in its own run folder: prefill and one decode step.
#   OUT=$OUT bash examples/backends/gen_05b.sh      # carry [".whl", ".whl-gptq"]
set -u
OUT=${OUT:-/tmp/qtrace-gen05}
RUNS=/tmp/qtrace-gen05-runs
DEADLINE=${DEADLINE:-520}
MODEL=qwen2.5-0.5b
mkdir -p "$OUT" "$RUNS"
source "$(dirname "$0")/../gpu_env.sh"
export GPTQMODEL_TORCH_EXTENSIONS_DIR=/tmp/gptqmodel-ext TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
LOG=$OUT/log.txt
START=$(date +%s)
left() { echo $(( DEADLINE - ($(date +%s) - START) )); }
say() { echo "=== $* ($(( $(date +%s) - START )) s in)" | tee -a "$LOG"; }
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl .whl-gptq/*.whl; } 2>&1 | tee -a "$LOG"
export PYTHONPATH=/tmp/site:$PWD
"$PY" examples/backends/gptq_prepare.py versions 2>&1 | tail -1 | tee -a "$LOG"
"$PY" -c "from qtrace.capture import models; models.resolve_model('$MODEL', progress=print)" 2>&1 | tail -2 | tee -a "$LOG"
say "Marlin compile and both calibrations, side by side"
MAX_JOBS=10 "$PY" examples/backends/gptq_prepare.py marlin > "$RUNS/marlin.txt" 2>&1 &
for P in gptq-int4 awq-int4; do
  "$PY" examples/backends/gptq_prepare.py checkpoint $MODEL $P > "$RUNS/$P.txt" 2>&1 &
done
wait
for f in marlin gptq-int4 awq-int4; do
  tr '\r' '\n' < "$RUNS/$f.txt" | grep -E "MARLIN|CHECKPOINT|built the|ready in" | tail -3 | tee -a "$LOG"
done
MARLIN=""; grep -q "ready=True" "$RUNS/marlin.txt" && MARLIN=",awq-int4-marlin,gptq-int4-marlin"
P=fp16,torchao-int4,torchao-fp8$MARLIN
L=$(( $(left) - 150 )); [ "$L" -gt 220 ] && L=220
say "profiled generation, limit $L s: $P"
timeout "$L" "$PY" -m qtrace profile $MODEL --task generate --batch-size 1 --seq-len 128 --new-tokens 32 --iters 4 \
  --warmup 1 --profile-steps 1 --precision $P --out "$RUNS/gen" --force 2>&1 | grep -v "INFO\|warn" | tee -a "$LOG"
timeout 60 "$PY" -m qtrace compare "$RUNS/gen" --format json > "$RUNS/gen/compare.json" 2>>"$LOG"
timeout 20 "$PY" -m qtrace compare "$RUNS/gen" 2>&1 | sed -n '/== Ranking/,/^Ranked/p' | tee -a "$LOG"
mkdir -p "$OUT/gen05_gen32" && cp "$RUNS/gen/run.json" "$RUNS/gen/compare.json" "$OUT/gen05_gen32/" 2>/dev/null
L=$(( $(left) - 130 ))
say "interleaved, limit $L s"
[ "$L" -gt 40 ] && timeout "$L" "$PY" benchmarks/interleaved_generate.py $MODEL \
  --precision fp16,int8,nf4,torchao-int8wo,torchao-int4,torchao-fp8$MARLIN --rounds 6 \
  --new-tokens 32 --warmup 1 2>>"$LOG" | tee "$OUT/interleaved_05b.jsonl"
L=$(( $(left) - 25 ))
say "torchao-w8a8 alone, 2 new tokens (prefill + one decode step), limit $L s"
[ "$L" -gt 40 ] && timeout "$L" "$PY" -m qtrace profile $MODEL --task generate --batch-size 1 --seq-len 128 \
  --new-tokens 2 --iters 3 --warmup 1 --profile-steps 1 --precision fp16,torchao-w8a8 --out "$RUNS/w8a8" --force \
  --no-lean 2>&1 | grep -v "INFO\|warn" | tee -a "$LOG"
mkdir -p "$OUT/gen05_w8a8" && cp "$RUNS/w8a8/run.json" "$OUT/gen05_w8a8/" 2>/dev/null
# Its trace is too big to bring back (a sync per printed element): its report comes back instead.
T=$(ls "$RUNS"/w8a8/torchao-w8a8/trace.json* 2>/dev/null | head -1)
[ -n "$T" ] && ls -la "$T" | tee -a "$LOG" && timeout 20 "$PY" -m qtrace report "$T" > "$OUT/gen05_w8a8/report.txt" 2>&1
say done
