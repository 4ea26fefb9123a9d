"""Decode a Kineto (torch.profiler) Chrome trace's JSON into column arrays: msgspec and numpy only.

Only the fields qtrace uses are decoded: msgspec decodes the JSON straight into small typed
structs and skips every other key at C speed; each chunk's events become numpy columns (texts
and shapes as codes into tables of their distinct values) before the next chunk is decoded.
This module imports no pandas, so a helper process decoding part of a big file
(qtrace.tracefile.split) starts in a fraction of a second; qtrace.tracefile.kineto builds the
DataFrames from its columns.
"""

from __future__ import annotations

import contextlib
import gzip
import operator
import os
import re
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import msgspec
import numpy as np

from qtrace.errors import TraceFormatError
from qtrace.tracefile.blocks import BlockColumn, CodeTable

try:  # the C scanner (_kineto_scan.c), which pip builds where a C compiler is found
    from qtrace.tracefile import _kineto_scan
except ImportError:  # not built: every chunk goes through msgspec (the same tables, slower)
    _kineto_scan = None

HOST_RANGE_CATS = ("cpu_op", "user_annotation", "python_function")
RUNTIME_CATS = ("cuda_runtime", "cuda_driver")
GPU_CATS = ("kernel", "gpu_memcpy", "gpu_memset")
MEMORY_EVENT = "[memory]"
# Categories of older or other Kineto builds, read as the current ones: PyTorch 1.8/1.9 wrote
# Operator/Runtime/Kernel/Memcpy/Memset; roctracer builds of some releases write hip_runtime.
# (A legacy ``Operator`` named ProfilerStep#N is a step annotation: see build_trace.)
LEGACY_CATS = {"Operator": "cpu_op", "Runtime": "cuda_runtime", "Driver": "cuda_driver", "Kernel": "kernel",
               "Memcpy": "gpu_memcpy", "Memset": "gpu_memset", "User Annotation": "user_annotation",
               "Python": "python_function", "hip_runtime": "cuda_runtime", "hip_driver": "cuda_driver"}
# Device activity qtrace does not attribute, but names in a report (what the trace holds).
OTHER_DEVICE_CATS = ("mtia_ccp_events", "mtia_runtime", "cuda_profiler_range", "gpu_user_annotation")

_NO_RAW = msgspec.Raw(b"")
# Integer fields are int64 columns. The smallest int64 marks "field absent" while decoding, so it
# is refused as a value (any integer outside int64 is refused too: one clear error, not a crash).
_NA = -(2**63)
_Int = Annotated[int, msgspec.Meta(ge=_NA + 1, le=2**63 - 1)]
# ROCm (roctracer) traces write some integers as text ("bytes": "1", "stream": "0x0"): accepted
# here, turned into numbers (or "absent" when they are not numbers) when the columns are built.
_IntArg = _Int | str | None


class _Args(msgspec.Struct, gc=False):
    external_id: _IntArg = msgspec.field(name="External id", default=_NA)
    correlation: _IntArg = _NA
    device: _IntArg = _NA
    stream: _IntArg = _NA
    bytes: _IntArg = _NA
    mem_bytes: _IntArg = msgspec.field(name="Bytes", default=_NA)
    addr: _IntArg = msgspec.field(name="Addr", default=_NA)
    total_allocated: _IntArg = msgspec.field(name="Total Allocated", default=_NA)
    total_reserved: _IntArg = msgspec.field(name="Total Reserved", default=_NA)
    device_id: _IntArg = msgspec.field(name="Device Id", default=_NA)
    device_type: _IntArg = msgspec.field(name="Device Type", default=_NA)
    # A peer copy (Memcpy PtoP) names its devices instead of "device": source, the device that ran it, target.
    from_device: _IntArg = msgspec.field(name="fromDevice", default=_NA)
    in_device: _IntArg = msgspec.field(name="inDevice", default=_NA)
    to_device: _IntArg = msgspec.field(name="toDevice", default=_NA)
    # Shapes stay raw JSON text until an analyzer asks for them (roofline, outlier counts).
    input_dims: msgspec.Raw = msgspec.field(name="Input Dims", default=_NO_RAW)
    input_type: msgspec.Raw = msgspec.field(name="Input type", default=_NO_RAW)
    # Strides say which inputs are expanded views (a stride of 0): an embedding's gather index is
    # [tokens, hidden] in "Input Dims" but holds one value per token.
    input_strides: msgspec.Raw = msgspec.field(name="Input Strides", default=_NO_RAW)


_EMPTY_ARGS = _Args()


class _Event(msgspec.Struct, gc=False):
    ph: str = ""
    cat: str = ""
    name: str = ""
    pid: int | str = 0
    tid: int | str = 0
    ts: float | None = None
    dur: float | None = None
    args: _Args | None = None


class _TraceFile(msgspec.Struct):
    traceEvents: list[_Event]  # noqa: N815 (the Chrome trace key)



# ---------------------------------------------------------------------------------------
# Reading bytes


def _check_file(p: Path) -> None:
    if not p.exists():
        raise TraceFormatError(f"{p}: no such file")
    if p.is_dir():
        raise TraceFormatError(f"{p}: is a folder, not a trace file")


def read_bytes(path: str | os.PathLike) -> bytes:
    """The decompressed bytes of a .json or .json.gz file, or one clear TraceFormatError."""
    p = Path(path)
    _check_file(p)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise TraceFormatError(f"{p}: cannot read ({exc.strerror})") from None
    if not raw:
        raise TraceFormatError(f"{p}: empty file")
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise TraceFormatError(f"{p}: damaged or truncated gzip file ({exc})") from None
        if not raw:
            raise TraceFormatError(f"{p}: empty file inside gzip")
    return raw


_READ_BLOCK = 1 << 20  # compressed bytes read at a time


def _blocks(p: Path, size: int) -> Iterator[bytes]:
    """The decompressed content of `p` in blocks of about `size` bytes; TraceFormatError on bad input."""
    _check_file(p)
    try:
        fh = open(p, "rb")  # noqa: SIM115 (closed by the with below; open errors get their own message)
    except OSError as exc:
        raise TraceFormatError(f"{p}: cannot read ({exc.strerror})") from None
    with fh:
        try:
            head = fh.read(2)
            if not head:
                raise TraceFormatError(f"{p}: empty file")
            fh.seek(0)
            if head != b"\x1f\x8b":
                while block := fh.read(size):
                    yield block
                return
            yield from _gunzip(p, fh, size)
        except OSError as exc:
            raise TraceFormatError(f"{p}: cannot read ({exc.strerror or exc})") from None


def _gunzip(p: Path, fh: Any, size: int) -> Iterator[bytes]:
    """Stream-decompress a (possibly multi-member, zero-padded) gzip file as strictly as gzip.decompress."""
    d = zlib.decompressobj(wbits=31)
    total = 0
    data = b""
    try:
        while True:
            if not data:
                data = fh.read(_READ_BLOCK)
                if not data:
                    if not d.eof:
                        raise TraceFormatError(f"{p}: damaged or truncated gzip file (Compressed file ended "
                                               "before the end-of-stream marker was reached)")
                    break
            out = d.decompress(data, size)
            data = d.unconsumed_tail
            if out:
                total += len(out)
                yield out
            if d.eof:
                # Another member may follow, after optional zero padding; nothing else may.
                rest = d.unused_data + data
                while True:
                    rest = rest.lstrip(b"\x00")
                    if len(rest) >= 2:
                        break
                    more = fh.read(_READ_BLOCK)
                    if not more:
                        break
                    rest += more
                if not rest:
                    break
                if rest[:2] != b"\x1f\x8b":
                    raise TraceFormatError(f"{p}: damaged or truncated gzip file (trailing garbage after the "
                                           "compressed data)")
                d = zlib.decompressobj(wbits=31)
                data = rest
    except zlib.error as exc:
        raise TraceFormatError(f"{p}: damaged or truncated gzip file ({exc})") from None
    if not total:
        raise TraceFormatError(f"{p}: empty file inside gzip")


# ---------------------------------------------------------------------------------------
# Decoding


class _Top(msgspec.Struct):
    schemaVersion: Any = None  # noqa: N815
    deviceProperties: Any = None  # noqa: N815
    qtrace: Any = None
    distributedInfo: Any = None  # noqa: N815
    baseTimeNanoseconds: Any = None  # noqa: N815
    displayTimeUnit: Any = None  # noqa: N815
    traceName: Any = None  # noqa: N815
    record_shapes: Any = None
    profile_memory: Any = None
    with_stack: Any = None


class _StreamTop(_Top):
    traceEvents: Any = None  # noqa: N815 (here: the sentinel that stands in for the streamed array)


_META_KEYS = _Top.__struct_fields__


def _metadata_of(top: _Top | _StreamTop) -> dict[str, Any]:
    out = {k: getattr(top, k) for k in _META_KEYS if getattr(top, k) is not None}
    if isinstance(out.get("qtrace"), str):  # add_metadata_json stores a JSON value; tolerate a string
        with contextlib.suppress(msgspec.DecodeError, UnicodeDecodeError):
            out["qtrace"] = msgspec.json.decode(out["qtrace"])
    return out


def _split_metadata(raw: bytes) -> dict[str, Any]:
    """Top-level keys other than traceEvents (deviceProperties, qtrace, distributedInfo...)."""
    return _metadata_of(msgspec.json.decode(raw, type=_Top))


_EVENTS_DECODER = msgspec.json.Decoder(list[_Event])
_EVENTS_KEY = re.compile(rb'"traceEvents"\s*:\s*\[')
_KINETO_SEP = b"\n  },\n  {"  # how Kineto separates events
_ANY_SEP = re.compile(rb"\}\s*,\s*\{")
_SENTINEL = b'"\\u0000qtrace: streamed traceEvents"'
_SENTINEL_VALUE = "\x00qtrace: streamed traceEvents"
CHUNK_BYTES = 1 << 20  # text decoded at a time when streaming: small enough to stay in the CPU cache
_MAX_HEADER = 256 << 20
_MAX_TAIL_TRIES = 16
_MAX_REST = 64 << 20  # what may follow a piece that does not decode (the rest of the file)
_MAX_TAIL_WORK = 64 << 20  # bytes decoded while looking for the end of the array


class _Fallback(Exception):
    """The file is not laid out as expected for streaming: decode it whole instead."""


def _last_separator(buf: bytearray, start: int) -> tuple[int, int] | None:
    """(index just after the '}' closing an event, index of the next event's '{') of the last separator."""
    i = buf.rfind(_KINETO_SEP, start)
    if i >= 0:
        return i + 4, i + len(_KINETO_SEP) - 1
    window = 1 << 16
    hi = len(buf)
    while hi > start:
        lo = max(start, hi - window)
        last = None
        for m in _ANY_SEP.finditer(buf, lo, hi):
            last = m
        if last is not None:
            return last.start() + 1, last.end() - 1
        if lo == start:
            break
        hi = lo + 16  # overlap: a separator may straddle the window edge
        window *= 4
    return None


def _decode_into(cols: _Columns, buf: bytearray, end: int) -> bool:
    """Decode buf[:end] (a JSON array of events) into `cols`, without copying; False if it does not decode."""
    mv = memoryview(buf)
    piece = mv[:end]
    if cols.scan(piece):
        piece.release()
        mv.release()
        return True
    try:
        events = _EVENTS_DECODER.decode(piece)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
        piece.release()
        mv.release()
        return False
    cols.add(events)
    del events  # Raw shapes point into `buf`: they must be gone before the views are released
    piece.release()
    mv.release()
    return True


def _stream_decode(p: Path, chunk_bytes: int) -> tuple[_Columns, dict[str, Any]]:
    """Decode `p` chunk by chunk into columns. Raises _Fallback when the layout does not allow it."""
    blocks = _blocks(p, chunk_bytes)
    try:
        return _stream_decode_blocks(blocks, chunk_bytes)
    finally:
        blocks.close()


_WS = frozenset(b" \t\r\n")


def _stream_decode_blocks(blocks: Iterator[bytes], chunk_bytes: int,
                          rest_out: list[bytes] | None = None) -> tuple[_Columns, dict[str, Any]]:
    """Columns and metadata of the trace text that `blocks` yield; `rest_out` (if given) receives what
    follows the array's closing ']' (qtrace.tracefile.split checks where the array ended)."""
    buf = bytearray()
    eof = False

    def fill(n: int) -> None:
        nonlocal eof
        while len(buf) < n and not eof:
            b = next(blocks, None)
            if b is None:
                eof = True
            else:
                buf.extend(b)

    # Header: everything before the traceEvents array.
    m = None
    while m is None:
        fill(len(buf) + chunk_bytes)
        m = _EVENTS_KEY.search(buf)
        if m is None and (eof or len(buf) > _MAX_HEADER):
            raise _Fallback
    prefix = bytes(buf[: m.end() - 1])
    del buf[: m.end() - 1]  # buf[0] is the array's '['; it stays so: each chunk decodes in place

    cols = _Columns()
    while True:
        fill(chunk_bytes)
        if eof:
            break
        sep = _last_separator(buf, 1)
        if sep is None:
            if len(buf) > _MAX_HEADER:
                raise _Fallback
            fill(len(buf) + chunk_bytes)
            continue
        close, nxt = sep
        was = buf[close]
        buf[close] = 0x5D  # ']' ends this chunk's array...
        if not _decode_into(cols, buf, close + 1):
            # The array may end inside this piece, the separator found lying in what follows it (a
            # list of objects after traceEvents): read the rest and let the tail search sort it out.
            buf[close] = was
            fill(len(buf) + _MAX_REST)
            if not eof:
                raise _Fallback
            break
        del buf[: nxt - 1]
        buf[0] = 0x5B  # ...and '[' starts the next one

    # Tail: the last events, the ']' closing the array, then the rest of the top-level object. From
    # the right, the first ']' after which the rest decodes as that object (cheap: the rest is short)
    # and before which the events decode as an array is the one; a wrong guess fails one of the two.
    spent = tried = 0
    pos = len(buf)
    while True:
        pos = buf.rfind(b"]", 1, pos)
        if pos < 0 or spent > _MAX_TAIL_WORK or tried >= _MAX_TAIL_TRIES:
            raise _Fallback
        last = pos - 1
        while last > 0 and buf[last] in _WS:
            last -= 1
        if last > 0 and buf[last] != 0x7D:  # the array ends with an event's '}' (or is empty)
            continue
        spent += len(buf) - pos
        try:
            top = msgspec.json.decode(prefix + _SENTINEL + bytes(buf[pos + 1:]), type=_StreamTop)
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
            continue
        if top.traceEvents != _SENTINEL_VALUE:
            continue
        tried += 1
        if _decode_into(cols, buf, pos + 1):
            break
    cols.flush()
    if rest_out is not None:
        rest_out.append(bytes(buf[pos + 1:]))
    return cols, _metadata_of(top)


# ---------------------------------------------------------------------------------------
# Columns

_KIND_GPU, _KIND_HOST, _KIND_RUNTIME, _KIND_MEMORY = 1, 2, 3, 4
_X_KIND = {**{c: _KIND_GPU for c in GPU_CATS}, **{c: _KIND_HOST for c in HOST_RANGE_CATS},
           **{c: _KIND_RUNTIME for c in RUNTIME_CATS}}
_X_KIND.update({old: _X_KIND[new] for old, new in LEGACY_CATS.items()})

RAW_COLS = ("input_dims", "input_type", "input_strides")
HOST_COLUMNS = ("name", "cat", "pid", "tid", "ts", "dur", "ext_id", *RAW_COLS)
RUNTIME_COLUMNS = ("name", "cat", "pid", "tid", "ts", "dur", "ext_id", "correlation")
GPU_COLUMNS = ("name", "cat", "device", "stream", "ts", "dur", "ext_id", "correlation", "bytes", "src_device",
               "dst_device")
MEMORY_COLUMNS = ("pid", "tid", "ts", "device_type", "device_id", "addr", "bytes", "total_allocated",
                  "total_reserved")
_STR_COLS = ("name", "cat", "pid", "tid")
_ARG_FIELD = {"ext_id": "external_id", "correlation": "correlation", "device": "device", "stream": "stream",
              "bytes": "bytes", "device_type": "device_type", "device_id": "device_id", "addr": "addr",
              "total_allocated": "total_allocated", "total_reserved": "total_reserved",
              "input_dims": "input_dims", "input_type": "input_type", "input_strides": "input_strides",
              "src_device": "from_device",
              "dst_device": "to_device"}
_MEM_ARG_FIELD = {**_ARG_FIELD, "bytes": "mem_bytes"}


class _Columns:
    """The four tables' columns, appended chunk by chunk (qtrace.tracefile.blocks); texts and shapes
    as codes into tables of their distinct values."""

    def __init__(self, scanner: bool = True) -> None:
        self.pieces: dict[str, dict[str, BlockColumn]] = {
            t: {c: BlockColumn(_piece_dtype(c)) for c in columns} for t, columns in _TABLE_COLUMNS.items()}
        self.texts = CodeTable()
        self.raws = CodeTable()
        self.raws.add(b"", None)  # no shapes recorded: None
        self.other_cats: dict[str, int] = {}
        # The C scanner's own texts and raw values are numbered in its order: these map them to ours.
        self.scanner = _kineto_scan.Scanner(_SCAN_KIND_OF, _COUNTED_CATS) if scanner and _SCANNER_OK else None
        self._text_of_scan = np.zeros(0, dtype=np.int32)
        self._raw_of_scan = np.zeros(0, dtype=np.int32)

    def scan(self, piece: Any) -> bool:
        """Append a chunk (a JSON array of events) through the C scanner; False when it does not read
        it (no scanner, or a chunk only msgspec reads or refuses): then nothing of it was appended."""
        if self.scanner is None:
            return False
        held = self.scanner.scan(piece)
        if held < 0:
            self.flush()  # the rows before this chunk first: msgspec appends this one's next
            return False
        if held >= _SCAN_HOLD_BYTES:
            self.flush()
        return True

    def flush(self) -> None:
        """Append the rows the C scanner holds to the columns (in file order, before any later chunk's)."""
        if self.scanner is None:
            return
        new_texts, new_raws, tables, other = self.scanner.take()
        if new_texts:
            texts = [t.decode() for t in new_texts]  # valid UTF-8: the scanner checked it
            code_of, table = self.texts.code_of, self.texts
            codes = [code_of[t] if t in code_of else table.add(t, t) for t in texts]
            self._text_of_scan = np.append(self._text_of_scan, np.array(codes, dtype=np.int32))
        if new_raws:
            code_of, table = self.raws.code_of, self.raws
            codes = [code_of[r] if r in code_of else table.add(r, r) for r in new_raws]
            self._raw_of_scan = np.append(self._raw_of_scan, np.array(codes, dtype=np.int32))
        for table, columns in zip(_SCAN_TABLES, tables, strict=True):
            if not columns[0]:
                continue
            out = self.pieces[table]
            for c, data in zip(_TABLE_COLUMNS[table], columns, strict=True):
                if c in RAW_COLS:
                    arr = self._raw_of_scan[np.frombuffer(data, dtype=np.int32)]
                elif c in _STR_COLS:
                    arr = self._text_of_scan[np.frombuffer(data, dtype=np.int32)]
                else:
                    arr = np.frombuffer(data, dtype=_piece_dtype(c))
                out[c].append(arr)
        for code, k in other.items():
            cat = self.texts.values[self._text_of_scan[code]]
            self.other_cats[cat] = self.other_cats.get(cat, 0) + k

    def _str(self, values: list) -> np.ndarray:
        table = self.texts
        code_of = table.code_of
        uniq = set(values)
        for v in uniq.difference(code_of):
            # pid/tid are ints or strings: the column holds their text, as str(v) would give.
            table.add(v, v if isinstance(v, str) else str(v))
        if len(uniq) == 1:  # one thread, one category: common within a chunk
            return np.full(len(values), code_of[values[0]], dtype=np.int32)
        return np.fromiter(map(code_of.__getitem__, values), dtype=np.int32, count=len(values))

    def _raw(self, values: list) -> np.ndarray:
        vals = list(map(bytes, values))
        table = self.raws
        code_of = table.code_of
        for v in set(vals).difference(code_of):
            table.add(v, v)
        return np.fromiter(map(code_of.__getitem__, vals), dtype=np.int32, count=len(vals))

    def add(self, events: list[_Event]) -> None:
        self.flush()  # rows the C scanner holds come first
        if not events:
            return
        kind_of = _X_KIND.get
        kinds = np.array([kind_of(e.cat, 0) if e.ph == "X" else
                          (_KIND_MEMORY if e.ph == "i" and e.name == MEMORY_EVENT else 0) for e in events],
                         dtype=np.int8)
        # Complete events of categories qtrace does not read (MTIA activity, CUPTI counter ranges...):
        # counted, so that a report can say what the trace holds instead of "nothing".
        other = self.other_cats
        for i in np.flatnonzero(kinds == 0).tolist():
            e = events[i]
            if e.ph == "X" and e.cat in _COUNTED_CATS:
                other[e.cat] = other.get(e.cat, 0) + 1
        for table, kind in _TABLE_KINDS:
            idx = np.flatnonzero(kinds == kind)
            if not len(idx):
                continue
            sel = list(map(events.__getitem__, idx.tolist()))
            if kind == _KIND_MEMORY:
                sel = [e for e in sel if e.args is not None and e.ts is not None]
            elif None in map(_get_ts, sel):
                sel = [e for e in sel if e.ts is not None]
            if sel:
                self._add_table(table, sel)

    def _add_table(self, table: str, sel: list[_Event]) -> None:
        out = self.pieces[table]
        if "name" in out:
            out["name"].append(self._str([e.name for e in sel]))
            out["cat"].append(self._str([e.cat for e in sel]))
        if "pid" in out:
            out["pid"].append(self._str([e.pid for e in sel]))
            out["tid"].append(self._str([e.tid for e in sel]))
        out["ts"].append(np.array([e.ts for e in sel], dtype=np.float64))
        if "dur" in out:
            vals = [e.dur for e in sel]
            if None in vals:
                vals = [0.0 if x is None else x for x in vals]
            arr = np.array(vals, dtype=np.float64)
            arr[arr == 0.0] = 0.0  # `dur or 0.0`: a -0.0 becomes 0.0
            out["dur"].append(arr)
        args = [_EMPTY_ARGS if e.args is None else e.args for e in sel]
        for c, get in _ARG_GETTERS[table]:
            vals = list(map(get, args))
            if c in RAW_COLS:
                out[c].append(self._raw(vals))
            else:
                if None in vals:  # an explicit null: absent too
                    vals = [_NA if v is None else v for v in vals]
                try:
                    arr = np.array(vals, dtype=np.int64)
                except (ValueError, TypeError, OverflowError):  # text such as "0x0" (ROCm)
                    arr = np.array([_int_of(v) for v in vals], dtype=np.int64)
                out[c].append(arr)


def _piece_dtype(column: str) -> type:
    """What a column is appended as: codes for texts and shapes, floats for times, else int64."""
    if column in _STR_COLS or column in RAW_COLS:
        return np.int32
    return np.float64 if column in ("ts", "dur") else np.int64


_COUNTED_CATS = frozenset(OTHER_DEVICE_CATS)
_TABLE_COLUMNS = {"host": HOST_COLUMNS, "runtime": RUNTIME_COLUMNS, "gpu": GPU_COLUMNS, "memory": MEMORY_COLUMNS}
_TABLE_KINDS = (("gpu", _KIND_GPU), ("host", _KIND_HOST), ("runtime", _KIND_RUNTIME), ("memory", _KIND_MEMORY))
_get_ts = operator.attrgetter("ts")
_ARG_GETTERS = {t: [(c, operator.attrgetter((_MEM_ARG_FIELD if t == "memory" else _ARG_FIELD)[c]))
                    for c in cols if c in _ARG_FIELD] for t, cols in _TABLE_COLUMNS.items()}


# What the C scanner is told: the table (in its order, _SCAN_TABLES) that a complete event of each
# category goes to, and the categories it counts. Its column layout is checked against ours, so a
# stale build is not used.
_SCAN_TABLES = ("gpu", "host", "runtime", "memory")
# Rows the scanner holds before they are appended here: few appends per column, and its buffers stay
# small enough to be reused rather than handed back and mapped again.
_SCAN_HOLD_BYTES = 4 << 20
_SCAN_KIND_OF = {cat: _SCAN_TABLES.index(next(t for t, k in _TABLE_KINDS if k == kind))
                 for cat, kind in _X_KIND.items()}


def _layout(table: str) -> str:
    return "".join("R" if c in RAW_COLS else "T" if c in _STR_COLS else "F" if c in ("ts", "dur") else "I"
                   for c in _TABLE_COLUMNS[table])


_SCANNER_OK = _kineto_scan is not None and all(
    getattr(_kineto_scan, f"TABLE_LAYOUT_{t.upper()}", None) == _layout(t) for t in _SCAN_TABLES)


def _gpu_device(a: _Args) -> Any:
    """The device a GPU event ran on: its "device" argument, else (peer copies) its "inDevice"."""
    d = a.device
    return a.in_device if d is None or d == _NA else d


_ARG_GETTERS["gpu"] = [(c, _gpu_device if c == "device" else get) for c, get in _ARG_GETTERS["gpu"]]


def _int_of(v: int | str) -> int:
    """An integer argument written as text ("1", "0x0") as a number; _NA (absent) when it is none."""
    if isinstance(v, int):
        return v
    try:
        n = int(v.strip(), 0)
    except ValueError:
        try:
            n = int(float(v))
        except (ValueError, OverflowError):
            return _NA
    return n if _NA < n < 2**63 else _NA
