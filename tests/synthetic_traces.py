"""Synthetic Kineto-like traces for the equivalence and fuzz tests: random events that stress the
loader's and analyzers' edge cases (ranges that nest, tie, overrun or end within the nesting
tolerance; pid/tid as ints or strings, some joining to the same text; missing args, shapes and
durations; kernels with no launch), written in Kineto's, compact or pretty JSON layout."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path


def random_events(rnd: random.Random, n: int) -> list[dict]:
    """Ranges that nest, overlap, tie and overrun on a few threads; runtime calls, kernels, memory."""
    events: list[dict] = []
    threads = [(1, 1), (1, 2), ("1", "1"), (2, "x/y"), ("2/x", "y")]
    corr = 0
    for _ in range(n):
        pid, tid = rnd.choice(threads)
        # On a 5 µs grid give or take less than the 1 ns nesting tolerance, so ranges end where others start.
        jitter = rnd.choice([0.0, 0.0, 0.0005, -0.0005, 0.001, 0.002, -0.002])
        ts = rnd.choice([round(rnd.uniform(0, 200), 3), rnd.randint(0, 40) * 5.0 + jitter])
        dur = rnd.choice([0.0, -0.0, 0.0005, rnd.randint(0, 8) * 5.0 + jitter, rnd.randint(1, 8) * 5.0,
                          rnd.uniform(0, 60), None])
        r = rnd.random()
        if r < 0.45:
            ev = {"ph": "X", "cat": rnd.choice(["cpu_op", "cpu_op", "user_annotation", "python_function"]),
                  "name": rnd.choice(["aten::mm", "aten::linear", "bitsandbytes::int8_linear", "ProfilerStep#3", "a"]),
                  "pid": pid, "tid": tid, "ts": ts, "dur": dur,
                  "args": {"External id": rnd.randint(1, 9), "Input Dims": rnd.choice([[[1, 2]], [], None, [[3]]]),
                           "Input type": rnd.choice([["c10::Half"], ["float", ""]])}}
            if rnd.random() < 0.2:
                del ev["args"]
            elif rnd.random() < 0.2:
                del ev["args"]["Input Dims"]
        elif r < 0.65:
            corr += 1
            ev = {"ph": "X", "cat": rnd.choice(["cuda_runtime", "cuda_driver"]), "name": "cudaLaunchKernel",
                  "pid": pid, "tid": tid, "ts": ts, "dur": dur, "args": {"correlation": corr, "External id": 3}}
        elif r < 0.8:
            ev = {"ph": "X", "cat": rnd.choice(["kernel", "gpu_memcpy", "gpu_memset"]), "name": "k<1>", "pid": 0,
                  "tid": 7, "ts": ts, "dur": dur,
                  "args": {"correlation": rnd.randint(0, corr + 2), "device": 0, "stream": 7, "bytes": 4}}
            if rnd.random() < 0.1:
                ev["args"]["correlation"] = None
        elif r < 0.93:
            ev = {"ph": "i", "cat": "cpu_instant_event", "name": "[memory]", "pid": pid, "tid": tid, "ts": ts,
                  "args": {"Bytes": rnd.randint(-9, 9), "Addr": 12, "Total Allocated": 5, "Device Type": 1,
                           "Device Id": 0}}
        else:
            ev = rnd.choice([{"ph": "M", "name": "process_name", "pid": pid, "args": {"name": "x"}},
                             {"ph": "s", "id": 3, "pid": pid, "tid": tid, "ts": ts, "cat": "ac2g", "name": "ac2g"},
                             {"ph": "X", "cat": "cpu_op", "name": "no ts", "pid": pid, "tid": tid}])
        if ev.get("dur", 1) is None:
            del ev["dur"]
        events.append(ev)
    return events


def write_trace(path: Path, events: list[dict], style: str) -> None:
    doc = {"schemaVersion": 1, "deviceProperties": [{"name": "GPU"}], "traceEvents": events,
           "traceName": "x]y"}
    if style == "kineto":  # one event per block, separated by "\n  },\n  {", as Kineto writes
        events_text = ",".join("\n  {\n    " + json.dumps(e)[1:-1] + "\n  }" for e in events)
        text = ('{\n  "schemaVersion": 1,\n  "deviceProperties": [{"name": "GPU"}],\n  "traceEvents": ['
                + events_text + '\n  ],\n  "traceName": "x]y"\n}')
    elif style == "compact":
        text = json.dumps(doc, separators=(",", ":"))
    elif style == "metadata-after":  # events first, then metadata full of '}]' (the end of the array is ambiguous)
        tail = {"deviceProperties": [{"name": "GPU", "dims": [[1], [2]], "x": [{"y": [3]}]} for _ in range(30)],
                "traceName": "x]y", "distributedInfo": {"rank": 0, "groups": [{"ranks": [0]}]}}
        text = json.dumps({"traceEvents": events, **tail}, indent=2)
    else:
        text = json.dumps(doc, indent=1)
    data = text.encode()
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
