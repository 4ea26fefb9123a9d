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
source "$(dirname "$0")/session_lib.sh"

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
