#!/usr/bin/env bash
# Issue 6 on a GPU host: calibrate the GPU, sweep batch sizes, and profile the LLM.int8 outlier
# path with and without the decomposition. Usage, from the repository root:
#   OUT=/some/dir bash examples/gpu/calibrate_sweep.sh
# Results to commit under examples/gpu/: calibrate.json, sweep_qwen/{sweep.csv,sweep.json,sweep.md,
# sweep.png}, and the two report.md of the outlier runs. Each step is tarred as soon as it ends.
set -u
OUT=${OUT:-/tmp/qtrace-gpu-issue6}
RUNS=/tmp/qtrace-gpu-issue6-runs
rm -rf "$RUNS"
mkdir -p "$OUT" "$RUNS"
export PYTHONUNBUFFERED=1 QTRACE_CACHE=${QTRACE_CACHE:-/tmp/qtrace-cache}
LOG=$OUT/log.txt
nvidia-smi --query-gpu=name,driver_version,memory.total,power.limit,clocks.max.sm --format=csv 2>&1 | tee -a "$LOG"

step() {  # step <name> <timeout s> <command...>
  local name=$1 limit=$2
  shift 2
  echo "=== $name: $*" | tee -a "$LOG"
  timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
  (cd "$RUNS" && [ -e "$name" ] && tar cf "$OUT/$name.tar" "$name")
}

# 1. Peaks: 1 GiB device-to-device copy, 8192^3 fp16/bf16/int8(_int_mm)/fp32 GEMMs; cached in
#    $QTRACE_CACHE/calibration/<gpu>.json, which `qtrace report` then prefers to the datasheet.
step calibrate 300 python3 -m qtrace calibrate --format json
cp "$QTRACE_CACHE"/calibration/*.json "$OUT/" 2>/dev/null
python3 -m qtrace calibrate --show | tee "$OUT/calibrate.txt"

# 2. Where does int8 / NF4 start to pay? Qwen2.5-0.5B shape, classify head, 4 batch sizes.
step sweep_qwen 900 python3 -m qtrace sweep qwen2.5-0.5b --precision fp16,int8,nf4 --batch-size 1,4,16,64 \
  --seq-len 128 --task classify --iters 20 --out "$RUNS/sweep_qwen" --force

# 3. LLM.int8 outliers: 6 outlier dims, threshold 6 (decomposition on) vs 0 (off: the what-if).
step outliers_on 300 python3 -m qtrace profile qwen2.5-0.5b --precision int8 --task classify --iters 20 \
  --outlier-dims 6 --profile-steps 2 --out "$RUNS/outliers_on" --force
step outliers_off 300 python3 -m qtrace profile qwen2.5-0.5b --precision int8 --task classify --iters 20 \
  --outlier-dims 6 --int8-threshold 0 --profile-steps 2 --out "$RUNS/outliers_off" --force
for r in outliers_on outliers_off; do
  python3 -m qtrace report "$RUNS/$r" --format md > "$OUT/$r.report.md" 2>>"$LOG"
done

# 4. The roofline of the fp16 / int8 / NF4 traces of one point, with the calibrated peaks.
step roofline_bs16 300 python3 -m qtrace profile qwen2.5-0.5b --precision fp16,int8,nf4 --task classify \
  --batch-size 16 --iters 20 --profile-steps 2 --out "$RUNS/roofline_bs16" --force
python3 -m qtrace report "$RUNS/roofline_bs16" --format md > "$OUT/roofline_bs16.report.md" 2>>"$LOG"
echo "done: $OUT" | tee -a "$LOG"
