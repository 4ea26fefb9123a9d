"""Host side: is the GPU waiting for the CPU, and which phase was the CPU in while it waited?

Window figures: span, GPU busy time (union of all GPU event intervals on all streams), GPU
idle time (span minus busy), launches, host synchronizations, and a verdict. GPU idle time is
also split by the phase of the host op running on the launching thread at that moment
(``exposed_us``): that is the host cost a user actually waits for, and with the GPU busy time it
adds up to the span.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from qtrace.analyzers.attribution import gpu_phases, op_phases, runtime_phases, window
from qtrace.analyzers.distinct import mask_distinct, string_codes
from qtrace.analyzers.segments import sweep_labels
from qtrace.tracefile.kineto import Trace
from qtrace.tracefile.nesting import sweep_order
from qtrace.tracefile.strings import str_column

HOST_BOUND_IDLE_SHARE = 0.5  # the GPU idles more than half the window: the host sets the pace
GPU_BOUND_IDLE_SHARE = 0.1
_SEGMENT_BLOCK = 1 << 18  # segments whose exposed time is computed at once
OUTSIDE_OPS = "other"  # exposed time when the launching thread runs no op (Python, framework)


def merge_intervals(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Union of intervals, as sorted disjoint (starts, ends)."""
    if len(starts) == 0:
        return np.zeros(0), np.zeros(0)
    order = np.argsort(starts, kind="stable")
    s = starts[order]
    e = np.maximum.accumulate(ends[order])
    # A new interval starts wherever it begins after everything before it has ended.
    new = np.ones(len(s), dtype=bool)
    new[1:] = s[1:] > e[:-1]
    idx = np.flatnonzero(new)
    merged_s = s[idx]
    merged_e = np.append(e[idx[1:] - 1], e[-1])
    return merged_s, merged_e


def busy_intervals(gpu: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    return merge_intervals(gpu["ts"].to_numpy(dtype=float), gpu["end"].to_numpy(dtype=float))


def covered_in(starts: np.ndarray, ends: np.ndarray, lo: float, hi: float) -> float:
    """Length of the union intervals (starts, ends) inside [lo, hi]."""
    if len(starts) == 0 or hi <= lo:
        return 0.0
    return float(np.clip(np.minimum(ends, hi) - np.maximum(starts, lo), 0, None).sum())


def launch_thread(trace: Trace) -> tuple[str, str] | None:
    """(pid, tid) of the thread that made most runtime calls: the one feeding the GPU."""
    rt = trace.runtime
    if not len(rt):
        return None
    pid, tid = rt.groupby(["pid", "tid"]).size().idxmax()
    return str(pid), str(tid)


def host_summary(trace: Trace) -> dict:
    """Window figures and the verdict, as plain Python numbers."""
    lo, hi = window(trace)
    span = hi - lo
    gpu = trace.gpu
    bs, be = busy_intervals(gpu)
    busy = covered_in(bs, be, lo, hi)
    rt = runtime_phases(trace)
    syncs = rt.loc[rt["is_sync"], ["name", "dur"]]  # only what is read: not a copy of every column
    idle = max(span - busy, 0.0)
    idle_share = idle / span if span > 0 else 0.0
    comm_us = comm_range_us(trace)
    if not len(gpu):
        verdict = cpu_only_verdict(trace, comm_us)
    elif idle_share > HOST_BOUND_IDLE_SHARE:
        verdict = (f"host-bound: the GPU idles {idle_share:.0%} of the window; "
                   f"{len(syncs)} host syncs block the CPU for {syncs['dur'].sum() / 1000:.2f} ms")
    elif idle_share < GPU_BOUND_IDLE_SHARE:
        verdict = f"GPU-bound: the GPU is busy {1 - idle_share:.0%} of the window"
    else:
        verdict = (f"mixed: the GPU idles {idle_share:.0%} of the window; "
                   f"{len(syncs)} host syncs block the CPU for {syncs['dur'].sum() / 1000:.2f} ms")
    by_call = syncs.groupby("name")["dur"].agg(["count", "sum"])
    return {
        "span_us": span,
        "gpu_busy_us": busy,
        "gpu_idle_us": idle,
        "gpu_idle_share": idle_share,
        "launches": int(rt["is_launch"].sum()),
        "syncs": int(len(syncs)),
        "sync_us": float(syncs["dur"].sum()),
        "syncs_by_call": {str(k): {"count": int(v["count"]), "us": float(v["sum"])} for k, v in by_call.iterrows()},
        "host_op_us": float(_cpu_op_self_us(op_phases(trace)).sum()),
        "comm_range_us": comm_us,
        "verdict": verdict,
    }


def _cpu_op_self_us(ops: pd.DataFrame) -> pd.Series:
    """Self time of the cpu_op rows (host annotations excluded), without copying the other columns."""
    return ops.loc[ops["cat"] == "cpu_op", "self_us"]


# Communication ranges a CPU backend records as annotations on its own threads (gloo:all_reduce...).
_COMM_RANGES = r"^(?:gloo:|nccl:|c10d::|record_param_comms)"


def comm_range_us(trace: Trace) -> float:
    """Time in outermost communication annotations (gloo/nccl ranges), summed over threads."""
    ops = trace.ops
    if not len(ops):
        return 0.0
    top = ops[(ops["parent"] < 0) & (ops["cat"] == "user_annotation")]
    return float(top.loc[top["name"].str.contains(_COMM_RANGES, regex=True), "dur"].sum())


def cpu_only_verdict(trace: Trace, comm_us: float) -> str:
    """What a trace without CUDA/ROCm GPU events holds: device events of another kind, or host work only."""
    other = trace.other_events
    mtia = {k: v for k, v in other.items() if k.startswith("mtia")}
    if mtia:
        held = ", ".join(f"{n} {c}" for c, n in sorted(mtia.items()))
        return (f"MTIA trace: no CUDA/ROCm GPU events; it holds {held} events, which qtrace does not attribute "
                "to phases; phases are measured in host (CPU) time")
    if other.get("cuda_profiler_range"):
        return (f"CUPTI counter (profiler-range) trace: {other['cuda_profiler_range']} cuda_profiler_range events "
                "and no kernel activity records; phases are measured in host (CPU) time")
    line = "cpu-only: the trace holds no GPU activity; phases are measured in host (CPU) time"
    if comm_us > 0:
        line += f"; communication ranges (gloo/nccl annotations) take {comm_us / 1000:.2f} ms over their threads"
    return line


def _on_thread(df: pd.DataFrame, pid: str, tid: str) -> np.ndarray:
    """Rows of `df` on thread (pid, tid), as a bool mask (compared once per distinct pid and tid)."""
    if not len(df):
        return np.zeros(0, dtype=bool)
    return mask_distinct(df["pid"], lambda v: v == pid) & mask_distinct(df["tid"], lambda v: v == tid)


@dataclass(frozen=True)
class _Segments:
    """One thread's segments: [start, end) and the phase of each as a code into `names`.

    The segments tile their span (each ends where the next starts), so only the starts and the
    last end are held: the ends array would be ~45 MB more per 2 GB of trace for the report's life.
    """

    start: np.ndarray
    last_end: float
    codes: np.ndarray
    names: np.ndarray

    def ends(self, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """The ends of segments lo .. hi-1 (a new array)."""
        hi = len(self.start) if hi is None else hi
        out = np.empty(max(hi - lo, 0), dtype=self.start.dtype)
        if len(out):
            out[:-1] = self.start[lo + 1:hi]
            out[-1] = self.start[hi] if hi < len(self.start) else self.last_end
        return out


def _segment_codes(trace: Trace, thread: tuple[str, str]) -> _Segments | None:
    """The segments of `_self_segments` with phases as codes (None: the thread has no op or call).

    Cached per thread in this form: a million segments' phase names held as Arrow text took
    ~25 MB per 400 MB of trace for the whole report; the codes take 4 bytes a segment.
    """
    cache = trace.__dict__.setdefault("_qtrace_cache", {})
    key = ("self_segment_codes", tuple(thread))
    if key in cache:
        return cache[key]
    ops = op_phases(trace)
    rt = runtime_phases(trace)
    pid, tid = thread
    o = _on_thread(ops, pid, tid) & mask_distinct(ops["cat"], lambda v: v == "cpu_op")
    r = _on_thread(rt, pid, tid)
    if not o.any() and not r.any():
        return None
    ts = np.concatenate([ops["ts"].to_numpy()[o], rt["ts"].to_numpy()[r]])
    end = np.concatenate([ops["end"].to_numpy()[o], rt["end"].to_numpy()[r]])
    # Phases as codes into the names of both tables (and OUTSIDE_OPS): equal names, one code.
    (op_code, rt_code), names = _joint_codes([ops["phase"], rt["phase"]], OUTSIDE_OPS)
    # int32 codes and labels from here on: at 2 GB of trace each array of the segments is ~22 MB.
    phase = np.concatenate([op_code[o].astype(np.int32), rt_code[r].astype(np.int32)])
    del op_code, rt_code
    # By start, longest first; ties keep ops before runtime calls, each in table order (lexsort is stable).
    order = sweep_order(ts, end)  # np.lexsort((-end, ts))
    ts, end, phase = ts[order], end[order], phase[order]
    del order
    seg_s, seg_e, labels = sweep_labels(ts, end)
    del ts, end
    last_end = float(seg_e[-1]) if len(seg_e) else 0.0
    del seg_e
    seg_code = np.full(len(labels), names.index(OUTSIDE_OPS), dtype=np.int32)
    has = labels >= 0
    seg_code[has] = phase[labels[has]]
    del labels, has, phase
    codes, uniq = _first_appearance_codes(seg_code, len(names))
    del seg_code
    out = _Segments(seg_s, last_end, codes, np.asarray([names[c] for c in uniq.tolist()], dtype=object))
    cache[key] = out
    return out


def _first_appearance_codes(values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(codes, uniques) of int `values` in [0, k) numbered in order of first appearance, as
    `pd.factorize(values)` gives them, as int32 and without its int64 codes and hash table
    (one comparison pass per possible value: k is the number of phase names, a few dozen)."""
    firsts, present = [], []
    for v in range(k):
        hit = values == v
        if hit.any():
            firsts.append(int(np.argmax(hit)))
            present.append(v)
    uniq = np.asarray(present, dtype=np.int64)[np.argsort(np.asarray(firsts, dtype=np.int64), kind="stable")]
    remap = np.zeros(k, dtype=np.int32)
    remap[uniq] = np.arange(len(uniq), dtype=np.int32)
    return remap[values], uniq


def _joint_codes(columns: list[pd.Series], extra: str) -> tuple[list[np.ndarray], list]:
    """Per column, the code of each row into one list of the distinct values of all of them, with
    `extra` last unless some column holds it (each column factorized on its own: no Python
    string per row of an Arrow column)."""
    names: list = []
    index: dict = {}
    out = []
    for col in columns:
        codes, uniq = string_codes(col)
        remap = np.empty(len(uniq), dtype=np.int64)
        for j, v in enumerate(uniq.tolist()):
            if v not in index:
                index[v] = len(names)
                names.append(v)
            remap[j] = index[v]
        out.append(remap[codes] if len(codes) else np.zeros(0, dtype=np.int64))
    if extra not in index:
        names.append(extra)
    return out, names


def _self_segments(trace: Trace, thread: tuple[str, str]) -> pd.DataFrame:
    """Non-overlapping [start, end) segments of one thread labelled with the innermost op's phase.

    Runtime calls count as leaves inside their op. Time on the thread inside no cpu_op is
    labelled OUTSIDE_OPS. Built from the segments cached per thread (`_segment_codes`: exposed_us
    and the annotated trace both use them).
    """
    segs = _segment_codes(trace, thread)
    if segs is None:
        return pd.DataFrame(columns=["start", "end", "phase"])
    if not len(segs.start):  # the dtypes the sweep's empty lists gave
        return pd.DataFrame({"start": [], "end": [], "phase": []})
    return pd.DataFrame({"start": segs.start, "end": segs.ends(), "phase": str_column(segs.names[segs.codes])})


def exposed_host_time(trace: Trace) -> pd.Series:
    """GPU idle time in the window, split by the phase the launching thread was in (µs).

    Sums to `gpu_idle_us` of host_summary: time before the thread's first op or after its last
    one, and gaps between ops, count as OUTSIDE_OPS.
    """
    lo, hi = window(trace)
    thread = launch_thread(trace)
    if thread is None or hi <= lo or not len(trace.gpu):
        return pd.Series(dtype=float)
    bs, be = busy_intervals(trace.gpu)
    bs, be = np.clip(bs, lo, hi), np.clip(be, lo, hi)
    # idle_before(t): idle time in [lo, t]; piecewise linear with breakpoints at busy edges.
    xs = np.concatenate([[lo], np.ravel(np.column_stack([bs, be])), [hi]])
    busy_cum = np.concatenate([[0.0], np.ravel(np.column_stack([np.zeros_like(bs), be - bs])).cumsum(), [0.0]])
    busy_cum[-1] = busy_cum[-2]
    idle_cum = (xs - lo) - busy_cum
    segs = _segment_codes(trace, thread)
    if segs is None or not len(segs.start):
        return pd.Series({OUTSIDE_OPS: float(idle_cum[-1])})
    # Block by block: the clipped bounds and both interpolations of all segments at once were
    # ~270 MB of temporaries at 2 GB of trace (5.6M segments), the report's peak.
    overlap = np.empty(len(segs.start))
    for a in range(0, len(overlap), _SEGMENT_BLOCK):
        b = min(a + _SEGMENT_BLOCK, len(overlap))
        s = np.clip(segs.start[a:b].astype(float), lo, hi)
        e = np.clip(segs.ends(a, b).astype(float), lo, hi)
        overlap[a:b] = np.interp(e, xs, idle_cum) - np.interp(s, xs, idle_cum)
    del s, e
    # Summed by integer codes of the phases (an index of a million strings costs ~100 MB), in the
    # same order within each phase, then sorted by phase as grouping by the names sorts them.
    codes, names = segs.codes, segs.names
    sums = pd.Series(overlap).groupby(codes).sum()
    exposed = pd.Series(sums.to_numpy(), index=pd.Index(np.asarray(names, dtype=object)[sums.index.to_numpy()],
                                                        dtype=object)).sort_index()
    uncovered = float(idle_cum[-1]) - float(exposed.sum())
    exposed[OUTSIDE_OPS] = exposed.get(OUTSIDE_OPS, 0.0) + max(uncovered, 0.0)
    return exposed.clip(lower=0.0)


STEP_COLUMNS = ["step", "span_us", "gpu_span_us", "gpu_time_us", "gpu_busy_us", "gpu_idle_us", "launches", "syncs",
                "sync_us"]


def step_table(trace: Trace) -> pd.DataFrame:
    """Per profiler step (ProfilerStep#N), on the host and on the GPU; both partition their timeline.

    Host step: from its ProfilerStep start to the next one's start (the last step: to its own end),
    so the host spans add up to the host step window and never overlap. GPU step: the GPU events
    launched in the step (by the launching op's step), from the first of them to the first GPU event
    of the next step that launched any (the last: to its last event's end); busy and idle are the
    GPU's, all streams, inside that span, so GPU spans add up too. Launches and syncs by the
    launching step.
    """
    ops = trace.ops
    # The regex only on annotations (a few), not on every op name.
    ann = (ops["cat"] == "user_annotation").to_numpy(dtype=bool)
    is_step = np.zeros(len(ops), dtype=bool)
    is_step[ann] = ops["name"][ann].str.match(r"^ProfilerStep#\d+$").to_numpy(dtype=bool)
    steps = ops[is_step].sort_values("ts", kind="stable")
    if steps.empty:
        return pd.DataFrame(columns=STEP_COLUMNS)
    gpu = gpu_phases(trace)
    rt = runtime_phases(trace)
    numbers = [int(name.split("#", 1)[1]) for name in steps["name"]]
    starts = steps["ts"].to_numpy(dtype=float)
    host_end = np.append(starts[1:], float(steps["end"].iloc[-1]))
    by_step = {n: g for n, g in gpu[gpu["step"] >= 0].groupby("step")}
    gpu_start = [float(by_step[n]["ts"].min()) if n in by_step else np.nan for n in numbers]
    bs, be = busy_intervals(gpu)
    rows = []
    for i, n in enumerate(numbers):
        g = by_step.get(n)
        r = rt[rt["step"] == n]
        sync = r[r["is_sync"]]
        gpu_span = busy = 0.0
        if g is not None:
            later = [x for x in gpu_start[i + 1:] if not np.isnan(x)]
            lo = gpu_start[i]
            hi = later[0] if later else float(g["end"].max())
            gpu_span = max(hi - lo, 0.0)
            busy = covered_in(bs, be, lo, hi)
        rows.append({"step": n, "span_us": float(host_end[i] - starts[i]), "gpu_span_us": gpu_span,
                     "gpu_time_us": float(g["dur"].sum()) if g is not None else 0.0, "gpu_busy_us": busy,
                     "gpu_idle_us": max(gpu_span - busy, 0.0), "launches": int(r["is_launch"].sum()),
                     "syncs": int(len(sync)), "sync_us": float(sync["dur"].sum())})
    return pd.DataFrame(rows, columns=STEP_COLUMNS)
