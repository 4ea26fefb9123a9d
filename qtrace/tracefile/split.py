"""Decode a big trace file in two processes: this one reads the first part, a helper the rest.

Decoding is most of the time a report spends on a big trace (msgspec's decode, then the
events' fields into columns: Python work, one core). For a plain (not gzip) ``.json`` file of at
least `SPLIT_MIN_BYTES`, on a machine that gives this process two or more cores, the file is cut
at an event boundary: this process decodes the header and the events before the cut, a helper
(``python -m qtrace.tracefile.split``, which imports msgspec and numpy only) decodes the events
after it and the rest of the top-level object, and sends back its columns (a msgpack header,
then each column's raw bytes: no pickle) which are appended after this process's own, texts and
shapes re-coded into this process's tables. The tables are the ones a one-process decode gives,
row for row.

Each part must decode on its own: this process's part as the header plus an array closed right
at the cut, the helper's as the header plus an array opened at the cut. When either does not
(a cut inside a string, a layout other than Kineto's, a damaged file) or the helper fails in any
way, the caller decodes the file in one process instead, which gives the same tables or the same
one-line error. A gzip file is never split: its second half cannot be read without inflating the
first.

`start` may be called early (before pandas is imported, say), so that the helper decodes while
this process is still importing; `load_trace` then claims it. `qtrace report FILE` does
(qtrace.cli.early_decode).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import msgspec
import numpy as np

from qtrace.tracefile.decode import (
    _EVENTS_KEY,
    _KINETO_SEP,
    _TABLE_COLUMNS,
    CHUNK_BYTES,
    _Columns,
    _Fallback,
    _last_separator,
    _stream_decode_blocks,
)

SPLIT_MIN_BYTES = 64 << 20  # below this a helper's start-up (~0.1 s) outweighs what it saves
# This process's share of the events. Even, also when the helper starts before the report's imports
# (qtrace.cli.early_decode): 0.40, 0.45, 0.55 and 0.60 were tried on the 407 MB trace and the
# run-to-run spread (about 0.4 s) hid any difference (docs/robustness.md, "Early start, forked
# sections, fast exit").
FRACTION = 0.5
_WINDOW = 1 << 20  # bytes read around a planned cut to find an event boundary
_HEADER_LIMIT = 1 << 20  # a header longer than this: no split (Kineto's is a few kB)
_EXIT_NO_DECODE = 3


@dataclass
class Helper:
    """A running helper and where it cut the file."""

    path: Path
    size: int
    mtime_ns: int
    header_end: int  # just after the traceEvents array's '['
    close: int  # just after the '}' of the last event this process decodes
    start: int  # the '{' of the helper's first event
    proc: subprocess.Popen

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.kill()
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            self.proc.wait(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


_STARTED: dict[str, Helper] = {}


def usable_cores() -> int:
    """CPUs this process may run on (its affinity where the system says, else all)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def plan(path: Path, fraction: float, min_bytes: int = SPLIT_MIN_BYTES) -> tuple[int, int, int] | None:
    """(header_end, close, start) of a cut near `fraction` of the file, or None when it is not split."""
    try:
        size = path.stat().st_size
        if size < max(min_bytes, 2 * _WINDOW) or usable_cores() < 2:
            return None
        with open(path, "rb") as fh:
            head = fh.read(_HEADER_LIMIT)
            if head[:2] == b"\x1f\x8b":
                return None
            m = _EVENTS_KEY.search(head)
            if m is None:
                return None
            header_end = m.end()
            fh.seek(max(header_end, int(size * fraction)))
            at = fh.tell()
            window = fh.read(_WINDOW)
    except OSError:
        return None
    i = window.find(_KINETO_SEP)
    if i >= 0:
        close, start = i + 4, i + len(_KINETO_SEP) - 1
    else:
        sep = _last_separator(bytearray(window), 0)
        if sep is None:
            return None
        close, start = sep
    return header_end, at + close, at + start


def start(path: str | os.PathLike, fraction: float = FRACTION, chunk_bytes: int = CHUNK_BYTES,
          min_bytes: int = SPLIT_MIN_BYTES) -> Helper | None:
    """Start a helper on the part of `path` after a cut near `fraction`; None when the file is not split."""
    p = Path(path)
    key = str(p.resolve())
    if key in _STARTED:
        return _STARTED[key]
    cut = plan(p, fraction, min_bytes)
    if cut is None:
        return None
    header_end, close, first = cut
    st = p.stat()
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])  # the helper imports this very qtrace
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "qtrace.tracefile.split", str(p), str(header_end), str(first), str(chunk_bytes)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    except OSError:
        return None
    helper = Helper(path=p, size=st.st_size, mtime_ns=st.st_mtime_ns, header_end=header_end, close=close,
                    start=first, proc=proc)
    _STARTED[key] = helper
    return helper


def claim(path: Path) -> Helper | None:
    """The helper started for `path` (removed from the registry), if the file is unchanged since."""
    helper = _STARTED.pop(str(path.resolve()), None)
    if helper is None:
        return None
    try:
        st = path.stat()
    except OSError:
        st = None
    if st is None or (st.st_size, st.st_mtime_ns) != (helper.size, helper.mtime_ns):
        helper.stop()
        return None
    return helper


def helper_for(path: Path, chunk_bytes: int = CHUNK_BYTES, min_bytes: int = SPLIT_MIN_BYTES) -> Helper | None:
    """The helper started early for `path`, else one started now (an even cut), else None."""
    helper = claim(path)
    if helper is None and start(path, FRACTION, chunk_bytes, min_bytes) is not None:
        helper = claim(path)
    return helper


@atexit.register
def _stop_all() -> None:
    while _STARTED:
        _STARTED.popitem()[1].stop()


def _range_blocks(path: Path, lo: int, hi: int | None, size: int) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        fh.seek(lo)
        left = None if hi is None else hi - lo
        while left is None or left > 0:
            block = fh.read(size if left is None else min(size, left))
            if not block:
                break
            if left is not None:
                left -= len(block)
            yield block


def decode(helper: Helper, chunk_bytes: int = CHUNK_BYTES) -> tuple[_Columns, dict[str, Any]]:
    """This process's part, then the helper's appended; raises _Fallback (helper stopped) when either fails."""
    try:
        rest: list[bytes] = []

        def mine() -> Iterator[bytes]:
            yield from _range_blocks(helper.path, 0, helper.close, chunk_bytes)
            yield b"]}"

        try:
            cols, _ = _stream_decode_blocks(mine(), chunk_bytes, rest_out=rest)
        except Exception as exc:  # any failure of this part: the one-process decode says what is wrong
            raise _Fallback from exc
        if rest != [b"}"]:  # the array ended before the cut: the cut is not inside traceEvents
            raise _Fallback
        metadata = _receive(helper.proc.stdout, cols)
        if helper.proc.wait() != 0:
            raise _Fallback
        return cols, metadata
    except BaseException:
        helper.stop()
        raise
    finally:
        if helper.proc.stdout is not None:
            helper.proc.stdout.close()


# ---------------------------------------------------------------------------------------
# The helper's message: 8-byte length, msgpack header, then each column's bytes in header order.

_HEADER_TYPE = dict[str, Any]


def _send(out: IO[bytes], cols: _Columns, metadata: dict[str, Any]) -> None:
    columns = [[t, c, len(cols.pieces[t][c])] for t in _TABLE_COLUMNS for c in _TABLE_COLUMNS[t]]
    header = msgspec.msgpack.encode({"texts": cols.texts.values, "raws": cols.raws.values,
                                     "other": cols.other_cats, "metadata": metadata, "columns": columns})
    out.write(len(header).to_bytes(8, "little"))
    out.write(header)
    for t, c, _ in columns:
        for part in cols.pieces[t][c].parts():
            out.write(memoryview(part).cast("B"))
    out.flush()


def _read_exact(src: IO[bytes], n: int) -> bytes:
    data = src.read(n)
    if len(data) != n:
        raise _Fallback
    return data


def _receive(src: IO[bytes] | None, cols: _Columns) -> dict[str, Any]:
    """Append the helper's columns to `cols`; its metadata (the file's: it decoded the end of the object)."""
    if src is None:
        raise _Fallback
    n = int.from_bytes(_read_exact(src, 8), "little")
    if n > 1 << 34:
        raise _Fallback
    try:
        head = msgspec.msgpack.decode(_read_exact(src, n), type=_HEADER_TYPE)
        texts, raws = list(head["texts"]), list(head["raws"])
        other, metadata, columns = dict(head["other"]), dict(head["metadata"]), list(head["columns"])
    except (msgspec.DecodeError, msgspec.ValidationError, KeyError, TypeError):
        raise _Fallback from None
    text_codes = _recode_texts(cols, texts)
    raw_codes = _recode_raws(cols, raws)
    for t, c, count in columns:
        col = cols.pieces[t][c]
        arr = np.empty(count, dtype=col.dtype)
        view = memoryview(arr).cast("B")
        got = 0
        while got < len(view):  # readinto may return less than asked from a pipe
            k = src.readinto(view[got:])
            if not k:
                raise _Fallback
            got += k
        if col.dtype == np.int32:  # codes: the helper's tables' into this process's
            table = raw_codes if c in ("input_dims", "input_type", "input_strides") else text_codes
            if count and (arr.min() < 0 or arr.max() >= len(table)):
                raise _Fallback
            arr = table[arr]
        col.append(arr)
        del arr, view
    for cat, k in other.items():
        cols.other_cats[cat] = cols.other_cats.get(cat, 0) + k
    return metadata


def _recode_texts(cols: _Columns, texts: list[str]) -> np.ndarray:
    """This process's code of each helper text (by text: the key an int pid was stored under is its text here)."""
    table = cols.texts
    by_text: dict[str, int] = {}
    for code, value in enumerate(table.values):
        by_text.setdefault(value, code)
    out = np.empty(len(texts), dtype=np.int32)
    for i, value in enumerate(texts):
        code = by_text.get(value)
        if code is None:
            code = by_text[value] = table.add(("split", value), value)  # a key no decoded value can equal
        out[i] = code
    return out


def _recode_raws(cols: _Columns, raws: list[bytes | None]) -> np.ndarray:
    table = cols.raws
    out = np.empty(len(raws), dtype=np.int32)
    for i, value in enumerate(raws):
        key = b"" if value is None else bytes(value)
        code = table.code_of.get(key)
        out[i] = table.add(key, value) if code is None else code
    return out


# ---------------------------------------------------------------------------------------
# The helper process


def _helper_main(argv: list[str]) -> int:
    path, header_end, first, chunk_bytes = Path(argv[0]), int(argv[1]), int(argv[2]), int(argv[3])

    def blocks() -> Iterator[bytes]:
        yield from _range_blocks(path, 0, header_end, chunk_bytes)  # the header, ending with the array's '['
        yield from _range_blocks(path, first, None, chunk_bytes)

    try:
        cols, metadata = _stream_decode_blocks(blocks(), chunk_bytes)
        _send(sys.stdout.buffer, cols, metadata)
    except BrokenPipeError:  # the parent gave up on this part
        return _EXIT_NO_DECODE
    except Exception:  # noqa: BLE001 (any failure: the parent decodes the file in one process)
        return _EXIT_NO_DECODE
    return 0


if __name__ == "__main__":
    sys.exit(_helper_main(sys.argv[1:]))
