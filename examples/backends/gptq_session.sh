#!/usr/bin/env bash
# GPU visit for issue 16, part two: GPTQ and AWQ (GPTQModel 7.3.6) beside fp16, bitsandbytes and
# torchao on the Qwen2.5-0.5B preset (H200). Two device calls on the same warm machine, each
# under the 10-minute limit; the second finds what the first left in /tmp:
#   OUT=$OUT bash examples/backends/gptq_session.sh prepare   # install, build GPTQ + AWQ checkpoints
#                                                             # while Marlin's first-use nvcc compile runs
#   OUT=$OUT bash examples/backends/gptq_session.sh profile   # classify bs32 + batch-1 generate
# Carried in each call (carry: [".whl", ".whl-gptq"], about 10 MB): .whl/ with torchao 0.18.0,
# bitsandbytes 0.50.2 and msgspec 0.22.0 (examples/backends/gpu_session.sh); .whl-gptq/ with
# gptqmodel 7.3.6 and what the host lacks (docs/backends.md, "GPTQModel", lists the wheels and
# how they were made). Nothing is downloaded: the host has no network.
set -u
STAGE=${1:-prepare}
OUT=${OUT:-/tmp/qtrace-gptq}
RUNS=/tmp/qtrace-gptq-runs
DEADLINE=${DEADLINE:-540}
PY=${PY:-/opt/torch/.venv/bin/python3}
[ -x "$PY" ] || PY=python3
mkdir -p "$OUT" "$RUNS"
# The checkpoint cache and Marlin's compiled extension live in /tmp, so the profile call reuses them.
export PYTHONUNBUFFERED=1 QTRACE_CACHE=/tmp/qtrace-cache TOKENIZERS_PARALLELISM=false
export GPTQMODEL_TORCH_EXTENSIONS_DIR=/tmp/gptqmodel-ext TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
LOG=$OUT/log-$STAGE.txt
START=$(date +%s)
left() { echo $(( DEADLINE - ($(date +%s) - START) )); }
MODEL=qwen2.5-0.5b

if [ ! -f /tmp/site/.qtrace-gptq-installed ]; then
  {
    date -u; nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv; nproc
    ldconfig -p | grep -q 'libpcre2-8.so.0' || echo "WARNING: no libpcre2-8.so.0: PyPcre (gptqmodel's regex) will not load"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      .whl/*.whl .whl-gptq/*.whl && touch /tmp/site/.qtrace-gptq-installed
  } 2>&1 | tee -a "$LOG"
fi
# /tmp/site first: the carried wheels win over anything older on the host.
export PYTHONPATH=/tmp/site:$PWD
"$PY" examples/backends/gptq_prepare.py versions 2>&1 | tail -3 | tee -a "$LOG"

if [ "$STAGE" = prepare ]; then
  timeout 60 "$PY" -m qtrace presets 2>&1 | tail -22 | tee -a "$LOG"  # what runs here, and why not the rest
  # Marlin's first use: GPTQModel generates its kernels and compiles them with nvcc (sm_90 only here).
  echo "=== Marlin first-use compile, in the background ($(left) s left)" | tee -a "$LOG"
  ( timeout "$(( $(left) - 10 ))" "$PY" examples/backends/gptq_prepare.py marlin 2>&1 | grep -v "^INFO" | tail -6 \
    > "$OUT/marlin.txt" ) &
  MARLIN=$!
  # Checkpoints by calibration (random token ids), built on the GPU and cached; qtrace prints the time once.
  echo "=== checkpoints ($(left) s left)" | tee -a "$LOG"
  timeout "$(( $(left) - 15 ))" "$PY" examples/backends/gptq_prepare.py checkpoints "$MODEL" 2>&1 | grep -v "^INFO" \
    | tail -8 | tee -a "$LOG"
  wait "$MARLIN"; tee -a "$LOG" < "$OUT/marlin.txt"
  du -sh /tmp/qtrace-cache/quantized/* /tmp/gptqmodel-ext 2>/dev/null | tee -a "$LOG"
  ls -la "$OUT" | tee -a "$LOG"
  exit 0
fi

profile() {  # profile <name> <limit s> <args...>
  local name=$1 limit=$2; shift 2
  if [ "$(left)" -lt 30 ]; then echo "=== SKIP $name (deadline)" | tee -a "$LOG"; return; fi
  [ "$limit" -gt "$(left)" ] && limit=$(left)
  echo "=== $name ($(left) s left): qtrace profile $*" | tee -a "$LOG"
  timeout "$limit" "$PY" -m qtrace profile "$@" --out "$RUNS/$name" --force 2>&1 | grep -v "^INFO" | tee -a "$LOG"
  (cd "$RUNS" && tar czf "$OUT/$name.tgz" "$name" 2>/dev/null)
}

P=${P_CLS:-fp16,int8,nf4,torchao-int4,gptq-int4,awq-int4}
PG=${P_GEN:-fp16,gptq-int4,awq-int4,gptq-int4-triton,gptq-int4-torch}
profile gptq_cls_bs32 ${CLS_LIMIT:-260} $MODEL --task classify --batch-size 32 --seq-len 128 --iters 10 --warmup 3 \
  --profile-steps 2 --precision $P
profile gptq_gen32 ${GEN_LIMIT:-200} $MODEL --task generate --batch-size 1 --seq-len 128 --new-tokens 32 --iters 5 \
  --warmup 2 --profile-steps 1 --precision $PG
{
  echo "=== summary ($(left) s left)"
  "$PY" - "$RUNS" <<'PYEOF'
import json, sys, pathlib
for run in ("gptq_cls_bs32", "gptq_gen32"):
    path = pathlib.Path(sys.argv[1]) / run / "run.json"
    if not path.exists():
        print(f"{run}: no run.json"); continue
    print(f"--- {run}")
    print(f"{'precision':18} {'status':6} {'median ms':>10} {'tok/s':>7} {'footprint MB':>12} {'peak MB':>8} "
          f"{'top-1':>6} {'KL nats':>9} {'build s':>8}")
    for p, e in json.loads(path.read_text())["precisions"].items():
        lat = ((e.get("latency_ms") or {}).get("per_iter") or {}).get("median")
        q = e.get("quality") or {}
        f = lambda v, fmt: "-" if v is None else format(v, fmt)
        print(f"{p:18} {e.get('status', '?'):6} {f(lat, '10.2f')} {f((e.get('generate') or {}).get('tokens_per_s'), '7.1f')} "
              f"{f(((e.get('load') or {}).get('footprint_bytes') or 0) / 1e6, '12.1f')} "
              f"{f(((e.get('memory') or {}).get('max_allocated_bytes') or 0) / 1e6, '8.1f')} "
              f"{f(q.get('top1_agreement'), '6.3f')} {f(q.get('kl_mean'), '9.2e')} "
              f"{f((e.get('checkpoint') or {}).get('build_seconds'), '8.1f')}"
              + (f"  {e.get('error')}" if e.get("status") != "ok" else ""))
PYEOF
  if [ "$(left)" -gt 20 ]; then
    timeout "$(left)" "$PY" -m qtrace report "$RUNS/gptq_cls_bs32" 2>&1 | grep -E "^==|Top phases|Quantization phases|Quality"
  fi
} 2>&1 | tee -a "$LOG"
ls -la "$OUT" | tee -a "$LOG"
