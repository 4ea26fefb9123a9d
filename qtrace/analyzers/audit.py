"""Load and configuration audit for `qtrace run` / `qtrace.record()` (pure: no torch).

Input: one entry's recorded facts (the `load_audit.load_facts` dict plus call figures, as in
run.json) and, when a trace was recorded, `trace_facts(trace)`. Output: findings, each with a
stable id, a severity, evidence, a one-line fix and an estimated cost. The cost is a share: of
the model's resident bytes for memory findings, of a recorded call's time for time findings,
so the two kinds order on one scale (docs/run.md says how each is estimated).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from qtrace.analyzers.distinct import shared_objects
from qtrace.tracefile import Trace

ITEMSIZE = {"fp64": 8, "fp32": 4, "fp16": 2, "bf16": 2}
QUANT_MODULE_PREFIXES = ("qtrace.module:Linear8bitLt:", "qtrace.module:Linear4bit:", "qtrace.module:LinearNF4:",
                         "qtrace.module:LinearFP4:")
CAST_OPS = ("aten::_to_copy",)  # aten::to calls it; its copy_ is nested inside, so counting it too would double
LOAD_EXCESS_MIN_SHARE = 0.10  # a load peak this far above resident is worth a finding
MANY_OUTLIER_SHARE = 0.05  # mean share of columns routed to the fp16 path above which the threshold looks low


# ---------------------------------------------------------------------------------------
# Trace facts


def trace_facts(trace: Trace) -> dict[str, Any]:
    """Casts (inside quantized linears and elsewhere), host verdict, LLM.int8 outliers, steps."""
    from qtrace.analyzers.host import host_summary
    from qtrace.backends.bitsandbytes.outliers import outlier_section

    ops = trace.ops
    names = shared_objects(ops["name"])
    parent = ops["parent"].to_numpy()
    is_quant = np.array([isinstance(n, str) and n.startswith(QUANT_MODULE_PREFIXES) for n in names])
    memo: dict[int, bool] = {}

    def inside_quant(row: int) -> bool:
        path = []
        r = int(parent[row])
        while r >= 0 and r not in memo:
            if is_quant[r]:
                memo[r] = True
                break
            path.append(r)
            r = int(parent[r])
        result = memo.get(r, False) if r >= 0 else False
        for p in path:
            memo[p] = result
        return result

    casts = np.flatnonzero(np.isin(names, CAST_OPS))
    dur = ops["dur"].to_numpy(dtype=float)
    inq = np.array([inside_quant(int(r)) for r in casts], dtype=bool)
    steps = int(sum(1 for n in set(names.tolist()) if isinstance(n, str) and n.startswith("ProfilerStep#")))
    host = host_summary(trace)
    outliers = outlier_section(trace)
    return {
        "steps": steps,
        "window_us": float(host["span_us"]),
        "gpu_idle_share": float(host["gpu_idle_share"]),
        "has_gpu": bool(len(trace.gpu)),
        "syncs": int(host["syncs"]),
        "verdict": host["verdict"],
        "casts_quant": {"count": int(inq.sum()), "us": float(dur[casts][inq].sum())},
        "casts_other": {"count": int((~inq).sum()), "us": float(dur[casts][~inq].sum())},
        "quant_modules": int(sum(1 for n in set(names[is_quant].tolist()))),
        "outliers": None if outliers is None else {
            k: outliers.get(k) for k in ("threshold", "calls", "calls_with_outliers", "k_mean", "k_max",
                                         "share_mean", "outlier_cpu_us", "outlier_gpu_us")},
    }


# ---------------------------------------------------------------------------------------
# Findings


def _finding(fid: str, severity: str, title: str, evidence: dict[str, Any], fix: str, cost: float,
             cost_basis: str) -> dict[str, Any]:
    return {"id": fid, "severity": severity, "title": title, "evidence": evidence, "fix": fix,
            "cost": round(float(cost), 6), "cost_basis": cost_basis}


def compute_dtype(entry: dict[str, Any]) -> str | None:
    """What the matmuls compute in: the autocast dtype when the calls ran under autocast, else the
    linears' own dtype (fp16 for LLM.int8, bnb_4bit_compute_dtype for 4-bit)."""
    return entry.get("autocast_dtype") or entry.get("matmul_dtype")


def findings(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """All findings for one entry, highest estimated cost first."""
    out: list[dict[str, Any]] = []
    for check in (_wide_dtype, _load_peak, _nf4_fp32, _casts, _outliers, _host_bound, _skipped, _never_called):
        f = check(entry)
        if f is not None:
            out.append(f)
    return sorted(out, key=lambda f: (-f["cost"], f["id"]))


def _resident(entry: dict[str, Any]) -> int:
    return int(entry.get("total_bytes") or 0) or 1


def wide_dtype_bytes(entry: dict[str, Any], target: str) -> dict[str, Any]:
    """Non-quantized float parameters and buffers wider than `target`: bytes now, bytes saved at `target`."""
    size = ITEMSIZE.get(target)
    rows = []
    for r in entry.get("tensors") or []:
        if r["role"] != "parameter" or r["kind"] == "quantized_linear":
            continue  # quantized weights and their scales are the backend's own format; buffers (rotary
            # tables, position ids) are kept in fp32 on purpose
        if size is None or ITEMSIZE.get(r["dtype"], 0) <= size:
            continue
        rows.append(r)
    total = sum(r["bytes"] for r in rows)
    saved = sum(r["bytes"] - r["numel"] * size for r in rows) if size else 0
    by_kind: dict[str, int] = {}
    for r in rows:
        by_kind[r["kind"]] = by_kind.get(r["kind"], 0) + r["bytes"]
    return {"bytes": total, "saved_bytes": saved, "tensors": sum(r["tensors"] for r in rows),
            "by_kind": by_kind, "dtypes": sorted({r["dtype"] for r in rows})}


def _wide_dtype(entry: dict[str, Any]) -> dict[str, Any] | None:
    target = compute_dtype(entry)
    if target not in ITEMSIZE:
        return None
    w = wide_dtype_bytes(entry, target)
    if not w["bytes"]:
        return None
    ev = {**w, "compute_dtype": target, "resident_bytes": entry.get("total_bytes")}
    kinds = ", ".join(f"{k} {_mb(v)}" for k, v in sorted(w["by_kind"].items(), key=lambda kv: -kv[1]))
    return _finding(
        "wide-dtype-params", "warning" if w["saved_bytes"] / _resident(entry) > 0.05 else "info",
        f"{_mb(w['bytes'])} of non-quantized tensors in {'/'.join(w['dtypes'])} beside {target} compute ({kinds}); "
        f"{_mb(w['saved_bytes'])} would be saved at {target}",
        ev, f"pass dtype=torch.{_torch_name(target)} to from_pretrained (a bitsandbytes load with no dtype keeps "
            "the checkpoint's dtype for embeddings, norms and heads)",
        w["saved_bytes"] / _resident(entry), "share of resident bytes")


def _load_peak(entry: dict[str, Any]) -> dict[str, Any] | None:
    load = entry.get("load") or {}
    excess, resident = load.get("peak_excess_bytes"), load.get("resident_bytes")
    if excess is None or not resident or excess / resident < LOAD_EXCESS_MIN_SHARE:
        return None
    return _finding("load-peak-excess", "warning" if excess / resident > 0.5 else "info",
                    f"loading peaked {_mb(excess)} above the {_mb(resident)} the model keeps resident",
                    {"peak_bytes": load.get("peak_bytes"), "resident_bytes": resident, "peak_excess_bytes": excess},
                    "load from a checkpoint already in the target dtype (or pre-quantized), so no full-width copy "
                    "of a layer exists during the load; measure peaks after a reset that follows the load",
                    excess / _resident(entry), "share of resident bytes")


def _nf4_fp32(entry: dict[str, Any]) -> dict[str, Any] | None:
    if entry.get("precision") not in ("nf4", "fp4") or compute_dtype(entry) != "fp32":
        return None
    return _finding("nf4-fp32-compute", "warning",
                    "4-bit weights are dequantized to fp32 and multiplied in fp32 (bnb_4bit_compute_dtype is "
                    "float32 and the calls ran without fp16/bf16 autocast)",
                    {"bnb_4bit_compute_dtype": (entry.get("quantization") or {}).get("bnb_4bit_compute_dtype"),
                     "autocast_dtype": entry.get("autocast_dtype")},
                    "BitsAndBytesConfig(..., bnb_4bit_compute_dtype=torch.float16) (bfloat16 on Ampere and later)",
                    0.5, "assumed: fp32 GEMMs take about twice the fp16 time")


def _step_us(entry: dict[str, Any]) -> float:
    tf = entry.get("trace_facts") or {}
    return float(tf.get("window_us") or 0.0) or 1.0


def _casts(entry: dict[str, Any]) -> dict[str, Any] | None:
    tf = entry.get("trace_facts")
    if not tf:
        return None
    return _quant_casts(entry, tf) or _autocast_casts(entry, tf)


def _quant_casts(entry: dict[str, Any], tf: dict[str, Any]) -> dict[str, Any] | None:
    q = tf["casts_quant"]
    if not q["count"]:
        return None
    per_layer = q["count"] / max(tf.get("quant_modules") or 1, 1) / max(tf.get("steps") or 1, 1)
    return _finding("quant-matmul-casts", "warning" if q["us"] / _step_us(entry) > 0.05 else "info",
                    f"{q['count']} dtype casts inside the quantized linears ({per_layer:.1f} per layer per step), "
                    f"{q['us'] / 1e3:.2f} ms of host time in {tf.get('steps')} recorded step(s)",
                    {**q, "per_layer_per_step": round(per_layer, 3), "steps": tf.get("steps"),
                     "model_dtype": entry.get("model_dtype"), "compute_dtype": compute_dtype(entry)},
                    "feed the quantized layers their compute dtype: load with dtype=torch.float16 so the "
                    "activations between layers are already fp16",
                    q["us"] / _step_us(entry), "share of recorded call time")


def _autocast_casts(entry: dict[str, Any], tf: dict[str, Any]) -> dict[str, Any] | None:
    o = tf["casts_other"]
    ac = entry.get("autocast_dtype")
    if not ac or not o["count"]:
        return None
    share = o["us"] / _step_us(entry)
    if entry.get("model_dtype") == ac:  # weights already in the autocast dtype: what is cast is autocast's fp32 ops
        fix = ("the weights are already " + ac + "; these casts are autocast's own (ops it runs in fp32, fp32 "
               "buffers): dropping autocast saves only them")
        severity = "info"
    else:
        fix = (f"load the model in the autocast dtype (dtype=torch.{_torch_name(ac)}) so its float weights are not "
               "cast on every call")
        severity = "warning" if share > 0.05 else "info"
    return _finding("autocast-casts", severity,
                    f"under {ac} autocast: {o['count']} casts outside the quantized layers, "
                    f"{o['us'] / 1e3:.2f} ms host time in {tf.get('steps')} recorded step(s)",
                    {**o, "steps": tf.get("steps"), "autocast_dtype": ac, "model_dtype": entry.get("model_dtype")},
                    fix, share, "share of recorded call time")


def _outliers(entry: dict[str, Any]) -> dict[str, Any] | None:
    o = (entry.get("trace_facts") or {}).get("outliers")
    if not o or not o.get("calls"):
        return None
    share = o.get("share_mean")
    ev = {**o, "llm_int8_threshold": (entry.get("quantization") or {}).get("llm_int8_threshold")}
    cost = ((o.get("outlier_cpu_us") or 0.0) + (o.get("outlier_gpu_us") or 0.0)) / _step_us(entry)
    if not o.get("calls_with_outliers"):
        return _finding("outlier-threshold", "info",
                        f"no column reached the LLM.int8 threshold in {o['calls']} int8 matmuls: the outlier check "
                        "(and its host sync) runs for nothing",
                        ev, "if quality holds without decomposition, NF4 or fp16 avoid the per-layer check; "
                            "llm_int8_threshold=0.0 skips it", cost, "share of recorded call time")
    if share is not None and share > MANY_OUTLIER_SHARE:
        return _finding("outlier-threshold", "warning",
                        f"{share:.1%} of columns routed to the fp16 path on average ({o['calls_with_outliers']} of "
                        f"{o['calls']} matmuls)", ev,
                        "raise llm_int8_threshold or skip the worst modules (llm_int8_skip_modules)", cost,
                        "share of recorded call time")
    return None


def _host_bound(entry: dict[str, Any]) -> dict[str, Any] | None:
    tf = entry.get("trace_facts") or {}
    if not tf.get("has_gpu") or not str(tf.get("verdict", "")).startswith("host-bound"):
        return None
    return _finding("host-bound", "warning", tf["verdict"].removeprefix("host-bound: "),
                    {"gpu_idle_share": tf["gpu_idle_share"], "syncs": tf["syncs"], "window_us": tf["window_us"]},
                    "raise the batch size, or avoid layers that sync per call (LLM.int8's outlier check)",
                    tf["gpu_idle_share"], "GPU idle share of the recorded window")


def _skipped(entry: dict[str, Any]) -> dict[str, Any] | None:
    left = entry.get("unquantized_linears") or []
    if not left:
        return None
    total = sum(x["bytes"] for x in left)
    return _finding("skipped-modules", "info",
                    f"{len(left)} linear(s) left unquantized ({_mb(total)}): "
                    + ", ".join(x["module"] for x in left[:5]) + (" ..." if len(left) > 5 else ""),
                    {"modules": left[:50], "count": len(left), "bytes": total,
                     "llm_int8_skip_modules": (entry.get("quantization") or {}).get("llm_int8_skip_modules")},
                    "expected for heads (transformers keeps them in float); list others in llm_int8_skip_modules "
                    "only on purpose", total / _resident(entry) * 0.1, "tenth of the share of resident bytes")


def _never_called(entry: dict[str, Any]) -> dict[str, Any] | None:
    if (entry.get("calls") or {}).get("count"):
        return None
    return _finding("never-called", "info", "the model was loaded but never called",
                    {"load_seconds": (entry.get("load") or {}).get("seconds"),
                     "resident_bytes": entry.get("total_bytes")},
                    "drop the load, or call the model object that was loaded (a copy made with .to() is the same "
                    "object; one built anew is not)", 0.0, "none")


def _mb(n: float | int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.2f} MB"


def _torch_name(short: str) -> str:
    return {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}.get(short, short)
