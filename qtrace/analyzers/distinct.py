"""Per-value work done once per distinct value: a trace has millions of events but few names.

`map_distinct(values, fn)` equals ``[fn(v) for v in values]`` and `mask_distinct(values, pred)`
equals ``[bool(pred(v)) for v in values]``, each calling the function once per distinct value
(tests/test_hotpath_equivalence.py holds them to the plain loops).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from qtrace.tracefile.strings import known_codes, remember_codes


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
    holds no None beside NaN). Both read-only when kept: the result is kept for the column's Arrow
    data (qtrace.tracefile.strings.remember_codes), and a column loaded or labelled from codes
    has it from the start."""
    arrow = getattr(getattr(values, "array", None), "_pa_array", None)  # pandas' Arrow-backed str columns
    if arrow is not None:
        hit = known_codes(arrow)
        if hit is not None:
            return hit
    codes, uniq = pd.factorize(values, use_na_sentinel=False)
    uniq = np.asarray(uniq, dtype=object)
    if arrow is not None:
        return remember_codes(arrow, codes, uniq)
    return codes, uniq


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
