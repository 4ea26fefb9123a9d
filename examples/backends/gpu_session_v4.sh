#!/usr/bin/env bash
# Issue 16 at a 7B-class shape (qwen2.5-7b, built on the device with random weights), one part per
# call (PART=classify: batch 32, seq 128; PART=generate: batch 1, prompt 128, 16 new tokens), every
# bitsandbytes and torchao precision beside fp16 in one run folder. GPTQ/AWQ are left out at this
# size: their checkpoints need a 15 GB fp16 folder on disk and a calibration pass first.
#   OUT=$OUT PART=classify DEADLINE=300 bash examples/backends/gpu_session_v4.sh     # carry .whl/
set -u
OUT=${OUT:-/tmp/qtrace-7b}
PART=${PART:-classify}
DEADLINE=${DEADLINE:-300}  # for the profile; the comparisons after it take up to 150 s more
RUNS=/tmp/qtrace-7b-runs
mkdir -p "$OUT" "$RUNS"
source "$(dirname "$0")/../gpu_env.sh"
LOG=$OUT/log_$PART.txt
use_carried_wheels "bitsandbytes, msgspec, torchao"
"$PY" -c "import torch, transformers, bitsandbytes as b, torchao; print('torch', torch.__version__, 'transformers', transformers.__version__, 'bitsandbytes', b.__version__, 'torchao', torchao.__version__)" 2>&1 | tee -a "$LOG"
P=fp16,int8,nf4,torchao-int8wo,torchao-w8a8,torchao-int4,torchao-fp8
if [ "$PART" = classify ]; then
  ARGS="--task classify --batch-size 32 --seq-len 128 --iters 10 --warmup 3 --profile-steps 1"
else
  ARGS="--task generate --batch-size 1 --seq-len 128 --new-tokens 16 --iters 3 --warmup 1 --profile-steps 1"
fi
echo "=== qtrace profile qwen2.5-7b $ARGS --precision $P --no-lean (limit $DEADLINE s)" | tee -a "$LOG"
timeout "$DEADLINE" "$PY" -m qtrace profile qwen2.5-7b $ARGS --precision $P --no-lean --out "$RUNS/$PART" --force \
  2>&1 | grep -v "^INFO" | tee -a "$LOG"
# The explanation first, while every trace is there; then traces over 4 MB are dropped from the tarball.
timeout "${COMPARE_LIMIT:-150}" "$PY" -m qtrace compare "$RUNS/$PART" --format json > "$RUNS/$PART/compare.json" 2>>"$LOG"
find "$RUNS/$PART" -name '*.json.gz' -size +4M -printf '%p dropped (over 4 MB)\n' -delete 2>/dev/null | tee -a "$LOG"
(cd "$RUNS" && tar czf "$OUT/7b_$PART.tgz" "$PART" 2>/dev/null)
"$PY" -c "import json,sys; [print(r.get('precision'), r.get('explained_share')) for r in json.load(open(sys.argv[1]))['runs']]" \
  "$RUNS/$PART/compare.json" 2>&1 | tee -a "$LOG"
