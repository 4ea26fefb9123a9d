#!/usr/bin/env bash
# Issue 17, second visit (H200, one call, <= 9.5 min): the points the first visit left out.
#   OUT=$OUT bash examples/size_sweep/gpu_session_v2.sh     # carry .whl/ (bitsandbytes, msgspec wheels)
#   1 gen7:   qwen2.5 7b, 14b, 32b x fp16,int8,nf4, batch 1, prompt 128, 32 new tokens (as visit 1's 0.5b-3b)
#   2 cls32b: qwen2.5-32b classify, batch 32, seq 128 (visit 1 stopped at 14b)
#   3 llama:  llama3-8b generate batch 1 (seed 002's example)
#   4 plain:  independent CUDA-event loop (benchmarks/plain_latency.py) beside a 0.5b classify point
#   5 gen8:   qwen2.5 3b, 7b at batch 8, if time is left
export DEADLINE=${DEADLINE:-560}
source "$(dirname "$0")/session_lib.sh"

P="--precision fp16,int8,nf4"
sweep gen7 120 300 qwen2.5-7b,14b,32b $P --task generate --batch-size 1 --seq-len 128 --new-tokens 32 \
  --warmup 1 --iters 2 --point-budget 110
sweep cls32b 50 70 qwen2.5-32b $P --task classify --batch-size 32 --seq-len 128 --warmup 2 --iters 5 --point-budget 60
sweep llama 50 70 llama3-8b $P --task generate --batch-size 1 --seq-len 128 --new-tokens 32 --warmup 1 --iters 2 \
  --point-budget 60
sweep cls05 40 45 qwen2.5-0.5b $P --task classify --batch-size 32 --seq-len 128 --warmup 2 --iters 5 --point-budget 30
if [ "$(left)" -ge 35 ] && [ -d "$RUNS/cls05/points/qwen2.5-0.5b/dynamic_bs32_seq128" ]; then
  echo "=== plain ($(left) s left)" | tee -a "$LOG"
  timeout 50 python3 benchmarks/plain_latency.py "$QTRACE_CACHE/presets/qwen2.5-0.5b" --task classify \
    --batch-size 32 --seq-len 128 --iters 5 --warmup 2 \
    --compare "$RUNS/cls05/points/qwen2.5-0.5b/dynamic_bs32_seq128" 2>>"$LOG" | tee -a "$LOG" "$RUNS/plain.jsonl"
  pack
else
  echo "=== SKIP plain ($(left) s left)" | tee -a "$LOG"
fi
sweep gen8 60 200 qwen2.5-3b,7b $P --task generate --batch-size 8 --seq-len 128 --new-tokens 32 --warmup 1 \
  --iters 2 --point-budget 60
echo "=== done, $(left) s of $DEADLINE left" | tee -a "$LOG"
pack
ls -la "$OUT" | tee -a "$LOG"
