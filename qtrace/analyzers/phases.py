"""Per phase: GPU time, kernel count, host CPU time, launches and syncs made inside it.

GPU time is the sum of kernel + GPU memcpy + GPU memset durations, so phase times add up to the
trace's `gpu_time_us` exactly. Host CPU time is the self time of the host ops in the phase, so it
adds up to the total host op time. ``exposed_us`` is the GPU idle time while the launching
thread was in the phase (see `qtrace.analyzers.host`).
"""

from __future__ import annotations

import pandas as pd

from qtrace.analyzers.attribution import gpu_phases, op_phases, runtime_phases
from qtrace.analyzers.host import exposed_host_time
from qtrace.analyzers.phase_rules import PHASE_ORDER, group_of
from qtrace.tracefile.kineto import Trace

PHASE_COLUMNS = ["phase", "group", "gpu_time_us", "gpu_share", "kernels", "cpu_time_us", "launches", "host_syncs",
                 "host_sync_us", "exposed_us"]


def gpu_time_us(trace: Trace) -> float:
    """Sum of kernel + GPU memcpy + GPU memset durations."""
    return float(trace.gpu["dur"].sum())


def coverage(trace: Trace) -> float:
    """Share of GPU time attributed to a phase other than `other` (1.0 for a trace with no GPU time)."""
    gpu = gpu_phases(trace)
    total = float(gpu["dur"].sum())
    if total <= 0:
        return 1.0
    return float(gpu.loc[gpu["phase"] != "other", "dur"].sum()) / total


def phase_table(trace: Trace) -> pd.DataFrame:
    """One row per phase that has GPU time, host time or host calls, in vocabulary order."""
    gpu = gpu_phases(trace)
    ops = op_phases(trace)
    rt = runtime_phases(trace)
    g = gpu.groupby("phase")["dur"].agg(gpu_time_us="sum", kernels="size")
    # Each filter takes only the columns it reads (not the names of a million ops).
    c = ops.loc[ops["cat"] == "cpu_op", ["phase", "self_us"]].groupby("phase")["self_us"].sum().rename("cpu_time_us")
    launches = rt.loc[rt["is_launch"], ["phase"]].groupby("phase").size().rename("launches")
    syncs = rt.loc[rt["is_sync"], ["phase", "dur"]].groupby("phase")["dur"].agg(host_syncs="size", host_sync_us="sum")
    exposed = exposed_host_time(trace).rename("exposed_us")
    table = pd.concat([g, c, launches, syncs, exposed], axis=1).fillna(0.0)
    for col in ("gpu_time_us", "kernels", "cpu_time_us", "launches", "host_syncs", "host_sync_us", "exposed_us"):
        if col not in table:
            table[col] = 0.0
    table = table.reindex([p for p in PHASE_ORDER if p in table.index])
    table = table[(table[["gpu_time_us", "cpu_time_us", "launches", "host_syncs", "exposed_us"]] > 0).any(axis=1)]
    table.index.name = "phase"
    table = table.reset_index()
    table["group"] = table["phase"].map(group_of)
    total = table["gpu_time_us"].sum()
    table["gpu_share"] = table["gpu_time_us"] / total if total > 0 else 0.0
    for col in ("kernels", "launches", "host_syncs"):
        table[col] = table[col].astype(int)
    return table[PHASE_COLUMNS]
