"""Does the CPU a host-bound forward runs on change its latency? A diagnostic, no qtrace code.

At batch 1 an LLM.int8 forward is host-bound (the GPU idles most of the pass), so its latency is
the launching thread's speed. On the shared H100 host the same code measured int8 Qwen at 58 ms
and at 111 ms minutes apart in separate processes. This script loads one model once (with
plain_latency.py's loader and inputs) and moves the launching thread from CPU to CPU with
os.sched_setaffinity, timing a short CUDA-event loop on each, over several sweeps. If some CPUs
are consistently slower, process placement explains the drift and pinning fixes it; if every CPU
drifts together over time, the host itself is changing speed.

    python benchmarks/cpu_placement.py ~/.cache/qtrace/presets/qwen2.5-0.5b --precision int8 --sweeps 3

Prints one JSON line per (sweep, cpu) and a summary line: per-CPU median over sweeps, and the
spread between CPUs and between sweeps.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch
from plain_latency import load, time_forward  # same directory: the independent loader and inputs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir")
    ap.add_argument("--task", choices=["classify", "forward"], default="classify")
    ap.add_argument("--precision", default="int8")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--iters", type=int, default=10, help="timed forwards per CPU per sweep")
    ap.add_argument("--sweeps", type=int, default=3)
    ap.add_argument("--cpus", default=None, help="comma list; default: every CPU this process may use")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("cpu_placement: needs a CUDA GPU", file=sys.stderr)
        return 2
    cpus = [int(c) for c in args.cpus.split(",")] if args.cpus else sorted(os.sched_getaffinity(0))
    model = load(args.model_dir, args.precision, args.task, 6.0)
    time_forward(model, args.batch_size, args.seq_len, 0, 3, 1)  # warm-up on the starting CPU
    per_cpu: dict[int, list[float]] = {c: [] for c in cpus}
    per_sweep: list[float] = []
    t0 = time.monotonic()
    for sweep in range(args.sweeps):
        sweep_medians = []
        for cpu in cpus:
            os.sched_setaffinity(0, {cpu})  # pid 0: this (the launching) thread only
            ms = time_forward(model, args.batch_size, args.seq_len, 0, 2, args.iters)
            med = statistics.median(ms)
            per_cpu[cpu].append(med)
            sweep_medians.append(med)
            print(json.dumps({"sweep": sweep, "cpu": cpu, "t_s": round(time.monotonic() - t0, 1),
                              "median_ms": round(med, 3), "min_ms": round(min(ms), 3)}), flush=True)
        per_sweep.append(statistics.median(sweep_medians))
    cpu_medians = {c: statistics.median(v) for c, v in per_cpu.items()}
    fastest = min(cpu_medians.values())
    print(json.dumps({
        "summary": True, "precision": args.precision, "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "per_cpu_median_ms": {str(c): round(v, 3) for c, v in cpu_medians.items()},
        "slowest_over_fastest_cpu": round(max(cpu_medians.values()) / fastest, 3),
        "per_sweep_median_ms": [round(v, 3) for v in per_sweep],
        "slowest_over_fastest_sweep": round(max(per_sweep) / min(per_sweep), 3),
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
