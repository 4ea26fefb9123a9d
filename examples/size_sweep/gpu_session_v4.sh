#!/usr/bin/env bash
# Issue 17, what is left after visit 3 (H200, one call, <= 9.5 min), not yet run:
#   1 static: NF4 (and fp16) with a static cache + CUDA graphs at 0.5b and 7b, batch 1: the regime
#             where fewer weight bytes could pay; NF4's torch.compile is given up to 200 s per point
#             (visit 1 ran out of time inside NF4's warm-up compile)
#   2 gen64:  qwen2.5 7b and 14b at the issue's 64 new tokens, batch 1 and 8
#   OUT=$OUT bash examples/size_sweep/gpu_session_v4.sh     # carry .whl/; park traces/ if the tree is > 64 MiB
export DEADLINE=${DEADLINE:-560}
source "$(dirname "$0")/session_lib.sh"
P="--precision fp16,nf4"
sweep static 240 330 qwen2.5-0.5b,7b $P --task generate --batch-size 1 --seq-len 128 --new-tokens 32 \
  --warmup 2 --iters 3 --decode dynamic,static --point-budget 200
sweep gen64 90 200 qwen2.5-7b,14b --precision fp16,int8,nf4 --task generate --batch-size 1,8 --seq-len 128 \
  --new-tokens 64 --warmup 1 --iters 2 --point-budget 60
echo "=== done, $(left) s of $DEADLINE left" | tee -a "$LOG"
pack
ls -la "$OUT" | tee -a "$LOG"
