#!/usr/bin/env bash
# Issue 19 on two H200s: a model that does not fit one GPU at fp16. fp16 split over both GPUs
# (--device-map auto: accelerate's layer split) against LLM.int8 and NF4 on one GPU, at the
# Qwen2.5-72B shape (random weights built on the devices, nothing downloaded), then the same at
# 32B, where fp16 also fits on one GPU. NOT RUN YET: see README.md beside this file.
#
# From the repository root on a host with two GPUs (wheels in .whl/ as for the other sessions):
#   OUT=/path/for/results bash examples/multi_gpu/gpu_session.sh [STEP ...]
# STEPs (default: all, in this order; each fits in well under 10 minutes, so a session limited
# to 10 minutes a command runs one or two per call):
#   check     two GPUs visible, P2P access between them, versions
#   gen72     generate, prompt 128, 64 new tokens, batch 1: fp16 over 2 GPUs | int8,nf4 on GPU 0
#   fwd72     forward, batch 32, seq 128:                     fp16 over 2 GPUs | int8,nf4 on GPU 0
#   trace72   profiled generate (8 new tokens, 1 step) of the same three: the trace explanation
#             (per-GPU busy/idle, device.copy hand-offs, int8's host syncs), kept small
#   gen32     32B generate: fp16 on GPU 0, fp16 over 2 GPUs, int8,nf4 on GPU 0
#   compare   qtrace compare of the traced pairs (fwd72, trace72) into $OUT/compare_*/, qtrace report of
#             trace72, and $OUT/summary.md: every run's latency, tokens/s, memory per GPU, ratio to fp16
# The generate runs record no trace (--profile-steps 0): a profiled 64-token generate of 80 int8
# layers holds ~10^6 events and would cost minutes to export; trace72 explains them with 8 tokens.
# The results are tarred after every step.
set -u
OUT=${OUT:-/tmp/qtrace-multi}
RUNS=${RUNS:-/tmp/qtrace-multi-runs}
CAP=${CAP:-540}  # seconds any one qtrace command may take
mkdir -p "$OUT" "$RUNS"
export PYTHONUNBUFFERED=1 QTRACE_CACHE=${QTRACE_CACHE:-/tmp/qtrace-cache} TOKENIZERS_PARALLELISM=false
LOG=$OUT/log.txt
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl >>"$LOG" 2>&1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi

pack() {
  (cd "$RUNS" && tar czf "$OUT/results.tgz.tmp" --exclude='*trace.json.gz' . 2>/dev/null \
    && mv "$OUT/results.tgz.tmp" "$OUT/results.tgz")
  (cd "$RUNS" && find . -name '*trace.json.gz' -size -8M -print0 | tar czf "$OUT/traces.tgz" --null -T - 2>/dev/null)
}
q() {  # q <gpus: all | 0> <run name> <qtrace profile args...>
  local gpus=$1 name=$2; shift 2
  local vis=(); [ "$gpus" = all ] || vis=(env "CUDA_VISIBLE_DEVICES=$gpus")
  echo "=== $name: qtrace profile $* (GPUs: $gpus)" | tee -a "$LOG"
  local t0; t0=$(date +%s)
  "${vis[@]}" timeout "$CAP" python3 -m qtrace profile "$@" --out "$RUNS/$name" --force 2>&1 | tee -a "$LOG"
  echo "=== $name took $(( $(date +%s) - t0 )) s" | tee -a "$LOG"
  python3 - "$RUNS/$name/run.json" <<'EOF' 2>&1 | tee -a "$LOG"
import json, sys
run = json.load(open(sys.argv[1]))
for p, e in run["precisions"].items():
    pl = e.get("placement") or {}
    mem = (e.get("memory") or {}).get("per_device") or [e.get("memory") or {}]
    print(p, e["status"], e.get("error") or "", "|", pl.get("note") or pl.get("summary") or "one device",
          "| peak alloc GB:", [round((m.get("max_allocated_bytes") or 0) / 1e9, 1) for m in mem])
EOF
  pack
}

step_check() {
  { date -u; nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv; nvidia-smi topo -m; nproc
    python3 -c "import torch, transformers, accelerate, bitsandbytes as b; n = torch.cuda.device_count(); \
print('torch', torch.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__, \
'bitsandbytes', b.__version__, 'gpus', n); \
print('p2p 0<->1:', n >= 2 and torch.cuda.can_device_access_peer(0, 1))"
  } 2>&1 | tee -a "$LOG"
  local n; n=$(python3 -c "import torch; print(torch.cuda.device_count())")
  if [ "$n" -lt 2 ]; then echo "this session needs two GPUs; $n visible" | tee -a "$LOG"; exit 3; fi
}

GEN="--task generate --batch-size 1 --seq-len 128 --new-tokens 64 --warmup 1 --iters 3 --profile-steps 0"
FWD="--task forward --batch-size 32 --seq-len 128 --warmup 2 --iters 10 --profile-steps 1"
TRC="--task generate --batch-size 1 --seq-len 128 --new-tokens 8 --warmup 1 --iters 2 --profile-steps 1"

step_gen72() {
  q all 72b_gen_fp16_2gpu qwen2.5-72b --precision fp16 --device-map auto $GEN
  q 0 72b_gen_quant_1gpu qwen2.5-72b --precision int8,nf4 $GEN
}
step_fwd72() {
  q all 72b_fwd_fp16_2gpu qwen2.5-72b --precision fp16 --device-map auto $FWD
  q 0 72b_fwd_quant_1gpu qwen2.5-72b --precision int8,nf4 $FWD
}
step_trace72() {
  q all 72b_trace_fp16_2gpu qwen2.5-72b --precision fp16 --device-map auto $TRC
  q 0 72b_trace_quant_1gpu qwen2.5-72b --precision int8,nf4 $TRC
}
step_gen32() {
  q 0 32b_gen_fp16_1gpu qwen2.5-32b --precision fp16 $GEN
  q all 32b_gen_fp16_2gpu qwen2.5-32b --precision fp16 --device-map auto $GEN
  q 0 32b_gen_quant_1gpu qwen2.5-32b --precision int8,nf4 $GEN
}
step_compare() {
  local pairs="72b_fwd_fp16_2gpu:72b_fwd_quant_1gpu 72b_trace_fp16_2gpu:72b_trace_quant_1gpu"
  for pair in $pairs; do
    local args=() name
    for r in ${pair//:/ }; do [ -f "$RUNS/$r/run.json" ] && args+=("$RUNS/$r"); done
    name=compare_${pair%%:*}
    [ "${#args[@]}" -ge 2 ] || { echo "=== SKIP $name (runs missing)" | tee -a "$LOG"; continue; }
    echo "=== $name: qtrace compare ${args[*]}" | tee -a "$LOG"
    timeout "$CAP" python3 -m qtrace compare "${args[@]}" --out "$OUT/$name" --force 2>&1 | tee -a "$LOG"
  done
  for r in 72b_trace_fp16_2gpu 72b_trace_quant_1gpu; do
    [ -d "$RUNS/$r" ] && timeout "$CAP" python3 -m qtrace report "$RUNS/$r" 2>&1 | tee -a "$LOG" "$OUT/report_$r.txt"
  done
  python3 - "$RUNS" <<'EOF' 2>&1 | tee "$OUT/summary.md" | tee -a "$LOG"
import json, sys
from pathlib import Path
print("| run | precision | GPUs | median ms | tok/s | peak alloc per GPU (GB) | vs fp16 over 2 GPUs |")
print("|---|---|---|---|---|---|---|")
for group in ("72b_gen", "72b_fwd", "32b_gen"):
    rows = []
    for f in sorted(Path(sys.argv[1]).glob(f"{group}_*/run.json")):
        for p, e in json.loads(f.read_text())["precisions"].items():
            if e.get("status") != "ok":
                rows.append((f.parent.name, p, "-", None, None, [], e.get("error")))
                continue
            mem = (e.get("memory") or {}).get("per_device") or [e["memory"]]
            rows.append((f.parent.name, p, (e.get("placement") or {}).get("device_count", 1),
                         e["latency_ms"]["per_iter"]["median"], (e.get("generate") or {}).get("tokens_per_s"),
                         [round((m.get("max_allocated_bytes") or 0) / 1e9, 1) for m in mem], None))
    base = next((r[3] for r in rows if r[1] == "fp16" and r[3] and "2gpu" in r[0]), None)
    for name, p, gpus, med, tps, mem, err in rows:
        ratio = f"x{med / base:.2f}" if med and base else "-"
        cells = [name, p, str(gpus), f"{med:.1f}" if med else (err or "-"), f"{tps:.1f}" if tps else "-",
                 str(mem), ratio]
        print("| " + " | ".join(cells) + " |")
EOF
}

STEPS=${*:-check gen72 fwd72 trace72 gen32 compare}
for s in $STEPS; do
  case $s in
    check|gen72|fwd72|trace72|gen32|compare) "step_$s" ;;
    *) echo "unknown step $s (check gen72 fwd72 trace72 gen32 compare)" >&2; exit 2 ;;
  esac
done
pack
ls -la "$OUT" | tee -a "$LOG"
