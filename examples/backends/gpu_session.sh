#!/usr/bin/env bash
# One GPU visit for issue 16: torchao beside bitsandbytes on the Qwen2.5-0.5B preset (H200).
# Usage, from the repository root on the GPU host, in ONE device call (about 7 minutes):
#   OUT=$OUT bash examples/backends/gpu_session.sh
# Carried in the call: .whl/ with torchao-0.18.0 (3.3 MB), bitsandbytes-0.50.2 (trimmed to cuda130+cpu)
# and msgspec-0.22.0, all cp312 manylinux (../shared/gpu/README.md says how to download them).
# Runs: batch-1 generation (32 new tokens, timed + quality, no trace), a short profiled generation
# (4 new tokens, 1 step), and a batch-32 classify forward (seq 128, 2 profiled steps), each at
# fp16,int8,nf4,torchao-int8wo,torchao-w8a8,torchao-int4,torchao-fp8. Every step has a time limit
# and no step starts after DEADLINE seconds; results are tarred as each finishes (<= 8 files back).
set -u
OUT=${OUT:-/tmp/qtrace-backends}
RUNS=/tmp/qtrace-backends-runs
DEADLINE=${DEADLINE:-440}
PY=${PY:-/opt/torch/.venv/bin/python3}
[ -x "$PY" ] || PY=python3
mkdir -p "$OUT" "$RUNS"
export PYTHONUNBUFFERED=1 QTRACE_CACHE=/tmp/qtrace-cache TOKENIZERS_PARALLELISM=false
LOG=$OUT/log.txt
START=$(date +%s)
left() { echo $(( DEADLINE - ($(date +%s) - START) )); }
P=fp16,int8,nf4,torchao-int8wo,torchao-w8a8,torchao-int4,torchao-fp8
{
  date -u; nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv; nproc
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
} 2>&1 | tee -a "$LOG"
export PYTHONPATH=/tmp/site:$PWD
"$PY" -c "import torch, transformers, torchao, bitsandbytes as b; print('torch', torch.__version__, 'transformers', transformers.__version__, 'torchao', torchao.__version__, 'bitsandbytes', b.__version__, 'cc', torch.cuda.get_device_capability())" 2>&1 | tee -a "$LOG"
timeout 60 "$PY" -m qtrace presets 2>&1 | tail -14 | tee -a "$LOG"  # builds nothing; lists what runs here

profile() {  # profile <name> <limit s> <args...>
  local name=$1 limit=$2; shift 2
  if [ "$(left)" -lt 30 ]; then echo "=== SKIP $name (deadline)" | tee -a "$LOG"; return; fi
  [ "$limit" -gt "$(left)" ] && limit=$(left)
  echo "=== $name ($(left) s left): qtrace profile $*" | tee -a "$LOG"
  timeout "$limit" "$PY" -m qtrace profile "$@" --out "$RUNS/$name" --force 2>&1 | tee -a "$LOG"
  (cd "$RUNS" && tar czf "$OUT/$name.tgz" "$name" 2>/dev/null)
}

profile gen32 200 qwen2.5-0.5b --task generate --batch-size 1 --seq-len 128 --new-tokens 32 --iters 5 --warmup 2 \
  --profile-steps 0 --precision $P
profile cls_bs32 130 qwen2.5-0.5b --task classify --batch-size 32 --seq-len 128 --iters 10 --warmup 3 \
  --profile-steps 2 --precision $P
profile gen4 90 qwen2.5-0.5b --task generate --batch-size 1 --seq-len 128 --new-tokens 4 --iters 3 --warmup 1 \
  --profile-steps 1 --precision $P

{
  echo "=== summary ($(left) s left)"
  "$PY" - "$RUNS" <<'PYEOF'
import json, sys, pathlib
for run in ("gen32", "cls_bs32", "gen4"):
    path = pathlib.Path(sys.argv[1]) / run / "run.json"
    if not path.exists():
        print(f"{run}: no run.json"); continue
    print(f"--- {run}")
    print(f"{'precision':16} {'status':6} {'median ms':>10} {'tok/s':>7} {'footprint MB':>12} {'peak MB':>8} "
          f"{'top-1':>6} {'KL nats':>9} {'ppl':>8}")
    for p, e in json.loads(path.read_text())["precisions"].items():
        lat = ((e.get("latency_ms") or {}).get("per_iter") or {}).get("median")
        q = e.get("quality") or {}
        f = lambda v, fmt: "-" if v is None else format(v, fmt)
        print(f"{p:16} {e.get('status', '?'):6} {f(lat, '10.2f')} {f((e.get('generate') or {}).get('tokens_per_s'), '7.1f')} "
              f"{f(((e.get('load') or {}).get('footprint_bytes') or 0) / 1e6, '12.1f')} "
              f"{f(((e.get('memory') or {}).get('max_allocated_bytes') or 0) / 1e6, '8.1f')} "
              f"{f(q.get('top1_agreement'), '6.3f')} {f(q.get('kl_mean'), '9.2e')} {f(q.get('perplexity'), '8.1f')}"
              + (f"  {e.get('error')}" if e.get("status") != "ok" else ""))
PYEOF
  if [ "$(left)" -gt 20 ]; then
    timeout "$(left)" "$PY" -m qtrace report "$RUNS/cls_bs32" 2>&1 | grep -E "^==|Top phases|Quantization phases|coverage|Quality"
  fi
} 2>&1 | tee -a "$LOG"
ls -la "$OUT" | tee -a "$LOG"
