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

OUTSIDE = "other"


def sweep_segments(starts: np.ndarray, ends: np.ndarray, phases: np.ndarray,
                   outside: str = OUTSIDE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(segment starts, ends, phases) of events already sorted by (start, longest first, table order)."""
    n = len(starts)
    if n == 0:
        return np.zeros(0), np.zeros(0), np.zeros(0, dtype=object)
    starts = np.asarray(starts, dtype=np.float64)
    ends = np.maximum(np.asarray(ends, dtype=np.float64), starts)  # a range ending before it starts: empty
    bounds = np.unique(np.concatenate([starts, ends]))
    m = len(bounds) - 1  # elementary intervals [bounds[j], bounds[j + 1])
    if m <= 0:
        return np.zeros(0), np.zeros(0), np.zeros(0, dtype=object)
    lo = np.searchsorted(bounds, starts)
    hi = np.searchsorted(bounds, ends)  # the range covers intervals lo .. hi-1
    top = _last_covering(lo, hi, m)
    is_start = np.zeros(len(bounds), dtype=bool)
    is_start[lo] = True
    keep = np.ones(m, dtype=bool)  # interval j opens a new segment
    keep[1:] = is_start[1:m] | (top[1:] != top[:-1])
    first = np.flatnonzero(keep)
    seg_s = bounds[first]
    seg_e = bounds[np.append(first[1:], m)]
    labels = top[first]
    phase = np.empty(len(first), dtype=object)
    has = labels >= 0
    phase[has] = np.asarray(phases, dtype=object)[labels[has]]
    phase[~has] = outside
    return seg_s, seg_e, phase


def _last_covering(lo: np.ndarray, hi: np.ndarray, m: int) -> np.ndarray:
    """For each of `m` intervals, the largest event index i with lo[i] <= j < hi[i] (-1 if none).

    An iterative segment tree of 2m nodes (any m: max is commutative): each [lo, hi) tags the
    O(log m) nodes that cover it, bottom-up; a leaf's answer is the max tag on its path to the root.
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
    out = tag[m:].astype(np.int64)
    node = np.arange(m, 2 * m, dtype=np.int64) >> 1
    while node[0] >= 1 or node[-1] >= 1:
        np.maximum(out, tag[node], out=out)
        node >>= 1
    return out


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
