"""Write an annotated copy of a trace for Perfetto / chrome://tracing.

The copy keeps every event of the original, byte for byte, except the GPU events, which gain
``args.qtrace_phase`` and ``args.qtrace_group``. It appends:

- a process "qtrace phases" (its own pid, named with "M" metadata events) with two threads:
  "GPU phase" (runs of GPU events of one phase, merged while they touch) and "host phase" (what
  the launching thread was doing, from the same segments that split GPU idle time by phase).
  Each thread has two levels, group slices with the phase slices inside: strictly nested and
  never overlapping (Perfetto drops slices that overlap without nesting);
- allocator counters ("ph": "C") from the ``[memory]`` events: allocated and reserved bytes;
- ``"distributedInfo": {"rank": 0}`` at the top level when missing (HTA requires it).

The original is re-read as raw JSON: each event stays a `msgspec.Raw` slice of the file's
bytes and only GPU events are decoded and re-encoded, so memory stays close to the file size.
qtrace's loader ignores the added slices (their category is not a host-op category) and
counters, so the annotated file re-loads with the same GPU time and phases.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pandas as pd

from qtrace.analyzers.attribution import gpu_phases
from qtrace.analyzers.phase_rules import group_of
from qtrace.errors import TraceFormatError
from qtrace.fileio import atomic_open
from qtrace.tracefile.kineto import GPU_CATS, Trace, read_bytes

ANNOTATED_NAME = "annotated_trace.json.gz"
PHASE_CAT = "qtrace_phase"
PROCESS_NAME = "qtrace phases"
GPU_TID, HOST_TID = 1, 2
HOST_GAP_US = 20.0  # host time outside ops shorter than this does not split a phase slice
_FOREVER = 2**62
_CHUNK = 20_000  # events joined per write: few gzip calls without one giant bytes object


class _Light(msgspec.Struct):
    ph: str = ""
    cat: str = ""
    name: str = ""
    pid: int | str = 0
    ts: float | None = None


GRID_NS = 125  # slice bounds snap to 1/8 µs: exact in binary, so ts * 1000 is exact in any viewer


def _ns(us: np.ndarray | float) -> np.ndarray:
    """Absolute µs -> integer ns on a 125 ns grid.

    Viewers turn JSON µs into integer ns (Perfetto: ts * 1000, truncated), so a bound like
    ...652.657 can come back 1 ns off and a child that ends with its parent then pokes out of
    it and is dropped. Multiples of 1/8 µs are exact doubles and convert exactly; snapping every
    bound with one monotonic rounding keeps shared bounds equal and nesting intact.
    """
    ns = np.asarray(us, dtype=np.float64) * 1000.0
    return (np.rint(ns / GRID_NS) * GRID_NS).astype(np.int64)


def _us(ns: int) -> float:
    return ns / 1000.0


def _runs(start_ns: np.ndarray, end_ns: np.ndarray, labels: np.ndarray,
          gap_ns: int = 0) -> list[tuple[int, int, str, int]]:
    """Merge time-sorted intervals into non-overlapping runs of one label: (start, end, label, count).

    A run grows while the next interval has the same label and starts within `gap_ns` of its
    end; a different label starts a new run, clipped to begin where the previous one ended.
    """
    out: list[tuple[int, int, str, int]] = []
    cur: list[Any] | None = None
    for s, e, lab in zip(start_ns.tolist(), end_ns.tolist(), labels.tolist(), strict=True):
        if cur is not None and lab == cur[2] and s <= cur[1] + gap_ns:
            cur[1] = max(cur[1], e)
            cur[3] += 1
            continue
        if cur is not None:
            out.append((cur[0], cur[1], cur[2], cur[3]))
            s = max(s, cur[1])
        cur = [s, max(e, s), lab, 1]
    if cur is not None:
        out.append((cur[0], cur[1], cur[2], cur[3]))
    return [r for r in out if r[1] > r[0]]


def _nested_slices(runs: list[tuple[int, int, str, int]], pid: int, tid: int, what: str,
                   gap_ns: int) -> list[dict[str, Any]]:
    """Group slices (consecutive phase runs of one group, at most `gap_ns` apart) with the phase slices inside."""
    events: list[dict[str, Any]] = []
    i = 0
    while i < len(runs):
        group = group_of(runs[i][2])
        j = i
        while j + 1 < len(runs) and group_of(runs[j + 1][2]) == group and runs[j + 1][0] - runs[j][1] <= gap_ns:
            j += 1
        g_start, g_end = runs[i][0], runs[j][1]
        # Parent first: at equal timestamps viewers nest the slice listed first outside.
        events.append({"ph": "X", "cat": PHASE_CAT, "name": group, "pid": pid, "tid": tid, "ts": _us(g_start),
                       "dur": _us(g_end - g_start), "args": {"qtrace_group": group, "level": "group"}})
        for s, e, phase, count in runs[i:j + 1]:
            events.append({"ph": "X", "cat": PHASE_CAT, "name": phase, "pid": pid, "tid": tid, "ts": _us(s),
                           "dur": _us(e - s), "args": {"qtrace_phase": phase, "qtrace_group": group, what: count}})
        i = j + 1
    return events


def gpu_phase_slices(trace: Trace, pid: int) -> list[dict[str, Any]]:
    """Runs of consecutive GPU events of one phase, idle gaps inside a run included.

    Gaps are merged because the stream track just below shows the exact kernels; this track
    answers "which phase is the GPU working through", one slice per run instead of per kernel.
    """
    gpu = gpu_phases(trace).sort_values("ts", kind="stable")
    if gpu.empty:
        return []
    base = trace.base_ts_us
    runs = _runs(_ns(gpu["ts"].to_numpy() + base), _ns(gpu["end"].to_numpy() + base),
                 gpu["phase"].to_numpy(dtype=object), gap_ns=_FOREVER)
    return _nested_slices(runs, pid, GPU_TID, "gpu_events", gap_ns=_FOREVER)


def host_phase_slices(trace: Trace, pid: int) -> list[dict[str, Any]]:
    """The launching thread's innermost-op phase over time (the segments that split GPU idle time)."""
    from qtrace.analyzers import host

    thread = host.launch_thread(trace)
    if thread is None:
        return []
    try:
        segs = host._self_segments(trace, thread)  # the same split as exposed_us; private, so guarded
    except AttributeError:
        return []
    if segs.empty:
        return []
    segs = segs.sort_values("start", kind="stable")
    # Short stretches outside any op (Python between two ops) would cut every phase into
    # slivers: leave them as holes, so the ops on either side merge when their phase agrees.
    short_gap = (segs["phase"] == host.OUTSIDE_OPS) & (segs["end"] - segs["start"] < HOST_GAP_US)
    segs = segs[~short_gap.to_numpy()]
    base = trace.base_ts_us
    gap = int(HOST_GAP_US * 1000)
    runs = _runs(_ns(segs["start"].to_numpy() + base), _ns(segs["end"].to_numpy() + base),
                 segs["phase"].to_numpy(dtype=object), gap_ns=gap)
    return _nested_slices(runs, pid, HOST_TID, "segments", gap_ns=gap)


def memory_counters(trace: Trace, pid: int) -> list[dict[str, Any]]:
    """Allocator totals after each [memory] event, one counter track per device."""
    mem = trace.memory
    if mem.empty:
        return []
    mem = mem[mem["total_allocated"].notna()].sort_values("ts", kind="stable")
    out = []
    ts_ns = _ns(mem["ts"].to_numpy() + trace.base_ts_us)
    dtype = mem["device_type"].astype("float64").fillna(-1).to_numpy()
    dev = mem["device_id"].astype("float64").fillna(-1).to_numpy()
    alloc = mem["total_allocated"].astype("float64").to_numpy()
    reserved = mem["total_reserved"].astype("float64").fillna(0).to_numpy()
    for t, dt, d, a, r in zip(ts_ns.tolist(), dtype.tolist(), dev.tolist(), alloc.tolist(), reserved.tolist(),
                              strict=True):
        name = f"CUDA allocator (device {int(d)})" if dt == 1 else "CPU allocator" if dt == 0 else "allocator"
        out.append({"ph": "C", "name": name, "pid": pid, "ts": _us(t),
                    "args": {"allocated_bytes": int(a), "reserved_bytes": int(r)}})
    return out


def _metadata_events(pid: int) -> list[dict[str, Any]]:
    return [
        {"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "args": {"name": PROCESS_NAME}},
        {"ph": "M", "name": "process_sort_index", "pid": pid, "tid": 0, "args": {"sort_index": -1}},
        {"ph": "M", "name": "thread_name", "pid": pid, "tid": GPU_TID, "args": {"name": "GPU phase"}},
        {"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": GPU_TID, "args": {"sort_index": GPU_TID}},
        {"ph": "M", "name": "thread_name", "pid": pid, "tid": HOST_TID, "args": {"name": "host phase (launch thread)"}},
        {"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": HOST_TID, "args": {"sort_index": HOST_TID}},
    ]


def _gpu_labels(trace: Trace, light: list[_Light], gpu_idx: list[int]) -> list[tuple[str, str]]:
    """(phase, group) for each GPU event of the original, in file order.

    The loader keeps GPU events in file order, so rows match by position; if a newer loader
    drops or reorders events, match by (name, timestamp) instead.
    """
    g = gpu_phases(trace)
    phases = g["phase"].to_numpy(dtype=object)
    groups = g["group"].to_numpy(dtype=object)
    if len(g) == len(gpu_idx):
        ts = np.array([light[i].ts for i in gpu_idx], dtype=np.float64) - trace.base_ts_us
        names = [light[i].name for i in gpu_idx]
        if np.allclose(ts, g["ts"].to_numpy(dtype=np.float64), atol=1e-3) and names == g["name"].tolist():
            return list(zip(phases.tolist(), groups.tolist(), strict=True))
    key = dict(zip(zip(g["name"].tolist(), _ns(g["ts"].to_numpy() + trace.base_ts_us).tolist(), strict=True),
                   zip(phases.tolist(), groups.tolist(), strict=True), strict=True))
    fallback = ("other", group_of("other"))
    return [key.get((light[i].name, int(_ns(light[i].ts))), fallback) for i in gpu_idx]


def annotated_events(trace: Trace, raw: bytes) -> tuple[dict[str, msgspec.Raw], list[bytes | msgspec.Raw]]:
    """The original's top-level keys and its events (raw), GPU events re-encoded with their phase, plus ours."""
    try:
        top = msgspec.json.decode(raw, type=dict[str, msgspec.Raw])
        events = msgspec.json.decode(top["traceEvents"], type=list[msgspec.Raw])
        light = msgspec.json.decode(top["traceEvents"], type=list[_Light])
    except (msgspec.DecodeError, KeyError) as exc:
        raise TraceFormatError(f"{trace.source}: cannot re-read the trace to annotate it ({exc})") from None
    gpu_idx = [i for i, ev in enumerate(light) if ev.ph == "X" and ev.ts is not None and ev.cat in GPU_CATS]
    labels = _gpu_labels(trace, light, gpu_idx)
    out: list[bytes | msgspec.Raw] = list(events)
    encode = msgspec.json.encode
    for i, (phase, group) in zip(gpu_idx, labels, strict=True):
        ev = msgspec.json.decode(events[i])
        args = ev.get("args")
        if not isinstance(args, dict):
            args = ev["args"] = {}
        args["qtrace_phase"] = phase
        args["qtrace_group"] = group
        out[i] = encode(ev)
    int_pids = [ev.pid for ev in light if isinstance(ev.pid, int) and not isinstance(ev.pid, bool)]
    pid = max(int_pids, default=0) + 1  # a pid no original event uses
    added = _metadata_events(pid) + gpu_phase_slices(trace, pid) + host_phase_slices(trace, pid)
    added += memory_counters(trace, pid)
    out += [encode(ev) for ev in added]
    return top, out


def write_annotated_trace(trace: Trace, out_path: str | os.PathLike, source: str | os.PathLike | None = None) -> Path:
    """Write the annotated copy of `trace` (re-read from `source`, default its own file) atomically, gzipped."""
    src = Path(source or trace.source)
    raw = read_bytes(src)
    top, events = annotated_events(trace, raw)
    del raw
    out = Path(out_path)
    gz = out.name.endswith(".gz")
    encode = msgspec.json.encode
    with atomic_open(out, "wb", gz=gz) as fh:
        fh.write(b"{")
        first = True
        if "distributedInfo" not in top:
            fh.write(b'"distributedInfo":{"rank":0}')
            first = False
        for key, value in top.items():
            if not first:
                fh.write(b",")
            first = False
            fh.write(encode(key) + b":")
            if key != "traceEvents":
                fh.write(bytes(value))
                continue
            fh.write(b"[")
            for start in range(0, len(events), _CHUNK):
                chunk = b",".join(bytes(e) for e in events[start:start + _CHUNK])
                fh.write((b"," if start else b"") + chunk)
            fh.write(b"]")
        fh.write(b"}")
    return out


def annotated_name(label: str | None = None) -> str:
    """`annotated_trace.json.gz`, or `<label>.annotated_trace.json.gz` when several traces share a folder."""
    if not label:
        return ANNOTATED_NAME
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in label).strip("._") or "run"
    return f"{safe}.{ANNOTATED_NAME}"


def phase_track_frame(events: list[dict[str, Any]]) -> pd.DataFrame:
    """Our slices as a DataFrame (tests and debugging): tid, name, start/end in ns."""
    rows = [(e["tid"], e["name"], round(e["ts"] * 1000), round((e["ts"] + e["dur"]) * 1000))
            for e in events if e.get("ph") == "X" and e.get("cat") == PHASE_CAT]
    return pd.DataFrame(rows, columns=["tid", "name", "start_ns", "end_ns"])


def write_for_reports(reports: list[Any], out_dir: str | os.PathLike, labels: list[str] | None = None) -> list[Path]:
    """One annotated trace per report in `out_dir`; file names carry the run label when there are several."""
    out = Path(out_dir)
    paths = []
    for i, r in enumerate(reports):
        label = None
        if len(reports) > 1:
            label = labels[i] if labels else (r.precision or Path(r.source).parent.name or f"run{i}")
        paths.append(write_annotated_trace(r.trace, out / annotated_name(label)))
    return paths
