"""difflib.SequenceMatcher(None, a, b, autojunk=False).get_matching_blocks(), without its quadratic cost.

difflib finds the longest common run of the two sequences, then recurses left and right of it.
Its longest-run search visits, for every element of a, every position of that element in b:
a model's kernel sequence repeats a few dozen names thousands of times, so a generation step
(tens of thousands of launches) costs it minutes. Here the same recursion runs with a search
that gives the very run difflib's would: the longest one, ties to the smallest start in a, then in
b. Equal ranges are answered at once; large ones by binary search on the run length with rolling
hashes of the windows (numpy), every answer checked element by element; small ones, and any
range where a hash collision made the check fail, by difflib's own dynamic programme.

Pure numpy; no torch.
"""

from __future__ import annotations

import numpy as np

Block = tuple[int, int, int]  # (start in a, start in b, length), as difflib's Match

SMALL = 4096  # ranges with n x m up to this take the plain programme: numpy's per-call cost exceeds it
_BASE = 0x9E3779B97F4A7C15  # odd, so invertible modulo 2**64
_SPREAD = 0xBF58476D1CE4E5B9  # odd multiplier that spreads the small element codes over 64 bits


class _Hashes:
    """Prefix sums of code x base**t (mod 2**64) of one sequence; a window's hash needs no position."""

    def __init__(self, codes: np.ndarray, inv_pow: np.ndarray, pow_: np.ndarray) -> None:
        n = len(codes)
        vals = (codes.astype(np.uint64) + np.uint64(1)) * np.uint64(_SPREAD)
        self.prefix = np.concatenate([np.zeros(1, dtype=np.uint64), np.cumsum(vals * pow_[:n], dtype=np.uint64)])
        self.inv_pow = inv_pow

    def windows(self, lo: int, hi: int, length: int) -> np.ndarray:
        """Hash of every window [i, i + length) with lo <= i <= hi - length, independent of i itself."""
        i = np.arange(lo, hi - length + 1)
        return (self.prefix[i + length] - self.prefix[i]) * self.inv_pow[i]


def _powers(base: int, n: int) -> np.ndarray:
    """base**t mod 2**64 for t = 0..n-1 (uint64 products wrap, which is the modulus)."""
    out = np.full(n, base, dtype=np.uint64)
    if n:
        out[0] = 1
    with np.errstate(over="ignore"):
        return np.cumprod(out, dtype=np.uint64)


def longest_dp(a: list, b: list, alo: int, ahi: int, blo: int, bhi: int) -> Block:
    """difflib's find_longest_match (no junk) over a[alo:ahi], b[blo:bhi]: the exact reference search."""
    b2j: dict = {}
    for j in range(blo, bhi):
        b2j.setdefault(b[j], []).append(j)
    besti, bestj, bestsize = alo, blo, 0
    j2len: dict[int, int] = {}
    for i in range(alo, ahi):
        new: dict[int, int] = {}
        for j in b2j.get(a[i], ()):
            k = new[j] = j2len.get(j - 1, 0) + 1
            if k > bestsize:
                besti, bestj, bestsize = i - k + 1, j - k + 1, k
        j2len = new
    return besti, bestj, bestsize


class _Matcher:
    def __init__(self, a: np.ndarray, b: np.ndarray, small: int) -> None:
        self.a, self.b, self.small = a, b, small
        self.a_list, self.b_list = a.tolist(), b.tolist()
        n = max(len(a), len(b))
        pow_, inv = _powers(_BASE, n), _powers(pow(_BASE, -1, 1 << 64), n)
        self.ha, self.hb = _Hashes(a, inv, pow_), _Hashes(b, inv, pow_)

    def _first_pair(self, alo: int, ahi: int, blo: int, bhi: int, length: int) -> Block | None:
        """The smallest (i, j) whose windows of this length hash alike, or None."""
        wa, wb = self.ha.windows(alo, ahi, length), self.hb.windows(blo, bhi, length)
        hit = np.isin(wa, wb)
        if not hit.any():
            return None
        i = int(np.argmax(hit))
        return alo + i, blo + int(np.argmax(wb == wa[i])), length

    def longest(self, alo: int, ahi: int, blo: int, bhi: int) -> Block:
        n, m = ahi - alo, bhi - blo
        if n == m and np.array_equal(self.a[alo:ahi], self.b[blo:bhi]):
            return alo, blo, n  # the whole range is the one longest run
        if n * m <= self.small:
            return longest_dp(self.a_list, self.b_list, alo, ahi, blo, bhi)
        # a run of length L implies runs of every shorter length, so the largest L with a hit is the answer
        lo, hi, best = 0, min(n, m), None
        while lo < hi:
            mid = (lo + hi + 1) // 2
            pair = self._first_pair(alo, ahi, blo, bhi, mid)
            if pair is None:
                hi = mid - 1
            else:
                lo, best = mid, pair
        if best is None:
            return alo, blo, 0
        i, j, k = best  # found at the last length that hit, which is lo
        if np.array_equal(self.a[i:i + k], self.b[j:j + k]):
            return i, j, k
        # a hash collision (never seen, but possible): the exact search decides
        return longest_dp(self.a_list, self.b_list, alo, ahi, blo, bhi)


def matching_blocks(a: np.ndarray, b: np.ndarray, small: int = SMALL) -> list[Block]:
    """difflib's get_matching_blocks() of two integer sequences, without the final (len a, len b, 0)."""
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    matcher = _Matcher(a, b, small)
    queue = [(0, len(a), 0, len(b))]
    blocks: list[Block] = []
    while queue:  # difflib's order of work; the result is sorted afterwards, so the order does not matter
        alo, ahi, blo, bhi = queue.pop()
        i, j, k = matcher.longest(alo, ahi, blo, bhi)
        if k:
            blocks.append((i, j, k))
            if alo < i and blo < j:
                queue.append((alo, i, blo, j))
            if i + k < ahi and j + k < bhi:
                queue.append((i + k, ahi, j + k, bhi))
    return _collapse(sorted(blocks))


def _collapse(blocks: list[Block]) -> list[Block]:
    """Adjacent blocks joined, as difflib joins them."""
    out: list[Block] = []
    for i, j, k in blocks:
        if out and out[-1][0] + out[-1][2] == i and out[-1][1] + out[-1][2] == j:
            pi, pj, pk = out[-1]
            out[-1] = (pi, pj, pk + k)
        else:
            out.append((i, j, k))
    return out
