"""The optimized loader (streaming, chunked, vectorized nesting) gives exactly the tables of the
straightforward one it replaced (tests/reference_loader.py, the loader as first written), on the
committed real traces, on random synthetic traces, through every decode path (streamed with
any chunk size, or whole-file), and so the same report."""

from __future__ import annotations

import functools
import random
from pathlib import Path

import msgspec
import pandas as pd
import pytest
import reference_loader
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from synthetic_traces import random_events, write_trace

from qtrace.analyzers.trace_analysis import analyze_trace
from qtrace.reports import trace_report
from qtrace.tracefile import kineto as qt

TRACES = sorted((Path(__file__).resolve().parent.parent / "traces").glob("*.json.gz"))
TABLES = ("ops", "runtime", "gpu", "memory")


def assert_same(ref: qt.Trace, new: qt.Trace) -> None:
    for name in TABLES:
        a, b = getattr(ref, name), getattr(new, name)
        if len(a) == 0:  # the one intended difference: an empty table keeps its dtypes (pandas made float64)
            assert len(b) == 0 and list(b.columns) == list(a.columns)
            assert all(b[c].dtype == getattr(new_typed(), name)[c].dtype for c in b.columns)
            continue
        pd.testing.assert_frame_equal(a, b, check_exact=True, obj=name)
        assert b.attrs == a.attrs
    assert new.metadata == ref.metadata
    assert new.base_ts_us == ref.base_ts_us
    assert new.source == ref.source


@functools.cache
def new_typed() -> qt.Trace:
    """A trace with every table non-empty: the dtypes empty tables must have too."""
    return qt.load_trace(TRACES[0].parent / "h100_qwen05-shape_int8_bs1_seq128.json.gz")


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


@pytest.mark.parametrize("style", ["kineto", "compact", "pretty", "metadata-after"])
def test_synthetic_layouts_stream_without_fallback(tmp_path, monkeypatch, style):
    path = tmp_path / "t.json"
    write_trace(path, random_events(random.Random(5), 200), style)
    ref = reference_loader.load_trace(path)

    def no_fallback(p):
        raise AssertionError("fell back to the whole-file decode")

    monkeypatch.setattr(qt, "read_bytes", no_fallback)
    assert_same(ref, qt.load_trace(path, chunk_bytes=700))


def test_real_traces_same_report(real):
    path, ref = real

    def report(trace):
        r = analyze_trace(trace)
        return msgspec.json.encode(trace_report.to_json_obj([r], str(path), None))

    assert report(qt.load_trace(path)) == report(ref)


# ---------------------------------------------------------------- synthetic traces


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 120),
       style=st.sampled_from(["kineto", "compact", "pretty", "metadata-after"]), gz=st.booleans(),
       chunk=st.sampled_from([1, 64, 400, qt.CHUNK_BYTES]))
def test_random_traces_same_tables(tmp_path, seed, n, style, gz, chunk):
    path = tmp_path / ("t.json.gz" if gz else "t.json")
    write_trace(path, random_events(random.Random(seed), n), style)
    try:
        ref = reference_loader.load_trace(path)
    except qt.TraceFormatError:  # the reference refuses it: so must the new loader
        with pytest.raises(qt.TraceFormatError):
            qt.load_trace(path, chunk_bytes=chunk)
        return
    assert_same(ref, qt.load_trace(path, chunk_bytes=chunk))
    assert_same(ref, qt.load_trace(path, stream=False))


_ends = st.one_of(st.integers(0, 20).map(float), st.floats(0, 20, allow_nan=False),
                  st.integers(0, 20).map(lambda x: x + 0.0005))


@settings(max_examples=300, deadline=None)
@given(ends=st.lists(_ends, min_size=1, max_size=50), cuts=st.lists(st.integers(0, 50), max_size=3))
def test_vectorized_parents_match_the_stack_sweep(ends, cuts):
    """The segment-tree "previous range ending late enough" gives the stack sweep's parents, threads apart."""
    import numpy as np

    from qtrace.tracefile.nesting import parents, parents_loop

    n = len(ends)
    bounds = sorted({0, n, *(c for c in cuts if c <= n)})
    group_start = np.zeros(n, dtype=np.int64)
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        group_start[lo:hi] = lo
    assert parents(np.array(ends), group_start, qt._EPS).tolist() == parents_loop(ends, bounds, qt._EPS)
