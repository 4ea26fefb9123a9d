"""The optimized loader (streaming, chunked, vectorized nesting) gives exactly the tables of the
straightforward one it replaced (tests/reference_loader.py, the loader as first written), on the
committed real traces, on random synthetic traces, through every decode path (streamed with
any chunk size, or whole-file), and so the same report."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import msgspec
import pandas as pd
import pytest
import reference_loader
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qtrace import trace as qt
from qtrace.report import analyze_trace
from qtrace.reports import trace_report

TRACES = sorted((Path(__file__).resolve().parent.parent / "traces").glob("*.json.gz"))
TABLES = ("ops", "runtime", "gpu", "memory")


def assert_same(ref: qt.Trace, new: qt.Trace) -> None:
    for name in TABLES:
        pd.testing.assert_frame_equal(getattr(ref, name), getattr(new, name), check_exact=True, obj=name)
        assert getattr(new, name).attrs == getattr(ref, name).attrs
    assert new.metadata == ref.metadata
    assert new.base_ts_us == ref.base_ts_us
    assert new.source == ref.source


@pytest.fixture(scope="module", params=TRACES, ids=lambda p: p.name.split("_bs")[0])
def real(request):
    return request.param, reference_loader.load_trace(request.param)


@pytest.mark.parametrize("kwargs", [{}, {"stream": False}, {"chunk_bytes": 50_000}], ids=["stream", "whole", "small"])
def test_real_traces_same_tables(real, kwargs):
    path, ref = real
    assert_same(ref, qt.load_trace(path, **kwargs))


def test_real_traces_stream_without_fallback(real, monkeypatch):
    """The committed traces take the streaming path (a fallback would hide a streaming bug)."""
    path, _ = real

    def no_fallback(p):
        raise AssertionError("fell back to the whole-file decode")

    monkeypatch.setattr(qt, "read_bytes", no_fallback)
    qt.load_trace(path, chunk_bytes=100_000)


def test_real_traces_same_report(real):
    path, ref = real

    def report(trace):
        r = analyze_trace(trace)
        return msgspec.json.encode(trace_report.to_json_obj([r], str(path), None))

    assert report(qt.load_trace(path)) == report(ref)


# ---------------------------------------------------------------- synthetic traces


def _random_events(rnd: random.Random, n: int) -> list[dict]:
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


def _write(path: Path, events: list[dict], style: str) -> None:
    doc = {"schemaVersion": 1, "deviceProperties": [{"name": "GPU"}], "traceEvents": events,
           "traceName": "x]y"}
    if style == "kineto":  # one event per block, separated by "\n  },\n  {", as Kineto writes
        events_text = ",".join("\n  {\n    " + json.dumps(e)[1:-1] + "\n  }" for e in events)
        text = ('{\n  "schemaVersion": 1,\n  "deviceProperties": [{"name": "GPU"}],\n  "traceEvents": ['
                + events_text + '\n  ],\n  "traceName": "x]y"\n}')
    elif style == "compact":
        text = json.dumps(doc, separators=(",", ":"))
    else:
        text = json.dumps(doc, indent=1)
    data = text.encode()
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 120), style=st.sampled_from(["kineto", "compact", "pretty"]),
       gz=st.booleans(), chunk=st.sampled_from([1, 64, 400, qt.CHUNK_BYTES]))
def test_random_traces_same_tables(tmp_path, seed, n, style, gz, chunk):
    path = tmp_path / ("t.json.gz" if gz else "t.json")
    _write(path, _random_events(random.Random(seed), n), style)
    try:
        ref = reference_loader.load_trace(path)
    except qt.TraceFormatError:  # the reference refuses it: so must the new loader
        with pytest.raises(qt.TraceFormatError):
            qt.load_trace(path, chunk_bytes=chunk)
        return
    assert_same(ref, qt.load_trace(path, chunk_bytes=chunk))
    assert_same(ref, qt.load_trace(path, stream=False))
