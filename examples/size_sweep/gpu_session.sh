#!/usr/bin/env bash
# Issue 17 on one GPU visit (H200, <= 9 min): where does quantization stop losing as the model grows?
# From the repository root on the GPU host, with the wheels in .whl/ (../shared/gpu/README.md):
#   OUT=$OUT bash examples/size_sweep/gpu_session.sh
# Steps, each bounded by what is left of DEADLINE (s); a sweep is given --time-budget so it writes
# its table before its timeout, and the results are tarred after every step:
#   1 gen:      qwen2.5 0.5b..14b x fp16,int8,nf4 x batch 1,8,32, prompt 128, 32 new tokens (not 64: time)
#   2 classify: the same sizes, batch 32, seq 128
#   3 explain:  profiled generate (4 tokens, 1 step) at 0.5b,3b,7b batch 1 for the trace explanations
#   4 static:   --decode dynamic,static at 0.5b and 3b, batch 1 (int8 is recorded as unsupported)
#   5 plain:    independent CUDA-event loop (benchmarks/plain_latency.py) on the 0.5b classify point
#   6 32b:      qwen2.5-32b generate batch 1, only with >= 100 s left
# At most 8 files come back: log.txt, results.tgz, and the sweeps' size.png / sweep.md.
set -u
OUT=${OUT:-/tmp/qtrace-size}
RUNS=/tmp/qtrace-size-runs
DEADLINE=${DEADLINE:-500}
START=$(date +%s)
mkdir -p "$OUT" "$RUNS"
export PYTHONUNBUFFERED=1 QTRACE_CACHE=/tmp/qtrace-cache TOKENIZERS_PARALLELISM=false
LOG=$OUT/log.txt
left() { echo $(( DEADLINE - ($(date +%s) - START) )); }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  >>"$LOG" 2>&1
export PYTHONPATH=/tmp/site:$PWD
{
  date -u; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv; nproc
  python3 -c "import torch, transformers, bitsandbytes as b; print('torch', torch.__version__, 'transformers', transformers.__version__, 'bitsandbytes', b.__version__)"
} 2>&1 | tee -a "$LOG"

pack() {  # traces over 1 MB dropped (their explanations are in sweep.json already); the tar stays < 16 MB
  find "$RUNS" -name 'trace.json.gz' -size +1M -delete 2>/dev/null
  (cd "$RUNS" && tar czf "$OUT/results.tgz.tmp" . 2>/dev/null && mv "$OUT/results.tgz.tmp" "$OUT/results.tgz")
  if [ "$(stat -c %s "$OUT/results.tgz" 2>/dev/null || echo 0)" -gt 15000000 ]; then
    (cd "$RUNS" && tar czf "$OUT/results.tgz" --exclude='trace.json.gz' . 2>/dev/null)
  fi
  for s in gen classify static; do
    [ -f "$RUNS/$s/size.png" ] && cp "$RUNS/$s/size.png" "$OUT/${s}_size.png"
  done
  [ -f "$RUNS/gen/sweep.md" ] && cp "$RUNS/gen/sweep.md" "$OUT/gen_sweep.md"
}
sweep() {  # sweep <name> <min seconds to start> <max seconds> <args...>
  local name=$1 need=$2 cap=$3; shift 3
  local l; l=$(left)
  if [ "$l" -lt "$need" ]; then echo "=== SKIP $name ($l s left, needs $need)" | tee -a "$LOG"; return; fi
  [ "$cap" -gt "$l" ] && cap=$l
  echo "=== $name ($l s left, cap $cap s): qtrace sweep $*" | tee -a "$LOG"
  local t0; t0=$(date +%s)
  timeout "$cap" python3 -m qtrace sweep "$@" --time-budget $(( cap - 25 )) --out "$RUNS/$name" --force 2>&1 | tee -a "$LOG"
  echo "=== $name took $(( $(date +%s) - t0 )) s" | tee -a "$LOG"
  pack
}

P="--precision fp16,int8,nf4"
sweep gen 120 230 qwen2.5-0.5b,1.5b,3b,7b,14b $P --task generate --batch-size 1,8,32 --seq-len 128 \
  --new-tokens 32 --warmup 1 --iters 2 --point-budget 40
sweep classify 60 80 qwen2.5-0.5b,1.5b,3b,7b,14b $P --task classify --batch-size 32 --seq-len 128 \
  --warmup 2 --iters 5 --point-budget 25
sweep explain 60 70 qwen2.5-0.5b,3b,7b $P --task generate --batch-size 1 --seq-len 128 --new-tokens 4 \
  --warmup 1 --iters 2 --profile --profile-steps 1 --point-budget 25
sweep static 60 110 qwen2.5-0.5b,3b $P --task generate --batch-size 1 --seq-len 128 --new-tokens 32 \
  --warmup 2 --iters 2 --decode dynamic,static --point-budget 60
if [ "$(left)" -ge 40 ] && [ -d "$RUNS/classify/points/qwen2.5-0.5b/dynamic_bs32_seq128" ]; then
  echo "=== plain ($(left) s left)" | tee -a "$LOG"
  timeout 60 python3 benchmarks/plain_latency.py "$QTRACE_CACHE/presets/qwen2.5-0.5b" --task classify \
    --batch-size 32 --seq-len 128 --iters 5 --warmup 2 \
    --compare "$RUNS/classify/points/qwen2.5-0.5b/dynamic_bs32_seq128" 2>>"$LOG" | tee -a "$LOG" "$RUNS/plain.jsonl"
  pack
else
  echo "=== SKIP plain ($(left) s left)" | tee -a "$LOG"
fi
sweep big32 100 120 qwen2.5-32b $P --task generate --batch-size 1 --seq-len 128 --new-tokens 16 --warmup 1 \
  --iters 2 --point-budget 90
echo "=== done, $(left) s of $DEADLINE left" | tee -a "$LOG"
pack
ls -la "$OUT" | tee -a "$LOG"
