#!/usr/bin/env bash
# The GPU visits behind examples/seed/: re-measure the seed experiment with qtrace on an H100/H200.
# Usage, from the repository root on the GPU host (bitsandbytes + msgspec wheels installed first,
# see ../../README.md "GPU notes"):  OUT=/some/dir bash examples/seed/gpu_session.sh A|B
#   A: classify forward, Qwen2.5-0.5B and ModernBERT-base shapes, batch 1 and 16, seq 128,
#      with and without 6 outlier dims; the independent plain CUDA-event check on 3 of them.
#   B: Qwen generation (seed-001 protocol, fewer prompts), a small profiled generation,
#      qtrace calibrate, a batch-size sweep, the last independent check.
# Every step has its own time limit and the visit stops starting steps after DEADLINE seconds,
# so one slow step never loses the others. Results are tarred as they finish.
set -u
PART=${1:?A or B}
OUT=${OUT:-/tmp/qtrace-seed}
RUNS=/tmp/qtrace-seed-runs
DEADLINE=${DEADLINE:-530}
mkdir -p "$OUT" "$RUNS"
export PYTHONUNBUFFERED=1 QTRACE_CACHE=/tmp/qtrace-cache TOKENIZERS_PARALLELISM=false
LOG=$OUT/log_$PART.txt
START=$(date +%s)
left() { echo $(( DEADLINE - ($(date +%s) - START) )); }
{
  date -u; nvidia-smi --query-gpu=name,driver_version,memory.total,power.limit,clocks.max.sm --format=csv
  nproc; uptime
  python3 -c "import torch, transformers, bitsandbytes as b; print('torch', torch.__version__, 'transformers', transformers.__version__, 'bitsandbytes', b.__version__)"
} 2>&1 | tee -a "$LOG"

profile() {  # profile <name> <limit s> <args...>
  local name=$1 limit=$2; shift 2
  if [ "$(left)" -lt 30 ]; then echo "=== SKIP $name (deadline)" | tee -a "$LOG"; return; fi
  [ "$limit" -gt "$(left)" ] && limit=$(left)
  echo "=== $name ($(left) s left): qtrace profile $*" | tee -a "$LOG"
  timeout "$limit" python3 -m qtrace profile "$@" --out "$RUNS/$name" --force 2>&1 | tee -a "$LOG"
}
plain() {  # plain <run name> <preset> <args...>
  local name=$1 preset=$2; shift 2
  if [ "$(left)" -lt 40 ]; then echo "=== SKIP plain $name (deadline)" | tee -a "$LOG"; return; fi
  echo "=== plain $name ($(left) s left)" | tee -a "$LOG"
  timeout 120 python3 benchmarks/plain_latency.py "$QTRACE_CACHE/presets/$preset" --compare "$RUNS/$name" "$@" \
    2>>"$LOG" | tee -a "$OUT/plain_$PART.jsonl"
}
pack() {  # pack <tar name> <run names...>
  local t=$1; shift
  (cd "$RUNS" && tar czf "$OUT/$t.tgz" "$@" 2>/dev/null)
}

C="--task classify --seq-len 128 --iters 20 --warmup 3 --profile-steps 2 --precision fp16,int8,nf4"
if [ "$PART" = A ]; then
  profile qwen_bs1 90 qwen2.5-0.5b $C --batch-size 1
  plain qwen_bs1 qwen2.5-0.5b --task classify --batch-size 1 --iters 20
  plain qwen_bs1 qwen2.5-0.5b --task classify --batch-size 1 --iters 20 --no-mask --precision fp16,int8
  profile qwen_bs16 90 qwen2.5-0.5b $C --batch-size 16
  plain qwen_bs16 qwen2.5-0.5b --task classify --batch-size 16 --iters 20
  pack qwen_plain qwen_bs1 qwen_bs16
  profile qwen_bs1_out6 90 qwen2.5-0.5b $C --batch-size 1 --outlier-dims 6
  profile qwen_bs16_out6 90 qwen2.5-0.5b $C --batch-size 16 --outlier-dims 6
  pack qwen_out6 qwen_bs1_out6 qwen_bs16_out6
  profile mb_bs1 60 modernbert-base $C --batch-size 1
  plain mb_bs1 modernbert-base --task classify --batch-size 1 --iters 20
  profile mb_bs16 60 modernbert-base $C --batch-size 16
  pack mb mb_bs1 mb_bs16
  profile mb_bs1_out6 60 modernbert-base $C --batch-size 1 --outlier-dims 6
  profile mb_bs16_out6 60 modernbert-base $C --batch-size 16 --outlier-dims 6
  pack mb_out6 mb_bs1_out6 mb_bs16_out6
else
  # Independent check, interleaved: qtrace and the plain loop alternate, so drift of this shared
  # host hits both alike (visit A ran them once each, minutes apart, and they disagreed by up to 38%).
  for r in 1 2; do
    profile agree_r$r 60 qwen2.5-0.5b --task classify --batch-size 1 --seq-len 128 --iters 40 --warmup 5 \
      --profile-steps 0 --precision fp16,int8,nf4
    plain agree_r$r qwen2.5-0.5b --task classify --batch-size 1 --iters 40 --warmup 5
  done
  pack agree agree_r1 agree_r2
  # seed-001: greedy, min = max new tokens = 128, one warm-up; 4 prompts instead of 20 to fit the visit.
  profile qwen_gen128 240 qwen2.5-0.5b --task generate --seq-len 128 --new-tokens 128 --iters 4 --warmup 1 \
    --profile-steps 0 --precision fp16,int8,nf4 --batch-size 1
  profile qwen_gen8 90 qwen2.5-0.5b --task generate --seq-len 128 --new-tokens 8 --iters 3 --warmup 1 \
    --profile-steps 1 --precision fp16,int8,nf4 --batch-size 1
  pack gen qwen_gen128 qwen_gen8
  echo "=== calibrate ($(left) s left)" | tee -a "$LOG"
  timeout 90 python3 -m qtrace calibrate 2>&1 | tee -a "$LOG"
  cp "$QTRACE_CACHE"/calibration/*.json "$OUT/" 2>/dev/null
  echo "=== sweep ($(left) s left)" | tee -a "$LOG"
  timeout $(( $(left) > 30 ? $(left) - 10 : 20 )) python3 -m qtrace sweep qwen2.5-0.5b --precision fp16,int8,nf4 \
    --batch-size 1,4,16,64 --seq-len 128 --task classify --iters 10 --out "$RUNS/sweep_qwen" 2>&1 | tee -a "$LOG"
  pack sweep sweep_qwen
fi
echo "=== done ($(left) s left)" | tee -a "$LOG"
