# Shared by the size-sweep visit scripts (sourced, not run): install the carried wheels, log the
# host, and the sweep/pack helpers. The caller sets DEADLINE and OUT before sourcing.
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
  for png in "$RUNS"/*/size.png; do
    [ -f "$png" ] && cp "$png" "$OUT/$(basename "$(dirname "$png")")_size.png"
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

