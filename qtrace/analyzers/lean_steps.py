"""Which step (pass) each runtime call and GPU event of a trace belongs to, lean traces included.

A lean trace (CUDA activity only, `qtrace profile`'s `lean_trace.json.gz`) may hold no host
ranges at all, so no ProfilerStep markers. `qtrace profile` ends every step with a
`torch.cuda.synchronize()`, i.e. a `cudaDeviceSynchronize` on the launching thread: those calls
cut the timeline into steps. Pieces with no GPU work (the profiler's own sync when it stops) are
dropped. Where ProfilerStep markers exist (full traces), they are used instead.

Pure pandas; no torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from qtrace.analyzers.host import launch_thread
from qtrace.tracefile.kineto import Trace

STEP_SYNCS = ("cudaDeviceSynchronize", "cuCtxSynchronize")
_STEP_RE = re.compile(r"^ProfilerStep#\d+$")


@dataclass
class Steps:
    """Step ordinal (0..n-1, or -1: outside every step) of each runtime call and GPU event."""

    runtime: np.ndarray  # per row of trace.runtime
    gpu: np.ndarray  # per row of trace.gpu
    n: int
    source: str  # "ProfilerStep markers" | "cudaDeviceSynchronize boundaries" | "whole window"
    launch_thread: tuple[str, str] | None
    notes: list[str] = field(default_factory=list)
    passes_per_step: int = 1  # > 1 when the whole window stands for that many passes (steps not found)


def _gpu_steps(trace: Trace, rt_step: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """A GPU event is in its launching call's step; an uncorrelated one in the step its start falls in."""
    gpu = trace.gpu
    if not len(gpu):
        return np.zeros(0, dtype=np.int64)
    rows = gpu["runtime"].to_numpy()
    out = np.where(rows >= 0, rt_step[np.clip(rows, 0, None)] if len(rt_step) else -1, -1)
    loose = rows < 0
    if loose.any() and len(cuts):
        out[loose] = _step_by_time(gpu["ts"].to_numpy()[loose], cuts)
    return out


def _step_by_time(ts: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """Step of each time, with `cuts` = step k's last instant (ascending): the first cut at or after it."""
    k = np.searchsorted(cuts, ts, side="left")
    return np.where(k < len(cuts), k, -1).astype(np.int64)


def marker_steps(trace: Trace) -> Steps | None:
    """Steps from ProfilerStep#N ranges: a runtime call belongs to the marker its start lies in."""
    ops = trace.ops
    if not len(ops):
        return None
    marks = ops[ops["name"].astype(str).str.match(_STEP_RE)].sort_values("ts", kind="stable")
    if marks.empty:
        return None
    starts, ends = marks["ts"].to_numpy(), marks["end"].to_numpy()
    rt_ts = trace.runtime["ts"].to_numpy() if len(trace.runtime) else np.zeros(0)
    k = np.searchsorted(starts, rt_ts, side="right") - 1
    ok = (k >= 0) & (rt_ts <= ends[np.clip(k, 0, None)])
    rt_step = np.where(ok, k, -1).astype(np.int64)
    return Steps(rt_step, _gpu_steps(trace, rt_step, ends), len(marks), "ProfilerStep markers",
                 launch_thread(trace))


def sync_steps(trace: Trace, expected: int | None = None) -> Steps:
    """Steps cut at the launching thread's cudaDeviceSynchronize calls (each closes its step)."""
    rt = trace.runtime
    thread = launch_thread(trace)
    notes: list[str] = []
    if thread is None:
        return Steps(np.zeros(0, dtype=np.int64), np.full(len(trace.gpu), 0, dtype=np.int64), 1, "whole window",
                     None, ["no runtime calls: the whole window is one step"])
    on_thread = ((rt["pid"].astype(str) == thread[0]) & (rt["tid"].astype(str) == thread[1])).to_numpy()
    ts = rt["ts"].to_numpy()
    is_cut = on_thread & rt["name"].isin(STEP_SYNCS).to_numpy()
    cut_ts = np.sort(ts[is_cut])
    # piece of each call: the number of cuts strictly before it (a cut belongs to the piece it closes)
    piece = np.searchsorted(cut_ts, ts, side="left")
    launches = trace.gpu["runtime"].to_numpy() if len(trace.gpu) else np.zeros(0, dtype=np.int64)
    with_work = np.unique(piece[launches[launches >= 0]]) if len(launches) else np.zeros(0, dtype=np.int64)
    remap = np.full(len(cut_ts) + 1, -1, dtype=np.int64)
    remap[with_work] = np.arange(len(with_work))
    rt_step = remap[piece]
    n = len(with_work)
    source = "cudaDeviceSynchronize boundaries"
    if expected and n != expected:
        notes.append(f"the launching thread's cudaDeviceSynchronize calls cut {n} pieces with GPU work, not the "
                     f"{expected} profiled steps: the whole window is used as one unit")
        rt_step = np.where(rt_step >= 0, 0, -1)
        n, source = 1, "whole window"
        per_step = expected
    else:
        per_step = 1
    # last instant of each step: its last call's end, for GPU events without a launching call
    ends = pd.Series(rt["end"].to_numpy()).groupby(rt_step).max()
    cuts = ends[ends.index >= 0].to_numpy()
    return Steps(rt_step, _gpu_steps(trace, rt_step, cuts), max(n, 1), source, thread, notes, per_step)


def step_bounds(runtime: pd.DataFrame, gpu: pd.DataFrame) -> tuple[float, float] | None:
    """(first start, last end), in µs, over one step's runtime calls and GPU events; None if it has neither."""
    starts = [float(x["ts"].min()) for x in (runtime, gpu) if len(x)]
    if not starts:
        return None
    return min(starts), max(float(x["end"].max()) for x in (runtime, gpu) if len(x))


def trace_steps(trace: Trace, expected: int | None = None) -> Steps:
    """Markers where the trace has them, else the sync boundaries (lean traces)."""
    return marker_steps(trace) or sync_steps(trace, expected)
