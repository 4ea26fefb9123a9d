"""LLM.int8 outlier statistics: how many activation columns each int8 matmul sent to fp16.

LLM.int8 (bitsandbytes ``Linear8bitLt``, threshold 6.0) finds the columns of the activation
where any value reaches the threshold, and multiplies those k columns in fp16 beside the int8
GEMM. k is recorded in the trace: it is the length of the ``outlier_cols`` input of
``bitsandbytes::int8_mixed_scaled_mm`` (its 6th input, dims ``[k]``, ``long int``), e.g.::

    Input Dims  [[T, K], [T, K], [N, K], [T], [N], [k], [N]]
    Input type  ["c10::Half", "signed char", "signed char", "float", "float", "long int", "c10::Half"]

Where that op has no shapes, the weight outlier columns dequantized under it
(``int8_vectorwise_dequant`` of ``[N, k]``) give k too. ``aten::index`` under it does not (the
index list is a TensorList of optional tensors, recorded without dims).

A **call** is one quantized linear: its ``int8_vectorwise_quant`` (the outlier check) and the
``int8_mixed_scaled_mm`` that follows it on the same thread. Each call gets the GPU and host
time of its ``int8.outlier_*`` phases, its layer (the innermost ``qtrace.module:`` annotation)
and its step. Rows are per layer and step when the trace has qtrace module annotations, else
per call in time order.

With ``--int8-threshold 0`` the decomposition is off: bitsandbytes calls ``int8_scaled_mm``
directly, nothing is routed to fp16, and the outlier phases disappear (see docs/roofline.md
for the what-if).
"""

from __future__ import annotations

import math
import re
from typing import Any

import msgspec
import numpy as np
import pandas as pd

from qtrace.analyzers.attribution import gpu_phases, op_phases, runtime_phases
from qtrace.analyzers.distinct import mask_distinct, shared_objects
from qtrace.analyzers.phase_rules import MODULE_ANNOTATION_PREFIX
from qtrace.tracefile.kineto import Trace

QUANT_OP = "bitsandbytes::int8_vectorwise_quant"
MIXED_OP = "bitsandbytes::int8_mixed_scaled_mm"
SCALED_OP = "bitsandbytes::int8_scaled_mm"
COL_DEQUANT_OP = "bitsandbytes::int8_vectorwise_dequant"
OUTLIER_PHASES = ("int8.outlier_detect", "int8.outlier_gather", "int8.outlier_gemm")
_STEP_RE = re.compile(r"^ProfilerStep#(\d+)$")
_LAYER_RE = re.compile(r"\.(\d+)(?:\.|$)")

CALL_COLUMNS = ["call", "ts", "step", "step_name", "module", "module_class", "layer_index", "T", "K", "N", "k",
                "share", "k_source", "decomposed", "outlier_gpu_us", "outlier_cpu_us", "outlier_syncs"]


def _decode(raw: bytes | None) -> Any:
    if not raw:
        return None
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return None


def _shape(dims: Any, i: int) -> list[int] | None:
    if isinstance(dims, list) and i < len(dims) and isinstance(dims[i], list) \
            and all(isinstance(v, int) for v in dims[i]):
        return dims[i]
    return None


def _ancestors(parent: np.ndarray, row: int) -> list[int]:
    out = []
    p = parent[row]
    while p >= 0:
        out.append(int(p))
        p = parent[p]
    return out


def _thread_keys(trace: Trace) -> np.ndarray:
    """An integer per op naming its (pid, tid) thread; cached on the trace."""
    cache = trace.__dict__.setdefault("_qtrace_cache", {})
    if "thread_keys" not in cache:
        ops = trace.ops
        pid = pd.factorize(ops["pid"])[0].astype(np.int64)
        tid = pd.factorize(ops["tid"])[0].astype(np.int64)
        cache["thread_keys"] = pid * (int(tid.max()) + 1 if len(tid) else 1) + tid
    return cache["thread_keys"]


def _call_membership(ops: pd.DataFrame, key: np.ndarray, anchors: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """For each op in `rows`: the anchor op (a quant or mixed op) whose range holds it, or -1."""
    out = np.full(len(rows), -1, dtype=np.int64)
    if not len(anchors) or not len(rows):
        return out
    ts = ops["ts"].to_numpy(dtype=float)
    end = ops["end"].to_numpy(dtype=float)
    eps = 1e-3
    for k in np.unique(key[anchors]):
        a = anchors[key[anchors] == k]
        a = a[np.argsort(ts[a], kind="stable")]
        a_ts, a_end = ts[a], end[a]
        sel = np.nonzero(key[rows] == k)[0]
        if not len(sel):
            continue
        r_ts = ts[rows[sel]]
        pos = np.searchsorted(a_ts, r_ts + eps, side="right") - 1
        ok = pos >= 0
        inside = np.zeros(len(sel), dtype=bool)
        inside[ok] = r_ts[ok] <= a_end[pos[ok]] + eps
        out[sel[inside]] = a[pos[inside]]
    return out


def outlier_calls(trace: Trace) -> pd.DataFrame:
    """One row per LLM.int8 linear call: k outlier columns, shapes, layer, step, outlier-phase time."""
    ops = trace.ops
    if ops.empty:
        return pd.DataFrame(columns=CALL_COLUMNS)
    names = shared_objects(ops["name"])
    quant = np.nonzero(names == QUANT_OP)[0]
    mixed = np.nonzero(names == MIXED_OP)[0]
    scaled = np.nonzero(names == SCALED_OP)[0]
    if not len(quant) and not len(mixed) and not len(scaled):
        return pd.DataFrame(columns=CALL_COLUMNS)
    parent = ops["parent"].to_numpy()
    key = _thread_keys(trace)
    ts = ops["ts"].to_numpy(dtype=float)
    # A call starts at each quant op; the mixed (or plain scaled) matmul after it on the thread joins it.
    # A scaled_mm nested in a mixed op is part of that mixed op's call, not a call of its own.
    top_scaled = np.array([r for r in scaled if names[parent[r]] != MIXED_OP] if len(scaled) else [], dtype=np.int64)
    matmuls = np.sort(np.concatenate([mixed, top_scaled]).astype(np.int64))
    call_of: dict[int, int] = {}  # op row (quant or matmul) -> call id
    calls: list[dict[str, Any]] = []
    for k in np.unique(key[np.concatenate([quant, matmuls])]) if len(quant) + len(matmuls) else []:
        q = quant[key[quant] == k]
        m = matmuls[key[matmuls] == k]
        events = sorted([(ts[r], 0, int(r)) for r in q] + [(ts[r], 1, int(r)) for r in m])
        open_call: int | None = None
        for _, kind, r in events:
            if kind == 0:
                open_call = len(calls)
                calls.append({"quant": r, "matmul": None})
                call_of[r] = open_call
            else:
                if open_call is None or calls[open_call]["matmul"] is not None:
                    open_call = len(calls)
                    calls.append({"quant": None, "matmul": r})
                else:
                    calls[open_call]["matmul"] = r
                call_of[r] = open_call
    if not calls:
        return pd.DataFrame(columns=CALL_COLUMNS)

    dims_col = ops["input_dims"].to_numpy(dtype=object)
    anchors_all = [c["matmul"] if c["matmul"] is not None else c["quant"] for c in calls]
    ctx_step, ctx_step_name = _steps(trace, anchors_all)
    col_dequant = np.nonzero(names == COL_DEQUANT_OP)[0]
    col_dequant_of_mixed = {int(parent[r]): int(r) for r in col_dequant
                            if parent[r] >= 0 and names[parent[r]] == MIXED_OP}

    # Shapes are read once per distinct Input Dims text (equal texts are one object in the table):
    # thousands of calls, a few dozen distinct shapes.
    shapes: dict[tuple[Any, int], list[int] | None] = {}

    def shape(row: int, i: int) -> list[int] | None:
        key = (dims_col[row], i)
        if key not in shapes:
            shapes[key] = _shape(_decode(dims_col[row]), i)
        return shapes[key]

    rows = []
    for cid, c in enumerate(calls):
        anchor = c["matmul"] if c["matmul"] is not None else c["quant"]
        mm = c["matmul"]
        decomposed = mm is not None and names[mm] == MIXED_OP
        T = K = N = k = None
        k_source = None
        if mm is not None:
            a = shape(mm, 0)
            b = shape(mm, 2 if decomposed else 1)
            if a:
                T, K = math.prod(a[:-1]) if len(a) > 1 else 1, a[-1]  # exact ints (np.prod: int64, slower per call)
            if b:
                N = b[0]
            if decomposed:
                cols = shape(mm, 5)
                if cols is not None and len(cols) == 1:
                    k, k_source = int(cols[0]), "int8_mixed_scaled_mm outlier_cols"
                elif mm in col_dequant_of_mixed:
                    w = shape(col_dequant_of_mixed[mm], 0)
                    if w and len(w) == 2:
                        k, k_source = int(w[1]), "int8_vectorwise_dequant [N, k]"
            else:
                k, k_source = 0, "no decomposition (int8_scaled_mm)"
        elif c["quant"] is not None:
            a = shape(c["quant"], 0)
            if a:
                T, K = math.prod(a[:-1]) if len(a) > 1 else 1, a[-1]  # exact ints (np.prod: int64, slower per call)
        module, module_class = _module_of(names, parent, anchor)
        m = _LAYER_RE.search(module or "")
        rows.append({
            "call": cid, "ts": float(ts[c["quant"] if c["quant"] is not None else anchor]),
            "step": ctx_step[cid], "step_name": ctx_step_name[cid],
            "module": module, "module_class": module_class, "layer_index": int(m.group(1)) if m else None,
            "T": T, "K": K, "N": N, "k": k, "share": (k / K) if k is not None and K else None,
            "k_source": k_source, "decomposed": decomposed,
        })
    out = pd.DataFrame(rows)
    _add_outlier_time(trace, out, calls)
    return out[CALL_COLUMNS]


def _steps(trace: Trace, rows: list[int]) -> tuple[list[int], list[str]]:
    """Step index and name of each op in `rows`: the innermost qtrace.step range counts (its
    ordinal among all qtrace.step ranges in time order, so each decode step is a step); else
    ProfilerStep#N; else -1."""
    ops = trace.ops
    names = shared_objects(ops["name"])
    parent = ops["parent"].to_numpy()
    is_qstep = mask_distinct(ops["name"], lambda n: isinstance(n, str) and n.startswith("qtrace.step:"))
    qrows = np.nonzero(is_qstep)[0]
    qrows = qrows[np.argsort(ops["ts"].to_numpy(dtype=float)[qrows], kind="stable")]
    ordinal = {int(r): i for i, r in enumerate(qrows)}
    # Each op's answer is its own (a step range) or its parent's: kept per op on the way up, so
    # the ranges above thousands of calls are read once.
    known: dict[int, tuple[int, str]] = {}
    steps, step_names = [], []
    for r in rows:
        path = []
        a = int(r)
        while True:
            if a < 0:
                found = (-1, "")
                break
            if a in known:
                found = known[a]
                break
            name = names[a]
            if a in ordinal:
                found = (ordinal[a], name[len("qtrace.step:"):])
            elif isinstance(name, str) and (m := _STEP_RE.match(name)):
                found = (int(m.group(1)), "")
            else:
                path.append(a)
                a = int(parent[a])
                continue
            known[a] = found
            break
        for b in path:
            known[b] = found
        steps.append(found[0])
        step_names.append(found[1])
    return steps, step_names


def _module_of(names: np.ndarray, parent: np.ndarray, row: int) -> tuple[str | None, str | None]:
    for a in _ancestors(parent, row):
        name = names[a]
        if isinstance(name, str) and name.startswith(MODULE_ANNOTATION_PREFIX):
            rest = name[len(MODULE_ANNOTATION_PREFIX):]
            cls, _, qual = rest.partition(":")
            qual = qual.partition(":")[0]  # a third field (the weight's tensor class) is not part of the name
            return (qual or cls), cls
    return None, None


def _add_outlier_time(trace: Trace, out: pd.DataFrame, calls: list[dict[str, Any]]) -> None:
    """GPU time, host self time and host syncs of the int8.outlier_* phases inside each call."""
    out["outlier_gpu_us"] = 0.0
    out["outlier_cpu_us"] = 0.0
    out["outlier_syncs"] = 0
    ops = trace.ops
    anchors = np.array(sorted({r for c in calls for r in (c["quant"], c["matmul"]) if r is not None}), dtype=np.int64)
    call_of_op = np.full(len(ops), -1, dtype=np.int64)  # anchor op row -> its call
    for cid, c in enumerate(calls):
        for r in (c["quant"], c["matmul"]):
            if r is not None:
                call_of_op[r] = cid

    def call_of(member: np.ndarray) -> np.ndarray:
        return np.where(member >= 0, call_of_op[np.clip(member, 0, None)], -1) if len(member) else member
    ophase = op_phases(trace)
    sel = np.nonzero(ophase["phase"].isin(OUTLIER_PHASES).to_numpy() & (ophase["cat"] == "cpu_op").to_numpy())[0]
    key = _thread_keys(trace)
    member = _call_membership(ops, key, anchors, sel)
    cpu = pd.Series(ophase["self_us"].to_numpy()[sel]).groupby(
        call_of(member)).sum()
    idx = out["call"].to_numpy()
    out["outlier_cpu_us"] = cpu.reindex(idx, fill_value=0.0).to_numpy(dtype=float)
    if not trace.has_gpu:  # a CPU trace: no kernels, no syncs
        return
    gpu = gpu_phases(trace)
    g = gpu.loc[gpu["phase"].isin(OUTLIER_PHASES) & (gpu["op"] >= 0), ["op", "dur"]]  # not a copy of every name
    gmember = _call_membership(ops, key, anchors, g["op"].to_numpy())
    gsum = pd.Series(g["dur"].to_numpy()).groupby(call_of(gmember)).sum()
    rt = runtime_phases(trace)
    s = rt.loc[rt["is_sync"] & rt["phase"].isin(OUTLIER_PHASES) & (rt["op"] >= 0), ["op"]]
    smember = _call_membership(ops, key, anchors, s["op"].to_numpy())
    ssum = pd.Series(np.ones(len(s))).groupby(call_of(smember)).sum()
    out["outlier_gpu_us"] = gsum.reindex(idx, fill_value=0.0).to_numpy(dtype=float)
    out["outlier_syncs"] = ssum.reindex(idx, fill_value=0).to_numpy().astype(int)


def layer_table(calls: pd.DataFrame) -> pd.DataFrame:
    """Per layer (module) and step: calls, k, share of K, outlier-phase time."""
    c = calls[calls["module"].notna()]
    if c.empty:
        return pd.DataFrame(columns=["module", "layer_index", "step", "step_name", "calls", "K", "N", "k", "share",
                                     "outlier_gpu_us", "outlier_cpu_us", "outlier_syncs"])
    g = c.groupby(["module", "step", "step_name"], sort=False, dropna=False)
    t = g.agg(first_ts=("ts", "min"), layer_index=("layer_index", "first"), calls=("call", "size"),
              K=("K", "first"), N=("N", "first"),
              k=("k", "sum"), k_known=("k", "count"), outlier_gpu_us=("outlier_gpu_us", "sum"),
              outlier_cpu_us=("outlier_cpu_us", "sum"), outlier_syncs=("outlier_syncs", "sum")).reset_index()
    t.loc[t["k_known"] < t["calls"], "k"] = np.nan  # a call without a known k: no total
    t["share"] = t["k"] / (t["K"] * t["calls"])
    t = t.sort_values(["step", "first_ts"], kind="stable").reset_index(drop=True)  # execution order
    return t[["module", "layer_index", "step", "step_name", "calls", "K", "N", "k", "share", "outlier_gpu_us",
              "outlier_cpu_us", "outlier_syncs"]]


def _clean(v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, float) and np.isnan(v):
        return None
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return None if np.isnan(v) else float(v)
    if isinstance(v, np.bool_):
        return bool(v)
    return v


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    return [{k: _clean(v) for k, v in r.items()} for r in df.to_dict(orient="records")]


def outlier_section(trace: Trace, phases: pd.DataFrame | None = None, max_rows: int = 200) -> dict[str, Any] | None:
    """The `outliers` block of a report, or None for a trace without LLM.int8 layers."""
    calls = outlier_calls(trace)
    if calls.empty:
        return None
    known = calls[calls["k"].notna()]
    decomposed = calls[calls["decomposed"]]
    with_k = known[known["k"] > 0]
    threshold = trace.qtrace_meta.get("int8_threshold")
    phase_time = _phase_time(trace) if phases is None else {
        r["phase"]: {"gpu_time_us": float(r["gpu_time_us"]), "cpu_time_us": float(r["cpu_time_us"]),
                     "host_syncs": int(r["host_syncs"])}
        for r in phases[phases["phase"].isin(OUTLIER_PHASES)].to_dict(orient="records")}
    by_module = calls["module"].notna().any()
    layers = layer_table(calls) if by_module else None
    section: dict[str, Any] = {
        "threshold": threshold,
        "calls": int(len(calls)),
        "decomposed_calls": int(len(decomposed)),
        "calls_with_outliers": int(len(with_k)),
        "k_known": int(len(known)),
        "k_min": _clean(known["k"].min()) if len(known) else None,
        "k_mean": _clean(float(known["k"].mean())) if len(known) else None,
        "k_max": _clean(known["k"].max()) if len(known) else None,
        "share_mean": _clean(float(known["share"].mean())) if known["share"].notna().any() else None,
        "outlier_gpu_us": float(calls["outlier_gpu_us"].sum()),
        "outlier_cpu_us": float(calls["outlier_cpu_us"].sum()),
        "outlier_syncs": int(calls["outlier_syncs"].sum()),
        "phase_time": phase_time,
        "rows_by": "layer_and_step" if by_module else "call",
    }
    rows = layers if layers is not None else calls.drop(columns=["module", "module_class", "layer_index"])
    section["rows_total"] = int(len(rows))
    section["rows"] = _records(rows.head(max_rows))
    if by_module:
        per_layer = calls.groupby("module", sort=False).agg(
            layer_index=("layer_index", "first"), calls=("call", "size"), K=("K", "first"),
            k_min=("k", "min"), k_mean=("k", "mean"), k_max=("k", "max"),
            outlier_gpu_us=("outlier_gpu_us", "sum")).reset_index()
        section["layers"] = _records(per_layer)
    section["summary"] = _summary(section)
    section["markdown"] = _markdown(section, calls, layers)
    return section


def _phase_time(trace: Trace) -> dict[str, dict[str, float]]:
    """GPU time, host self time and host syncs of each int8.outlier_* phase in the whole trace."""
    ops = op_phases(trace)
    cpu = ops.loc[ops["cat"] == "cpu_op", ["phase", "self_us"]].groupby("phase")["self_us"].sum()
    gpu = gpu_phases(trace).groupby("phase")["dur"].sum() if trace.has_gpu else pd.Series(dtype=float)
    syncs = pd.Series(dtype=float)
    if trace.has_gpu:
        rt = runtime_phases(trace)
        syncs = rt.loc[rt["is_sync"], ["phase"]].groupby("phase").size()
    out = {}
    for p in OUTLIER_PHASES:
        g, c, n = float(gpu.get(p, 0.0)), float(cpu.get(p, 0.0)), int(syncs.get(p, 0))
        if g or c or n:
            out[p] = {"gpu_time_us": g, "cpu_time_us": c, "host_syncs": n}
    return out


def _summary(s: dict[str, Any]) -> str:
    thr = f" (threshold {s['threshold']:g})" if isinstance(s["threshold"], int | float) else ""
    if s["decomposed_calls"] == 0:
        return (f"LLM.int8 outliers: decomposition off{thr}: {s['calls']} int8 matmuls, no column routed to fp16 "
                f"(int8_scaled_mm only)")
    if s["k_known"] == 0:
        return f"LLM.int8 outliers: {s['decomposed_calls']} decomposed matmuls, k unknown (trace has no shapes)"
    base = (f"LLM.int8 outliers{thr}: {s['calls_with_outliers']} of {s['k_known']} matmuls routed outlier columns "
            f"to fp16")
    if s["calls_with_outliers"]:
        share = f", {s['share_mean'] * 100:.2f}% of K on average" if s["share_mean"] is not None else ""
        base += f" (k {s['k_min']:g}..{s['k_max']:g}, mean {s['k_mean']:.2f}{share})"
    else:
        base += " (k = 0 everywhere: no activation reached the threshold)"
    base += (f"; outlier phases {s['outlier_gpu_us'] / 1000:.3f} ms GPU, {s['outlier_cpu_us'] / 1000:.3f} ms host, "
             f"{s['outlier_syncs']} syncs")
    return base


def _markdown(s: dict[str, Any], calls: pd.DataFrame, layers: pd.DataFrame | None) -> str:
    from qtrace.markup import md_escape, md_table

    lines = [md_escape(s["summary"]), ""]
    if s["phase_time"]:
        rows = [[p, f"{v['gpu_time_us'] / 1000:.3f}", f"{v['cpu_time_us'] / 1000:.3f}", str(v["host_syncs"])]
                for p, v in s["phase_time"].items()]
        lines += [md_table(["outlier phase", "GPU ms", "host CPU ms", "syncs"], rows), ""]
    def fmt(v: Any, digits: int = 0) -> str:
        v = _clean(v)
        return "-" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))

    if layers is not None and len(layers):
        head = ["layer", "step", "calls", "K", "N", "k", "k / K", "outlier GPU µs", "outlier host µs", "syncs"]
        rows = [[md_escape(r["module"]), md_escape(f"{r['step']} {r['step_name']}".strip()), fmt(r["calls"]),
                 fmt(r["K"]), fmt(r["N"]), fmt(r["k"]),
                 "-" if _clean(r["share"]) is None else f"{r['share'] * 100:.2f}%",
                 fmt(r["outlier_gpu_us"], 1), fmt(r["outlier_cpu_us"], 1), fmt(r["outlier_syncs"])]
                for r in layers.head(60).to_dict(orient="records")]
        lines.append(md_table(head, rows, "llrrrrrrrr"))
        if len(layers) > 60:
            lines.append(f"\n({len(layers) - 60} more rows in report.json)")
    else:
        head = ["call", "step", "T", "K", "N", "k", "outlier GPU µs", "outlier host µs", "syncs"]
        rows = [[fmt(r["call"]), fmt(r["step"]), fmt(r["T"]), fmt(r["K"]), fmt(r["N"]), fmt(r["k"]),
                 fmt(r["outlier_gpu_us"], 1), fmt(r["outlier_cpu_us"], 1), fmt(r["outlier_syncs"])]
                for r in calls.head(30).to_dict(orient="records")]
        lines.append(md_table(head, rows))
        if len(calls) > 30:
            lines.append(f"\n({len(calls) - 30} more calls in report.json; qtrace profile adds layer names)")
    lines += ["", "What-if: `qtrace profile MODEL --precision int8 --int8-threshold 0` turns the decomposition off "
                  "(no outlier columns, no outlier phases); compare the two runs to see what the outlier path costs."]
    return "\n".join(lines)
