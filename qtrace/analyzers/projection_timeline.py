"""Rebuild a trace's timeline with other kernel durations and another host speed.

The question: "if each kernel took this long instead, and the host ran F times as fast, how long
would each step take, and how long would the GPU idle?". The model (docs/projection.md):

- **Host**: the launching thread's runtime calls in time order. The host time between two calls
  (Python, framework, op dispatch) and each call's own duration are divided by the host factor F.
- **Kernels**: each GPU event belongs to the runtime call that launched it (or, when no call on
  that thread launched it, to the last call that started before it). It starts at
  ``max(launch call start, previous event end on its stream) + d``, where ``d`` is the measured
  offset from that same maximum (the launch latency, or the gap behind the previous kernel), and
  lasts its projected duration.
- **Syncs** (the host syncs of `attribution.runtime_phases`: stream/device/event synchronize,
  blocking and pageable copies) return when the GPU has drained: they end at
  ``max(call start, end of all GPU work launched so far) + tail / F``, where ``tail`` is the
  measured time from that same maximum to the call's end (the wake-up cost).
- Host timestamps that are not runtime calls (op starts and ends, step markers) are moved by
  interpolating between the calls around them.

With the measured durations and F = 1 every quantity is rebuilt from itself: ``max(a, b) + (x -
max(a, b))``, so the rebuilt timeline equals the measured one up to float rounding (and up to GPU
work that started before its launch call, or syncs that returned before the drain, which the
model cannot express). Pure pandas/numpy, no torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from qtrace.analyzers.attribution import gpu_phases, runtime_phases, window
from qtrace.analyzers.host import covered_in, launch_thread, merge_intervals
from qtrace.tracefile.kineto import Trace

STEP_COLUMNS = ["step", "span_us", "gpu_busy_us", "gpu_idle_us"]


@dataclass
class Timeline:
    """A rebuilt (or, with the measured durations and F = 1, a re-derived) timeline."""

    span_us: float
    gpu_busy_us: float
    gpu_idle_us: float
    steps: pd.DataFrame  # STEP_COLUMNS, one row per ProfilerStep#N
    start_us: np.ndarray  # projected start of each row of gpu_phases(trace)
    host_speed: float

    @property
    def step_mean_us(self) -> float | None:
        return float(self.steps["span_us"].mean()) if len(self.steps) else None


def _calls(trace: Trace) -> pd.DataFrame:
    """The launching thread's runtime calls, in time order."""
    rt = runtime_phases(trace)
    thread = launch_thread(trace)
    if thread is None:
        return rt.iloc[0:0]
    pid, tid = thread
    sel = rt[(rt["pid"].astype(str) == pid) & (rt["tid"].astype(str) == tid)]
    return sel.sort_values("ts", kind="stable")


@dataclass
class _Prepared:
    """What the rebuild needs from a trace, worked out once per trace (cached)."""

    lo: float
    s: list[float]
    e: list[float]
    sync: list[bool]
    order: list[int]  # GPU event rows by (call position, measured start)
    pos: list[int]
    stream: list[int]
    ts: list[float]
    end: list[float]
    knots_s: np.ndarray
    knots_e: np.ndarray
    host_lo: float
    host_hi: float
    step_ranges: list[tuple[int, float, float]]
    step_of: np.ndarray


def _prepare(trace: Trace) -> _Prepared:
    cache = trace.__dict__.setdefault("_qtrace_cache", {})
    if "projection_timeline" in cache:
        return cache["projection_timeline"]
    gpu = gpu_phases(trace)
    lo, _ = window(trace)
    calls = _calls(trace)
    s = calls["ts"].to_numpy(dtype=float)
    e = calls["end"].to_numpy(dtype=float)
    nc = len(calls)
    pos_of_rt = np.full(len(runtime_phases(trace)), -1, dtype=np.int64)
    pos_of_rt[calls.index.to_numpy()] = np.arange(nc)
    ts_m = gpu["ts"].to_numpy(dtype=float)
    stream = gpu["stream"].fillna(-1).astype("int64").to_numpy() if len(gpu) else np.zeros(0, dtype=np.int64)
    launched_by = gpu["runtime"].to_numpy()
    pos = np.where(launched_by >= 0, pos_of_rt[np.clip(launched_by, 0, None)] if len(pos_of_rt) else -1, -1)
    by_time = np.clip(np.searchsorted(s, ts_m, side="right") - 1, 0, None) if nc else np.zeros(len(gpu), np.int64)
    pos = np.where(pos >= 0, pos, by_time)
    order = np.lexsort((ts_m, pos)) if len(gpu) else np.zeros(0, dtype=np.int64)
    ops = trace.ops
    ann = (ops["cat"] == "user_annotation").to_numpy(dtype=bool)
    is_step = np.zeros(len(ops), dtype=bool)
    is_step[ann] = ops["name"][ann].str.match(r"^ProfilerStep#\d+$").to_numpy(dtype=bool)
    steps = ops[is_step]
    prep = _Prepared(
        lo=lo, s=s.tolist(), e=e.tolist(), sync=calls["is_sync"].to_numpy(dtype=bool).tolist(),
        order=order.tolist(), pos=pos.tolist(), stream=stream.tolist(), ts=ts_m.tolist(),
        end=gpu["end"].to_numpy(dtype=float).tolist(),
        knots_s=s, knots_e=e,
        host_lo=float(ops["ts"].min()) if len(ops) else lo, host_hi=float(ops["end"].max()) if len(ops) else lo,
        step_ranges=[(int(n.split("#", 1)[1]), float(a), float(b))
                     for n, a, b in zip(steps["name"], steps["ts"], steps["end"], strict=True)],
        step_of=gpu["step"].to_numpy() if len(gpu) else np.zeros(0),
    )
    cache["projection_timeline"] = prep
    return prep


def rebuild(trace: Trace, event_us: np.ndarray, host_speed: float = 1.0) -> Timeline:
    """The timeline of `trace` with GPU event durations `event_us` (rows of gpu_phases) and host factor F."""
    f = float(host_speed)
    pr = _prepare(trace)
    lo, s, e, sync = pr.lo, pr.s, pr.e, pr.sync
    nc = len(s)
    dur_p = np.asarray(event_us, dtype=float)
    start_p = np.array(pr.ts, dtype=float)
    sp_all = np.empty(nc)
    ep_all = np.empty(nc)
    prev_m: dict[int, float] = {}
    prev_p: dict[int, float] = {}
    inf = float("inf")
    drain_m = drain_p = -inf
    last_m, last_p = lo, lo
    order_l, pos_l, stream_l, ts_l, end_l = pr.order, pr.pos, pr.stream, pr.ts, pr.end
    dur_l = dur_p.tolist()
    k, ne = 0, len(order_l)
    for i in range(max(nc, 1)):
        si = s[i] if nc else lo
        sp = last_p + (si - last_m) / f
        while k < ne and (not nc or pos_l[order_l[k]] == i):
            j = order_l[k]
            st = stream_l[j]
            pm = prev_m.get(st, -inf)
            pp = prev_p.get(st, -inf)
            ref_m = si if si > pm else pm
            ref_p = sp if sp > pp else pp
            b = ref_p + (ts_l[j] - ref_m)
            start_p[j] = b
            end_pj = b + dur_l[j]
            prev_m[st] = end_l[j]
            prev_p[st] = end_pj
            if end_l[j] > drain_m:
                drain_m = end_l[j]
            if end_pj > drain_p:
                drain_p = end_pj
            k += 1
        if not nc:
            break
        if sync[i]:
            ref_m = si if si > drain_m else drain_m
            ref_p = sp if sp > drain_p else drain_p
            ep = ref_p + (e[i] - ref_m) / f
            ep = sp if ep < sp else ep
        else:
            ep = sp + (e[i] - si) / f
        sp_all[i] = sp
        ep_all[i] = ep
        last_m, last_p = e[i], ep
    end_p = start_p + dur_p
    knots_m = np.maximum.accumulate(np.concatenate([[lo], np.ravel(np.column_stack([pr.knots_s, pr.knots_e]))]))
    knots_p = np.maximum.accumulate(np.concatenate([[lo], np.ravel(np.column_stack([sp_all, ep_all]))]))

    def host_map(t: np.ndarray) -> np.ndarray:
        t = np.asarray(t, dtype=float)
        inside = np.interp(t, knots_m, knots_p)
        return np.where(t > knots_m[-1], knots_p[-1] + (t - knots_m[-1]) / f,
                        np.where(t < knots_m[0], knots_p[0] + (t - knots_m[0]) / f, inside))

    has_gpu = len(start_p) > 0
    w_lo = min(float(host_map(np.array([pr.host_lo]))[0]), float(start_p.min()) if has_gpu else np.inf)
    w_hi = max(float(host_map(np.array([pr.host_hi]))[0]), float(end_p.max()) if has_gpu else -np.inf)
    bs, be = merge_intervals(start_p, end_p)
    busy = covered_in(bs, be, w_lo, w_hi)
    span = w_hi - w_lo
    return Timeline(span, busy, max(span - busy, 0.0), _steps(pr, start_p, end_p, host_map), start_p, f)


def _steps(pr: _Prepared, start_p: np.ndarray, end_p: np.ndarray, host_map: Callable) -> pd.DataFrame:
    """Per ProfilerStep#N: rebuilt span (its host range to the last of its GPU work), busy and idle time."""
    rows = []
    for n, ts, end in pr.step_ranges:
        sel = pr.step_of == n
        lo = float(host_map(np.array([ts]))[0])
        hi = float(host_map(np.array([end]))[0])
        if sel.any():
            hi = max(hi, float(end_p[sel].max()))
        bs, be = merge_intervals(start_p[sel], end_p[sel])
        busy = covered_in(bs, be, lo, hi)
        rows.append({"step": n, "span_us": hi - lo, "gpu_busy_us": busy, "gpu_idle_us": max(hi - lo - busy, 0.0)})
    return pd.DataFrame(rows, columns=STEP_COLUMNS)


HOST_SPEED_RANGE = (0.05, 50.0)  # the bisection's bounds for calibrate_host_speed


def calibrate_host_speed(trace: Trace, target_us: float, iters: int = 24) -> tuple[float, str]:
    """The host factor F0 at which the rebuilt measured timeline's mean step span equals `target_us`.

    Used to remove the profiler's host-side cost: `target_us` is the un-profiled latency per pass
    from run.json. Returns (F0, status): ``ok``, ``at_lower_bound`` or ``at_upper_bound`` (the
    un-profiled latency is below what the trace's GPU work alone allows, so no host speed-up
    reaches it), or ``no_steps``.
    """
    dur = gpu_phases(trace)["dur"].to_numpy(dtype=float)
    lo_f, hi_f = HOST_SPEED_RANGE

    def span(f: float) -> float:
        return rebuild(trace, dur, f).step_mean_us or float("nan")

    if not np.isfinite(span(1.0)):
        return 1.0, "no_steps"
    if span(hi_f) > target_us:
        return hi_f, "at_upper_bound"
    if span(lo_f) < target_us:
        return lo_f, "at_lower_bound"
    a, b = np.log(lo_f), np.log(hi_f)
    for _ in range(iters):
        mid = 0.5 * (a + b)
        if span(float(np.exp(mid))) > target_us:
            a = mid
        else:
            b = mid
    return float(np.exp(0.5 * (a + b))), "ok"
