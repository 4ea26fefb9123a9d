"""Hand-built Kineto traces with GPU events on two devices of one process (a layer split).

Each step of `pipeline_trace`, relative to its start (µs): the host launches stage 0's GEMM
(runs on GPU 0 at 10-40), the hand-off copy GPU 0 -> GPU 1 (a peer copy, Kineto's
"Memcpy PtoP (Device -> Device)" with fromDevice/inDevice/toDevice and no "device" argument,
on GPU 0 at 40-45), then stage 1's GEMM (GPU 1 at 45-85). Steps are 100 µs apart and the
window ends at the last step's end (99 µs after its start). So per step GPU 0 is busy 35 µs,
GPU 1 40 µs, no two devices at once, and for n steps:
span = 100 (n - 1) + 99, any busy = 75 n, GPU 0 waits 40 n, GPU 1 waits 35 n, all idle = span - 75 n.

`overlap_us` > 0 starts stage 1's GEMM that much earlier (both devices work at once).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

BASE_TS = 7_000_000_000.5
STEP_US = 100.0
GEMM0_US, COPY_US, GEMM1_US = 30.0, 5.0, 40.0
COPY_BYTES = 1 << 20


def pipeline_trace(n_steps: int = 2, overlap_us: float = 0.0, peer_args: bool = True) -> dict[str, Any]:
    host = {"pid": 99, "tid": 99}
    ev: list[dict[str, Any]] = [
        {"ph": "M", "name": "process_name", "pid": 99, "tid": 0, "args": {"name": "python3"}},
        {"ph": "M", "name": "process_labels", "pid": 0, "tid": 0, "args": {"labels": "GPU 0"}},
        {"ph": "M", "name": "process_labels", "pid": 1, "tid": 0, "args": {"labels": "GPU 1"}},
    ]
    corr = 1
    for s in range(n_steps):
        t = BASE_TS + s * STEP_US
        ev.append({"ph": "X", "cat": "user_annotation", "name": f"ProfilerStep#{s}", **host, "ts": t,
                   "dur": STEP_US - 1.0, "args": {}})
        # stage 0: a linear on GPU 0
        ev.append({"ph": "X", "cat": "cpu_op", "name": "aten::linear", **host, "ts": t + 1, "dur": 8.0, "args": {}})
        ev.append({"ph": "X", "cat": "cpu_op", "name": "aten::mm", **host, "ts": t + 2, "dur": 6.0, "args": {}})
        ev.append({"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", **host, "ts": t + 3, "dur": 3.0,
                   "args": {"correlation": corr}})
        ev.append({"ph": "X", "cat": "kernel", "name": "sm90_xmma_gemm_f16f16_f32", "pid": 0, "tid": 7,
                   "ts": t + 10, "dur": GEMM0_US, "args": {"device": 0, "stream": 7, "correlation": corr}})
        # the hand-off: hidden states to GPU 1 (accelerate's hook: aten::to -> copy_ -> cudaMemcpyAsync)
        ev.append({"ph": "X", "cat": "cpu_op", "name": "aten::to", **host, "ts": t + 12, "dur": 8.0, "args": {}})
        ev.append({"ph": "X", "cat": "cpu_op", "name": "aten::copy_", **host, "ts": t + 13, "dur": 6.0, "args": {}})
        ev.append({"ph": "X", "cat": "cuda_runtime", "name": "cudaMemcpyAsync", **host, "ts": t + 14, "dur": 4.0,
                   "args": {"correlation": corr + 1}})
        args: dict[str, Any] = {"stream": 7, "correlation": corr + 1, "bytes": COPY_BYTES}
        args.update({"fromDevice": 0, "inDevice": 0, "toDevice": 1} if peer_args else {"device": 0})
        ev.append({"ph": "X", "cat": "gpu_memcpy", "name": "Memcpy PtoP (Device -> Device)", "pid": 0, "tid": 7,
                   "ts": t + 10 + GEMM0_US, "dur": COPY_US, "args": args})
        # stage 1: a linear on GPU 1
        ev.append({"ph": "X", "cat": "cpu_op", "name": "aten::linear", **host, "ts": t + 22, "dur": 8.0, "args": {}})
        ev.append({"ph": "X", "cat": "cpu_op", "name": "aten::mm", **host, "ts": t + 23, "dur": 6.0, "args": {}})
        ev.append({"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", **host, "ts": t + 24, "dur": 3.0,
                   "args": {"correlation": corr + 2}})
        ev.append({"ph": "X", "cat": "kernel", "name": "sm90_xmma_gemm_f16f16_f32", "pid": 1, "tid": 21,
                   "ts": t + 45 - overlap_us, "dur": GEMM1_US,
                   "args": {"device": 1, "stream": 21, "correlation": corr + 2}})
        corr += 3
    return {"schemaVersion": 1, "deviceProperties": [{"id": 0, "name": "Test GPU"}, {"id": 1, "name": "Test GPU"}],
            "traceEvents": ev}


def write(path: Path, doc: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps(doc).encode()
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path
