"""The C stack sweeps (qtrace/tracefile/_stack_sweeps.c) against the numpy versions and the
reference loops: parents of ranges (qtrace.tracefile.nesting) and the innermost-range segments of
a thread (qtrace.analyzers.segments), on ranges drawn with ties, zero and negative durations,
several threads and NaN times; and end to end, a loaded trace's nesting and segments with the C
sweeps switched off."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qtrace.analyzers import host, segments
from qtrace.tracefile import kineto, nesting

TRACES = sorted((Path(__file__).resolve().parent.parent / "traces").glob("*.json.gz"))
SWEEPS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_sweeps_are_built() -> None:
    """The test set-up builds them (a C compiler is there): a missing build fails here, not silently."""
    assert nesting._stack_sweeps is not None and segments._stack_sweeps is not None


@st.composite
def ranges(draw: st.DrawFn, nan: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Ranges in sweep order (start, then longest first), times on a coarse grid so that ties happen."""
    n = draw(st.integers(0, 40))
    scale = draw(st.sampled_from([1.0, 0.5, 1e-4]))
    ts = np.array(sorted(draw(st.lists(st.integers(0, 25), min_size=n, max_size=n))), dtype=float) * scale
    dur = np.array(draw(st.lists(st.integers(-2, 9), min_size=n, max_size=n)), dtype=float) * scale
    end = ts + dur
    if nan and n:
        end[draw(st.integers(0, n - 1))] = np.nan
    order = np.lexsort((-end, ts))
    return ts[order], end[order]


@given(ranges(), st.integers(0, 40))
@SWEEPS
def test_parents_equal_the_loop_and_numpy(r: tuple[np.ndarray, np.ndarray], cut: int) -> None:
    ts, end = r
    cut = min(cut, len(end))
    group = np.where(np.arange(len(end)) < cut, 0, cut).astype(np.int64)  # two threads, cut at `cut`
    got = nesting.parents(end, group, 1e-3)
    assert got.dtype == np.int64
    assert got.tolist() == nesting.parents_numpy(end, group, 1e-3).tolist()
    assert got.tolist() == nesting.parents_loop(end.tolist(), sorted({0, cut, len(end)}), 1e-3)


@given(ranges())
@SWEEPS
def test_segments_equal_numpy_and_the_loop(r: tuple[np.ndarray, np.ndarray]) -> None:
    ts, end = r
    got = segments.sweep_labels(ts, end)
    want = segments.sweep_labels_numpy(ts, end)
    for a, b in zip(got, want, strict=True):
        assert a.dtype == b.dtype
        assert np.array_equal(a, b)
    phases = [f"p{i}" for i in range(len(ts))]
    loop = segments.sweep_segments_loop(ts.tolist(), end.tolist(), phases)
    seg_s, seg_e, labels = got
    assert seg_s.tolist() == loop[0] and seg_e.tolist() == loop[1]
    assert [phases[i] if i >= 0 else segments.OUTSIDE for i in labels.tolist()] == loop[2]


@given(ranges(nan=True))
@SWEEPS
def test_a_nan_time_is_read_as_numpy_reads_it(r: tuple[np.ndarray, np.ndarray]) -> None:
    ts, end = r
    group = np.zeros(len(end), dtype=np.int64)
    assert nesting.parents(end, group, 1e-3).tolist() == nesting.parents_numpy(end, group, 1e-3).tolist()
    for a, b in zip(segments.sweep_labels(ts, end), segments.sweep_labels_numpy(ts, end), strict=True):
        assert np.array_equal(a, b, equal_nan=True)


def test_bad_arrays_are_refused() -> None:
    sweeps = nesting._stack_sweeps
    with pytest.raises(ValueError):
        sweeps.parents(np.zeros(3), np.zeros(2, dtype=np.int64), 0.0, np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError):
        sweeps.innermost(np.zeros(3), np.zeros(3), np.zeros(3), np.zeros(3, dtype=np.int32))  # room for 7


@pytest.mark.parametrize("path", TRACES, ids=lambda p: p.name.split("_bs")[0])
def test_loaded_traces_equal_without_the_c_sweeps(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fast = kineto.load_trace(path)
    with monkeypatch.context() as m:
        m.setattr(nesting, "_stack_sweeps", None)
        m.setattr(segments, "_stack_sweeps", None)
        slow = kineto.load_trace(path)
        thread = host.launch_thread(slow)
        want = host._self_segments(slow, thread)
    for name in ("ops", "runtime", "memory"):
        pd.testing.assert_frame_equal(getattr(fast, name), getattr(slow, name), check_exact=True)
    pd.testing.assert_frame_equal(host._self_segments(fast, thread), want, check_exact=True)
    assert len(want) > 100  # the segments were really compared


@given(st.integers(0, 2**32 - 1), st.integers(0, 60), st.booleans())
@SWEEPS
def test_sweep_order_equals_lexsort(seed: int, n: int, with_nan: bool) -> None:
    """nesting.sweep_order against the np.lexsort it replaces: ties of start, kind and end, NaNs."""
    rng = np.random.default_rng(seed)
    ts = rng.integers(0, int(rng.integers(1, 20)), n).astype(float)
    end = ts + rng.integers(-2, 6, n)
    if with_nan and n:
        end[rng.integers(0, n)] = np.nan
        ts[rng.integers(0, n)] = np.nan
    kind = rng.integers(0, 3, n).astype(np.int8)
    group = rng.integers(0, 4, n)
    assert nesting.sweep_order(ts, end).tolist() == np.lexsort((-end, ts)).tolist()
    assert nesting.sweep_order(ts, end, kind, group).tolist() == np.lexsort((-end, kind, ts, group)).tolist()
    far = group * 70_000 - 1  # groups beyond a 16-bit radix sort, and negative
    assert nesting.sweep_order(ts, end, kind, far).tolist() == np.lexsort((-end, kind, ts, far)).tolist()
