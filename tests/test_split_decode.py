"""The two-process decode of a big plain trace (qtrace.tracefile.split) gives the one-process tables."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from pandas.testing import assert_frame_equal

from qtrace.tracefile import kineto, split
from qtrace.tracefile.kineto import TraceFormatError, load_trace

TRACE = Path(__file__).resolve().parent.parent / "traces" / "h100_qwen05-shape_int8_bs1_seq128.json.gz"


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("split") / "trace.json"
    out.write_bytes(gzip.decompress(TRACE.read_bytes()))
    return out


def _same(a: kineto.Trace, b: kineto.Trace) -> None:
    for name in ("ops", "runtime", "gpu", "memory"):
        assert_frame_equal(getattr(a, name), getattr(b, name))
    assert a.metadata == b.metadata
    assert list(a.other_events.items()) == list(b.other_events.items())
    assert a.base_ts_us == b.base_ts_us


@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.8])
def test_split_decode_equals_one_process(plain: Path, fraction: float) -> None:
    helper = split.start(plain, fraction, min_bytes=0)
    assert helper is not None and split.claim(plain) is helper
    assert helper.header_end < helper.close < helper.start
    cols, metadata = split.decode(helper)  # raises _Fallback if either part failed: the test would fail
    assert metadata  # the helper decoded the end of the object: the file's metadata
    split_trace = kineto.build_trace(cols, source=str(plain), metadata=metadata)
    _same(split_trace, load_trace(plain, split_min_bytes=None))


def test_load_trace_uses_the_helper_and_matches(plain: Path) -> None:
    _same(load_trace(plain, split_min_bytes=0), load_trace(plain, split_min_bytes=None))
    assert not split._STARTED  # claimed and finished


def test_damaged_second_half_gives_the_one_process_error(plain: Path, tmp_path: Path) -> None:
    data = bytearray(plain.read_bytes())
    at = data.index(b'"ts": ', int(len(data) * 0.75))
    data[at + 6] = ord("x")  # not a number: invalid JSON in the helper's part
    bad = tmp_path / "bad.json"
    bad.write_bytes(bytes(data))
    with pytest.raises(TraceFormatError) as one:
        load_trace(bad, split_min_bytes=None)
    with pytest.raises(TraceFormatError) as two:
        load_trace(bad, split_min_bytes=0)
    assert str(one.value) == str(two.value)


def test_gzip_and_small_files_are_not_split(plain: Path) -> None:
    assert split.plan(TRACE, 0.5, min_bytes=0) is None
    assert split.plan(plain, 0.5, min_bytes=plain.stat().st_size + 1) is None
    assert split.plan(plain, 0.5, min_bytes=0) is not None
