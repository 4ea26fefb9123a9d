"""The heaviest GPU kernels (and copies), grouped by name, each with its phase."""

from __future__ import annotations

import pandas as pd

from qtrace.analyzers.attribution import gpu_phases
from qtrace.tracefile.kineto import Trace

KERNEL_COLUMNS = ["name", "phase", "kind", "count", "gpu_time_us", "mean_us", "share"]


def kernel_table(trace: Trace, top: int | None = None) -> pd.DataFrame:
    """Kernels by total GPU time, largest first. A name landing in two phases gives two rows."""
    gpu = gpu_phases(trace)
    if gpu.empty:
        return pd.DataFrame(columns=KERNEL_COLUMNS)
    t = (gpu.groupby(["name", "phase", "cat"], observed=True)["dur"]
         .agg(count="size", gpu_time_us="sum").reset_index().rename(columns={"cat": "kind"}))
    t["mean_us"] = t["gpu_time_us"] / t["count"]
    total = t["gpu_time_us"].sum()
    t["share"] = t["gpu_time_us"] / total if total > 0 else 0.0
    t = t.sort_values("gpu_time_us", ascending=False, kind="stable").reset_index(drop=True)
    return (t.head(top) if top else t)[KERNEL_COLUMNS]
