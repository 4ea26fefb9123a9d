"""Memory of `qtrace report` stage by stage, in one process: where a big trace's peak RSS comes from.

Runs the report's own calls one stage at a time, in `analyze_trace`'s order (load, memory section,
phase table, kernels/steps/host summary, devices, roofline, each backend's analysis: what `analyze_trace` calls) and
prints, after each stage, the process's RSS and the peak inside the stage (VmHWM, reset before
each stage through /proc/self/clear_refs), glibc's heap in use and free (``mallinfo2``) and the
bytes it has mapped for large blocks, and Arrow's pool. Then the frames cached on the trace
(`trace._qtrace_cache`) and the four tables, by pandas' shallow count (frames that are views of
another, as each device's events of `memory_events`, are counted again). Linux only; a
measurement, not a test.

Usage::

    python benchmarks/stage_memory.py /tmp/big2000.json
    python benchmarks/stage_memory.py /tmp/big400.json --no-tables
"""

from __future__ import annotations

import argparse
import ctypes
import time
from collections.abc import Callable
from typing import Any

MB = 2**20


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]


def _mallinfo() -> _MallInfo2 | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
        return libc.mallinfo2()
    except (OSError, AttributeError):  # not glibc, or glibc before 2.33
        return None


def _status() -> dict[str, int]:
    """VmRSS and VmHWM in MiB."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, value = line.split(":", 1)
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) // 1024
    return out


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _line(name: str, seconds: float) -> str:
    import pyarrow as pa

    s = _status()
    mi = _mallinfo()
    heap = (f"heap in use {mi.uordblks // MB:5d}  free {mi.fordblks // MB:5d}  mmapped {mi.hblkhd // MB:4d}"
            if mi is not None else "heap -")
    return (f"{name:14s} RSS after {s['VmRSS']:5d} MB  peak {s['VmHWM']:5d} MB  | {heap}  | "
            f"arrow {pa.total_allocated_bytes() // MB:4d}  | {seconds:5.1f} s")


def _stage(name: str, fn: Callable[[], Any]) -> Any:
    _reset_peak()
    t = time.perf_counter()
    out = fn()
    print(_line(name, time.perf_counter() - t), flush=True)
    return out


def _size(value: Any) -> int:
    import numpy as np
    import pandas as pd

    if isinstance(value, pd.DataFrame | pd.Series):
        usage = value.memory_usage(deep=False)
        return int(usage.sum()) if isinstance(usage, pd.Series) else int(usage)
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, tuple | list):
        return sum(_size(x) for x in value)
    if hasattr(value, "__dataclass_fields__"):
        return sum(_size(getattr(value, f)) for f in value.__dataclass_fields__)
    if isinstance(value, dict):
        return sum(_size(x) for x in value.values())
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("trace", help="a Kineto trace (.json or .json.gz)")
    ap.add_argument("--top", type=int, default=15, help="kernels listed, as `qtrace report --top`")
    ap.add_argument("--no-tables", action="store_true", help="skip the sizes of the cached frames and tables")
    ap.add_argument("--default-allocator", action="store_true",
                    help="keep glibc's own mmap and trim thresholds (qtrace report fixes them)")
    args = ap.parse_args()
    if not args.default_allocator:
        from qtrace.cli.allocator import return_big_blocks

        return_big_blocks()  # as `qtrace report` does

    t0 = time.perf_counter()
    from qtrace.analyzers import devices, memory, roofline
    from qtrace.analyzers import trace_analysis as ta
    from qtrace.analyzers.kernels import kernel_table
    from qtrace.analyzers.phases import phase_table
    from qtrace.backends import BACKENDS, resolve
    from qtrace.tracefile.kineto import load_trace

    print(_line("imports", time.perf_counter() - t0), flush=True)
    trace = _stage("load", lambda: load_trace(args.trace))
    # In analyze_trace's order, with its releases of the frames no later section reads.
    _stage("memory", lambda: (memory.memory_section(trace, None), memory.release(trace)))
    _stage("phase table", lambda: phase_table(trace))
    _stage("kernels/steps", lambda: (kernel_table(trace, args.top), ta.step_table(trace), ta.host_summary(trace)))
    _stage("devices", lambda: devices.device_section(trace))
    _stage("roofline", lambda: (roofline.roofline_section(trace), roofline.release(trace)))
    for backend in BACKENDS:
        for name, ref in backend.analyses.items():
            _stage(f"{backend.name} {name}"[:14], lambda ref=ref: resolve(ref)(trace))
    if args.no_tables:
        return
    for key, value in trace.__dict__.get("_qtrace_cache", {}).items():
        print(f"cache {key!s:40s} {type(value).__name__:14s} {_size(value) / MB:7.1f} MB")
    for name in ("ops", "runtime", "gpu", "memory"):
        df = getattr(trace, name)
        print(f"table {name:8s} {len(df):9d} rows {_size(df) / MB:7.1f} MB")


if __name__ == "__main__":
    main()
