#!/usr/bin/env bash
# Fourth GPU visit (issue 5's open points), two parts, one device call each:
#   D1: why did the same code's latency drift between processes (visits B and C)? Host facts;
#       benchmarks/cpu_placement.py (one process, its launching thread moved over every CPU);
#       then alternating rounds of `qtrace profile` and the plain loop, both pinned with taskset
#       to the same two CPUs (the fastest two of the placement scan), and two unpinned rounds for
#       contrast. Same-tool pairs across rounds are the A/A control: the noise floor of the host.
#   D2: generation in the seed-001 protocol with all 20 prompts (greedy, 128 new tokens, one
#       warm-up); then, while time is left, D3's interleaved check with finer turns and its A/A
#       control (run after D3, so written with what D3 taught).
#   D3: (D1 showed the host's speed swings within seconds on every CPU, pinned or not) the
#       agreement check made drift-proof: benchmarks/latency_agreement.py interleaves qtrace's
#       timed pass and the plain loop in one process, batch 1 (host-bound) and 64 (GPU-bound);
#       then separate-process pairs at batch 64, where the host's speed matters little.
#   D4: D2's generation stopped at its 400 s limit inside NF4 (a slow stretch of the host); the
#       NF4 generation again, with a fresh fp16 baseline in the same process for its ratio.
# Usage, from the repository root on the GPU host (wheels installed, PYTHONPATH set):
#   OUT=/some/dir bash examples/seed/gpu_session_d.sh D1|D2 [cpus]
set -u
PART=${1:?D1, D2, D3 or D4}
PIN=${2:-}
OUT=${OUT:-/tmp/qtrace-seed}
RUNS=/tmp/qtrace-seed-runs
DEADLINE=${DEADLINE:-560}
mkdir -p "$OUT" "$RUNS"
export PYTHONUNBUFFERED=1 QTRACE_CACHE=/tmp/qtrace-cache TOKENIZERS_PARALLELISM=false
LOG=$OUT/log_$PART.txt
START=$(date +%s)
left() { echo $(( DEADLINE - ($(date +%s) - START) )); }
MODEL=$QTRACE_CACHE/presets/qwen2.5-0.5b
{
  date -u; nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv
  nvidia-smi topo -m; lscpu | grep -E "^(Model name|CPU\(s\)|Thread|Core|Socket|NUMA|Hypervisor|CPU MHz)"
  grep MHz /proc/cpuinfo | sort | uniq -c; cat /proc/loadavg; head -1 /proc/stat
  cat /sys/fs/cgroup/cpu.max 2>/dev/null; command -v taskset numactl
} 2>&1 | tee -a "$LOG"

profile() {  # profile <name> <limit s> <taskset prefix or ""> <args...>
  local name=$1 limit=$2 pin=$3; shift 3
  if [ "$(left)" -lt 40 ]; then echo "=== SKIP $name (deadline)" | tee -a "$LOG"; return; fi
  [ "$limit" -gt "$(left)" ] && limit=$(left)
  echo "=== $name [$pin] ($(left) s left): qtrace profile $*" | tee -a "$LOG"
  timeout "$limit" $pin python3 -m qtrace profile "$@" --out "$RUNS/$name" --force >> "$LOG" 2>&1
}
plain() {  # plain <run name> <taskset prefix or ""> <args...>
  local name=$1 pin=$2; shift 2
  if [ "$(left)" -lt 40 ]; then echo "=== SKIP plain $name (deadline)" | tee -a "$LOG"; return; fi
  echo "=== plain $name [$pin] ($(left) s left)" | tee -a "$LOG"
  timeout 100 $pin python3 benchmarks/plain_latency.py "$MODEL" --compare "$RUNS/$name" "$@" 2>>"$LOG" \
    | sed "s/^{/{\"round\": \"$name\", \"pinned\": \"$pin\", /" | tee -a "$OUT/plain_$PART.jsonl"
}

ROUND="--task classify --batch-size 1 --seq-len 128 --iters 30 --warmup 5"
if [ "$PART" = D1 ]; then
  # The preset folder is built by the first qtrace run; the placement scan reads it.
  profile d1_u1 120 "" qwen2.5-0.5b $ROUND --profile-steps 0 --precision fp16,int8
  plain d1_u1 "" $ROUND --precision fp16,int8
  echo "=== placement int8 ($(left) s left)" | tee -a "$LOG"
  timeout 120 python3 benchmarks/cpu_placement.py "$MODEL" --precision int8 --iters 10 --sweeps 2 \
    2>>"$LOG" | tee "$OUT/placement_D1.jsonl"
  # The two fastest CPUs by median over sweeps (all CPUs if the scan failed).
  PIN=$(python3 -c "
import json,sys
s=[json.loads(l) for l in open('$OUT/placement_D1.jsonl') if '\"summary\"' in l]
print(','.join(sorted(s[0]['per_cpu_median_ms'], key=s[0]['per_cpu_median_ms'].get)[:2]) if s else '')" 2>>"$LOG")
  P=""; [ -n "$PIN" ] && P="taskset -c $PIN"
  echo "=== pinned to: ${PIN:-none}" | tee -a "$LOG"
  for r in 1 2 3 4; do
    profile d1_p$r 90 "$P" qwen2.5-0.5b $ROUND --profile-steps 0 --precision fp16,int8,nf4
    plain d1_p$r "$P" $ROUND --precision fp16,int8,nf4
  done
  profile d1_u2 90 "" qwen2.5-0.5b $ROUND --profile-steps 0 --precision fp16,int8
  plain d1_u2 "" $ROUND --precision fp16,int8
  (cd "$RUNS" && tar czf "$OUT/rounds_D1.tgz" d1_*)
elif [ "$PART" = D3 ]; then
  echo "=== agreement, interleaved in one process ($(left) s left)" | tee -a "$LOG"
  timeout 300 python3 benchmarks/latency_agreement.py qwen2.5-0.5b --precision fp16,int8,nf4 --batch-size 1,64 \
    --blocks 12 --block-iters 5 --warmup 5 2>>"$LOG" | tee "$OUT/agree_D3.jsonl"
  B64="--task classify --batch-size 64 --seq-len 128 --iters 20 --warmup 5"
  for r in 1 2; do
    profile d3_b64_r$r 90 "" qwen2.5-0.5b $B64 --profile-steps 0 --precision fp16,int8,nf4
    plain d3_b64_r$r "" $B64 --precision fp16,int8,nf4
  done
  (cd "$RUNS" && tar czf "$OUT/rounds_D3.tgz" d3_*)
elif [ "$PART" = D4 ]; then
  profile qwen_gen128_p20_nf4 210 "" qwen2.5-0.5b --task generate --seq-len 128 --new-tokens 128 --iters 20 \
    --warmup 1 --profile-steps 0 --precision nf4,fp16 --batch-size 1
  cp "$RUNS/qwen_gen128_p20_nf4/run.json" "$OUT/"
else
  P=""; [ -n "$PIN" ] && P="taskset -c $PIN"
  # seed-001: greedy, min = max new tokens = 128, one warm-up generation, 20 prompts.
  profile qwen_gen128_p20 400 "$P" qwen2.5-0.5b --task generate --seq-len 128 --new-tokens 128 --iters 20 \
    --warmup 1 --profile-steps 0 --precision fp16,int8,nf4 --batch-size 1
  (cd "$RUNS" && tar czf "$OUT/gen_D2.tgz" qwen_gen128_p20)
  # D3 again with finer turns (40 x 3 instead of 12 x 5), and its A/A control.
  for c in "" --control; do
    [ "$(left)" -lt 60 ] && break
    echo "=== agreement $c ($(left) s left)" | tee -a "$LOG"
    timeout $(( $(left) - 5 )) python3 benchmarks/latency_agreement.py qwen2.5-0.5b --precision fp16,int8,nf4 \
      --batch-size 1 --blocks 40 --block-iters 3 --warmup 5 $c 2>>"$LOG" | tee -a "$OUT/agree_D2.jsonl"
  done
fi
echo "=== done ($(left) s left)" | tee -a "$LOG"
