#!/usr/bin/env bash
# One device call on 2026-12-02: issue 16's 7B generate part, then issue 17's static-cache part
# (NF4 and fp16 under a static KV cache + CUDA graphs at 0.5b and 7b, batch 1).
#   run(command="OUT=$OUT bash examples/gpu_visit_2026_12_02b.sh", carry=[".whl"], timeout_s=600)
set -u
START=$(date +%s)
OUT=$OUT/backends PART=generate DEADLINE=250 bash examples/backends/gpu_session_v4.sh
LEFT=$(( 575 - ($(date +%s) - START) ))
(
  export OUT=$OUT/size DEADLINE=$LEFT
  source examples/size_sweep/session_lib.sh
  sweep static 120 $(( LEFT - 20 )) qwen2.5-0.5b,7b --precision fp16,nf4 --task generate --batch-size 1 --seq-len 128 \
    --new-tokens 32 --warmup 2 --iters 3 --decode dynamic,static --point-budget 150
  pack
)
