"""str columns of few distinct values, built from integer codes.

pandas turns an object array of strings into an Arrow ``str`` column through an Arrow builder
that doubles its buffer as it goes, after the caller has held one Python object per row; on a
big trace both stayed resident as slack (hundreds of MB on 2 GB). A column of few distinct
values (names, categories, phases) is written here once, into buffers of its exact size: the
same dtype and values as ``pd.array(values, dtype=str)``.
"""

from __future__ import annotations

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
    return pd.arrays.ArrowStringArray(pa.chunked_array([arr], type=pa.large_string()), dtype=_STR_DTYPE)


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
