#!/usr/bin/env bash
# Third GPU visit: qtrace calibrate (visit B hit a bug in it, since fixed), and the latency
# agreement check as 4 short alternating rounds (qtrace profile, then the plain loop, each a
# fresh process) with the host's CPU steal time sampled alongside, to tell protocol error from
# host drift. Usage: OUT=/some/dir bash examples/seed/gpu_session_c.sh
set -u
OUT=${OUT:-/tmp/qtrace-seed}
RUNS=/tmp/qtrace-seed-runs
mkdir -p "$OUT" "$RUNS"
export PYTHONUNBUFFERED=1 QTRACE_CACHE=/tmp/qtrace-cache
LOG=$OUT/log_C.txt
vmstat -t 1 > "$OUT/vmstat_C.txt" 2>&1 &
VM=$!
timeout 120 python3 -m qtrace calibrate 2>&1 | tee -a "$LOG"
cp "$QTRACE_CACHE"/calibration/*.json "$OUT/" 2>/dev/null
for r in 1 2 3 4; do
  echo "=== round $r $(date -u +%T)" | tee -a "$LOG"
  timeout 90 python3 -m qtrace profile qwen2.5-0.5b --task classify --batch-size 1 --seq-len 128 --iters 30 \
    --warmup 5 --profile-steps 0 --precision fp16,int8 --out "$RUNS/alt_r$r" --force >> "$LOG" 2>&1
  timeout 90 python3 benchmarks/plain_latency.py "$QTRACE_CACHE/presets/qwen2.5-0.5b" --task classify \
    --batch-size 1 --iters 30 --warmup 5 --precision fp16,int8 --compare "$RUNS/alt_r$r" 2>>"$LOG" \
    | tee -a "$OUT/plain_C.jsonl"
done
kill $VM
(cd "$RUNS" && tar czf "$OUT/alt.tgz" alt_r*)
echo "=== done" | tee -a "$LOG"
