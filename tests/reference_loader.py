"""The trace loader as it was before the streaming rewrite (qtrace/trace.py at 19ac4a8), kept verbatim as
the reference that tests/test_loader_equivalence.py compares the optimized loader against. Not used by qtrace.


Only the fields qtrace uses are decoded: msgspec decodes the JSON straight into small typed
structs and skips every other key at C speed, so a 400 MB trace never becomes millions of
Python dicts. Everything downstream (the analyzers) works on the DataFrames of `Trace`.

Tables (timestamps in microseconds relative to the first event, as floats):
- ``ops``: host ranges: ``cpu_op``, ``user_annotation`` (record_function, ProfilerStep#N,
  qtrace annotations) and ``python_function``; with ``parent`` (row of the enclosing range on the
  same thread, -1 at the top) and ``depth``.
- ``runtime``: CUDA runtime/driver calls, with the ``op`` that issued them (innermost range).
- ``gpu``: kernels, GPU memcpy and memset, joined to their launching ``runtime`` call by the
  correlation id and so to ``op``.
- ``memory``: allocator ``[memory]`` instant events, with the ``op`` that was running.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pandas as pd

from qtrace.errors import TraceFormatError

HOST_RANGE_CATS = ("cpu_op", "user_annotation", "python_function")
RUNTIME_CATS = ("cuda_runtime", "cuda_driver")
GPU_CATS = ("kernel", "gpu_memcpy", "gpu_memset")
MEMORY_EVENT = "[memory]"


_NO_RAW = msgspec.Raw(b"")


class _Args(msgspec.Struct):
    external_id: int | None = msgspec.field(name="External id", default=None)
    correlation: int | None = None
    device: int | None = None
    stream: int | None = None
    bytes: int | None = None
    mem_bytes: int | None = msgspec.field(name="Bytes", default=None)
    addr: int | None = msgspec.field(name="Addr", default=None)
    total_allocated: int | None = msgspec.field(name="Total Allocated", default=None)
    total_reserved: int | None = msgspec.field(name="Total Reserved", default=None)
    device_id: int | None = msgspec.field(name="Device Id", default=None)
    device_type: int | None = msgspec.field(name="Device Type", default=None)
    from_device: int | None = msgspec.field(name="fromDevice", default=None)
    in_device: int | None = msgspec.field(name="inDevice", default=None)
    to_device: int | None = msgspec.field(name="toDevice", default=None)
    # Shapes stay raw JSON text until an analyzer asks for them (roofline, outlier counts).
    input_dims: msgspec.Raw = msgspec.field(name="Input Dims", default=_NO_RAW)
    input_type: msgspec.Raw = msgspec.field(name="Input type", default=_NO_RAW)
    input_strides: msgspec.Raw = msgspec.field(name="Input Strides", default=_NO_RAW)


class _Event(msgspec.Struct):
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


def read_bytes(path: str | os.PathLike) -> bytes:
    """The decompressed bytes of a .json or .json.gz file, or one clear TraceFormatError."""
    p = Path(path)
    if not p.exists():
        raise TraceFormatError(f"{p}: no such file")
    if p.is_dir():
        raise TraceFormatError(f"{p}: is a folder, not a trace file")
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


def _split_metadata(raw: bytes) -> dict[str, Any]:
    """Top-level keys other than traceEvents (deviceProperties, qtrace, distributedInfo...)."""
    meta_type = dict[str, Any]

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

    top = msgspec.json.decode(raw, type=_Top)
    out: meta_type = {k: getattr(top, k) for k in top.__struct_fields__ if getattr(top, k) is not None}
    if isinstance(out.get("qtrace"), str):  # add_metadata_json stores a JSON value; tolerate a string
        with contextlib.suppress(msgspec.DecodeError):
            out["qtrace"] = msgspec.json.decode(out["qtrace"])
    return out


def load_trace(path: str | os.PathLike) -> Trace:
    """Load and validate a Kineto trace. Raises TraceFormatError with one line on bad input."""
    p = Path(path)
    raw = read_bytes(p)
    try:
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
    del raw
    return build_trace(decoded.traceEvents, source=str(p), metadata=metadata)


def build_trace(events: list[_Event], source: str, metadata: dict[str, Any]) -> Trace:
    cols = _columns(events)
    del events
    # Issue 15 (updated deliberately): a trace of runtime calls only is read, not refused.
    if not cols["host"]["name"] and not cols["gpu"]["name"] and not cols["runtime"]["name"]:
        raise TraceFormatError(f"{source}: trace holds no profiler events")
    base = _base_ts(cols)
    ops = _frame(cols["host"], base)
    runtime = _frame(cols["runtime"], base)
    gpu = _frame(cols["gpu"], base)
    memory = _frame(cols["memory"], base)
    _nest(ops, runtime, memory)
    _link_gpu(gpu, runtime)
    for df in (ops, runtime, gpu, memory):
        df.attrs["source"] = source
    return Trace(source=source, ops=ops, runtime=runtime, gpu=gpu, memory=memory, metadata=metadata,
                 base_ts_us=base)


def _columns(events: list[_Event]) -> dict[str, dict[str, list]]:
    host: dict[str, list] = {k: [] for k in ("name", "cat", "pid", "tid", "ts", "dur", "ext_id",
                                              "input_dims", "input_type", "input_strides")}
    runtime: dict[str, list] = {k: [] for k in ("name", "cat", "pid", "tid", "ts", "dur", "ext_id", "correlation")}
    gpu: dict[str, list] = {k: [] for k in ("name", "cat", "device", "stream", "ts", "dur", "ext_id",
                                             "correlation", "bytes", "src_device", "dst_device")}
    memory: dict[str, list] = {k: [] for k in ("pid", "tid", "ts", "device_type", "device_id", "addr", "bytes",
                                                "total_allocated", "total_reserved")}
    interned: dict[str, str] = {}
    intern = interned.setdefault
    for ev in events:
        cat = ev.cat
        ph = ev.ph
        if ph == "X":
            if ev.ts is None:
                continue
            a = ev.args
            if cat in GPU_CATS:
                gpu["name"].append(intern(ev.name, ev.name))
                gpu["cat"].append(cat)
                gpu["device"].append((a.device if a.device is not None else a.in_device) if a else None)
                gpu["stream"].append(a.stream if a else None)
                gpu["ts"].append(ev.ts)
                gpu["dur"].append(ev.dur or 0.0)
                gpu["ext_id"].append(a.external_id if a else None)
                gpu["correlation"].append(a.correlation if a else None)
                gpu["bytes"].append(a.bytes if a else None)
                gpu["src_device"].append(a.from_device if a else None)
                gpu["dst_device"].append(a.to_device if a else None)
            elif cat in HOST_RANGE_CATS:
                host["name"].append(intern(ev.name, ev.name))
                host["cat"].append(cat)
                host["pid"].append(ev.pid)
                host["tid"].append(ev.tid)
                host["ts"].append(ev.ts)
                host["dur"].append(ev.dur or 0.0)
                host["ext_id"].append(a.external_id if a else None)
                host["input_dims"].append(bytes(a.input_dims) or None if a else None)
                host["input_type"].append(bytes(a.input_type) or None if a else None)
                host["input_strides"].append(bytes(a.input_strides) or None if a else None)
            elif cat in RUNTIME_CATS:
                runtime["name"].append(intern(ev.name, ev.name))
                runtime["cat"].append(cat)
                runtime["pid"].append(ev.pid)
                runtime["tid"].append(ev.tid)
                runtime["ts"].append(ev.ts)
                runtime["dur"].append(ev.dur or 0.0)
                runtime["ext_id"].append(a.external_id if a else None)
                runtime["correlation"].append(a.correlation if a else None)
        elif ph == "i" and ev.name == MEMORY_EVENT and ev.args is not None and ev.ts is not None:
            a = ev.args
            memory["pid"].append(ev.pid)
            memory["tid"].append(ev.tid)
            memory["ts"].append(ev.ts)
            memory["device_type"].append(a.device_type)
            memory["device_id"].append(a.device_id)
            memory["addr"].append(a.addr)
            memory["bytes"].append(a.mem_bytes)
            memory["total_allocated"].append(a.total_allocated)
            memory["total_reserved"].append(a.total_reserved)
    return {"host": host, "runtime": runtime, "gpu": gpu, "memory": memory}


def _base_ts(cols: dict[str, dict[str, list]]) -> float:
    starts = [min(c["ts"]) for c in cols.values() if c["ts"]]
    return float(min(starts)) if starts else 0.0


_INT_COLS = ("ext_id", "correlation", "device", "stream", "bytes", "device_type", "device_id", "addr",
             "total_allocated", "total_reserved", "src_device", "dst_device")


def _frame(col: dict[str, list], base: float) -> pd.DataFrame:
    df = pd.DataFrame(col)
    df["ts"] = df["ts"].astype("float64") - base
    if "dur" in df:
        df["dur"] = df["dur"].astype("float64").clip(lower=0.0)
        df["end"] = df["ts"] + df["dur"]
    for c in _INT_COLS:
        if c in df:
            df[c] = pd.array(df[c].tolist(), dtype="Int64")
    for c in ("pid", "tid"):
        if c in df:
            df[c] = df[c].astype(str)
    return df


def _nest(ops: pd.DataFrame, runtime: pd.DataFrame, memory: pd.DataFrame) -> None:
    """Give each host range its parent, and each runtime call / memory event its innermost range.

    Ranges on one thread are properly nested in Kineto output; a sweep with a stack of open
    ranges, in (start, longest-first) order, finds the innermost enclosing one for each.
    """
    n_ops = len(ops)
    parent = np.full(n_ops, -1, dtype=np.int64)
    depth = np.zeros(n_ops, dtype=np.int32)
    rt_op = np.full(len(runtime), -1, dtype=np.int64)
    mem_op = np.full(len(memory), -1, dtype=np.int64)

    # kind 0 = range, 1 = runtime call, 2 = memory instant. Ranges sort first at equal ts.
    frames = []
    if n_ops:
        frames.append(pd.DataFrame({"key": ops["pid"] + "/" + ops["tid"], "ts": ops["ts"].to_numpy(),
                                    "end": ops["end"].to_numpy(), "kind": 0, "row": np.arange(n_ops)}))
    if len(runtime):
        frames.append(pd.DataFrame({"key": runtime["pid"] + "/" + runtime["tid"], "ts": runtime["ts"].to_numpy(),
                                    "end": runtime["end"].to_numpy(), "kind": 1,
                                    "row": np.arange(len(runtime))}))
    if len(memory):
        frames.append(pd.DataFrame({"key": memory["pid"] + "/" + memory["tid"], "ts": memory["ts"].to_numpy(),
                                    "end": memory["ts"].to_numpy(), "kind": 2, "row": np.arange(len(memory))}))
    if frames:
        allev = pd.concat(frames, ignore_index=True)
        allev["neg_end"] = -allev["end"]
        allev = allev.sort_values(["key", "ts", "kind", "neg_end"], kind="stable")
        keys = allev["key"].to_numpy()
        ts = allev["ts"].to_numpy()
        end = allev["end"].to_numpy()
        kind = allev["kind"].to_numpy()
        row = allev["row"].to_numpy()
        stack_rows: list[int] = []
        stack_ends: list[float] = []
        last_key = None
        # Tolerance for the float rounding of µs timestamps (Kineto writes 3 decimals).
        eps = 1e-3
        for i in range(len(allev)):
            k = keys[i]
            if k != last_key:
                stack_rows.clear()
                stack_ends.clear()
                last_key = k
            t = ts[i]
            while stack_ends and stack_ends[-1] < t - eps:
                stack_ends.pop()
                stack_rows.pop()
            top = stack_rows[-1] if stack_rows else -1
            kd = kind[i]
            r = row[i]
            if kd == 0:
                # A range that overruns its would-be parent is not nested in it: pop until it fits.
                e = end[i]
                while stack_ends and stack_ends[-1] < e - eps:
                    stack_ends.pop()
                    stack_rows.pop()
                top = stack_rows[-1] if stack_rows else -1
                parent[r] = top
                depth[r] = len(stack_rows)
                stack_rows.append(r)
                stack_ends.append(e)
            elif kd == 1:
                rt_op[r] = top
            else:
                mem_op[r] = top
    ops["parent"] = parent
    ops["depth"] = depth
    runtime["op"] = rt_op
    memory["op"] = mem_op


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
