"""The sped-up attribution/host internals (level-by-level contexts, classify once per distinct
context, the tight segment sweep) give exactly what the straightforward versions gave
(tests/reference_analyzers.py), on the committed real traces and on random synthetic ones."""

from __future__ import annotations

import random
from pathlib import Path

import pandas as pd
import pytest
import reference_analyzers as ref
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from synthetic_traces import random_events, write_trace

from qtrace.analyzers import attribution, host
from qtrace.tracefile.kineto import TraceFormatError, load_trace

TRACES = sorted((Path(__file__).resolve().parent.parent / "traces").glob("*.json.gz"))
FUNCS = ("op_contexts", "gpu_phases", "op_phases", "runtime_phases")


def assert_same_analysis(trace) -> None:
    for fn in FUNCS:
        pd.testing.assert_frame_equal(getattr(ref, fn)(trace), getattr(attribution, fn)(trace), check_exact=True,
                                      obj=fn)
    threads = {tuple(x) for x in trace.ops[["pid", "tid"]].drop_duplicates().itertuples(index=False)}
    threads |= {tuple(x) for x in trace.runtime[["pid", "tid"]].drop_duplicates().itertuples(index=False)}
    pd.testing.assert_frame_equal(ref.step_table(trace), host.step_table(trace), check_exact=True, obj="steps")
    for thread in sorted(threads) + [("no", "such")]:
        pd.testing.assert_frame_equal(ref._self_segments(trace, thread), host._self_segments(trace, thread),
                                      check_exact=True, obj=f"segments {thread}")


@pytest.mark.parametrize("path", TRACES, ids=lambda p: p.name.split("_bs")[0])
def test_real_traces(path):
    assert_same_analysis(load_trace(path))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 150))
def test_random_traces(tmp_path, seed, n):
    path = tmp_path / "t.json"
    write_trace(path, random_events(random.Random(seed), n), "compact")
    try:
        trace = load_trace(path)
    except TraceFormatError:
        return
    assert_same_analysis(trace)
