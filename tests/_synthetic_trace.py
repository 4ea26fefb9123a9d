"""A small hand-built Kineto trace with ProfilerStep markers, for tests that need steps.

Each step: a GEMM (aten::linear > aten::mm > cudaLaunchKernel -> kernel), an add, and a
blocking cudaStreamSynchronize under aten::item, plus an allocation and its free. Figures are
chosen so every step has the same span and GPU time, whatever the number of steps.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

STEP_US = 60.0
GEMM_US = 10.0
ADD_US = 3.0
BASE_TS = 5_000_000_000.125  # a large absolute timestamp, like real traces


def stepped_trace(n_steps: int, gemm_us: float = GEMM_US, precision: str | None = None) -> dict[str, Any]:
    ev: list[dict[str, Any]] = [
        {"ph": "M", "name": "process_name", "pid": 11, "tid": 0, "args": {"name": "python3"}},
        {"ph": "M", "name": "process_name", "pid": 0, "tid": 0, "args": {"name": "python3"}},
        {"ph": "M", "name": "thread_name", "pid": 0, "tid": 7, "args": {"name": "stream 7"}},
    ]
    corr = 1
    allocated = 1 << 20
    for s in range(n_steps):
        t = BASE_TS + s * STEP_US
        ev.append({"ph": "X", "cat": "user_annotation", "name": f"ProfilerStep#{s}", "pid": 11, "tid": 11,
                   "ts": t, "dur": STEP_US - 1.0, "args": {}})
        ev.append({"ph": "X", "cat": "cpu_op", "name": "aten::linear", "pid": 11, "tid": 11, "ts": t + 1,
                   "dur": 29.0, "args": {"External id": corr}})
        ev.append({"ph": "X", "cat": "cpu_op", "name": "aten::mm", "pid": 11, "tid": 11, "ts": t + 2, "dur": 26.0,
                   "args": {"External id": corr + 1}})
        ev.append({"ph": "i", "cat": "cpu_instant_event", "s": "t", "name": "[memory]", "pid": 11, "tid": 11,
                   "ts": t + 3, "args": {"Total Reserved": 2 << 20, "Total Allocated": allocated + 4096,
                                         "Bytes": 4096, "Device Id": 0, "Device Type": 1, "Addr": 1000 + s}})
        ev.append({"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": 11, "tid": 11,
                   "ts": t + 5, "dur": 5.0, "args": {"correlation": corr, "External id": corr + 1}})
        ev.append({"ph": "X", "cat": "kernel", "name": "gemm_kernel<float>(float*, float*)", "pid": 0, "tid": 7,
                   "ts": t + 12, "dur": gemm_us, "args": {"device": 0, "stream": 7, "correlation": corr,
                                                          "External id": corr + 1}})
        ev.append({"ph": "X", "cat": "cpu_op", "name": "aten::add", "pid": 11, "tid": 11, "ts": t + 35,
                   "dur": 10.0, "args": {"External id": corr + 2}})
        ev.append({"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": 11, "tid": 11,
                   "ts": t + 37, "dur": 3.0, "args": {"correlation": corr + 1, "External id": corr + 2}})
        ev.append({"ph": "X", "cat": "kernel", "name": "elementwise_add_kernel", "pid": 0, "tid": 7,
                   "ts": t + 41, "dur": ADD_US, "args": {"device": 0, "stream": 7, "correlation": corr + 1,
                                                         "External id": corr + 2}})
        ev.append({"ph": "X", "cat": "cpu_op", "name": "aten::item", "pid": 11, "tid": 11, "ts": t + 46,
                   "dur": 10.0, "args": {"External id": corr + 3}})
        ev.append({"ph": "X", "cat": "cuda_runtime", "name": "cudaStreamSynchronize", "pid": 11, "tid": 11,
                   "ts": t + 47, "dur": 8.0, "args": {"correlation": corr + 2}})
        ev.append({"ph": "i", "cat": "cpu_instant_event", "s": "t", "name": "[memory]", "pid": 11, "tid": 11,
                   "ts": t + 57, "args": {"Total Reserved": 2 << 20, "Total Allocated": allocated, "Bytes": -4096,
                                          "Device Id": 0, "Device Type": 1, "Addr": 1000 + s}})
        corr += 4
    top: dict[str, Any] = {"schemaVersion": 1, "deviceProperties": [{"id": 0, "name": "Test GPU"}],
                           "traceEvents": ev}
    if precision:
        top["qtrace"] = {"precision": precision, "profile_steps": n_steps}
    return top


def write_trace(obj: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as fh:
        json.dump(obj, fh)
    return path
