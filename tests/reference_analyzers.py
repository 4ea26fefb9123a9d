"""The attribution and host hot paths as first written (qtrace/analyzers/attribution.py and host.py
before their speed-ups), kept as the straightforward reference that tests/test_hotpath_equivalence.py
compares the optimized functions against. Helpers (classify, window, ...) come from the live modules,
so only the rewritten internals are frozen here. Results are cached under their own keys."""

from __future__ import annotations

import numpy as np
import pandas as pd

from qtrace.analyzers.attribution import _OPS_CHAIN_DEPTH, _STEP_RE, ASYNC_COPY_CALLS, SYNC_CALLS, quant_backend, window
from qtrace.analyzers.host import OUTSIDE_OPS, busy_intervals, covered_in
from qtrace.analyzers.phase_rules import MODULE_ANNOTATION_PREFIX, classify, group_of
from qtrace.tracefile.kineto import Trace


def _cache(trace: Trace) -> dict:
    return trace.__dict__.setdefault("_reference_cache", {})


def op_contexts(trace: Trace) -> pd.DataFrame:
    """Per host range: bnb, below_bnb, module, ops (classification context), step and step_name.

    One pass over the ranges, parents before children, building each context from its parent's.
    Contexts are interned, so a trace with a million ops keeps a few thousand distinct ones.
    """
    cache = _cache(trace)
    if "op_contexts" in cache:
        return cache["op_contexts"]
    ops = trace.ops
    n = len(ops)
    names = ops["name"].to_numpy(dtype=object)
    cats = ops["cat"].to_numpy(dtype=object)
    parent = ops["parent"].to_numpy() if n else np.zeros(0, dtype=np.int64)
    order = np.argsort(ops["depth"].to_numpy(), kind="stable") if n else np.zeros(0, dtype=np.int64)

    # context tuple: (bnb, below_bnb, module, weight, ops_chain_tuple, step, step_name)
    empty = ("", "", "", "", (), -1, "")
    contexts: list[tuple] = [empty]
    ctx_index: dict[tuple, int] = {}
    ctx_of = np.zeros(n, dtype=np.int64)
    for r in order:
        p = parent[r]
        base_id = ctx_of[p] if p >= 0 else 0
        key = (base_id, names[r], cats[r])
        cid = ctx_index.get(key)
        if cid is None:
            bnb, below, module, weight, chain, step, step_name = contexts[base_id]
            name, cat = names[r], cats[r]
            if cat == "cpu_op":
                if name.startswith(("bitsandbytes::", "torchao::")):
                    bnb, below = name, ""
                elif bnb:
                    below = f"{below}/{name}" if below else name
                chain = ((name,) + chain)[:_OPS_CHAIN_DEPTH]
            elif cat == "user_annotation":
                if name.startswith(MODULE_ANNOTATION_PREFIX):
                    fields = name[len(MODULE_ANNOTATION_PREFIX):].split(":")
                    module, weight = fields[0], (fields[2] if len(fields) > 2 else "")
                else:
                    m = _STEP_RE.match(name)
                    if m:
                        step = int(m.group(1))
                    elif name.startswith("qtrace.step:"):
                        step_name = name[len("qtrace.step:"):]
            cid = len(contexts)
            contexts.append((bnb, below, module, weight, chain, step, step_name))
            ctx_index[key] = cid
        ctx_of[r] = cid
    table = pd.DataFrame(contexts, columns=["quant_op", "below_quant_op", "module", "weight", "chain", "step",
                                            "step_name"])
    table["ops"] = ["/".join(c) for c in table["chain"]]
    table = table.drop(columns="chain")
    out = table.iloc[ctx_of].reset_index(drop=True)
    out.index = ops.index
    cache["op_contexts"] = out
    return out


def gpu_phases(trace: Trace) -> pd.DataFrame:
    """The GPU events (kernels, memcpy, memset) with `phase`, `group`, `step`, `step_name`."""
    cache = _cache(trace)
    if "gpu_phases" in cache:
        return cache["gpu_phases"]
    gpu = trace.gpu.copy()
    ctx = _contexts_for(trace, gpu["op"].to_numpy())
    ctx["kind"] = gpu["cat"].to_numpy()
    ctx["kernel"] = gpu["name"].to_numpy()
    ctx["quant_backend"] = quant_backend(trace)  # issue 15: backend kernel-name rules are gated on it
    gpu["phase"] = classify(ctx).to_numpy()
    gpu["group"] = gpu["phase"].map(group_of)
    gpu["step"] = ctx["step"].to_numpy()
    gpu["step_name"] = ctx["step_name"].to_numpy()
    cache["gpu_phases"] = gpu
    return gpu


def op_phases(trace: Trace) -> pd.DataFrame:
    """Host ranges with `phase` and `self_us` (time not inside a child range).

    An op that launched GPU work takes the phase of the first event it launched, so a host op
    and its kernel never disagree (bitsandbytes' gemm_4bit launches either a fused kernel or a
    dequant kernel, which only the kernel tells apart).
    """
    cache = _cache(trace)
    if "op_phases" in cache:
        return cache["op_phases"]
    ops = trace.ops.copy()
    ctx = op_contexts(trace).copy()
    ctx["kind"] = "cpu_op"
    ctx["kernel"] = ""
    ctx["quant_backend"] = quant_backend(trace)
    phase = classify(ctx)
    gpu = gpu_phases(trace)
    launched = gpu[gpu["op"] >= 0].drop_duplicates("op", keep="first")
    phase.loc[launched["op"].to_numpy()] = launched["phase"].to_numpy()
    # Annotations carry no work of their own beyond Python between ops: keep them out of phases.
    phase[ops["cat"].to_numpy() != "cpu_op"] = "other"
    ops["phase"] = phase.to_numpy()
    ops["group"] = ops["phase"].map(group_of)
    child_time = ops[ops["parent"] >= 0].groupby("parent")["dur"].sum()
    ops["self_us"] = (ops["dur"] - child_time.reindex(ops.index, fill_value=0.0)).clip(lower=0.0)
    ops["step"] = ctx["step"].to_numpy()
    ops["step_name"] = ctx["step_name"].to_numpy()
    cache["op_phases"] = ops
    return ops


def runtime_phases(trace: Trace) -> pd.DataFrame:
    """Runtime calls with `phase`, `is_launch` (it started GPU work) and `is_sync` (it blocked)."""
    cache = _cache(trace)
    if "runtime_phases" in cache:
        return cache["runtime_phases"]
    rt = trace.runtime.copy()
    ops = op_phases(trace)
    op_phase = ops["phase"].to_numpy()
    rt_op = rt["op"].to_numpy()
    phase = np.where(rt_op >= 0, op_phase[np.clip(rt_op, 0, None)] if len(op_phase) else "other", "other")
    gpu = gpu_phases(trace)
    launched = gpu[gpu["runtime"] >= 0].drop_duplicates("runtime", keep="first")
    phase = pd.Series(phase, index=rt.index, dtype=object)
    phase.loc[launched["runtime"].to_numpy()] = launched["phase"].to_numpy()
    rt["phase"] = phase.to_numpy()
    rt["group"] = rt["phase"].map(group_of)
    rt["is_launch"] = rt.index.isin(launched["runtime"].to_numpy())
    # A cudaMemcpyAsync blocks the host when host memory is pageable (the runtime stages it).
    pageable = gpu[(gpu["runtime"] >= 0) & gpu["name"].astype(str).str.contains("Pageable", regex=False)]["runtime"]
    lo, hi = window(trace)
    inside = (rt["ts"] >= lo) & (rt["ts"] <= hi)
    rt["is_sync"] = inside & (rt["name"].isin(SYNC_CALLS) | (rt["name"].isin(ASYNC_COPY_CALLS)
                                                            & rt.index.isin(pageable)))
    ctx = _contexts_for(trace, rt_op)
    rt["step"] = ctx["step"].to_numpy()
    rt["step_name"] = ctx["step_name"].to_numpy()
    cache["runtime_phases"] = rt
    return rt


def _contexts_for(trace: Trace, op_rows: np.ndarray) -> pd.DataFrame:
    """Op contexts for each row of `op_rows` (-1 = no enclosing op: an empty context)."""
    ctx = op_contexts(trace)
    cols = ["quant_op", "below_quant_op", "module", "weight", "ops", "step", "step_name"]
    if len(ctx) == 0:
        return pd.DataFrame({c: ([-1] if c == "step" else [""]) * len(op_rows) for c in cols})
    picked = ctx.iloc[np.clip(op_rows, 0, None)][cols].reset_index(drop=True)
    missing = op_rows < 0
    if missing.any():
        picked.loc[missing, ["quant_op", "below_quant_op", "module", "weight", "ops", "step_name"]] = ""
        picked.loc[missing, "step"] = -1
    return picked


def _self_segments(trace: Trace, thread: tuple[str, str]) -> pd.DataFrame:
    """Non-overlapping [start, end) segments of one thread labelled with the innermost op's phase.

    Runtime calls count as leaves inside their op. Time on the thread inside no cpu_op is
    labelled OUTSIDE_OPS.
    """
    ops = op_phases(trace)
    rt = runtime_phases(trace)
    pid, tid = thread
    o = ops[(ops["pid"] == pid) & (ops["tid"] == tid) & (ops["cat"] == "cpu_op")]
    r = rt[(rt["pid"] == pid) & (rt["tid"] == tid)]
    ev = pd.concat([
        pd.DataFrame({"ts": o["ts"].to_numpy(), "end": o["end"].to_numpy(), "phase": o["phase"].to_numpy()}),
        pd.DataFrame({"ts": r["ts"].to_numpy(), "end": r["end"].to_numpy(), "phase": r["phase"].to_numpy()}),
    ], ignore_index=True)
    if ev.empty:
        return pd.DataFrame(columns=["start", "end", "phase"])
    ev["neg_end"] = -ev["end"]
    ev = ev.sort_values(["ts", "neg_end"], kind="stable")
    seg_s: list[float] = []
    seg_e: list[float] = []
    seg_p: list[str] = []
    stack: list[tuple[float, str]] = []  # (end, phase) of open ranges
    cursor = float(ev["ts"].iloc[0])

    def emit(upto: float) -> None:
        nonlocal cursor
        if upto > cursor:
            seg_s.append(cursor)
            seg_e.append(upto)
            seg_p.append(stack[-1][1] if stack else OUTSIDE_OPS)
            cursor = upto

    for ts, end, phase in zip(ev["ts"].to_numpy(), ev["end"].to_numpy(), ev["phase"].to_numpy(), strict=True):
        while stack and stack[-1][0] <= ts:
            emit(stack[-1][0])
            stack.pop()
        emit(ts)
        stack.append((max(end, ts), phase))
    while stack:
        emit(stack[-1][0])
        stack.pop()
    return pd.DataFrame({"start": seg_s, "end": seg_e, "phase": seg_p})


def step_table(trace: Trace) -> pd.DataFrame:
    """Per profiler step: host and GPU spans that partition their timelines (issue 15 semantics).

    Updated deliberately for issue 15: the old oracle spanned each step to the last GPU event it
    launched, so steps overlapped. Written as a plain loop over steps in time order.
    """
    ops = trace.ops
    steps = ops[(ops["cat"] == "user_annotation") & ops["name"].str.match(r"^ProfilerStep#\d+$")]
    steps = steps.sort_values("ts", kind="stable")
    cols = ["step", "span_us", "gpu_span_us", "gpu_time_us", "gpu_busy_us", "gpu_idle_us", "launches", "syncs",
            "sync_us"]
    if steps.empty:
        return pd.DataFrame(columns=cols)
    gpu = gpu_phases(trace)
    rt = runtime_phases(trace)
    bs, be = busy_intervals(gpu)
    items = list(steps.itertuples())
    nums = [int(s.name.split("#", 1)[1]) for s in items]
    firsts = []
    for n in nums:
        g = gpu[gpu["step"] == n]
        firsts.append(float(g["ts"].min()) if len(g) else None)
    rows = []
    for i, s in enumerate(items):
        n = nums[i]
        g = gpu[gpu["step"] == n]
        r = rt[rt["step"] == n]
        host_hi = float(items[i + 1].ts) if i + 1 < len(items) else float(s.end)
        span_g = busy = 0.0
        if len(g):
            nxt = next((f for f in firsts[i + 1:] if f is not None), None)
            hi = nxt if nxt is not None else float(g["end"].max())
            span_g = max(hi - firsts[i], 0.0)
            busy = covered_in(bs, be, firsts[i], hi)
        sync = r[r["is_sync"]]
        rows.append({"step": n, "span_us": host_hi - float(s.ts), "gpu_span_us": span_g,
                     "gpu_time_us": float(g["dur"].sum()), "gpu_busy_us": busy,
                     "gpu_idle_us": max(span_g - busy, 0.0), "launches": int(r["is_launch"].sum()),
                     "syncs": int(len(sync)), "sync_us": float(sync["dur"].sum())})
    return pd.DataFrame(rows, columns=cols)


def classify_rules(contexts: pd.DataFrame) -> pd.Series:
    """phase_rules.classify as first written: each rule as pandas masks over the unique contexts."""
    import re

    from qtrace.analyzers.phase_rules import _CONTEXT_FIELDS, RULES

    if contexts.empty:
        return pd.Series([], dtype=object, index=contexts.index)
    ctx = contexts.reindex(columns=list(_CONTEXT_FIELDS), fill_value="").fillna("").astype(str)
    unique = ctx.drop_duplicates().reset_index(drop=True)
    phase = pd.Series("other", index=unique.index, dtype=object)
    open_rows = pd.Series(True, index=unique.index)
    for rule in RULES:
        if not open_rows.any():
            break
        hit = open_rows.copy()
        for field_name, pattern in rule.fields().items():
            rx = re.compile(pattern)
            hit &= unique[field_name].map(lambda text, rx=rx: rx.search(text) is not None).astype(bool)
        phase[hit] = rule.phase
        open_rows &= ~hit
    unique["phase"] = phase
    merged = ctx.merge(unique, on=list(_CONTEXT_FIELDS), how="left")
    return pd.Series(merged["phase"].to_numpy(), index=contexts.index, dtype=object)


def memory_events(trace: Trace) -> pd.DataFrame:
    """memory.memory_events as it was before its columns were taken in sort order one by one:
    filter the whole table, label it, sort the whole frame."""
    from qtrace.analyzers.distinct import python_strings
    from qtrace.analyzers.memory import _op_labels, device_label

    cache = _cache(trace)
    if "memory_events" in cache:
        return cache["memory_events"]
    m = trace.memory
    if len(m) == 0 or "bytes" not in m:
        df = pd.DataFrame(columns=["event", "device", "device_type", "device_id", "ts", "addr", "bytes",
                                   "total_allocated", "total_reserved", "op", "op_name", "phase", "kind"])
        cache["memory_events"] = df
        return df
    df = m[m["bytes"].notna()]
    df["event"] = df.index
    df["device_type"] = df["device_type"].fillna(-1).astype("int64")
    df["device_id"] = df["device_id"].fillna(-1).astype("int64")
    df["bytes"] = df["bytes"].astype("int64")
    labels = {k: device_label(*k) for k in df[["device_type", "device_id"]].drop_duplicates()
              .itertuples(index=False, name=None)}
    device = np.empty(len(df), dtype=object)
    device[:] = [labels[k] for k in zip(df["device_type"].tolist(), df["device_id"].tolist(), strict=True)]
    df["device"] = python_strings(device)
    for c, values in _op_labels(trace, df["op"].to_numpy(dtype=np.int64)).items():
        df[c] = python_strings(values)
    df = df.sort_values(["device_type", "device_id", "ts"], kind="stable").reset_index(drop=True)
    cache["memory_events"] = df
    return df


def device_events(trace: Trace) -> dict[tuple[int, int], pd.DataFrame]:
    """Each device's rows of `memory_events`, by groupby as memory.device_memories took them."""
    return {k: g.reset_index(drop=True)
            for k, g in memory_events(trace).groupby(["device_type", "device_id"], sort=True)}


def occurrence_increments(events: pd.DataFrame, level: np.ndarray) -> pd.Series:
    """memory._occurrence_increments as first written: a per-event frame grouped by run."""
    if len(events) == 0:
        return pd.Series(dtype="int64")
    phase = events["phase"].to_numpy(dtype=object)
    run = np.cumsum(np.r_[True, phase[1:] != phase[:-1]])
    entry = level - events["bytes"].to_numpy(dtype=np.int64)
    runs = pd.DataFrame({"run": run, "phase": phase, "level": level, "entry": entry}).groupby("run").agg(
        phase=("phase", "first"), top=("level", "max"), entry=("entry", "first"))
    runs["inc"] = (runs["top"] - runs["entry"]).clip(lower=0)
    return runs.groupby("phase")["inc"].max()


def name_blocks(f_names: list[str], g_names: list[str]) -> list[tuple[int, int, int]]:
    """lean_alignment.name_blocks as first written: difflib's own matcher (quadratic on repeated kernels)."""
    import difflib

    sm = difflib.SequenceMatcher(None, f_names, g_names, autojunk=False)
    return [tuple(m) for m in sm.get_matching_blocks() if m.size]
