#!/usr/bin/env bash
# One GPU visit (H200, at most ~8 minutes): the seed notebook's lab.py, unchanged, under `qtrace run`,
# for ModernBERT-base and Qwen2.5-0.5B shapes x checkpoints saved in fp32 and in fp16.
# Usage, from the repository root on the GPU host, with .whl/ carried (bitsandbytes + msgspec wheels,
# ../shared/gpu/README.md):  OUT=/some/dir bash examples/seed_lab/gpu_session.sh
# Writes $OUT/log.txt and $OUT/seed_lab_encoder.tgz, $OUT/seed_lab_decoder.tgz (run folders, one profiled
# call per precision). Each case has its own time limit; a failing case does not stop the others.
set -u
OUT=${OUT:-/tmp/qtrace-seed-lab}
WORK=/tmp/qtrace-seed-lab-work
DEADLINE=${DEADLINE:-470}
mkdir -p "$OUT" "$WORK/runs"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
LOG=$OUT/log.txt
START=$(date +%s)
left() { echo $(( DEADLINE - ($(date +%s) - START) )); }
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    >>"$LOG" 2>&1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
{
  date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; nproc
  python3 -c "import torch, transformers, bitsandbytes as b; print('torch', torch.__version__, 'transformers', \
transformers.__version__, 'bitsandbytes', b.__version__)"
} >>"$LOG" 2>&1

echo "=== checkpoints ($(left) s left)" >>"$LOG"
timeout 150 python3 examples/seed_lab/make_checkpoints.py "$WORK/ck" >>"$LOG" 2>&1 || echo "=== checkpoints FAILED ($?)" >>"$LOG"

case_run() {  # case_run <model> <ckpt dtype> <limit s>
  local model=$1 ck=$2 limit=$3 name="$1-ckpt$2"
  if [ "$(left)" -lt 40 ]; then echo "=== SKIP $name (deadline)" >>"$LOG"; return; fi
  [ "$limit" -gt "$(left)" ] && limit=$(left)
  echo "=== $name ($(left) s left)" >>"$LOG"
  # 8 untimed inference batches, then 3 warm-up + 5 timed per precision: skip the 8 + first warm-up, record 1.
  timeout "$limit" python3 -m qtrace run --out "$WORK/runs/$name" --force --skip 9 --steps 1 -- \
    python examples/seed_lab/lab.py "$WORK/ck" --models "$model" --ckpt "$ck" --val-batches 8 >>"$LOG" 2>&1
  echo "=== $name exit $?" >>"$LOG"
}
case_run encoder fp32 80
case_run encoder fp16 70
(cd "$WORK/runs" && tar czf "$OUT/seed_lab_encoder.tgz" encoder-ckpt* 2>>"$LOG")
case_run decoder fp32 110
case_run decoder fp16 90
(cd "$WORK/runs" && tar czf "$OUT/seed_lab_decoder.tgz" decoder-ckpt* 2>>"$LOG")
for d in "$WORK"/runs/*; do
  [ -d "$d" ] && timeout 60 python3 -m qtrace compare "$d" >>"$LOG" 2>&1
done
ls -la "$OUT" >>"$LOG"
echo "=== done ($(left) s left)" >>"$LOG"
