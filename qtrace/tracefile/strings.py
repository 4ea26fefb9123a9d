"""str columns of few distinct values, built from integer codes.

pandas turns an object array of strings into an Arrow ``str`` column through an Arrow builder
that doubles its buffer as it goes, after the caller has held one Python object per row; on a
big trace both stayed resident as slack (hundreds of MB on 2 GB). A column of few distinct
values (names, categories, phases) is written here once, into buffers of its exact size: the
same dtype and values as ``pd.array(values, dtype=str)``.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np
import pandas as pd

try:  # pandas holds str columns in Arrow when pyarrow is installed: then they are built directly
    import pyarrow as pa
except ImportError:  # pragma: no cover (pyarrow comes with pandas 3's usual installs)
    pa = None

_STR_DTYPE = pd.array(np.array(["a"], dtype=object), dtype=str).dtype
# Arrow storage, missing values as NaN: pandas 3's "str" with pyarrow installed.
_ARROW_STR = (pa is not None and isinstance(_STR_DTYPE, pd.StringDtype) and _STR_DTYPE.storage == "pyarrow"
              and _STR_DTYPE.na_value is np.nan)


# Above this mean row length a join builds the column faster than Arrow's take (measured on the
# 407 MB benchmark trace: kernel names 0.10-0.15 s by take, 0.024 s joined; op names of ~15 bytes
# 0.05 s either way, categories and threads 5 ms by take, 40 ms joined).
_JOIN_MIN_ROW_BYTES = 64


def text_column(codes: np.ndarray, texts: np.ndarray) -> Any:
    """``pd.array(texts[codes], dtype=str)`` for codes (all >= 0) into `texts` (an object array of str)."""
    if not _ARROW_STR:
        return pd.array(texts[codes], dtype=str)
    encoded = [t.encode() for t in texts]  # a lone surrogate raises UnicodeEncodeError here, as pandas would
    codes = np.asarray(codes)
    lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
    row_bytes = lengths[codes]
    if len(codes) and row_bytes.sum() > _JOIN_MIN_ROW_BYTES * len(codes):
        # Long texts (kernel names, ~280 bytes a row): the offsets from a cumulative sum and the rows'
        # bytes joined into one buffer of its exact size, 4-6x faster than Arrow's take on them.
        offsets = np.zeros(len(codes) + 1, dtype=np.int64)
        np.cumsum(row_bytes, out=offsets[1:])
        rows = np.empty(len(encoded), dtype=object)
        rows[:] = encoded
        data = b"".join(rows[codes].tolist())
        arr = pa.LargeStringArray.from_buffers(len(codes), pa.py_buffer(offsets), pa.py_buffer(data))
    else:
        # Short texts: Arrow's take writes the rows' bytes in C, into buffers of their exact size.
        dictionary = pa.array(encoded, type=pa.large_binary())
        arr = dictionary.take(pa.array(codes)).view(pa.large_string())
    chunked = pa.chunked_array([arr], type=pa.large_string())
    _remember_own_codes(chunked, codes, texts)
    return pd.arrays.ArrowStringArray(chunked, dtype=_STR_DTYPE)


def coded_str_column(codes: np.ndarray, names: Any) -> Any:
    """``str_column(names[codes])`` for codes (all >= 0) into distinct strings `names`, without a
    Python object per row (the labels an analyzer works out per distinct value)."""
    texts = np.empty(len(names), dtype=object)
    texts[:] = list(names)
    if not _ARROW_STR or not len(codes):
        return texts[codes]
    try:
        return text_column(codes, texts)
    except UnicodeEncodeError:  # a lone surrogate: as str_column, the values for pandas to refuse
        return texts[codes]


def str_column(values: np.ndarray) -> Any:
    """What pandas makes a column of `values` (an object array) when assigned: here built from
    codes when every value is a string (else `values` itself, for pandas to infer as before)."""
    if not _ARROW_STR or not len(values):
        return values
    codes, uniq = pd.factorize(values)
    if (codes < 0).any() or not all(isinstance(u, str) for u in uniq):
        return values
    texts = np.empty(len(uniq), dtype=object)
    texts[:] = list(uniq)
    try:
        return text_column(codes, texts)
    except UnicodeEncodeError:  # a lone surrogate: pandas raises its own error
        return values


# --- Codes of str columns, kept per Arrow array ---------------------------------------------
# Several analyzers factorize the same columns (a trace's op names five times per report): the
# codes are kept per Arrow array, and a column built here from codes starts with them known.

# At most this many bytes of codes are kept: a 407 MB trace's loaded and labelled columns would
# take 20 MiB (at 16 MiB its ops' phases are factorized twice more, ~20 ms); on the 2 GB trace,
# whose peak RSS must stay under 1.5 GB, each MiB more is one more of its peak (docs/robustness.md).
CACHE_MAX_BYTES = 16 << 20

# id of an Arrow array -> (weak reference to it, codes, distinct values); an entry goes with its array.
_CODES: dict[int, tuple[weakref.ref, np.ndarray, np.ndarray]] = {}


def known_codes(arrow: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """The kept (codes, distinct values) of an Arrow array, if any."""
    hit = _CODES.get(id(arrow))
    if hit is not None and hit[0]() is arrow:
        return hit[1], hit[2]
    return None


def remember_codes(arrow: Any, codes: np.ndarray, uniq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keep `codes` (int, into `uniq`, pd.factorize's order) for `arrow` while it lives and the
    budget allows; returns them as kept (int32 and read-only when kept)."""
    try:
        ref = weakref.ref(arrow, _forget)
    except TypeError:  # not weak-referable in this pyarrow: nothing kept
        return codes, uniq
    codes = codes.astype(np.int32) if len(uniq) < 2**31 and codes.dtype != np.int32 else codes  # half the bytes
    if _kept_bytes() + codes.nbytes > CACHE_MAX_BYTES:
        return codes, uniq
    codes.flags.writeable = False
    uniq.flags.writeable = False
    _CODES[id(arrow)] = (ref, codes, uniq)
    return codes, uniq


def _kept_bytes() -> int:
    return sum(entry[1].nbytes for entry in _CODES.values())


def _forget(ref: weakref.ref) -> None:
    for key, entry in list(_CODES.items()):
        if entry[0] is ref:
            del _CODES[key]


def _remember_own_codes(arrow: Any, codes: np.ndarray, texts: np.ndarray) -> None:
    """Keep the codes pd.factorize gives the column `texts[codes]`: its distinct texts in order of
    first appearance, found from `codes` (a pass over the rows in C, no text compared)."""
    n = len(codes)
    if not n or _kept_bytes() + n * 4 > CACHE_MAX_BYTES:  # no room: not worked out
        return
    first = np.full(len(texts), n, dtype=np.int64)
    np.minimum.at(first, codes, np.arange(n))
    used = np.flatnonzero(first < n)
    used = used[np.argsort(first[used], kind="stable")]
    uniq = np.empty(len(used), dtype=object)
    uniq[:] = texts[used].tolist()
    if len(set(uniq.tolist())) != len(uniq):  # equal texts under two codes: pd.factorize would join them
        return
    own = np.zeros(len(texts), dtype=np.int32)
    own[used] = np.arange(len(used), dtype=np.int32)
    remember_codes(arrow, own[codes], uniq)
