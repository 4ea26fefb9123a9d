"""Per GPU of a trace whose GPU events ran on several devices of one process.

A model split over GPUs by accelerate (`device_map="auto"`) runs its layers stage by stage: at
batch 1 one device works while the other waits for the hand-off. Kineto writes each device's
events under its own pid with a ``device`` argument (a peer copy names ``fromDevice`` /
``inDevice`` / ``toDevice``); the loader keeps ``device``, ``src_device`` and ``dst_device``.

Per device, inside the trace's window (first to last host op or GPU event, the same window as
the host summary):

- ``gpu_time_us``: summed durations of its kernels, copies and memsets (per phase in
  ``phases``), so the devices' figures add up to the trace's GPU time;
- ``busy_us``: the union of its events' intervals (all its streams); ``idle_us`` = span - busy;
- ``waiting_us``: the part of its idle time during which another device is busy: this device
  waits for the other stage (or the other stage waits for it); ``all_idle_us`` is the time no
  device works (the host sets the pace there), so ``busy + waiting + all_idle = span``;
- ``copy_us``: its cross-device copies (phase ``device.copy``); copies per (source, target)
  pair are listed in ``copies``.

The trace's own ``gpu_busy_us`` (host summary) is the union over every device: time at least
one GPU works. ``overlap_us`` is the time two or more devices work at once; a layer split run
one micro-batch at a time shows almost none. Pure pandas/numpy, no torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from qtrace.analyzers.attribution import gpu_phases, window
from qtrace.analyzers.host import covered_in, merge_intervals
from qtrace.analyzers.phase_rules import group_of

COPY_PHASE = "device.copy"
DEVICE_COLUMNS = ["device", "kernels", "gpu_time_us", "gpu_share", "busy_us", "busy_share", "idle_us", "waiting_us",
                  "copy_us", "copies"]
UNKNOWN_DEVICE = -1


def event_devices(trace: Any) -> np.ndarray:
    """The device of each GPU event (int64); events without one take the trace's most common device."""
    dev = trace.gpu["device"]
    if not len(dev):
        return np.zeros(0, dtype=np.int64)
    known = dev.dropna()
    fill = int(known.mode().iloc[0]) if len(known) else UNKNOWN_DEVICE
    return dev.fillna(fill).astype("int64").to_numpy()


def devices_of(trace: Any) -> list[int]:
    """Distinct devices that ran GPU events, ascending."""
    return sorted(set(event_devices(trace).tolist()))


def _union_length(starts: np.ndarray, ends: np.ndarray, lo: float, hi: float) -> float:
    s, e = merge_intervals(starts, ends)
    return covered_in(s, e, lo, hi)


def _overlap_us(per_device: list[tuple[np.ndarray, np.ndarray]], lo: float, hi: float) -> float:
    """Time inside [lo, hi] during which two or more devices are busy (each device's busy set merged first)."""
    edges, steps = [], []
    for s, e in per_device:
        s, e = np.clip(s, lo, hi), np.clip(e, lo, hi)
        edges += [s, e]
        steps += [np.ones(len(s)), -np.ones(len(e))]
    if not edges:
        return 0.0
    x = np.concatenate(edges)
    d = np.concatenate(steps)
    order = np.lexsort((d, x))  # at one instant, ends (-1) before starts (+1)
    x, d = x[order], d[order]
    level = np.cumsum(d)
    return float(np.sum(np.diff(x) * (level[:-1] >= 2)))


def device_table(trace: Any) -> pd.DataFrame:
    """One row per device: GPU time, busy, idle, waiting-for-another-device and copy time (µs)."""
    gpu = gpu_phases(trace)
    if not len(gpu):
        return pd.DataFrame(columns=DEVICE_COLUMNS)
    lo, hi = window(trace)
    span = max(hi - lo, 0.0)
    devs = event_devices(trace)
    ts = gpu["ts"].to_numpy(dtype=float)
    end = gpu["end"].to_numpy(dtype=float)
    dur = gpu["dur"].to_numpy(dtype=float)
    is_copy = (gpu["phase"] == COPY_PHASE).to_numpy()
    total = float(dur.sum())
    any_busy = _union_length(ts, end, lo, hi)
    rows = []
    for d in sorted(set(devs.tolist())):
        own = devs == d
        busy = _union_length(ts[own], end[own], lo, hi)
        # Idle here while another device works: the union of all devices minus this one's busy time.
        others_busy_while_idle = max(any_busy - busy, 0.0)
        rows.append({"device": int(d), "kernels": int(own.sum()), "gpu_time_us": float(dur[own].sum()),
                     "gpu_share": float(dur[own].sum()) / total if total > 0 else 0.0, "busy_us": busy,
                     "busy_share": busy / span if span > 0 else 0.0, "idle_us": max(span - busy, 0.0),
                     "waiting_us": others_busy_while_idle, "copy_us": float(dur[own & is_copy].sum()),
                     "copies": int((own & is_copy).sum())})
    return pd.DataFrame(rows, columns=DEVICE_COLUMNS)


def device_phase_table(trace: Any) -> pd.DataFrame:
    """GPU time and event count per (device, phase), phases in vocabulary order within a device."""
    from qtrace.analyzers.phase_rules import PHASE_ORDER

    gpu = gpu_phases(trace)
    cols = ["device", "phase", "group", "gpu_time_us", "kernels", "share_of_device"]
    if not len(gpu):
        return pd.DataFrame(columns=cols)
    df = pd.DataFrame({"device": event_devices(trace), "phase": gpu["phase"].to_numpy(),
                       "dur": gpu["dur"].to_numpy(dtype=float)})
    g = df.groupby(["device", "phase"])["dur"].agg(gpu_time_us="sum", kernels="size").reset_index()
    g["order"] = g["phase"].map({p: i for i, p in enumerate(PHASE_ORDER)}).fillna(len(PHASE_ORDER))
    g = g.sort_values(["device", "order"], kind="stable").drop(columns="order").reset_index(drop=True)
    g["group"] = g["phase"].map(group_of)
    per = g.groupby("device")["gpu_time_us"].transform("sum")
    g["share_of_device"] = np.where(per > 0, g["gpu_time_us"] / per.where(per > 0, 1.0), 0.0)
    g["kernels"] = g["kernels"].astype(int)
    g["device"] = g["device"].astype(int)
    return g[cols]


def copy_table(trace: Any) -> pd.DataFrame:
    """Cross-device copies per (source, target) device pair: count, bytes, time (µs), GB/s."""
    gpu = gpu_phases(trace)
    cols = ["src_device", "dst_device", "copies", "bytes", "gpu_time_us", "gb_per_s"]
    if not len(gpu):
        return pd.DataFrame(columns=cols)
    sel = (gpu["phase"] == COPY_PHASE).to_numpy()
    if not sel.any():
        return pd.DataFrame(columns=cols)
    devs = event_devices(trace)[sel]
    g = gpu[sel]
    src = g["src_device"].fillna(UNKNOWN_DEVICE).astype("int64").to_numpy() if "src_device" in g else devs
    dst = g["dst_device"].fillna(UNKNOWN_DEVICE).astype("int64").to_numpy() if "dst_device" in g else \
        np.full(len(g), UNKNOWN_DEVICE)
    df = pd.DataFrame({"src_device": src, "dst_device": dst, "bytes": g["bytes"].fillna(0).astype("int64").to_numpy(),
                       "dur": g["dur"].to_numpy(dtype=float)})
    out = df.groupby(["src_device", "dst_device"]).agg(copies=("dur", "size"), bytes=("bytes", "sum"),
                                                       gpu_time_us=("dur", "sum")).reset_index()
    out["gb_per_s"] = np.where(out["gpu_time_us"] > 0, out["bytes"] / (out["gpu_time_us"] * 1e3), np.nan)
    for c in ("src_device", "dst_device", "copies", "bytes"):
        out[c] = out[c].astype(int)
    return out[cols]


def device_section(trace: Any) -> dict[str, Any] | None:
    """The report's ``devices`` section for a trace with GPU events on two or more devices, else None."""
    if not len(trace.gpu) or len(devices_of(trace)) < 2:
        return None
    table = device_table(trace)
    lo, hi = window(trace)
    span = max(hi - lo, 0.0)
    gpu = trace.gpu
    devs = event_devices(trace)
    ts = gpu["ts"].to_numpy(dtype=float)
    end = gpu["end"].to_numpy(dtype=float)
    any_busy = _union_length(ts, end, lo, hi)
    per = [merge_intervals(ts[devs == d], end[devs == d]) for d in table["device"]]
    overlap = _overlap_us(per, lo, hi)
    copies = copy_table(trace)
    all_idle = max(span - any_busy, 0.0)
    return {
        "count": int(len(table)),
        "span_us": span,
        "any_busy_us": any_busy,
        "all_idle_us": all_idle,
        "overlap_us": overlap,
        "busy_sum_us": float(table["busy_us"].sum()),
        "devices": table.to_dict(orient="records"),
        "phases": device_phase_table(trace).to_dict(orient="records"),
        "copies": copies.to_dict(orient="records"),
        "summary": summary_line(table, span, any_busy, overlap, all_idle, copies),
    }


def summary_line(table: pd.DataFrame, span: float, any_busy: float, overlap: float, all_idle: float,
                 copies: pd.DataFrame) -> str:
    parts = [f"{int(r.device)}: busy {r.busy_us / 1000:.2f} ms ({r.busy_share:.0%}), waits "
             f"{r.waiting_us / 1000:.2f} ms for another device" for r in table.itertuples()]
    line = (f"{len(table)} devices (GPU {'; GPU '.join(parts)}); at least one busy {any_busy / 1000:.2f} ms of "
            f"{span / 1000:.2f} ms, two or more at once {overlap / 1000:.2f} ms"
            f"{' (the stages run one at a time)' if any_busy > 0 and overlap < 0.05 * any_busy else ''}, "
            f"none {all_idle / 1000:.2f} ms")
    if len(copies):
        n = int(copies["copies"].sum())
        line += (f"; {n} cross-device cop{'y' if n == 1 else 'ies'}, {int(copies['bytes'].sum()) / 1e6:.2f} MB in "
                 f"{float(copies['gpu_time_us'].sum()) / 1000:.3f} ms")
    else:
        line += "; no cross-device copies"
    return line
