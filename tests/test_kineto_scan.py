"""The C trace scanner (qtrace/tracefile/_kineto_scan.c) against the msgspec path it speeds up.

Whatever a chunk holds, the columns appended with the scanner equal those the msgspec path
appends (or both refuse the chunk): on every committed trace, on events built from scratch out
of the fields Kineto writes (numbers, escapes, non-ASCII text, ROCm's numbers as text, nulls,
odd types), and on their text with bytes flipped, dropped or doubled. The scanner must also
really read what Kineto writes, or the comparison would be empty.
"""

from __future__ import annotations

import contextlib
import glob
import json
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qtrace.tracefile import decode, kineto

REPO = Path(__file__).resolve().parents[1]
TRACES = sorted(glob.glob(str(REPO / "traces" / "**" / "*.json*"), recursive=True))
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_scanner_is_built() -> None:
    """The test set-up builds it (a C compiler is there): a missing build fails here, not silently."""
    assert decode._kineto_scan is not None and decode._SCANNER_OK


def _load(path: str, scanner: bool, monkeypatch: pytest.MonkeyPatch) -> kineto.Trace | str:
    init = decode._Columns.__init__
    with monkeypatch.context() as m:
        m.setattr(decode._Columns, "__init__", lambda self, scanner_=scanner: init(self, scanner=scanner_))
        try:
            return kineto.load_trace(path, split_min_bytes=None)
        except Exception as exc:  # noqa: BLE001 (the two paths must fail alike too)
            return f"{type(exc).__name__}: {exc}"


@pytest.mark.parametrize("path", TRACES, ids=[str(Path(p).relative_to(REPO)) for p in TRACES])
def test_committed_traces_same_tables(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    fast, plain = _load(path, True, monkeypatch), _load(path, False, monkeypatch)
    if isinstance(fast, str) or isinstance(plain, str):
        assert fast == plain
        return
    for table in ("ops", "runtime", "gpu", "memory"):
        pd.testing.assert_frame_equal(getattr(fast, table), getattr(plain, table), check_exact=True)
    assert fast.other_events == plain.other_events
    assert fast.metadata == plain.metadata


def test_scanner_reads_kineto_traces(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every chunk msgspec reads the scanner reads too, but for those holding numbers as text (ROCm)."""
    seen: dict[str, list[bool]] = {}
    scan = decode._Columns.scan

    def counted(self: decode._Columns, piece: Any) -> bool:
        got = scan(self, piece)
        if not got:  # declined: only a chunk msgspec refuses too (the stream's tail search tries some) is fine
            try:
                decode._EVENTS_DECODER.decode(piece)
            except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
                got = True
        seen.setdefault(current, []).append(got)
        return got

    monkeypatch.setattr(decode._Columns, "scan", counted)
    for current in TRACES:  # noqa: B007 (read by `counted`)
        with contextlib.suppress(Exception):  # refused traces are checked above
            kineto.load_trace(current, split_min_bytes=None)
    declined = sorted(p for p, got in seen.items() if not all(got))
    assert declined == sorted(p for p in seen if _numbers_as_text(p)), declined
    assert sum(all(got) for got in seen.values()) >= 80  # of the 131 committed traces, 93 stream in chunks


def _numbers_as_text(path: str) -> bool:
    """Some event holds one of the integer arguments written as text (as roctracer builds do)."""
    for ev in msgspec.json.decode(decode.read_bytes(path)).get("traceEvents", []):
        args = ev.get("args") if isinstance(ev, dict) else None
        if isinstance(args, dict) and any(isinstance(args.get(k), str) for k in INT_KEYS):
            return True
    return False


# ---------------------------------------------------------------------------------------------
# Chunks built from scratch


class Num(str):
    """A number written exactly as given."""


def dump(value: Any, style: dict) -> str:
    sep = style["sep"]
    if isinstance(value, Num):
        return str(value)
    if isinstance(value, dict):
        return "{" + ("," + sep).join(f"{dump(k, style)}{sep}:{sep}{dump(v, style)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ("," + sep).join(dump(v, style) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=style["ascii"])
    return json.dumps(value)


texts = st.text(alphabet=st.characters(codec="utf-8"), max_size=12) | st.sampled_from(
    ["", "[memory]", "aten::mm", "void gemm<(char)1>", "é\u2028\U0001F600", "a\"b\\c\n", "\u0000"])
decimals = st.builds(lambda i, f, neg: Num(f"{'-' if neg else ''}{i}.{f}"),
                     st.integers(0, 10**16), st.integers(0, 10**9).map(str) | st.just("000"), st.booleans())
numbers = (decimals | st.integers(-(2**64), 2**64).map(lambda v: Num(str(v)))
           | st.sampled_from([Num("1e3"), Num("0.5E-2"), Num("-0"), Num("-0.0"), Num("9007199254740993"),
                              Num("123456789012345678.5"), Num("0.1234567890123456789012345")]))
json_values = st.recursive(st.none() | st.booleans() | numbers | texts,
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
                           max_leaves=6)
INT_KEYS = ["External id", "correlation", "device", "stream", "bytes", "Bytes", "Addr", "Total Allocated",
            "Total Reserved", "Device Id", "Device Type", "fromDevice", "inDevice", "toDevice"]
RAW_KEYS = ["Input Dims", "Input type", "Input Strides"]
int_values = (st.integers(-(2**63), 2**63 - 1).map(lambda v: Num(str(v))) | st.none()
              | st.sampled_from(["0x0", "12", " 7", "x"]) | numbers)
args = st.dictionaries(st.sampled_from(INT_KEYS), int_values, max_size=6) | st.dictionaries(
    st.sampled_from(RAW_KEYS) | texts, json_values, max_size=3)
CATS = [*decode._X_KIND, *decode.OTHER_DEVICE_CATS, "ac2g", "Trace", ""]
fields = {
    "ph": st.sampled_from(["X", "i", "M", "s", "f", "C", ""]) | json_values,
    "cat": st.sampled_from(CATS) | json_values,
    "name": texts | json_values,
    "pid": st.integers(-(2**70), 2**70).map(lambda v: Num(str(v))) | texts | json_values,
    "tid": st.integers(0, 2**31).map(lambda v: Num(str(v))) | texts,
    "ts": numbers | st.none() | json_values,
    "dur": numbers | st.none(),
    "args": args | st.none() | json_values,
    "id": json_values,
}
events = st.lists(st.fixed_dictionaries({}, optional=fields), min_size=0, max_size=6)
styles = st.fixed_dictionaries({"sep": st.sampled_from(["", " ", "\n  ", "\t"]), "ascii": st.booleans()})


def _columns(piece: bytes, scanner: bool) -> dict | str:
    """Every column appended for `piece` (codes resolved to their values), or "refused"."""
    cols = decode._Columns(scanner=scanner)
    if not cols.scan(piece):
        try:
            evs = decode._EVENTS_DECODER.decode(piece)
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
            return "refused"
        cols.add(evs)
    cols.flush()
    out: dict = {"other": dict(cols.other_cats)}
    for table, columns in cols.pieces.items():
        for c, col in columns.items():
            values = col.build()
            if c in decode.RAW_COLS:
                values = [cols.raws.values[v] for v in values.tolist()]
            elif c in decode._STR_COLS:
                values = [cols.texts.values[v] if isinstance(cols.texts.values[v], str) else str(cols.texts.values[v])
                          for v in values.tolist()]
            else:
                values = values.tobytes()  # exact: -0.0 and NaN compare by their bits
            out[f"{table}.{c}"] = values
    return out


def _same(piece: bytes) -> bool:
    """The two paths agree on `piece`; True when the scanner read it."""
    fast, plain = _columns(piece, True), _columns(piece, False)
    assert fast == plain
    return decode._Columns().scanner.scan(piece) >= 0


@FUZZ
@given(events, styles)
def test_built_chunks_same_columns(evs: list[dict], style: dict) -> None:
    _same(dump(evs, style).encode("utf-8", "surrogatepass"))


@FUZZ
@given(events, styles, st.data())
def test_damaged_chunks_same_columns(evs: list[dict], style: dict, data: st.DataObject) -> None:
    raw = bytearray(dump(evs, style).encode("utf-8", "surrogatepass"))
    for _ in range(data.draw(st.integers(1, 3))):
        if not raw:
            break
        at = data.draw(st.integers(0, len(raw) - 1))
        how = data.draw(st.sampled_from(["flip", "drop", "double", "byte"]))
        if how == "flip":
            raw[at] ^= 1 << data.draw(st.integers(0, 7))
        elif how == "drop":
            del raw[at]
        elif how == "double":
            raw.insert(at, raw[at])
        else:
            raw[at] = data.draw(st.sampled_from(b'",:{}[]\\\x00\x80\xff0e.-'))
    _same(bytes(raw))


KINETO_EVENTS = [
    {"ph": "X", "cat": "kernel", "name": "void gemm<(char)1>", "pid": 0, "tid": 7, "ts": Num("4568426145952.474"),
     "dur": Num("3.5"), "args": {"External id": 5, "device": 0, "stream": 7, "correlation": 12, "grid": [1, 2, 3]}},
    {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "pid": 435, "tid": 435, "ts": Num("10.125"), "dur": Num("2.0"),
     "args": {"External id": 5, "Input Dims": [[1, 128], [128, 896]], "Input type": ["c10::Half", "c10::Half"],
              "Input Strides": [[128, 1], [], [[2, 1]]], "Concrete Inputs": ["", ""]}},
    {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": 435, "tid": 435, "ts": 11, "dur": 1,
     "args": {"External id": 5, "correlation": 12, "cbid": 211}},
    {"ph": "i", "cat": "cpu_instant_event", "name": "[memory]", "pid": 435, "tid": 435, "ts": Num("12.5"), "s": "t",
     "args": {"Total Reserved": 2097152, "Total Allocated": 512, "Bytes": 512, "Addr": 139842, "Device Id": 0,
              "Device Type": 1}},
    {"ph": "X", "cat": "gpu_memcpy", "name": "Memcpy PtoP (Device -> Device)", "pid": 1, "tid": 2, "ts": 13,
     "dur": 4, "args": {"fromDevice": 0, "inDevice": 1, "toDevice": 1, "bytes": 4096, "correlation": 14}},
    {"ph": "X", "cat": "mtia_ccp_events", "name": "x", "pid": 1, "tid": 1, "ts": 1, "dur": 1},
    {"ph": "s", "id": 12, "pid": 435, "tid": 435, "ts": 11, "cat": "ac2g", "name": "ac2g"},
    {"name": "process_name", "ph": "M", "pid": 435, "tid": 0, "args": {"name": "python3"}},
]


@pytest.mark.parametrize("style", [{"sep": " ", "ascii": True}, {"sep": "\n    ", "ascii": False}])
def test_kineto_events_are_read_by_the_scanner(style: dict) -> None:
    assert _same(dump(KINETO_EVENTS, style).encode())
    got = _columns(dump(KINETO_EVENTS, style).encode(), True)
    assert got["other"] == {"mtia_ccp_events": 1}
    assert np.frombuffer(got["gpu.device"], dtype=np.int64).tolist() == [0, 1]  # a peer copy: its inDevice


@pytest.mark.parametrize("text", [
    '[{"ph": "X", "ph": "i"}]',  # a repeated field
    '[{"ph": "X", "cat": "cpu_op", "ts": 1, "args": {"bytes": "1"}}]',  # ROCm: a number as text
    '[{"p\\u0068": "X"}]',  # an escaped key
    '[{"ts": 1e3}]',  # an exponent
    '[{"name": "\\ud800"}]',  # a lone surrogate
    '[{"ts": 1,}]',  # a trailing comma
    '[{"ts": 01}]',  # a leading zero
    '[{"name": "\xff"}]',  # not UTF-8 (written as one byte below)
    '[{"ts": 1.5}] x',  # something after the array
])
def test_scanner_declines_what_it_does_not_read(text: str) -> None:
    piece = text.encode("latin-1")
    cols = decode._Columns()
    before = cols.scanner.scan(b'[{"ph": "X", "cat": "kernel", "ts": 1, "mtia": 0}]')
    assert before > 0
    assert cols.scanner.scan(piece) == -1
    assert cols.scanner.scan(b"[]") == before  # nothing of the declined chunk was kept
    _same(piece)
