#!/usr/bin/env bash
# Issue 14's proof on an H200: does a lean trace (CUDA activity only) explain the measured slowdown?
# One device call of at most ~9.5 minutes (profiles start until DEADLINE, all ends by END).
# From the repository root on the GPU host:
#   OUT=/some/dir bash examples/lean/gpu_session.sh
# (the device runner sets OUT; carry .whl: the bitsandbytes + msgspec wheels, installed below.)
# 1. benchmarks/lean_overhead.py: the lean pass's own cost, bracketed by un-profiled blocks in one
#    process, and whether an earlier profiler session taxes later passes (LEAN_PROBE="0 1": with
#    TEARDOWN_CUPTI=0 and 1, unprimed; CAUSAL_PROBE=1: fp16, int8, int8@0 interleaved, --outlier-dims 6).
# 2. The interleaved A/A check of benchmarks/latency_agreement.py (qwen bs1, fp16 and int8).
# 3. Matrix: modernbert-base and qwen2.5-0.5b, --task classify, batch 1 and 32, fp16,int8,nf4, with and
#    without --outlier-dims 6; every `qtrace profile` records timed -> lean -> timed-after -> full per
#    precision (CUPTI primed once per process). Then int8 with --int8-threshold 0 (no
#    outlier path: the causal check). Each step has its own time limit and no step starts after
#    DEADLINE seconds; results are packed as they finish (at most 8 files come back).
set -u
OUT=${OUT:-/tmp/qtrace-lean}
RUNS=/tmp/qtrace-lean-runs
DEADLINE=${DEADLINE:-500}  # no profile starts after this; the summary fits in END
END=${END:-560}
mkdir -p "$OUT" "$RUNS"
source "$(dirname "$0")/../gpu_env.sh"
LOG=$OUT/log.txt
START=$(date +%s)
left() { echo $(( DEADLINE - ($(date +%s) - START) )); }
use_carried_wheels "bitsandbytes, msgspec"
{
  date -u; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv; nproc; uptime
  "$PY" -c "import torch, transformers, bitsandbytes as b; print('torch', torch.__version__, 'transformers', transformers.__version__, 'bitsandbytes', b.__version__)"
} 2>&1 | tee -a "$LOG"

profile() {  # profile <name> <limit s> <args...>
  local name=$1 limit=$2; shift 2
  if [ "$(left)" -lt 25 ]; then echo "=== SKIP $name (deadline)" | tee -a "$LOG"; return; fi
  [ "$limit" -gt "$(left)" ] && limit=$(left)
  echo "=== $name ($(left) s left): qtrace profile $*" | tee -a "$LOG"
  timeout "$limit" "$PY" -m qtrace profile "$@" --out "$RUNS/$name" --force 2>&1 | tee -a "$LOG"
}
pack() {  # pack <archive> <run names...>: full traces over 3 MB dropped (lean traces and run.json kept)
  local t=$1; shift
  (cd "$RUNS" && find "$@" -name trace.json.gz -size +3M -printf '%p dropped (over 3 MB)\n' -delete 2>/dev/null \
     | tee -a "$LOG"; tar czf "$OUT/$t.tgz" "$@" 2>/dev/null)
}

# LEAN_PROBE="0 1" times the lean pass with CUPTI teardown off and on (the first visit of 2026-12-01);
# the default runs it once as qtrace profile records (variable unset, CUPTI primed).
for td in ${LEAN_PROBE:-unset}; do
  echo "=== lean_overhead, TEARDOWN_CUPTI=$td ($(left) s left)" | tee -a "$LOG"
  if [ "$td" = unset ]; then
    timeout 110 "$PY" benchmarks/lean_overhead.py qwen2.5-0.5b --precision fp16,int8,nf4 \
      --batch-size 1 --rounds 3 --block-iters 5 --steps 2 2>>"$LOG" | tee -a "$OUT/overhead.jsonl"
  else
    TEARDOWN_CUPTI=$td timeout 110 "$PY" benchmarks/lean_overhead.py qwen2.5-0.5b --precision fp16,int8,nf4 \
      --batch-size 1 --rounds 3 --block-iters 5 --steps 2 --no-prime 2>>"$LOG" | tee -a "$OUT/overhead.jsonl"
  fi
done
if [ -n "${CAUSAL_PROBE:-}" ]; then
  echo "=== lean_overhead, outlier path on and off (causal check, measured side) ($(left) s left)" | tee -a "$LOG"
  timeout 90 "$PY" benchmarks/lean_overhead.py qwen2.5-0.5b --precision fp16,int8,int8@0 --outlier-dims 6 \
    --batch-size 1 --rounds 3 --block-iters 4 --steps 2 2>>"$LOG" | tee -a "$OUT/causal.jsonl"
fi
echo "=== latency_agreement A/A control and qtrace/plain, qwen bs1 ($(left) s left)" | tee -a "$LOG"
timeout 90 "$PY" benchmarks/latency_agreement.py qwen2.5-0.5b --precision fp16,int8 --batch-size 1 \
  --blocks 6 --block-iters 4 --warmup 3 --control 2>>"$LOG" | tee -a "$OUT/agreement.jsonl"
C="--task classify --seq-len 128 --iters 10 --warmup 2 --profile-steps 2 --precision fp16,int8,nf4"
# bs1 first: the host-bound cases the lean trace exists for; their full+lean pairs are kept whole.
profile qwen_bs1 60 qwen2.5-0.5b $C --batch-size 1
profile mb_bs1 60 modernbert-base $C --batch-size 1
(cd "$RUNS" && tar czf "$OUT/pairs_bs1.tgz" qwen_bs1 mb_bs1 2>/dev/null)
profile qwen_bs1_out6 60 qwen2.5-0.5b $C --batch-size 1 --outlier-dims 6
profile mb_bs1_out6 50 modernbert-base $C --batch-size 1 --outlier-dims 6
profile qwen_bs1_out6_thr0 40 qwen2.5-0.5b --task classify --seq-len 128 --iters 10 --warmup 2 --profile-steps 2 \
  --precision fp16,int8 --batch-size 1 --outlier-dims 6 --int8-threshold 0
pack bs1_more qwen_bs1_out6 mb_bs1_out6 qwen_bs1_out6_thr0
profile qwen_bs32 60 qwen2.5-0.5b $C --batch-size 32
profile mb_bs32 50 modernbert-base $C --batch-size 32
profile qwen_bs32_out6 60 qwen2.5-0.5b $C --batch-size 32 --outlier-dims 6
profile mb_bs32_out6 50 modernbert-base $C --batch-size 32 --outlier-dims 6
pack bs32 qwen_bs32 mb_bs32 qwen_bs32_out6 mb_bs32_out6
until_end() { echo $(( END - ($(date +%s) - START) )); }
echo "=== summary ($(until_end) s to the end)" | tee -a "$LOG"
timeout $(( $(until_end) > 20 ? $(until_end) : 20 )) "$PY" examples/lean/summary.py "$RUNS" --json "$OUT/summary.json" 2>>"$LOG" | tee "$OUT/summary.txt"
echo "=== done ($(until_end) s to the end)" | tee -a "$LOG"
ls -la "$OUT" | tee -a "$LOG"
