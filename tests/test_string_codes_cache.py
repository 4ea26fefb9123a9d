"""distinct.string_codes keeps its result per Arrow column (qtrace.tracefile.strings): equal to a
fresh factorize, read-only, and gone with the column; a column built from codes starts with them."""

from __future__ import annotations

import gc

import numpy as np
import pandas as pd
import pytest

from qtrace.analyzers import distinct
from qtrace.tracefile import strings


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
    assert key in strings._CODES
    del col
    gc.collect()
    assert key not in strings._CODES


def test_cache_holds_at_most_its_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(strings, "CACHE_MAX_BYTES", 0)
    col = _column()
    first = distinct.string_codes(col)
    assert id(col.array._pa_array) not in strings._CODES
    assert distinct.string_codes(col)[0] is not first[0]  # factorized again


@pytest.mark.parametrize("seed", range(5))
def test_a_built_column_starts_with_the_codes_a_factorize_gives(seed: int) -> None:
    rng = np.random.default_rng(seed)
    texts = np.empty(40, dtype=object)
    texts[:] = [f"name{i}" for i in range(40)]
    codes = rng.integers(0, 40 if seed else 1, size=int(rng.integers(1, 3000))).astype(np.int32)
    col = pd.Series(strings.text_column(codes, texts))
    kept = strings.known_codes(col.array._pa_array)
    assert kept is not None
    want_codes, want_uniq = pd.factorize(col, use_na_sentinel=False)
    assert kept[0].tolist() == want_codes.tolist()
    assert kept[1].tolist() == list(want_uniq)
    assert distinct.string_codes(col)[0] is kept[0]


def test_equal_texts_under_two_codes_are_not_kept() -> None:
    texts = np.empty(2, dtype=object)
    texts[:] = ["same", "same"]
    col = pd.Series(strings.text_column(np.array([0, 1, 0], dtype=np.int32), texts))
    assert strings.known_codes(col.array._pa_array) is None
    assert distinct.string_codes(col)[0].tolist() == [0, 0, 0]


def test_no_room_means_no_codes_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(strings, "CACHE_MAX_BYTES", 8)
    texts = np.empty(2, dtype=object)
    texts[:] = ["a", "b"]
    col = pd.Series(strings.text_column(np.array([0, 1, 0], dtype=np.int32), texts))
    assert strings.known_codes(col.array._pa_array) is None
