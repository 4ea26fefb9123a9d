"""The innermost-range segments of one thread, vectorized (`qtrace.analyzers.host._self_segments`).

The stack sweep over ranges sorted by (start, longest first) labels each stretch of time with
the range on top of the stack. That top is, at any time t, the range pushed last among those
that cover t (start <= t < max(end, start)): ranges pushed after it have ended, and it has not.
So the segments are the elementary intervals between the distinct starts and ends, each
labelled with the last-pushed range covering it (a range-max over a segment tree, level by
level in numpy), merged where neither a range starts nor the label changes. The plain sweep
(`sweep_segments_loop`) stays as the reference; tests/test_hotpath_equivalence.py holds the
two (and the original loop in tests/reference_analyzers.py) to the same output.
"""

from __future__ import annotations

import numpy as np

from qtrace.tracefile.nesting import _stack_sweeps

OUTSIDE = "other"


def sweep_segments(starts: np.ndarray, ends: np.ndarray, phases: np.ndarray,
                   outside: str = OUTSIDE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(segment starts, ends, phases) of events already sorted by (start, longest first, table order)."""
    seg_s, seg_e, labels = sweep_labels(starts, ends)
    phase = np.empty(len(labels), dtype=object)
    has = labels >= 0
    phase[has] = np.asarray(phases, dtype=object)[labels[has]]
    phase[~has] = outside
    return seg_s, seg_e, phase


def sweep_labels(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(segment starts, ends, event index of each segment (an int array), -1 outside every event): `sweep_segments`
    with each segment's event instead of its phase, so a caller can label it by codes.

    The C stack sweep where it is built (one pass), else `sweep_labels_numpy`: the same arrays.
    A NaN time takes the numpy version, which reads it as it always has.
    """
    n = len(starts)
    starts = np.ascontiguousarray(starts, dtype=np.float64)
    ends = np.ascontiguousarray(ends, dtype=np.float64)
    if _stack_sweeps is None or n >= 2**31 or np.isnan(starts).any() or np.isnan(ends).any():
        return sweep_labels_numpy(starts, ends)
    seg_s = np.empty(2 * n + 1, dtype=np.float64)
    labels = np.empty(2 * n + 1, dtype=np.int32)
    count, last_end = _stack_sweeps.innermost(starts, ends, seg_s, labels)
    if count == 0:  # what the numpy version gives
        return np.zeros(0), np.zeros(0), np.zeros(0, dtype=np.int64)
    seg_s = seg_s[:count].copy()  # the room for 2n + 1 segments given back
    labels = labels[:count].copy()
    seg_e = np.empty_like(seg_s)  # each segment ends where the next one starts; the last at the end
    seg_e[:-1] = seg_s[1:]
    seg_e[-1] = last_end
    return seg_s, seg_e, labels


def sweep_labels_numpy(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`sweep_labels` on a segment tree, level by level (numpy, O(n log n)).

    Temporaries are freed as soon as they are read (a few million events at 2 GB of trace: each
    array of the intervals is ~45 MB).
    """
    n = len(starts)
    if n == 0:
        return np.zeros(0), np.zeros(0), np.zeros(0, dtype=np.int64)
    starts = np.asarray(starts, dtype=np.float64)
    ends = np.maximum(np.asarray(ends, dtype=np.float64), starts)  # a range ending before it starts: empty
    bounds = _unique_sorted(np.concatenate([starts, ends]))
    m = len(bounds) - 1  # elementary intervals [bounds[j], bounds[j + 1])
    if m <= 0:
        return np.zeros(0), np.zeros(0), np.zeros(0, dtype=np.int64)
    lo = np.searchsorted(bounds, starts)
    hi = np.searchsorted(bounds, ends)  # the range covers intervals lo .. hi-1
    del ends
    is_start = np.zeros(len(bounds), dtype=bool)
    is_start[lo] = True
    top = _last_covering(lo, hi, m)
    del lo, hi
    keep = is_start[:m]  # interval j opens a new segment: a range starts there or the label changes
    keep[1:] |= top[1:] != top[:-1]
    keep[0] = True
    first = np.flatnonzero(keep)
    del is_start, keep
    labels = top[first]  # int32 when the event indices fit (half the memory of int64)
    del top
    seg_s = bounds[first]
    del first
    seg_e = np.empty_like(seg_s)  # each segment ends where the next one starts; the last at the end
    seg_e[:-1] = seg_s[1:]
    seg_e[-1] = bounds[m]
    return seg_s, seg_e, labels


def _unique_sorted(values: np.ndarray) -> np.ndarray:
    """``np.unique(values)`` of a float array, sorted in place (no second copy of `values`)."""
    values.sort()
    mask = np.empty(len(values), dtype=bool)
    mask[:1] = True
    if len(values) and np.isnan(values[-1]):  # NaNs are one value, as np.unique's equal_nan
        first_nan = int(np.searchsorted(values, values[-1], side="left"))
        mask[1:first_nan] = values[1:first_nan] != values[:first_nan - 1]
        mask[first_nan] = True
        mask[first_nan + 1:] = False
    else:
        mask[1:] = values[1:] != values[:-1]
    return values[mask]


def _last_covering(lo: np.ndarray, hi: np.ndarray, m: int) -> np.ndarray:
    """For each of `m` intervals, the largest event index i with lo[i] <= j < hi[i] (-1 if none).

    An iterative segment tree of 2m nodes (any m: max is commutative): each [lo, hi) tags the
    O(log m) nodes that cover it, bottom-up; a leaf's answer is the max tag on its path to the
    root, pushed down from the root: node j's parent is j >> 1, so all nodes in [2^k, 2^(k+1))
    take their parents' answers at once, level after level, in place. Returned as int32 when
    the event indices fit (int64 otherwise).
    """
    tag = np.full(2 * m, -1, dtype=np.int32 if len(lo) < 2**31 else np.int64)
    live = np.flatnonzero(lo < hi)
    left, right, who = lo[live] + m, hi[live] + m, live.astype(tag.dtype)
    del live
    while len(who):
        odd = (left & 1).astype(bool)
        np.maximum.at(tag, left[odd], who[odd])
        left += odd
        odd = (right & 1).astype(bool)
        right -= odd
        np.maximum.at(tag, right[odd], who[odd])
        left >>= 1
        right >>= 1
        go = left < right
        left, right, who = left[go], right[go], who[go]
    del left, right, who
    k = 2
    while k < 2 * m:
        hi_node = min(2 * k, 2 * m)  # nodes k .. hi_node-1, their parents k/2 .. (hi_node-1)/2
        parents = np.repeat(tag[k >> 1:((hi_node - 1) >> 1) + 1], 2)[:hi_node - k]
        np.maximum(tag[k:hi_node], parents, out=tag[k:hi_node])
        del parents
        k = hi_node
    return tag[m:].copy()


def sweep_segments_loop(starts: list[float], ends: list[float], phases: list[str],
                        outside: str = OUTSIDE) -> tuple[list, list, list]:
    """The stack sweep, event by event: each time the innermost open range changes, the time
    since the last change becomes a segment labelled with the phase that was innermost."""
    seg_s: list[float] = []
    seg_e: list[float] = []
    seg_p: list[str] = []
    stack_end: list[float] = []
    stack_phase: list[str] = []
    cursor = starts[0] if starts else 0.0
    for ts, end, phase in zip(starts, ends, phases, strict=True):
        while stack_end and stack_end[-1] <= ts:
            upto = stack_end.pop()
            p = stack_phase.pop()
            if upto > cursor:
                seg_s.append(cursor)
                seg_e.append(upto)
                seg_p.append(p)
                cursor = upto
        if ts > cursor:
            seg_s.append(cursor)
            seg_e.append(ts)
            seg_p.append(stack_phase[-1] if stack_phase else outside)
            cursor = ts
        stack_end.append(ts if ts > end else end)  # max(end, ts)
        stack_phase.append(phase)
    while stack_end:
        upto = stack_end.pop()
        p = stack_phase.pop()
        if upto > cursor:
            seg_s.append(cursor)
            seg_e.append(upto)
            seg_p.append(p)
            cursor = upto
    return seg_s, seg_e, seg_p
