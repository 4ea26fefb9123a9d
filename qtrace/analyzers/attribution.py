"""Which phase each GPU event, host op and runtime call belongs to.

The question: "for this event, which quantization phase was running?". The rules live in
`qtrace.analyzers.phase_rules`; this module reads each event's context (op ancestry, module annotations,
kernel name) from the trace and applies them. Results are cached on the Trace, since every
other analyzer starts from them.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from qtrace.analyzers.distinct import mask_distinct, string_codes
from qtrace.analyzers.phase_rules import MODULE_ANNOTATION_PREFIX, classify, group_of
from qtrace.backends import BACKENDS, OP_PREFIXES, backend_for
from qtrace.tracefile.kineto import Trace
from qtrace.tracefile.strings import coded_str_column, str_column

_OPS_CHAIN_DEPTH = 6  # innermost host ops kept in the `ops` context: enough for aten::mm < matmul < linear
_STEP_RE = re.compile(r"^ProfilerStep#(\d+)$")

SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cuStreamSynchronize",
              "cuCtxSynchronize", "cuEventSynchronize", "cudaMemcpy", "cudaMemcpy2D", "cuMemcpyDtoH_v2",
              "cuMemcpyHtoD_v2", "cudaMemcpyPeer", "cuMemcpyPeer",
              # HIP (ROCm traces): the same calls under their hip names
              "hipStreamSynchronize", "hipDeviceSynchronize", "hipEventSynchronize", "hipMemcpy", "hipMemcpy2D",
              "hipMemcpyWithStream", "hipMemcpyDtoH", "hipMemcpyHtoD")
ASYNC_COPY_CALLS = ("cudaMemcpyAsync", "cudaMemcpy2DAsync", "cuMemcpyDtoHAsync_v2", "cuMemcpyHtoDAsync_v2",
                    "hipMemcpyAsync", "hipMemcpy2DAsync", "hipMemcpyDtoHAsync", "hipMemcpyHtoDAsync")


def window(trace: Trace) -> tuple[float, float]:
    """[start, end] of the profiled work: first to last host op or GPU event.

    Runtime calls are left out on purpose: the profiler's own cudaDeviceSynchronize when it
    stops lies after the last op and is not the model's.
    """
    starts, ends = [], []
    for df in (trace.ops, trace.gpu):
        if len(df):
            starts.append(df["ts"].min())
            ends.append(df["end"].max())
    if not starts:
        return 0.0, 0.0
    return float(min(starts)), float(max(ends))


def quant_backend(trace: Trace) -> str:
    """The quantization backend this trace shows, or "" (the ``quant_backend`` context of the rules).

    Its ops in the trace are the evidence; a trace without host ops (GPU-only) can only say so in
    the qtrace metadata written by ``qtrace profile`` (its precision is one of the backend's).
    """
    cache = _cache(trace)
    if "quant_backend" not in cache:
        found = ""
        names = trace.ops["name"]
        if len(names):
            distinct = pd.Series(names.unique(), dtype=object)
            for backend in BACKENDS:
                if distinct.str.startswith(backend.op_prefixes).any():
                    found = backend.name
                    break
        else:
            backend = backend_for(str(trace.qtrace_meta.get("precision") or ""))
            found = backend.name if backend is not None else ""
        cache["quant_backend"] = found
    return cache["quant_backend"]


def _cache(trace: Trace) -> dict:
    cache = trace.__dict__.setdefault("_qtrace_cache", {})
    return cache


def _context_table(trace: Trace) -> tuple[pd.DataFrame, np.ndarray]:
    """(distinct contexts, context row of each op). Row 0 is the empty context (no enclosing op).

    Built level by level (depth 0 first): all ops of a level look up their parent's context at
    once, and only each distinct (parent context, name, category) is worked out in Python.
    """
    cache = _cache(trace)
    if "op_context_table" in cache:
        return cache["op_context_table"]
    ops = trace.ops
    n = len(ops)
    # context tuple: (quant_op, below_quant_op, module, weight, ops_chain_tuple, step, step_name)
    empty = ("", "", "", "", (), -1, "")
    contexts: list[tuple] = [empty]
    ctx_of = np.zeros(n, dtype=np.int64)
    if n:
        name_code, name_uniq = pd.factorize(ops["name"], use_na_sentinel=False)
        cat_code, cat_uniq = pd.factorize(ops["cat"], use_na_sentinel=False)
        names, cats = list(np.asarray(name_uniq, dtype=object)), list(np.asarray(cat_uniq, dtype=object))
        n_cat = max(len(cats), 1)
        n_pair = len(names) * n_cat
        pair = name_code.astype(np.int64) * n_cat + cat_code
        parent = ops["parent"].to_numpy()
        order = np.argsort(ops["depth"].to_numpy(), kind="stable")
        depth_sorted = ops["depth"].to_numpy()[order]
        cuts = np.flatnonzero(np.r_[True, depth_sorted[1:] != depth_sorted[:-1]]).tolist() + [n]
        ctx_index: dict[int, int] = {}
        for lo, hi in zip(cuts[:-1], cuts[1:], strict=True):
            rows = order[lo:hi]
            p = parent[rows]
            base = np.where(p >= 0, ctx_of[np.clip(p, 0, None)], 0)
            keys, inverse = np.unique(base * n_pair + pair[rows], return_inverse=True)
            ids = np.empty(len(keys), dtype=np.int64)
            for j, key in enumerate(keys.tolist()):
                cid = ctx_index.get(key)
                if cid is None:
                    base_id, pr = divmod(key, n_pair)
                    name, cat = names[pr // n_cat], cats[pr % n_cat]
                    cid = len(contexts)
                    contexts.append(_child_context(contexts[base_id], name, cat))
                    ctx_index[key] = cid
                ids[j] = cid
            ctx_of[rows] = ids[inverse.ravel()]
    table = pd.DataFrame(contexts, columns=["quant_op", "below_quant_op", "module", "weight", "chain", "step",
                                            "step_name"])
    table["ops"] = ["/".join(c) for c in table["chain"]]
    table = table.drop(columns="chain")
    cache["op_context_table"] = (table, ctx_of)
    return table, ctx_of


def _child_context(parent_ctx: tuple, name: str, cat: str) -> tuple:
    """The context inside a range `name` of category `cat` whose parent's context is `parent_ctx`."""
    quant_op, below, module, weight, chain, step, step_name = parent_ctx
    if cat == "cpu_op":
        if name.startswith(OP_PREFIXES):
            quant_op, below = name, ""
        elif quant_op:
            below = f"{below}/{name}" if below else name
        chain = ((name,) + chain)[:_OPS_CHAIN_DEPTH]
    elif cat == "user_annotation":
        if name.startswith(MODULE_ANNOTATION_PREFIX):
            # <Class>:<qualified.name>[:<weight tensor class>]; older traces have no third field.
            parts = name[len(MODULE_ANNOTATION_PREFIX):].split(":", 2)
            module, weight = parts[0], (parts[2] if len(parts) > 2 else "")
        else:
            m = _STEP_RE.match(name)
            if m:
                step = int(m.group(1))
            elif name.startswith("qtrace.step:"):
                step_name = name[len("qtrace.step:"):]
    return (quant_op, below, module, weight, chain, step, step_name)


def op_contexts(trace: Trace) -> pd.DataFrame:
    """Per host range: quant_op, below_quant_op, module, weight, ops (classification context), step, step_name.

    One pass over the ranges, parents before children, building each context from its parent's.
    Contexts are interned, so a trace with a million ops keeps a few thousand distinct ones.
    """
    cache = _cache(trace)
    if "op_contexts" in cache:
        return cache["op_contexts"]
    table, ctx_of = _context_table(trace)
    out = table.iloc[ctx_of].reset_index(drop=True)
    out.index = trace.ops.index
    cache["op_contexts"] = out
    return out


def _context_rows(trace: Trace, op_rows: np.ndarray) -> np.ndarray:
    """Row of `_context_table` for each op row (-1, no enclosing op: the empty context, row 0)."""
    _, ctx_of = _context_table(trace)
    if not len(ctx_of):
        return np.zeros(len(op_rows), dtype=np.int64)
    return np.where(op_rows >= 0, ctx_of[np.clip(op_rows, 0, None)], 0)


def _steps_for(trace: Trace, op_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(step, step_name) arrays for each row of `op_rows`, as `_contexts_for` gives them."""
    if not len(trace.ops):
        ctx = _contexts_for(trace, op_rows)
        return ctx["step"].to_numpy(), ctx["step_name"].to_numpy()
    table, _ = _context_table(trace)
    rows = _context_rows(trace, op_rows)
    return table["step"].to_numpy()[rows], table["step_name"].to_numpy(dtype=object)[rows]


def _classify_distinct(trace: Trace, op_rows: np.ndarray, kind: pd.Series,
                       kernel: pd.Series) -> tuple[np.ndarray, list[str]]:
    """`classify` of each event's context + kind + kernel (str columns), worked out once per
    distinct combination: (code of each event's phase, the phases)."""
    if not len(op_rows):
        return np.zeros(0, dtype=np.int64), []
    ctx_rows = _context_rows(trace, op_rows)
    kind_code, kinds = string_codes(kind)
    kernel_code, kernels = string_codes(kernel)
    combo = (ctx_rows * max(len(kinds), 1) + kind_code) * max(len(kernels), 1) + kernel_code
    _, first, inverse = np.unique(combo, return_index=True, return_inverse=True)
    ctx = _contexts_for(trace, op_rows[first])
    ctx["kind"] = kinds[kind_code[first]]
    ctx["kernel"] = kernels[kernel_code[first]]
    ctx["quant_backend"] = quant_backend(trace)
    code, names = pd.factorize(classify(ctx).to_numpy())
    return code[inverse.ravel()], list(names)


def _code_of(names: list[str], name: str) -> int:
    """Index of `name` in `names`, appended when missing."""
    if name not in names:
        names.append(name)
    return names.index(name)


def _launched_phase(codes: np.ndarray, names: list[str], by: np.ndarray, gpu: pd.DataFrame) -> None:
    """Give each row that launched GPU work (row `by` of some GPU event) the phase of the first
    event it launched, in place: `codes` index `names` (extended with the GPU phases it lacks)."""
    rows = np.flatnonzero(by >= 0)
    if not len(rows):
        return
    launcher, first = np.unique(by[rows], return_index=True)  # each launcher's first event, in GPU order
    gpu_code, gpu_names = string_codes(gpu["phase"])
    remap = np.array([_code_of(names, n) for n in gpu_names.tolist()], dtype=np.int64)
    codes[launcher] = remap[gpu_code[rows[first]]]


def _label_columns(df: pd.DataFrame, codes: np.ndarray, names: list[str]) -> None:
    """`phase` and `group` columns of `df` from phase codes into `names`."""
    df["phase"] = coded_str_column(codes, names)
    group_code, groups = pd.factorize(np.array([group_of(n) for n in names], dtype=object))
    df["group"] = coded_str_column(group_code[codes], list(groups))


def _step_name_column(table: pd.DataFrame, ctx_rows: np.ndarray) -> object:
    code, names = pd.factorize(table["step_name"].to_numpy(dtype=object))
    return coded_str_column(code[ctx_rows], list(names))


def gpu_phases(trace: Trace) -> pd.DataFrame:
    """The GPU events (kernels, memcpy, memset) with `phase`, `group`, `step`, `step_name`."""
    cache = _cache(trace)
    if "gpu_phases" in cache:
        return cache["gpu_phases"]
    gpu = trace.gpu.copy(deep=False)  # new columns only (copy-on-write)
    op_rows = gpu["op"].to_numpy()
    # Labels are worked out per distinct value and built from codes (coded_str_column): same str
    # dtype, no Python string per event, and their codes known to the analyzers that factorize them.
    codes, names = _classify_distinct(trace, op_rows, gpu["cat"], gpu["name"])
    _label_columns(gpu, codes, names)
    if len(trace.ops):
        table, _ = _context_table(trace)
        ctx_rows = _context_rows(trace, op_rows)
        gpu["step"] = table["step"].to_numpy()[ctx_rows]
        gpu["step_name"] = _step_name_column(table, ctx_rows)
    else:
        step, step_name = _steps_for(trace, op_rows)
        gpu["step"], gpu["step_name"] = step, str_column(step_name)
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
    ops = trace.ops.copy(deep=False)  # new columns only (copy-on-write)
    # classify() is row by row: classify each distinct context once, then spread it over the ops.
    table, ctx_of = _context_table(trace)
    distinct = table.copy()
    distinct["kind"] = "cpu_op"
    distinct["kernel"] = ""
    distinct["quant_backend"] = quant_backend(trace)
    ctx_code, ctx_names = pd.factorize(classify(distinct).to_numpy())
    codes, names = ctx_code[ctx_of].astype(np.int64), list(ctx_names)
    gpu = gpu_phases(trace)
    _launched_phase(codes, names, gpu["op"].to_numpy(), gpu)
    # Annotations carry no work of their own beyond Python between ops: keep them out of phases.
    if len(ops):
        cat_code, cats = string_codes(ops["cat"])
        codes[(cats != "cpu_op")[cat_code]] = _code_of(names, "other")
    _label_columns(ops, codes, names)
    child_time = ops.loc[ops["parent"] >= 0, ["parent", "dur"]].groupby("parent")["dur"].sum()
    ops["self_us"] = (ops["dur"] - child_time.reindex(ops.index, fill_value=0.0)).clip(lower=0.0)
    ops["step"] = table["step"].to_numpy()[ctx_of]
    ops["step_name"] = _step_name_column(table, ctx_of)
    cache["op_phases"] = ops
    return ops


def runtime_phases(trace: Trace) -> pd.DataFrame:
    """Runtime calls with `phase`, `is_launch` (it started GPU work) and `is_sync` (it blocked)."""
    cache = _cache(trace)
    if "runtime_phases" in cache:
        return cache["runtime_phases"]
    rt = trace.runtime.copy(deep=False)  # new columns only (copy-on-write)
    ops = op_phases(trace)
    # A call takes its op's phase ("other" outside any op), as codes into the ops' phases.
    op_code, op_names = string_codes(ops["phase"])
    names = list(op_names.tolist())
    rt_op = rt["op"].to_numpy()
    other = _code_of(names, "other")
    codes = np.full(len(rt), other, dtype=np.int64)
    has = rt_op >= 0
    if len(op_code):
        codes[has] = op_code[rt_op[has]]
    gpu = gpu_phases(trace)
    by = gpu["runtime"].to_numpy()
    _launched_phase(codes, names, by, gpu)
    _label_columns(rt, codes, names)
    launched = np.unique(by[by >= 0])
    rt["is_launch"] = rt.index.isin(launched)
    # A cudaMemcpyAsync blocks the host when host memory is pageable (the runtime stages it).
    pageable = by[(by >= 0) & mask_distinct(gpu["name"], lambda n: "Pageable" in str(n))]
    lo, hi = window(trace)
    inside = (rt["ts"] >= lo) & (rt["ts"] <= hi)
    rt["is_sync"] = inside & (rt["name"].isin(SYNC_CALLS) | (rt["name"].isin(ASYNC_COPY_CALLS)
                                                            & rt.index.isin(pageable)))
    step, step_name = _steps_for(trace, rt_op)
    rt["step"] = step
    if len(trace.ops):
        table, _ = _context_table(trace)
        rt["step_name"] = _step_name_column(table, _context_rows(trace, rt_op))
    else:
        rt["step_name"] = str_column(step_name)
    cache["runtime_phases"] = rt
    return rt


def _contexts_for(trace: Trace, op_rows: np.ndarray) -> pd.DataFrame:
    """Op contexts for each row of `op_rows` (-1 = no enclosing op: an empty context)."""
    cols = ["quant_op", "below_quant_op", "module", "weight", "ops", "step", "step_name"]
    if len(trace.ops) == 0:
        return pd.DataFrame({c: ([-1] if c == "step" else [""]) * len(op_rows) for c in cols})
    # Row 0 of the context table is the empty context: what an event outside any op gets.
    table, _ = _context_table(trace)
    return table.iloc[_context_rows(trace, op_rows)][cols].reset_index(drop=True)


def context_rows(trace: Trace, op_rows: np.ndarray) -> np.ndarray:
    """Row of the distinct-context table of each op in `op_rows` (all >= 0): ops of one row share
    every field of `op_contexts`."""
    _, ctx_of = _context_table(trace)
    return ctx_of[op_rows]


def context_column(trace: Trace, column: str, op_rows: np.ndarray) -> np.ndarray:
    """One column of `op_contexts` at `op_rows` (all >= 0), without building the per-op frame."""
    table, ctx_of = _context_table(trace)
    return table[column].to_numpy(dtype=object if column != "step" else None)[ctx_of[op_rows]]
