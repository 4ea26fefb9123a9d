"""Per-value work done once per distinct value: a trace has millions of events but few names.

`map_distinct(values, fn)` equals ``[fn(v) for v in values]`` and `mask_distinct(values, pred)`
equals ``[bool(pred(v)) for v in values]``, each calling the function once per distinct value
(tests/test_hotpath_equivalence.py holds them to the plain loops).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd


def shared_objects(values: pd.Series | pd.Index) -> np.ndarray:
    """``values.to_numpy(dtype=object)``, equal strings sharing one object.

    A string column held by Arrow gives one new Python string per row through ``to_numpy``
    (a million kernel names: ~35 MB and a second); its integer codes and distinct values
    give the same values as pointers to a few hundred strings.
    """
    if not isinstance(values.dtype, pd.StringDtype):
        return values.to_numpy(dtype=object)
    codes, uniq = string_codes(values)
    return uniq[codes]


def string_codes(values: pd.Series | pd.Index) -> tuple[np.ndarray, np.ndarray]:
    """A string column's own codes and its distinct values as Python strings (a string column
    holds no None beside NaN). Both read-only: the result is kept for the column's Arrow data,
    which several analyzers factorize (a trace's op names five times per report)."""
    arrow = getattr(getattr(values, "array", None), "_pa_array", None)  # pandas' Arrow-backed str columns
    if arrow is not None:
        hit = _CODES.get(id(arrow))
        if hit is not None and hit[0]() is arrow:
            return hit[1], hit[2]
    codes, uniq = pd.factorize(values, use_na_sentinel=False)
    uniq = np.asarray(uniq, dtype=object)
    if arrow is not None:
        try:
            ref = weakref.ref(arrow, _forget)
        except TypeError:  # not weak-referable in this pyarrow: no cache
            return codes, uniq
        codes = codes.astype(np.int32) if len(uniq) < 2**31 else codes  # half the bytes while cached
        if sum(entry[1].nbytes for entry in _CODES.values()) + codes.nbytes > CACHE_MAX_BYTES:
            return codes, uniq
        codes.flags.writeable = False
        uniq.flags.writeable = False
        _CODES[id(arrow)] = (ref, codes, uniq)
    return codes, uniq


# At most this many bytes of codes are kept: all of a 407 MB trace's (14 MB); on the 2 GB trace,
# whose peak RSS must stay under 1.5 GB, keeping them all added 67 MB (docs/robustness.md).
CACHE_MAX_BYTES = 16 << 20


# id of an Arrow array -> (weak reference to it, codes, distinct values); an entry goes with its array.
_CODES: dict[int, tuple[weakref.ref, np.ndarray, np.ndarray]] = {}


def _forget(ref: weakref.ref) -> None:
    for key, entry in list(_CODES.items()):
        if entry[0] is ref:
            del _CODES[key]


PYTHON_STR = pd.StringDtype("python", na_value=np.nan)


def python_strings(values: np.ndarray) -> pd.api.extensions.ExtensionArray:
    """A str column of `values` (an object array) whose rows point at the given Python strings.

    pandas would copy every row's text into Arrow (a 300-character kernel name per row); when a
    column has few distinct, long values this holds 8 bytes a row instead. Same values, same
    string methods; only the storage (``StringDtype("python")``) differs.
    """
    return pd.array(values, dtype=PYTHON_STR)


def _objects(values: Any) -> np.ndarray:
    if isinstance(values, pd.Series | pd.Index):
        return shared_objects(values)
    return np.asarray(values, dtype=object)


def _codes(values: Any) -> tuple[np.ndarray, list]:
    if isinstance(values, pd.Series | pd.Index) and isinstance(values.dtype, pd.StringDtype):
        codes, uniq = string_codes(values)  # without a Python string per row
        return codes, list(uniq)
    codes, uniq = pd.factorize(_objects(values), use_na_sentinel=False)
    return codes, list(uniq)


def _has_na(uniq: list) -> bool:
    # pandas holds None and NaN as one value: then each value's own, element by element.
    return any(v is None or (isinstance(v, float) and v != v) for v in uniq)


def map_distinct(values: Any, fn: Callable[[Any], Any]) -> np.ndarray:
    """``fn`` of each value (an object array), computed once per distinct value."""
    codes, uniq = _codes(values)
    if _has_na(uniq):
        out = np.empty(len(codes), dtype=object)
        out[:] = [fn(v) for v in _objects(values)]
        return out
    out = np.empty(len(uniq), dtype=object)
    out[:] = [fn(v) for v in uniq]
    return out[codes]


def mask_distinct(values: Any, pred: Callable[[Any], Any]) -> np.ndarray:
    """``bool(pred(v))`` of each value (a bool array), computed once per distinct value."""
    codes, uniq = _codes(values)
    if _has_na(uniq):
        return np.array([bool(pred(v)) for v in _objects(values)], dtype=bool)
    out = np.array([bool(pred(v)) for v in uniq], dtype=bool)
    return out[codes]
