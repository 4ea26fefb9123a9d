#!/usr/bin/env bash
# Issue 17, third visit (H200, one call, ~7 min): the crossover question held against the host's
# drift. benchmarks/interleaved_generate.py keeps fp16, NF4 (and LLM.int8) of one size in memory
# and times them round-robin with an fp16 A/A arm, at the sizes where visit 2's sequential sweep
# put NF4 nearest to (or under) fp16: llama3-8b, qwen2.5-14b, qwen2.5-32b; then qwen2.5-7b.
#   OUT=$OUT bash examples/size_sweep/gpu_session_v3.sh     # carry .whl/
export DEADLINE=${DEADLINE:-430}
source "$(dirname "$0")/session_lib.sh"
inter() {  # inter <name> <cap s> <args...>
  local name=$1 cap=$2; shift 2
  if [ "$(left)" -lt 45 ]; then echo "=== SKIP $name ($(left) s left)" | tee -a "$LOG"; return; fi
  [ "$cap" -gt "$(left)" ] && cap=$(left)
  echo "=== $name ($(left) s left, cap $cap): interleaved_generate.py $*" | tee -a "$LOG"
  timeout "$cap" python3 benchmarks/interleaved_generate.py "$@" 2>>"$LOG" | tee -a "$LOG" "$OUT/$name.jsonl"
}
inter llama8b 110 llama3-8b --precision fp16,nf4,int8 --rounds 6
inter qwen14b 120 qwen2.5-14b --precision fp16,nf4,int8 --rounds 5
inter qwen32b 110 qwen2.5-32b --precision fp16,nf4 --rounds 5
inter qwen7b 80 qwen2.5-7b --precision fp16,nf4,int8 --rounds 5
echo "=== done, $(left) s of $DEADLINE left" | tee -a "$LOG"
ls -la "$OUT" | tee -a "$LOG"
