"""memory_events, each device's events and the per-phase peak increments, built column by column
in sort order (qtrace/analyzers/memory.py), give exactly what the whole-frame versions gave
(tests/reference_analyzers.py): on the committed real traces and on random allocator events."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd
import pytest
import reference_analyzers as ref
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qtrace.analyzers import memory
from qtrace.tracefile.kineto import TraceFormatError, load_trace

TRACES = sorted((Path(__file__).resolve().parent.parent / "traces").glob("*.json.gz"))


def assert_same_memory(trace) -> None:
    pd.testing.assert_frame_equal(ref.memory_events(trace), memory.memory_events(trace), check_exact=True,
                                  obj="memory_events")
    by_device = ref.device_events(trace)
    dms = memory.device_memories(trace)
    assert [memory.device_label(*k) for k in by_device] == list(dms)
    for k, events in by_device.items():
        dm = dms[memory.device_label(*k)]
        pd.testing.assert_frame_equal(events, dm.events, check_exact=True, obj=f"events {k}")
        pd.testing.assert_series_equal(ref.occurrence_increments(events, dm.level), memory._occurrence_increments(dm),
                                       check_exact=True, check_index_type=False, obj=f"increments {k}")


@pytest.mark.parametrize("path", TRACES, ids=lambda p: p.name.split("_bs")[0])
def test_real_traces(path):
    assert_same_memory(load_trace(path))


def _events(rng: random.Random, n: int) -> list[dict]:
    """Host ops on two threads and allocator events on up to three devices, some inside ops, some
    with equal timestamps, some missing fields (no Bytes, no device), out of time order."""
    events: list[dict] = []
    for i in range(rng.randint(0, 6)):
        ts = rng.randint(0, 40)
        events.append({"ph": "X", "cat": "cpu_op", "name": rng.choice(["aten::mm", "aten::add", "aten::empty"]),
                       "pid": 1, "tid": rng.choice([1, 2]), "ts": ts, "dur": rng.randint(0, 10),
                       "args": {"External id": i + 1}})
    addrs = [0x1000 * k for k in range(1, 6)]
    for _ in range(n):
        args = {"Total Allocated": rng.randint(0, 10**6), "Total Reserved": rng.randint(0, 10**6),
                "Addr": rng.choice(addrs)}
        if rng.random() < 0.9:
            args["Bytes"] = rng.choice([-1, 1]) * rng.choice([64, 128, 4096])
        if rng.random() < 0.9:
            args["Device Type"], args["Device Id"] = rng.choice([(1, 0), (1, 1), (0, -1)])
        events.append({"ph": "i", "cat": "cpu_instant_event", "s": "t", "name": "[memory]", "pid": 1,
                       "tid": rng.choice([1, 2]), "ts": rng.choice([rng.randint(0, 50), 5]), "args": args})
    rng.shuffle(events)
    return events


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 60))
def test_random_memory_events(tmp_path, seed, n):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"traceEvents": _events(random.Random(seed), n)}))
    try:
        trace = load_trace(path)
    except TraceFormatError:  # no events at all
        return
    assert_same_memory(trace)
