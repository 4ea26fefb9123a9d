"""Parents of host ranges on one thread, vectorized (the stack sweep of `kineto._nest`).

In sweep order (start, then longest first), a range pops the open ranges ending before it
ends (within a tolerance) and nests in the innermost one left. What is left on top is the
range nearest before it whose end is not before its own end minus the tolerance: any range
pushed after that one ended too early and was popped, and that one was never popped (a range
popping it would itself qualify, being later and ending later). So the parent is a "previous
element at least x" query, answered for all ranges at once on a max segment tree, level by
level in numpy. `parents_loop` is the sweep itself, kept as the reference
(tests/test_loader_equivalence.py holds the two to the same parents).
"""

from __future__ import annotations

import numpy as np

try:  # the same sweep in C (_stack_sweeps.c), which pip builds where a C compiler is found
    from qtrace.tracefile import _stack_sweeps
except ImportError:  # pragma: no cover (no compiler at install time: the numpy version)
    _stack_sweeps = None


def group_start_order(ts: np.ndarray, group: np.ndarray | None = None) -> np.ndarray:
    """Positions sorted by (group, start), stable (NaN starts last in their group): one stable sort
    of the starts, which a trace gives nearly sorted (about one pass), then a stable sort of the
    group (a radix sort where it fits 16 bits: a thread's or a device's small number)."""
    order = np.argsort(ts, kind="stable")
    if group is not None and len(order):
        g = group[order]
        small = g.min() >= 0 and g.max() < 2**16
        order = order[np.argsort(g.astype(np.uint16) if small else g, kind="stable")]
    return order


def sweep_order(ts: np.ndarray, end: np.ndarray, kind: np.ndarray | None = None,
                group: np.ndarray | None = None) -> np.ndarray:
    """``np.lexsort((-end, kind, ts, group))`` (the keys given), in fewer passes: by group (a
    thread), then start, then kind, then longest first, ties in input order.

    The events are put in (group, start) order by `group_start_order`; only the events sharing
    their (group, start) with another are then ordered by the rest of the keys (measured on the
    407 MB trace's launch thread, 0.6M events: 31 ms by lexsort, 2.5 ms so). A NaN start takes
    lexsort itself, which orders NaNs by the other keys (NaN never equals NaN: no tie is seen).
    """
    ts = np.asarray(ts, dtype=np.float64)
    end = np.asarray(end, dtype=np.float64)
    full = [k for k in (-end, kind, ts, group) if k is not None]
    if np.isnan(ts).any():
        return np.lexsort(full)
    order = group_start_order(ts, group)
    start = ts[order]
    tie = start[1:] == start[:-1]
    if group is not None:
        g = group[order]
        tie &= g[1:] == g[:-1]
    if tie.any():
        sel = np.flatnonzero(np.r_[tie, False] | np.r_[False, tie])
        rows = order[sel]
        order[sel] = rows[np.lexsort([rows, *(k[rows] for k in full)])]
    return order


def parents(ends: np.ndarray, starts_of_group: np.ndarray, eps: float) -> np.ndarray:
    """Per position i (sweep order), the position of its parent, or -1.

    `ends`: range ends in sweep order; `starts_of_group`: per position, the first position of
    its thread (ranges of other threads are never parents). The C stack sweep where it is built
    (one pass), else `parents_numpy`; both give `parents_loop`'s answer. A NaN end (a range
    without a duration) takes the numpy version, which reads it as it always has.
    """
    ends = np.ascontiguousarray(ends, dtype=np.float64)
    if _stack_sweeps is None or np.isnan(ends).any():
        return parents_numpy(ends, starts_of_group, eps)
    out = np.empty(len(ends), dtype=np.int64)
    _stack_sweeps.parents(ends, np.ascontiguousarray(starts_of_group, dtype=np.int64), float(eps), out)
    return out


def parents_numpy(ends: np.ndarray, starts_of_group: np.ndarray, eps: float) -> np.ndarray:
    """`parents` level by level on a max segment tree (numpy, O(n log n))."""
    n = len(ends)
    out = np.full(n, -1, dtype=np.int64)
    if n < 2:
        return out
    ends = np.asarray(ends, dtype=np.float64)
    lim = ends - eps
    size = 1
    while size < n:
        size *= 2
    tree = np.full(2 * size, -np.inf)
    tree[size:size + n] = ends
    for lvl in range(size.bit_length() - 2, -1, -1):  # internal nodes, bottom level first
        nodes = np.arange(1 << lvl, 2 << lvl)
        tree[nodes] = np.maximum(tree[2 * nodes], tree[2 * nodes + 1])
    # Up: from each leaf, the first left sibling subtree holding a value >= lim.
    q = np.arange(n, dtype=np.int64)
    p = q + size
    node = np.full(n, -1, dtype=np.int64)
    while len(q):
        right = (p & 1).astype(bool)
        hit = right & (tree[p - 1] >= lim[q])
        node[q[hit]] = p[hit] - 1
        p = p >> 1
        go = ~hit & (p > 1)
        q, p = q[go], p[go]
    # Down: the rightmost leaf of that subtree holding a value >= lim.
    q = np.flatnonzero(node >= 0)
    cur = node[q]
    while len(q):
        inner = cur < size
        if not inner.any():
            break
        qi, ci = q[inner], cur[inner]
        r = 2 * ci + 1
        cur[inner] = np.where(tree[r] >= lim[qi], r, 2 * ci)
    found = np.full(n, -1, dtype=np.int64)
    found[q] = cur - size
    ok = found >= np.asarray(starts_of_group)
    out[ok] = found[ok]
    return out


def parents_loop(ends: list[float], cuts: list[int], eps: float) -> list[int]:
    """The stack sweep: positions of parents in sweep order (-1 at the top); `cuts` start each thread."""
    out: list[int] = []
    for g in range(len(cuts) - 1):
        stack: list[int] = []
        for i in range(cuts[g], cuts[g + 1]):
            lim = ends[i] - eps
            while stack and ends[stack[-1]] < lim:
                stack.pop()
            out.append(stack[-1] if stack else -1)
            stack.append(i)
    return out
