#!/usr/bin/env bash
# Issue 16 at a 7B-class shape: GPTQ and AWQ (GPTQModel 7.3.6) of qwen2.5-7b (random weights, drawn
# on the H200) beside fp16 and NF4. Two device calls on one warm machine; the second finds what the
# first left in /tmp (the checkpoint cache, Marlin's build):
#   OUT=$OUT bash examples/backends/gptq_7b.sh prepare   # the preset's fp16 folder (~15 GB), then GPTQ
#                                                        # and AWQ calibrated side by side while
#                                                        # Marlin's first-use nvcc compile runs
#   OUT=$OUT bash examples/backends/gptq_7b.sh profile   # classify batch 32, then batch-1 generation
#                                                        # timed interleaved (A/A fp16 arm)
# Carry [".whl", ".whl-gptq"] (docs/backends.md says how they are made). The calibrations run
# detached, so a prepare call that ends first leaves them running; profile waits for them.
set -u
STAGE=${1:-prepare}
OUT=${OUT:-/tmp/qtrace-gptq-7b}
RUNS=/tmp/qtrace-gptq-7b-runs
WORK=/tmp/qtrace-gptq-7b-work  # raw logs (GPTQModel draws progress bars): filtered copies go to $OUT
DEADLINE=${DEADLINE:-585}
MODEL=qwen2.5-7b
mkdir -p "$OUT" "$RUNS" "$WORK"
source "$(dirname "$0")/../gpu_env.sh"
export GPTQMODEL_TORCH_EXTENSIONS_DIR=/tmp/gptqmodel-ext TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
LOG=$OUT/log-$STAGE.txt
START=$(date +%s)
left() { echo $(( DEADLINE - ($(date +%s) - START) )); }
since() { echo $(( $(date +%s) - START )); }
say() { echo "=== $* ($(since) s in)" | tee -a "$LOG"; }
clean() { tr '\r' '\n' < "$1" | sed 's/\x1b\[[0-9;]*[A-Za-z]//g' | grep -v '^\s*$'; }

if [ ! -f /tmp/site/.qtrace-gptq-installed ]; then
  {
    date -u; nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv; nproc; df -h /tmp | tail -1
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      .whl/*.whl .whl-gptq/*.whl && touch /tmp/site/.qtrace-gptq-installed
  } 2>&1 | tee -a "$LOG"
fi
export PYTHONPATH=/tmp/site:$PWD
"$PY" examples/backends/gptq_prepare.py versions 2>&1 | tail -1 | tee -a "$LOG"

running() { pgrep -f "gptq_prepare.py $1" > /dev/null; }

if [ "$STAGE" = prepare ]; then
  if [ ! -f /tmp/gptqmodel-ext/.qtrace-built ] && ! running marlin; then
    say "Marlin's first-use compile, detached, MAX_JOBS=10 (six cores left to the calibrations)"
    mkdir -p /tmp/gptqmodel-ext
    MAX_JOBS=10 setsid nohup bash -c "'$PY' examples/backends/gptq_prepare.py marlin > '$WORK/marlin.txt' 2>&1; \
      grep -q ready=True '$WORK/marlin.txt' && touch /tmp/gptqmodel-ext/.qtrace-built" > /dev/null 2>&1 &
  fi
  say "the preset's fp16 folder"
  timeout "$(( $(left) - 10 ))" "$PY" examples/backends/gptq_prepare.py folder $MODEL 2>&1 | grep -v "^INFO" \
    | tail -4 | tee -a "$LOG"
  for P in gptq-int4 awq-int4; do
    if ! running "checkpoint $MODEL $P"; then
      say "$P calibration, detached"
      setsid nohup "$PY" examples/backends/gptq_prepare.py checkpoint $MODEL $P > "$WORK/$P.txt" 2>&1 &
    fi
  done
  sleep 5
fi

# Both stages: wait for the calibrations and Marlin (prepare: to its deadline; profile: 300 s at most).
WAIT_LEFT=$([ "$STAGE" = prepare ] && echo 20 || echo $(( DEADLINE - 300 )))
while { running "checkpoint" || running marlin; } && [ "$(left)" -gt "$WAIT_LEFT" ]; do
  sleep 30
  for f in gptq-int4 awq-int4 marlin; do
    [ -f "$WORK/$f.txt" ] && echo "  $f: $(clean "$WORK/$f.txt" | grep -v '^INFO  gc\.' | tail -1 | cut -c1-160)"
  done | tee -a "$LOG"
done
for f in gptq-int4 awq-int4 marlin; do
  [ -f "$WORK/$f.txt" ] || continue
  clean "$WORK/$f.txt" | grep -E "CHECKPOINT|ready|MARLIN|building|built|writing|wrote|Error|error|Traceback" \
    | tail -8 > "$OUT/$f-$STAGE.txt"
  clean "$WORK/$f.txt" | tail -40 > "$OUT/$f-$STAGE-tail.txt"
done
say "calibrations running: $(pgrep -fc 'gptq_prepare.py checkpoint'), Marlin running: $(pgrep -fc 'gptq_prepare.py marlin')"
du -sh /tmp/qtrace-cache/* 2>/dev/null | tee -a "$LOG"
[ "$STAGE" = prepare ] && exit 0

# ---- profile
MARLIN=""; [ -f /tmp/gptqmodel-ext/.qtrace-built ] && MARLIN=",gptq-int4-marlin,awq-int4-marlin"
if [ ! -f "$RUNS/cls/run.json" ] || [ -f "$RUNS/cls/INCOMPLETE" ]; then
  L=$(( $(left) - 240 )); [ "$L" -gt 260 ] && L=260
  say "classify batch 32 (limit $L s)"
  timeout "$L" "$PY" -m qtrace profile $MODEL --task classify --batch-size 32 --seq-len 128 --iters 10 --warmup 3 \
    --profile-steps 1 --no-lean --precision fp16,nf4$MARLIN,gptq-int4-triton --out "$RUNS/cls" --force 2>&1 \
    | grep -v "^INFO" | grep -v "Warning\|warn(" | tee -a "$LOG"
  timeout 70 "$PY" -m qtrace compare "$RUNS/cls" --format json > "$RUNS/cls/compare.json" 2>>"$LOG"
  timeout 20 "$PY" -m qtrace compare "$RUNS/cls" 2>&1 | head -40 | tee -a "$LOG"
  find "$RUNS/cls" -name '*.json.gz' -size +4M -printf '%p dropped (over 4 MB)\n' -delete 2>/dev/null | tee -a "$LOG"
  (cd "$RUNS" && tar czf "$OUT/gptq7b_cls.tgz" cls)
fi
L=$(( $(left) - 10 ))
say "batch-1 generation, interleaved (limit $L s)"
timeout "$L" "$PY" benchmarks/interleaved_generate.py $MODEL --precision fp16,nf4$MARLIN,gptq-int4-triton \
  --rounds 6 --new-tokens 32 --warmup 1 2>>"$LOG" | tee "$OUT/interleaved_gptq_7b.jsonl"
say "done"
ls -la "$OUT" | tee -a "$LOG"
