"""Fuzzing the trace loader: whatever the bytes, load_trace either loads a Trace or refuses with a
QtraceError (TraceFormatError) - one clear line - and never fails any other way.

Inputs: slices of a real H100 trace with values, types and keys mutated, their text truncated or
bytes flipped (plain and gzipped); and events built from scratch out of the keys Kineto uses
with arbitrary JSON values. Both decode paths run: streamed in small chunks, and whole-file."""

from __future__ import annotations

import gzip
import json
import os
import tempfile
from functools import cache
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qtrace.errors import QtraceError
from qtrace.tracefile.kineto import Trace, load_trace

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "traces" / "h100_qwen05-shape_int8_bs1_seq128.json.gz"
# QTRACE_FUZZ_EXAMPLES=5000 pytest tests/test_fuzz_loader.py for a deeper run than CI's.
EXAMPLES = int(os.environ.get("QTRACE_FUZZ_EXAMPLES", "120"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@cache
def real_slice() -> tuple[dict, list[dict]]:
    """Top-level metadata and a few hundred events of every kind (ops, runtime, kernels, memory, flows, M)."""
    doc = json.loads(gzip.decompress(SOURCE.read_bytes()))
    events = doc.pop("traceEvents")
    picked: list[dict] = []
    seen: dict[tuple, int] = {}
    for ev in events:
        key = (ev.get("ph"), ev.get("cat"))
        if seen.get(key, 0) < 40:
            seen[key] = seen.get(key, 0) + 1
            picked.append(ev)
    return doc, picked


def check(data: bytes, name: str = "t.json") -> None:
    """The property, on both decode paths."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / name
        path.write_bytes(data)
        for kwargs in ({"chunk_bytes": 512}, {"stream": False}):
            try:
                trace = load_trace(path, **kwargs)
            except QtraceError as exc:
                msg = str(exc)
                assert msg and "\n" not in msg and str(path) in msg, msg
            else:
                assert isinstance(trace, Trace)
                assert len(trace.ops) + len(trace.gpu) > 0
                assert (trace.ops["parent"] < len(trace.ops)).all()


JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                         st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                                  st.dictionaries(st.text(max_size=8), inner,
                                                                                  max_size=4)), max_leaves=8)
EVENT_KEYS = ["ph", "cat", "name", "pid", "tid", "ts", "dur", "args", "id", "s", "bp"]
ARG_KEYS = ["External id", "correlation", "device", "stream", "bytes", "Bytes", "Addr", "Total Allocated",
            "Total Reserved", "Device Id", "Device Type", "Input Dims", "Input type", "Ev Idx"]


@st.composite
def mutation(draw, n_events: int):
    """(event index, what to do, key, value) applied to the real slice."""
    return (draw(st.integers(0, n_events - 1)),
            draw(st.sampled_from(["set", "set_arg", "delete", "delete_arg", "replace_event", "swap_type"])),
            draw(st.sampled_from(EVENT_KEYS)), draw(st.sampled_from(ARG_KEYS)), draw(JSON_VALUES))


def _apply(events: list, m: tuple) -> None:
    i, op, key, arg, value = m
    ev = events[i]
    if op == "replace_event":
        events[i] = value
    elif not isinstance(ev, dict):
        return
    elif op == "set":
        ev[key] = value
    elif op == "delete":
        ev.pop(key, None)
    elif op == "set_arg":
        if isinstance(ev.get("args"), dict):
            ev["args"][arg] = value
        else:
            ev["args"] = {arg: value}
    elif op == "delete_arg" and isinstance(ev.get("args"), dict):
        ev["args"].pop(arg, None)
    elif op == "swap_type" and key in ev:
        v = ev[key]
        ev[key] = str(v) if not isinstance(v, str) else (len(v) if len(v) % 2 else [v])


@FUZZ
@given(data=st.data(), n=st.integers(1, 6), layout=st.sampled_from(["kineto", "compact"]), gz=st.booleans())
def test_mutated_real_trace_loads_or_refuses(data, n, layout, gz) -> None:
    top, events = real_slice()
    events = json.loads(json.dumps(events))  # a fresh copy to mutate
    for m in data.draw(st.lists(mutation(len(events)), min_size=n, max_size=n)):
        _apply(events, m)
    doc = {**top, "traceEvents": events}
    if layout == "kineto":
        body = ",".join("\n  {\n    " + json.dumps(e)[1:-1] + "\n  }" if isinstance(e, dict) else "\n  " + json.dumps(e)
                        for e in events)
        text = '{\n  "schemaVersion": 1,\n  "traceEvents": [' + body + '\n  ],\n  "traceName": "x"\n}'
    else:
        text = json.dumps(doc, separators=(",", ":"))
    raw = text.encode()
    check(gzip.compress(raw) if gz else raw, "t.json.gz" if gz else "t.json")


@FUZZ
@given(cut=st.floats(0, 1), flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=3),
       gz=st.booleans(), gz_cut=st.booleans())
def test_truncated_or_corrupted_bytes_load_or_refuse(cut, flips, gz, gz_cut) -> None:
    top, events = real_slice()
    raw = bytearray(json.dumps({**top, "traceEvents": events}, indent=2).encode())
    if not gz_cut:
        del raw[int(len(raw) * cut):]
    for where, byte in flips:
        if raw:
            raw[min(int(len(raw) * where), len(raw) - 1)] = byte
    data = bytes(raw)
    if gz:
        data = gzip.compress(data)
        if gz_cut:
            data = data[: int(len(data) * cut)]
    check(data, "t.json.gz" if gz else "t.json")


EVENTS = st.lists(
    st.dictionaries(st.sampled_from(EVENT_KEYS), st.one_of(
        JSON_VALUES, st.sampled_from(["X", "i", "M", "cpu_op", "kernel", "cuda_runtime", "[memory]",
                                      "user_annotation", "gpu_memcpy"]),
        st.dictionaries(st.sampled_from(ARG_KEYS), JSON_VALUES, max_size=5)), max_size=8),
    max_size=12)


@FUZZ
@given(events=EVENTS, extra=st.dictionaries(st.sampled_from(["deviceProperties", "qtrace", "distributedInfo",
                                                             "traceName", "schemaVersion"]), JSON_VALUES))
def test_random_events_load_or_refuse(events, extra) -> None:
    check(json.dumps({**extra, "traceEvents": events}).encode())


@FUZZ
@given(value=JSON_VALUES)
def test_any_json_document_loads_or_refuses(value) -> None:
    check(json.dumps(value).encode())


@settings(max_examples=EXAMPLES // 2, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_refused(blob) -> None:
    check(blob)
    check(b"\x1f\x8b" + blob, "t.json.gz")
