"""Across the ranks of a distributed run: which rank is slowest, and where its extra time goes.

Each rank's time is its median host step span (ProfilerStep start to the next), or its window
when it has no steps. The slowest rank is held against the median rank (the rank at the middle
of the sorted times, the lower one for an even count): per phase, the delta of GPU time, and of
host CPU time when the ranks have no GPU. These are the figures HTA's temporal and kernel
breakdowns give per rank, folded into one answer.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from qtrace.analyzers.trace_analysis import TraceReport


def rank_time_us(report: TraceReport) -> tuple[float, str]:
    """(time, what it is) of one rank: median step span, else the window."""
    if len(report.steps):
        return float(report.steps["span_us"].median()), "median step span"
    return float(report.host["span_us"]), "window"


def rank_summary(reports: list[TraceReport], ranks: list[int | None]) -> dict[str, Any] | None:
    """The cross-rank block, or None for fewer than two ranks."""
    if len(reports) < 2:
        return None
    rows = []
    for i, (r, rank) in enumerate(zip(reports, ranks, strict=True)):
        t, what = rank_time_us(r)
        rows.append({"rank": rank if rank is not None else i, "source": r.source, "time_us": t, "measure": what,
                     "gpu_time_us": r.gpu_time_us, "gpu_busy_us": float(r.host["gpu_busy_us"]),
                     "gpu_idle_us": float(r.host["gpu_idle_us"])})
    table = pd.DataFrame(rows).sort_values("time_us", kind="stable").reset_index(drop=True)
    median_row = table.iloc[(len(table) - 1) // 2]
    slow_row = table.iloc[-1]
    slow = reports[[i for i, row in enumerate(rows) if row["rank"] == slow_row["rank"]][0]]
    mid = reports[[i for i, row in enumerate(rows) if row["rank"] == median_row["rank"]][0]]
    col = "gpu_time_us" if slow.trace.has_gpu or mid.trace.has_gpu else "cpu_time_us"
    a = mid.phases.set_index("phase")[col]
    b = slow.phases.set_index("phase")[col]
    delta = b.sub(a, fill_value=0.0).sort_values(key=lambda s: -s.abs())
    deltas = [{"phase": str(p), "delta_us": float(d), "slowest_us": float(b.get(p, 0.0)),
               "median_us": float(a.get(p, 0.0))} for p, d in delta.items() if d != 0.0]
    extra = float(slow_row["time_us"] - median_row["time_us"])
    what = "GPU" if col == "gpu_time_us" else "host CPU"
    top = ", ".join(f"{d['phase']} {d['delta_us'] / 1000:+.2f} ms" for d in deltas[:3]) or "no phase differs"
    summary = (f"Ranks: {len(table)}; slowest rank {int(slow_row['rank'])} ({slow_row['time_us'] / 1000:.2f} ms "
               f"{slow_row['measure']}) vs median rank {int(median_row['rank'])} "
               f"({median_row['time_us'] / 1000:.2f} ms): "
               f"{extra / 1000:+.2f} ms; {what} time by phase, slowest minus median: {top}; GPU idle "
               f"{(slow_row['gpu_idle_us'] - median_row['gpu_idle_us']) / 1000:+.2f} ms")
    return {"ranks": table.to_dict(orient="records"), "slowest_rank": int(slow_row["rank"]),
            "median_rank": int(median_row["rank"]), "extra_us": extra, "delta_of": col, "phase_deltas": deltas,
            "summary": summary}
