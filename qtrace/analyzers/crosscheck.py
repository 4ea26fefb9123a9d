"""Cross-check: qtrace's GPU busy/idle figures under HTA's conventions.

HTA 0.5.0's temporal breakdown differs from qtrace's figures for two stated reasons, so a
comparison must apply them rather than widen a tolerance:

1. HTA rounds every GPU event to whole microseconds inward (start = ceil(ts), end =
   floor(ts + dur), `round_down_time_stamps` in its trace parser). A 2 µs kernel loses up to
   2 µs, and a sub-microsecond memset gets a negative length that its interval merge keeps.
2. HTA's window is GPU-only: from the first GPU event's start to the last one's end. qtrace's
   window also covers the host ops before the first launch and after the last kernel.

3. Rounded intervals can have negative length (sub-µs events). Merged with their neighbours
   they can make the busy time of *all* events smaller than that of the compute events alone;
   HTA then fails its own ``assert non_compute_time >= 0`` (seen on the shared NF4 trace).
   ``non_compute_us < 0`` here predicts that failure.

`hta_convention` recomputes qtrace's busy time with both conventions; it must equal HTA's
``compute_time + non_compute_time`` and ``kernel_time`` exactly, and the rounding loss it
reports explains the gap to qtrace's unrounded figure.
"""

from __future__ import annotations

import numpy as np

from qtrace.analyzers.host import merge_intervals
from qtrace.tracefile.kineto import Trace


def hta_convention(trace: Trace) -> dict[str, float]:
    """Busy, idle and span (µs) of the GPU events as HTA 0.5.0 computes them, and the gaps."""
    gpu = trace.gpu
    if gpu.empty:
        return {"busy_us": 0.0, "idle_us": 0.0, "span_us": 0.0, "rounding_loss_us": 0.0, "unrounded_busy_us": 0.0}
    # Rounding happens on absolute timestamps, as HTA sees them in the file.
    ts = gpu["ts"].to_numpy(dtype=float) + trace.base_ts_us
    end = gpu["end"].to_numpy(dtype=float) + trace.base_ts_us
    rs, re_ = merge_intervals(np.ceil(ts), np.floor(end))
    busy = float((re_ - rs).sum())
    span = float(re_[-1] - rs[0])
    us, ue = merge_intervals(ts, end)
    unrounded = float((ue - us).sum())
    # HTA splits busy time into compute (every non-memcpy/memset event) and the rest.
    compute = ~gpu["cat"].isin(["gpu_memcpy", "gpu_memset"]).to_numpy()
    cs, ce = merge_intervals(np.ceil(ts[compute]), np.floor(end[compute]))
    compute_busy = float((ce - cs).sum())
    return {"busy_us": busy, "idle_us": span - busy, "span_us": span, "unrounded_busy_us": unrounded,
            "rounding_loss_us": unrounded - busy, "compute_us": compute_busy, "non_compute_us": busy - compute_busy}
