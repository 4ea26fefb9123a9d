"""strings.text_column builds the same str column as pandas from codes, by either of its two paths."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from qtrace.tracefile import strings

SHORT = ["cpu_op", "kernel", "", "é", "aten::mm"]
LONG = ["void gemm<" + "x" * 300 + ">", "ampere_fp16_s16816gemm_" + "y" * 200, "短い" * 80, ""]


@pytest.mark.parametrize("texts", [SHORT, LONG, SHORT + LONG], ids=["short", "long", "mixed"])
@pytest.mark.parametrize("n", [0, 1, 1000])
@pytest.mark.parametrize("join_min", [None, 0, 10**9], ids=["by-length", "always-join", "always-take"])
def test_text_column_equals_pandas(texts: list[str], n: int, join_min: int | None,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    if join_min is not None:
        monkeypatch.setattr(strings, "_JOIN_MIN_ROW_BYTES", join_min)
    rng = np.random.default_rng(n + len(texts))
    codes = rng.integers(0, len(texts), size=n).astype(np.int32)
    table = np.empty(len(texts), dtype=object)
    table[:] = texts
    got = strings.text_column(codes, table)
    want = pd.array(table[codes], dtype=str)
    assert got.dtype == want.dtype
    assert list(got) == list(want)
