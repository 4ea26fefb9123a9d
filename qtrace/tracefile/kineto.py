"""Load a torch.profiler (Kineto) Chrome trace into DataFrames.

Only the fields qtrace uses are decoded: msgspec decodes the JSON straight into small typed
structs and skips every other key at C speed, so a 400 MB trace never becomes millions of
Python dicts. Everything downstream (the analyzers) works on the DataFrames of `Trace`.

Big traces are streamed: the file (or the gzip stream) is read in blocks, the ``traceEvents``
array is cut at event boundaries into chunks of a few MB, and each chunk is decoded and turned
into column arrays before the next one is read. So neither the whole decompressed text nor all
the decoded events are ever in memory at once; names and shapes are interned, numbers go
straight into numpy arrays. Each chunk must decode as a JSON array on its own and the rest of
the file must decode as an object whose ``traceEvents`` is the array we streamed; when the
layout is anything else (or anything is wrong with the file) the loader falls back to decoding
the whole file at once, which gives the same tables, or the same one-line error.

Tables (timestamps in microseconds relative to the first event, as floats):
- ``ops``: host ranges: ``cpu_op``, ``user_annotation`` (record_function, ProfilerStep#N,
  qtrace annotations) and ``python_function``; with ``parent`` (row of the enclosing range on the
  same thread, -1 at the top) and ``depth``. ``input_dims`` / ``input_type`` / ``input_strides`` hold the raw JSON
  bytes of the op's ``Input Dims`` / ``Input type`` (or None); equal values share one object.
- ``runtime``: CUDA runtime/driver calls, with the ``op`` that issued them (innermost range).
- ``gpu``: kernels, GPU memcpy and memset, joined to their launching ``runtime`` call by the
  correlation id and so to ``op``. ``device`` is the GPU that ran the event (a peer copy, which
  Kineto writes without ``device``, gives its ``inDevice``); ``src_device`` / ``dst_device`` are a
  copy's ``fromDevice`` / ``toDevice`` (absent elsewhere).
- ``memory``: allocator ``[memory]`` instant events, with the ``op`` that was running.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pandas as pd

from qtrace.errors import TraceFormatError
from qtrace.tracefile import split
from qtrace.tracefile.blocks import BlockColumn
from qtrace.tracefile.decode import (  # noqa: F401 (names other modules import from here)
    _EVENTS_DECODER,
    _NA,
    _STR_COLS,
    _TABLE_COLUMNS,
    CHUNK_BYTES,
    GPU_CATS,
    HOST_RANGE_CATS,
    LEGACY_CATS,
    MEMORY_EVENT,
    OTHER_DEVICE_CATS,
    RAW_COLS,
    RUNTIME_CATS,
    _Columns,
    _Fallback,
    _split_metadata,
    _stream_decode,
    _TraceFile,
    read_bytes,
)
from qtrace.tracefile.nesting import parents, sweep_order
from qtrace.tracefile.strings import text_column


@dataclass
class Trace:
    """A loaded trace. DataFrames are plain pandas; see the module docstring for columns."""

    source: str
    ops: pd.DataFrame
    runtime: pd.DataFrame
    gpu: pd.DataFrame
    memory: pd.DataFrame
    metadata: dict[str, Any] = field(default_factory=dict)
    base_ts_us: float = 0.0
    # Complete events of device categories qtrace reads but does not attribute (OTHER_DEVICE_CATS):
    # category -> count, so that a report can say what an MTIA or CUPTI-range trace holds.
    other_events: dict[str, int] = field(default_factory=dict)

    @property
    def qtrace_meta(self) -> dict[str, Any]:
        """The ``"qtrace"`` metadata block written by ``qtrace profile`` ({} for foreign traces)."""
        meta = self.metadata.get("qtrace")
        return meta if isinstance(meta, dict) else {}

    @property
    def device_name(self) -> str | None:
        props = self.metadata.get("deviceProperties")
        if isinstance(props, list) and props and isinstance(props[0], dict):
            return props[0].get("name")
        return self.qtrace_meta.get("device_name")

    @property
    def has_gpu(self) -> bool:
        return len(self.gpu) > 0


def load_trace(path: str | os.PathLike, *, stream: bool = True, chunk_bytes: int = CHUNK_BYTES,
               split_min_bytes: int | None = split.SPLIT_MIN_BYTES) -> Trace:
    """Load and validate a Kineto trace. Raises TraceFormatError with one line on bad input.

    `stream=False` decodes the whole file at once (the fallback path; same result). A plain file of
    at least `split_min_bytes` is decoded in two processes (qtrace.tracefile.split; None: never).
    """
    p = Path(path)
    if stream:
        helper = split.helper_for(p, chunk_bytes, split_min_bytes) if split_min_bytes is not None else None
        if helper is not None:
            try:
                cols, metadata = split.decode(helper, chunk_bytes)
            except _Fallback:
                pass
            else:
                return build_trace(cols, source=str(p), metadata=metadata)
        try:
            cols, metadata = _stream_decode(p, chunk_bytes)
        except _Fallback:
            pass
        else:
            return build_trace(cols, source=str(p), metadata=metadata)
    raw = read_bytes(p)
    try:
        if raw.lstrip()[:1] == b"[":
            # The earliest Kineto format (PyTorch 1.8 previews): a bare JSON array of events.
            try:
                decoded = _TraceFile(traceEvents=_EVENTS_DECODER.decode(raw))
            except msgspec.ValidationError:
                raise TraceFormatError(f"{p}: not a torch.profiler trace (the JSON is not an object, nor an array "
                                       "of trace events)") from None
            metadata = {}
        else:
            decoded = msgspec.json.decode(raw, type=_TraceFile)
            metadata = _split_metadata(raw)
    except msgspec.ValidationError as exc:
        msg = str(exc)
        if "missing required field `traceEvents`" in msg:
            raise TraceFormatError(f"{p}: not a torch.profiler trace (no 'traceEvents' list)") from None
        if "Expected `object`" in msg and "$" not in msg.replace("`$`", ""):
            raise TraceFormatError(f"{p}: not a torch.profiler trace (the JSON is not an object)") from None
        raise TraceFormatError(f"{p}: not a valid torch.profiler trace: {msg}") from None
    except msgspec.DecodeError as exc:
        raise TraceFormatError(f"{p}: not valid JSON ({exc})") from None
    except UnicodeDecodeError as exc:  # msgspec checks UTF-8 inside strings
        raise TraceFormatError(f"{p}: not valid JSON (not UTF-8 text: byte {exc.start} of a string)") from None
    del raw
    cols = _Columns()
    cols.add(decoded.traceEvents)
    del decoded
    return build_trace(cols, source=str(p), metadata=metadata)


def _raw_frame(columns: tuple[str, ...], pieces: dict[str, BlockColumn], texts: np.ndarray,
               raws: np.ndarray, keep_codes: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
    """The table of `pieces`; the text codes of its pid and tid columns go into `keep_codes`."""
    n = len(pieces["ts"])
    if n == 0:
        # The dtypes a non-empty table has (pandas would make float64 columns of empty lists, and the
        # analyzers' string methods would fail on a trace with, say, kernels but no host ops).
        return pd.DataFrame({c: pd.array([], dtype=str) if c in _STR_COLS
                             else np.zeros(0, dtype=object) if c in RAW_COLS
                             else np.zeros(0, dtype=np.float64) if c in ("ts", "dur")
                             else pd.array([], dtype="Int64") for c in columns})
    data: dict[str, Any] = {}
    for c in columns:
        values = pieces.pop(c).build()
        if c in _STR_COLS:
            data[c] = text_column(values, texts)
            if keep_codes is not None and c in ("pid", "tid"):
                keep_codes[c] = values
        elif c in RAW_COLS:
            data[c] = raws[values]  # the interned shapes themselves, equal values one object
        elif c in ("ts", "dur"):
            data[c] = values
        else:
            vals = values
            mask = vals == _NA
            vals[mask] = 0
            data[c] = pd.arrays.IntegerArray(vals, mask)
    return pd.DataFrame(data, copy=False)


def _frames(cols: _Columns) -> tuple[dict[str, pd.DataFrame], np.ndarray]:
    """Raw DataFrames (absolute ts, no `end` yet), and a thread key per host range, runtime call
    and memory event (in that order; `_thread_keys`). Consumes the pieces: each column's blocks are
    released as soon as its array is built, so a big trace never holds both whole."""
    out = {}
    texts = np.empty(len(cols.texts.values), dtype=object)
    texts[:] = cols.texts.values
    raws = np.empty(len(cols.raws.values), dtype=object)
    raws[:] = cols.raws.values
    codes: dict[str, dict[str, np.ndarray]] = {}
    for t in _TABLE_COLUMNS:
        codes[t] = {}
        out[t] = _raw_frame(_TABLE_COLUMNS[t], cols.pieces[t], texts, raws, codes[t])
        cols.pieces[t] = {}
    threaded = ("host", "runtime", "memory")
    keys = _thread_keys(*(np.concatenate([codes[t].get(c, np.zeros(len(out[t]), np.int64)) for t in threaded])
                          for c in ("pid", "tid")), texts)
    return out, keys



def build_trace(cols: _Columns, source: str, metadata: dict[str, Any]) -> Trace:
    frames, thread_key = _frames(cols)
    other = dict(cols.other_cats)
    del cols
    if not len(frames["host"]) and not len(frames["gpu"]) and not len(frames["runtime"]):
        found = f" (it holds only {', '.join(f'{n} {c}' for c, n in sorted(other.items()))} events)" if other else ""
        raise TraceFormatError(f"{source}: trace holds no profiler events: no host op, runtime call, kernel or GPU "
                               f"copy{found}")
    for name in ("host", "runtime", "gpu"):
        _legacy_categories(frames[name])
    starts = [float(df["ts"].min()) for df in frames.values() if len(df)]
    base = float(min(starts)) if starts else 0.0
    ops, runtime, gpu, memory = (_finish(frames[k], base) for k in ("host", "runtime", "gpu", "memory"))
    _nest(ops, runtime, memory, thread_key)
    _link_gpu(gpu, runtime)
    for df in (ops, runtime, gpu, memory):
        df.attrs["source"] = source
    return Trace(source=source, ops=ops, runtime=runtime, gpu=gpu, memory=memory, metadata=metadata,
                 base_ts_us=base, other_events=other)


_STEP_NAME = re.compile(r"^ProfilerStep#\d+$")


def _legacy_categories(df: pd.DataFrame) -> None:
    """Old category names as the current ones, in place (a handful of distinct values: cheap).

    PyTorch 1.8/1.9 wrote every host range as ``Operator``, the ProfilerStep#N ranges included;
    those are step annotations, as ``user_annotation`` is today.
    """
    if not len(df) or not df["cat"].isin(list(LEGACY_CATS)).any():
        return
    legacy_op = (df["cat"] == "Operator").to_numpy()
    cat = df["cat"].replace(LEGACY_CATS)
    if legacy_op.any():
        step = legacy_op & df["name"].str.match(_STEP_NAME).to_numpy(dtype=bool)
        cat[step] = "user_annotation"
    df["cat"] = pd.array(cat.to_numpy(dtype=object), dtype=str)


def _finish(df: pd.DataFrame, base: float) -> pd.DataFrame:
    """Relative float timestamps, non-negative durations and `end`."""
    df["ts"] = df["ts"].astype("float64") - base
    if "dur" in df:
        df["dur"] = df["dur"].astype("float64").clip(lower=0.0)
        df["end"] = df["ts"] + df["dur"]
    return df


# ---------------------------------------------------------------------------------------
# Nesting and GPU correlation

_EPS = 1e-3  # tolerance for the float rounding of µs timestamps (Kineto writes 3 decimals)


def _thread_keys(pid: np.ndarray, tid: np.ndarray, texts: np.ndarray) -> np.ndarray:
    """One integer per event naming its thread, from the decoder's codes of its pid and tid texts:
    events whose pid + "/" + tid texts are equal get one key (so "1/2" + "3" and "1" + "2/3" are
    one thread, as a join of the texts would have it)."""
    if not len(pid):
        return np.zeros(0, dtype=np.int64)
    # Each column's used codes numbered densely (a trace has a few pids and tids among thousands of
    # texts), then each distinct pair's text factorized: a few hundred strings, not one per event.
    pid_used = np.flatnonzero(np.bincount(pid, minlength=len(texts)))
    tid_used = np.flatnonzero(np.bincount(tid, minlength=len(texts)))
    dense = np.zeros(len(texts), dtype=np.int64)
    dense[pid_used] = np.arange(len(pid_used))
    pair = dense[pid] * len(tid_used)
    dense[:] = 0
    dense[tid_used] = np.arange(len(tid_used))
    pair += dense[tid]
    del dense
    n_pairs = len(pid_used) * len(tid_used)
    table = n_pairs <= 4 * len(pair)  # a lookup table of every (pid, tid) pair costs no more than the events
    if table:
        used = np.flatnonzero(np.bincount(pair, minlength=n_pairs))
    else:
        used, pair = np.unique(pair, return_inverse=True)
    q, r = np.divmod(used, len(tid_used))
    text = [f"{texts[p]}/{texts[t]}" for p, t in zip(pid_used[q].tolist(), tid_used[r].tolist(), strict=True)]
    key_of_used = pd.factorize(np.array(text, dtype=object))[0]
    if not table:
        return key_of_used[pair.ravel()]
    lookup = np.zeros(n_pairs, dtype=np.int64)
    lookup[used] = key_of_used
    return lookup[pair]


def _nest(ops: pd.DataFrame, runtime: pd.DataFrame, memory: pd.DataFrame, key: np.ndarray) -> None:
    """Give each host range its parent, and each runtime call / memory event its innermost range.

    Ranges on one thread are properly nested in Kineto output; a sweep with a stack of open
    ranges, in (start, longest-first) order, finds the innermost enclosing one for each.
    Ranges sort before runtime calls and memory events with the same start. Only ranges need
    the sweep: a runtime call or memory event at time t lies in the innermost range still open
    then, i.e. the first range, walking up the parents from the last range started before it,
    that has not ended before t (within the tolerance) - a vectorized walk.
    """
    n_ops, n_rt, n_mem = len(ops), len(runtime), len(memory)
    parent = np.full(n_ops, -1, dtype=np.int64)
    depth = np.zeros(n_ops, dtype=np.int32)
    rt_op = np.full(n_rt, -1, dtype=np.int64)
    mem_op = np.full(n_mem, -1, dtype=np.int64)
    total = n_ops + n_rt + n_mem
    if total:
        op_end = ops["end"].to_numpy(dtype=np.float64)
        ts = np.concatenate([df["ts"].to_numpy(dtype=np.float64) for df in (ops, runtime, memory)])
        end = np.concatenate([op_end, runtime["end"].to_numpy(dtype=np.float64),
                              memory["ts"].to_numpy(dtype=np.float64)])
        kind = np.concatenate([np.zeros(n_ops, np.int8), np.ones(n_rt, np.int8), np.full(n_mem, 2, np.int8)])
        order = sweep_order(ts, end, kind, key)  # np.lexsort((-end, kind, ts, key)): equal keys keep file order
        del end
        is_range = kind[order] == 0
        key_sorted = key[order]
        del key, kind

        # Ranges: the stack sweep, thread by thread, in sorted order.
        r_rows = order[is_range]  # op rows in sweep order
        r_key = key_sorted[is_range]
        first = np.flatnonzero(np.r_[True, r_key[1:] != r_key[:-1]])
        group_start = np.repeat(first, np.diff(np.append(first, len(r_rows))))
        pos = parents(op_end[r_rows], group_start, _EPS)
        parent[r_rows] = np.where(pos >= 0, r_rows[np.clip(pos, 0, None)], -1)
        _depths(parent, r_rows, depth)

        # Runtime calls and memory events: the last range before each (same thread), then up the parents.
        pos = np.arange(total)
        last_range = np.maximum.accumulate(np.where(is_range, pos, -1))
        ev = np.flatnonzero(~is_range)
        lr = last_range[ev]
        same = lr >= 0
        same[same] = key_sorted[lr[same]] == key_sorted[ev[same]]
        cand = np.where(same, order[np.clip(lr, 0, None)], -1)
        lim = ts[order[ev]] - _EPS
        todo = np.flatnonzero(cand >= 0)
        while len(todo):
            c = cand[todo]
            gone = op_end[c] < lim[todo]
            todo = todo[gone]
            cand[todo] = parent[c[gone]]
            todo = todo[cand[todo] >= 0]
        rows = order[ev]
        is_rt = rows < n_ops + n_rt
        rt_op[rows[is_rt] - n_ops] = cand[is_rt]
        mem_op[rows[~is_rt] - n_ops - n_rt] = cand[~is_rt]
    ops["parent"] = parent
    ops["depth"] = depth
    runtime["op"] = rt_op
    memory["op"] = mem_op


def _depths(parent: np.ndarray, rows_in_order: np.ndarray, depth: np.ndarray) -> None:
    """depth = number of ancestors; parents come before children in sweep order."""
    d = depth
    todo = rows_in_order[parent[rows_in_order] >= 0]
    # Level by level: a row's depth is its parent's + 1, once the parent's is final.
    known = np.zeros(len(parent), dtype=bool)
    known[rows_in_order[parent[rows_in_order] < 0]] = True
    while len(todo):
        p = parent[todo]
        ready = known[p]
        r = todo[ready]
        d[r] = d[p[ready]] + 1
        known[r] = True
        todo = todo[~ready]


def _link_gpu(gpu: pd.DataFrame, runtime: pd.DataFrame) -> None:
    """Join each GPU event to the runtime call that launched it (same correlation id)."""
    gpu["runtime"] = -1
    gpu["op"] = -1
    if not len(gpu) or not len(runtime):
        return
    rt = runtime[runtime["correlation"].notna()]
    rt = rt[~rt["correlation"].duplicated(keep="first")]
    lookup = pd.Series(rt.index.to_numpy(), index=rt["correlation"].astype("int64").to_numpy())
    corr = gpu["correlation"]
    has = corr.notna().to_numpy()
    rows = np.full(len(gpu), -1, dtype=np.int64)
    if has.any():
        found = lookup.reindex(corr[has].astype("int64").to_numpy())
        rows[has] = found.fillna(-1).astype("int64").to_numpy()
    gpu["runtime"] = rows
    op = np.full(len(gpu), -1, dtype=np.int64)
    ok = rows >= 0
    op[ok] = runtime["op"].to_numpy()[rows[ok]]
    gpu["op"] = op
