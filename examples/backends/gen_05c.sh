#!/usr/bin/env bash
# Issue 16, visit 10: the 0.5B batch-1 generation as complete, profiled run folders (earlier visits
# lost torchao-fp8's and awq-int4-marlin's to their deadlines), in two device calls on one warm H200:
#   OUT=$OUT PART=a bash examples/backends/gen_05c.sh   # carry [".whl", ".whl-gptq"]
#   OUT=$OUT PART=b bash examples/backends/gen_05c.sh   # the next call, at once (warm 30 s)
#   OUT=$OUT PART=a MARLIN_AFTER=0 bash ...              # visit 10's third call: part a again, for its compare
# a: fp16, int8, nf4 and the torchao precisions profiled with nothing else on the machine, then
#    Marlin's compile and the GPTQ / AWQ calibrations started detached (they outlive the call).
# b: waits for them, then fp16 and the Marlin precisions profiled in a second run folder (GPTQModel's
#    import changes the allocator settings for its whole process, so each folder has its own fp16),
#    then every precision timed interleaved with an fp16 A/A arm.
# At most 8 files come back from a call, so each part packs its results into one tarball.
set -u
OUT=${OUT:-/tmp/qtrace-gen05c}
PART=${PART:-a}
RUNS=/tmp/qtrace-gen05c-runs
DEADLINE=${DEADLINE:-570}
MODEL=qwen2.5-0.5b
GEN="--task generate --batch-size 1 --seq-len 128 --new-tokens 32 --iters 5 --warmup 1 --profile-steps 1"
mkdir -p "$OUT" "$RUNS"
source "$(dirname "$0")/../gpu_env.sh"
export GPTQMODEL_TORCH_EXTENSIONS_DIR=/tmp/gptqmodel-ext TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export PYTHONPATH=/tmp/site:$PWD
LOG=$OUT/log-$PART.txt
START=$(date +%s)
left() { echo $(( DEADLINE - ($(date +%s) - START) )); }
say() { echo "=== $* ($(( $(date +%s) - START )) s in)" | tee -a "$LOG"; }
# A run folder's figures, and each trace's report as text (the traces themselves stay behind).
collect() {
  local run=$1 dest=$RUNS/back/$1
  mkdir -p "$dest"
  # Visit 10's first call gave compare 90 s and lost gen_a's (six full + lean traces of a 32-token
  # generation, ~93 MB gzipped): compare and the reports now run side by side with more time.
  timeout "${COMPARE_S:-240}" "$PY" -m qtrace compare "$RUNS/$run" --format json > "$dest/compare.json" 2>>"$LOG" &
  cp "$RUNS/$run/run.json" "$dest/" 2>/dev/null
  for t in "$RUNS/$run"/*/trace.json.gz; do
    [ -f "$t" ] || continue
    p=$(basename "$(dirname "$t")")
    timeout 120 "$PY" -m qtrace report "$t" > "$dest/$p.report.txt" 2>&1 &
    ls -la "$t" "$(dirname "$t")"/lean_trace.json.gz 2>/dev/null >> "$dest/sizes.txt"
  done
  wait
  ls -la "$dest" | tee -a "$LOG"
}
pack() { tar -C "$RUNS/back" -czf "$OUT/results-$PART.tar.gz" . && ls -la "$OUT" | tee -a "$LOG"; }

if [ "$PART" = a ]; then
  { date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      .whl/*.whl .whl-gptq/*.whl; } 2>&1 | tee -a "$LOG"
  "$PY" examples/backends/gptq_prepare.py versions 2>&1 | tail -1 | tee -a "$LOG"
  "$PY" -c "from qtrace.capture import models; models.resolve_model('$MODEL', progress=print)" 2>&1 | tail -2 | tee -a "$LOG"
  L=$(( $(left) - 230 )); [ "$L" -gt 330 ] && L=330
  say "profiled generation, limit $L s, nothing else running"
  timeout "$L" "$PY" -m qtrace profile $MODEL $GEN --precision fp16,int8,nf4,torchao-int8wo,torchao-int4,torchao-fp8 \
    --out "$RUNS/gen_a" --force 2>&1 | grep -v "INFO\|warn" | tee -a "$LOG"
  collect gen_a
  pack
  [ "${MARLIN_AFTER:-1}" = 1 ] || { say "part a done, no Marlin stage"; exit 0; }
  say "Marlin compile and both calibrations, detached"
  MAX_JOBS=12 setsid nohup "$PY" examples/backends/gptq_prepare.py marlin > "$RUNS/marlin.txt" 2>&1 < /dev/null &
  for P in gptq-int4 awq-int4; do
    setsid nohup "$PY" examples/backends/gptq_prepare.py checkpoint $MODEL $P > "$RUNS/$P.txt" 2>&1 < /dev/null &
  done
  while [ "$(left)" -gt 15 ] && pgrep -f gptq_prepare.py > /dev/null; do sleep 5; done
  for f in marlin gptq-int4 awq-int4; do
    tr '\r' '\n' < "$RUNS/$f.txt" | grep -E "MARLIN|CHECKPOINT|built the|ready in" | tail -3 | tee -a "$LOG"
  done
  say "part a done"
  exit 0
fi

say "part b: waiting for the compile and the calibrations"
while [ "$(left)" -gt 300 ] && pgrep -f gptq_prepare.py > /dev/null; do sleep 5; done
for f in marlin gptq-int4 awq-int4; do
  tr '\r' '\n' < "$RUNS/$f.txt" | grep -E "MARLIN|CHECKPOINT|built the|ready in" | tail -3 | tee -a "$LOG"
done
MARLIN=""; grep -q "ready=True" "$RUNS/marlin.txt" && MARLIN=",gptq-int4-marlin,awq-int4-marlin"
L=$(( $(left) - 170 )); [ "$L" -gt 200 ] && L=200
say "profiled generation, limit $L s: fp16$MARLIN"
timeout "$L" "$PY" -m qtrace profile $MODEL $GEN --precision fp16$MARLIN --out "$RUNS/gen_b" --force 2>&1 \
  | grep -v "INFO\|warn" | tee -a "$LOG"
collect gen_b
L=$(( $(left) - 20 ))
say "interleaved, limit $L s"
[ "$L" -gt 40 ] && timeout "$L" "$PY" benchmarks/interleaved_generate.py $MODEL \
  --precision fp16,int8,nf4,torchao-int8wo,torchao-int4,torchao-fp8$MARLIN --rounds 6 \
  --new-tokens 32 --warmup 1 2>>"$LOG" | tee "$RUNS/back/interleaved_05b.jsonl"
pack
say "part b done"
