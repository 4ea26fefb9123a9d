"""distinct.string_codes keeps its result per Arrow column: equal to a fresh factorize, read-only,
and gone with the column."""

from __future__ import annotations

import gc

import numpy as np
import pandas as pd
import pytest

from qtrace.analyzers import distinct


def _column() -> pd.Series:
    return pd.Series(pd.array(["b", "a", "b", np.nan, "c"], dtype=str))


def test_cached_codes_equal_a_fresh_factorize() -> None:
    col = _column()
    first = distinct.string_codes(col)
    again = distinct.string_codes(col)
    assert again[0] is first[0] and again[1] is first[1]  # served from the cache
    codes, uniq = pd.factorize(col, use_na_sentinel=False)
    assert first[0].tolist() == codes.tolist()
    assert [u if isinstance(u, str) else "nan" for u in first[1].tolist()] == [
        u if isinstance(u, str) else "nan" for u in np.asarray(uniq, dtype=object).tolist()]


def test_cached_codes_are_read_only() -> None:
    codes, uniq = distinct.string_codes(_column())
    with pytest.raises(ValueError):
        codes[0] = 1
    with pytest.raises(ValueError):
        uniq[0] = "x"


def test_a_filtered_column_is_factorized_on_its_own() -> None:
    col = _column()
    distinct.string_codes(col)
    part = col[col.isin(["a", "c"])]
    codes, uniq = distinct.string_codes(part)
    assert codes.tolist() == [0, 1] and uniq.tolist() == ["a", "c"]


def test_entry_goes_with_its_column() -> None:
    col = _column()
    distinct.string_codes(col)
    key = id(col.array._pa_array)
    assert key in distinct._CODES
    del col
    gc.collect()
    assert key not in distinct._CODES


def test_cache_holds_at_most_its_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(distinct, "CACHE_MAX_BYTES", 0)
    col = _column()
    first = distinct.string_codes(col)
    assert id(col.array._pa_array) not in distinct._CODES
    assert distinct.string_codes(col)[0] is not first[0]  # factorized again
