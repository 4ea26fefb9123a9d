"""memory_events, each device's events and the per-phase peak increments, built column by column
in sort order (qtrace/analyzers/memory.py), give exactly what the whole-frame versions gave
(tests/reference_analyzers.py): on the committed real traces and on random allocator events."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import reference_analyzers as ref
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qtrace.analyzers import memory
from qtrace.analyzers.distinct import python_strings
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


@given(st.integers(0, 2**32 - 1), st.integers(1, 400))
@settings(max_examples=60, deadline=None)
def test_phase_sums_equal_the_group_bys(seed: int, n: int) -> None:
    """memory._phase_sums (integer codes) against the group-bys memory_phase_table used, ties included:
    byte counts from a few multiples of 512, so that kinds often tie within a phase."""
    rng = np.random.default_rng(seed)
    phase = np.empty(n, dtype=object)
    phase[:] = rng.choice(["b", "a", "int8.quantize", "z", "other"], n).tolist()
    kind = np.empty(n, dtype=object)
    kind[:] = rng.choice(["k1", "k0", "GEMM output", "copies"], n).tolist()
    a = pd.DataFrame({"phase": python_strings(phase), "kind": python_strings(kind),
                      "bytes": rng.integers(0, 10, n) * 512})
    for col in ("transient", "at_peak", "at_end"):
        a[col] = np.where(rng.random(n) < 0.5, a["bytes"], 0)
    got, by_kind = memory._phase_sums(a)
    want = a.groupby("phase").agg(allocs=("bytes", "size"), alloc_bytes=("bytes", "sum"),
                                  transient_bytes=("transient", "sum"), live_at_peak_bytes=("at_peak", "sum"),
                                  live_at_end_bytes=("at_end", "sum"))
    pd.testing.assert_frame_equal(got, want, check_index_type=False)
    want_kind = a.groupby(["phase", "kind"])["bytes"].sum()
    pd.testing.assert_series_equal(by_kind, want_kind, check_index_type=False)

    def top_kind(s: pd.Series) -> dict:
        top = s.sort_values(ascending=False).reset_index().drop_duplicates("phase")
        return top.set_index("phase")["kind"].to_dict()

    assert top_kind(by_kind) == top_kind(want_kind)


@given(st.integers(0, 2**32 - 1), st.integers(0, 80), st.booleans())
@settings(max_examples=100, deadline=None)
def test_device_time_order_equals_the_stable_sort(seed: int, n: int, far_ids: bool) -> None:
    """memory._device_time_order against the pandas sort it replaces: ties, NaN times, ids far apart."""
    rng = np.random.default_rng(seed)
    device_type = rng.choice([-1, 0, 1], n).astype(np.int64)
    device_id = rng.choice([-1, 0, 3, 7], n).astype(np.int64) * (100_000 if far_ids else 1)
    ts = rng.integers(0, 10, n).astype(float)
    if n:
        ts[rng.integers(0, n, 2)] = np.nan
    want = pd.DataFrame({"device_type": device_type, "device_id": device_id, "ts": ts}) \
        .sort_values(["device_type", "device_id", "ts"], kind="stable").index.to_numpy()
    assert memory._device_time_order(device_type, device_id, ts).tolist() == want.tolist()
