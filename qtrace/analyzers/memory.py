"""Memory: what is live at the allocator's peak, and which phase allocated it.

The question: "why does the quantized model need this much memory?". The answer is read from the
allocator's ``[memory]`` events (``profile_memory=True``): each one is an allocation (+bytes) or a
free (-bytes) of a block at an address, with the allocator's running "Total Allocated".

Method, per device (device type + id: CUDA is type 1, CPU type 0):

1. Events in time order. A free closes the most recent open block at its address on that device;
   a free that finds no open block frees a block allocated before the profiled window.
2. The peak is the event with the largest "Total Allocated" (the allocator's own figure).
3. The blocks allocated inside the window and not yet freed at that event are live at the peak;
   each one belongs to the phase of the op that allocated it (`op_phases`, the same rules as
   `qtrace report`) and gets a tensor *kind* from `KINDS`.
4. Whatever the peak holds beyond those blocks was allocated before the window (weights,
   quantization state, caches): one entry, `resident`, so the entries add up to the peak exactly.
   The running sum of the events' bytes is checked against "Total Allocated"; any disagreement is
   reported in ``notes``, never hidden.

Per phase, over the window: allocations, bytes allocated, transient bytes (allocated and freed in
the window), peak increment (how far the allocator's total rose above its level at phase entry,
max over occurrences; an occurrence is a run of consecutive allocator events made inside ops of
the phase), bytes live at the peak and at the end of the window.

JSON keys of `memory_section` and the per-phase keys are documented in docs/memory.md; the compare
analyzer reads ``phases`` and ``at_peak`` by those names, so keep them stable.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from qtrace.analyzers.attribution import context_column, context_rows, op_phases
from qtrace.analyzers.distinct import map_distinct, python_strings, shared_objects, string_codes
from qtrace.analyzers.phase_rules import PHASE_ORDER, group_of
from qtrace.backends import BACKENDS, OP_PREFIXES, KindRule
from qtrace.markup import md_escape, md_table
from qtrace.tracefile.kineto import Trace
from qtrace.tracefile.nesting import group_start_order
from qtrace.tracefile.strings import text_column

RESIDENT = "resident"  # bytes allocated before the profiled window and still live
OUTSIDE_OPS = "other"  # allocations made while no host op ran: same label as host.py uses
DEVICE_TYPES = {0: "cpu", 1: "cuda"}
CUDA, CPU = 1, 0

# Keys of each row of memory_section()["phases"]; the compare analyzer reads them by name.
PHASE_KEYS = ["phase", "group", "kind", "allocs", "alloc_bytes", "transient_bytes", "peak_increment_bytes",
              "live_at_peak_bytes", "live_at_end_bytes"]


# --- tensor kinds ------------------------------------------------------------------------------


# First match wins: each backend's kinds (what its ops allocate), then the model's.
KINDS: list[KindRule] = [
    *(kind for b in BACKENDS for kind in b.memory_kinds),
    # the model
    KindRule("GEMM output", r"^dense\.gemm$"),
    KindRule("attention buffers", r"^attention$"),
    KindRule("norm output", r"^norm$"),
    KindRule("embeddings", r"^embedding$"),
    KindRule("dtype casts", r"^elementwise$", ops=r"^aten::empty_strided/aten::_to_copy\b"),
    KindRule("activations", r"^elementwise$"),
    KindRule("copies", r"^memcpy$"),
]
NO_OP_KIND = "outside any op"
UNKNOWN_KIND = "unknown"
RESIDENT_KIND = "allocated before the window"


def _kind_of(phase: str, ops: str, quant_op_phase: str) -> str:
    ctx = {"phase": phase, "ops": ops, "quant_op_phase": quant_op_phase}
    for rule in KINDS:
        pats = {"phase": rule.phase, "ops": rule.ops, "quant_op_phase": rule.quant_op_phase}
        if all(p is None or re.search(p, ctx[k]) for k, p in pats.items()):
            return rule.kind
    return UNKNOWN_KIND


# --- events ------------------------------------------------------------------------------------


def _cache(trace: Trace) -> dict:
    return trace.__dict__.setdefault("_qtrace_cache", {})


def release(trace: Trace) -> None:
    """Drop the frames this module cached on `trace` (memory_events, device_memories); the next call
    builds them again. The report calls it once its memory section is built."""
    cache = _cache(trace)
    for key in ("memory_events", "device_memories"):
        cache.pop(key, None)


def device_label(device_type: int, device_id: int) -> str:
    name = DEVICE_TYPES.get(device_type, f"device_type{device_type}")
    return name if device_type == CPU else f"{name}:{device_id}"


def _quant_op_rows(trace: Trace, rows: np.ndarray) -> np.ndarray:
    """Row of the innermost backend op (e.g. `bitsandbytes::`) enclosing or being each op in `rows` (-1 if none)."""
    ops = trace.ops
    n = len(ops)
    rows = np.asarray(rows, dtype=np.int64)
    if not n or not len(rows):
        return np.full(len(rows), -1, dtype=np.int64)
    codes, names = string_codes(ops["name"])  # an Arrow column's own codes
    is_quant_op = np.array([str(x).startswith(OP_PREFIXES) for x in names.tolist()], dtype=bool)[codes]
    parent = ops["parent"].to_numpy()
    # For every op at once, level by level up the tree: a backend op is its own answer, a root that is
    # not one has none, any other op has its parent's (vectorized; a tree has few levels).
    unknown = -2
    found = np.where(is_quant_op, np.arange(n), np.where(parent < 0, -1, unknown))
    todo = np.flatnonzero(found == unknown)
    while len(todo):
        up = found[parent[todo]]
        ready = up != unknown
        if not ready.any():  # a parent cycle (not from a real trace): no answer
            found[todo] = -1
            break
        found[todo[ready]] = up[ready]
        todo = todo[~ready]
    return found[rows]


def _op_labels(trace: Trace, op_rows: np.ndarray) -> dict[str, np.ndarray]:
    """Per event: op_name, phase and kind of its op (-1: no op -> `other`, kind "outside any op"), as
    object arrays whose equal values share one string."""
    n = len(op_rows)
    out = {}
    for key, fill in (("op_name", ""), ("phase", OUTSIDE_OPS), ("kind", NO_OP_KIND)):
        # Assigned, not np.full: np.full casts the text through a numpy str array, which makes a
        # new Python string per row (~87 MB for 1.27M events at 2 GB).
        out[key] = np.empty(n, dtype=object)
        out[key][:] = fill
    has = op_rows >= 0
    if not has.any():
        return out
    ops = op_phases(trace)
    rows = op_rows[has]
    # The kind of each distinct (phase, op context, quant op's phase), worked out on one event of
    # each and spread over the events by integer codes (no string hashed per event).
    phase_code, phases = string_codes(ops["phase"])
    n_phase = len(phases) + 1  # the last code: no quant op
    quant_op = _quant_op_rows(trace, rows)
    combo = context_rows(trace, rows) * n_phase
    combo += phase_code[rows]
    combo *= n_phase
    quant_code = np.where(quant_op >= 0, phase_code[np.clip(quant_op, 0, None)], n_phase - 1)
    del quant_op
    combo += quant_code
    _, first, inverse = np.unique(combo, return_index=True, return_inverse=True)
    del combo
    ops_text = context_column(trace, "ops", rows[first])
    phase_text = np.append(phases, "")
    kind_of = np.empty(len(first), dtype=object)
    kind_of[:] = [_kind_of(phases[phase_code[r]], o, phase_text[q])
                  for r, o, q in zip(rows[first].tolist(), ops_text.tolist(), quant_code[first].tolist(), strict=True)]
    out["op_name"][has] = shared_objects(ops["name"])[rows]
    out["phase"][has] = phases[phase_code[rows]]
    out["kind"][has] = kind_of[inverse.ravel()]
    return out


def memory_events(trace: Trace) -> pd.DataFrame:
    """The `[memory]` events in time order per device, with device, op_name, phase and kind.

    ``event`` is the row in ``trace.memory``. Events without bytes are dropped (none seen so far).
    """
    cache = _cache(trace)
    if "memory_events" in cache:
        return cache["memory_events"]
    m = trace.memory
    if len(m) == 0 or "bytes" not in m:
        df = pd.DataFrame(columns=["event", "device", "device_type", "device_id", "ts", "addr", "bytes",
                                   "total_allocated", "total_reserved", "op", "op_name", "phase", "kind"])
        cache["memory_events"] = df
        return df
    rows = np.flatnonzero(m["bytes"].notna().to_numpy())
    device_type = m["device_type"].iloc[rows].fillna(-1).astype("int64").to_numpy()
    device_id = m["device_id"].iloc[rows].fillna(-1).astype("int64").to_numpy()
    # Stable sort keeps file order for equal timestamps: that is the allocator's order. Only the
    # keys are sorted; each column is then taken once in that order (no copy of the whole table).
    order = _device_time_order(device_type, device_id, m["ts"].to_numpy(dtype=np.float64)[rows])
    take = rows[order]
    device_type, device_id = device_type[order], device_id[order]
    del rows, order
    cols: dict[str, Any] = {}
    for c in m.columns:
        if c == "device_type":
            cols[c] = device_type
        elif c == "device_id":
            cols[c] = device_id
        elif c == "bytes":
            cols[c] = m[c].array.take(take).astype("int64")
        else:
            cols[c] = _take_column(m[c], take)
    cols["event"] = m.index.to_numpy()[take]
    # Labels point at one string per distinct value (python_strings): cached for the report's life.
    # One label per run of equal (device_type, device_id): the rows are sorted by them.
    first = _device_starts(device_type, device_id)
    device = np.empty(len(first), dtype=object)
    device[:] = [device_label(t, i) for t, i in zip(device_type[first].tolist(), device_id[first].tolist(),
                                                   strict=True)]
    cols["device"] = python_strings(np.repeat(device, np.diff(np.append(first, len(take)))))
    del first
    for c, values in _op_labels(trace, m["op"].to_numpy(dtype=np.int64)[take]).items():
        cols[c] = python_strings(values)
    df = pd.DataFrame(cols)
    cache["memory_events"] = df
    return df


def _device_time_order(device_type: np.ndarray, device_id: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Positions sorted by (device_type, device_id, ts), stable, NaN times last in their device: what
    ``sort_values([...], kind="stable")`` gives, as `group_start_order` with one small device key."""
    if not len(ts):
        return np.zeros(0, dtype=np.intp)
    width = int(device_id.max() - device_id.min()) + 1
    return group_start_order(ts, (device_type - device_type.min()) * width + (device_id - device_id.min()))


def _device_starts(device_type: np.ndarray, device_id: np.ndarray) -> np.ndarray:
    """Row of each device's first event, in rows sorted by (device_type, device_id)."""
    if not len(device_type):
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(np.r_[True, (device_type[1:] != device_type[:-1]) | (device_id[1:] != device_id[:-1])])


def _take_column(col: pd.Series, rows: np.ndarray) -> Any:
    """The values of `col` at `rows`, same dtype; a str column of strings is written from its codes
    into exact Arrow buffers (Arrow's take would fill its pool with a copy of every row's text)."""
    if isinstance(col.dtype, pd.StringDtype) and col.dtype.storage == "pyarrow":
        codes, texts = string_codes(col)
        if all(isinstance(t, str) for t in texts.tolist()):
            try:
                return text_column(codes[rows], texts)
            except UnicodeEncodeError:  # a lone surrogate: Arrow's own take below
                pass
    return col.array.take(rows)


# --- per device reconstruction -----------------------------------------------------------------


@dataclass
class DeviceMemory:
    """The live-set reconstruction of one device (arrays are in the device's event order)."""

    device: str
    device_type: int
    device_id: int
    events: pd.DataFrame  # this device's rows of memory_events, index 0..n-1
    level: np.ndarray  # allocator total after each event ("Total Allocated"; rebuilt where missing)
    closed_by: np.ndarray  # alloc event -> position of the free that closed it, -1 if open at the end
    unknown_free: np.ndarray  # free of a block allocated before the window
    start_level: int  # allocator total just before the first event
    peak_pos: int
    notes: list[str] = field(default_factory=list)

    @property
    def peak_bytes(self) -> int:
        return int(self.level[self.peak_pos])

    @property
    def peak_ts_us(self) -> float:
        return float(self.events["ts"].iat[self.peak_pos])

    def live_mask(self, pos: int) -> np.ndarray:
        """Alloc events whose block is live right after event `pos`."""
        n = len(self.events)
        idx = np.arange(n)
        alloc = self.events["bytes"].to_numpy() > 0
        return alloc & (idx <= pos) & ((self.closed_by < 0) | (self.closed_by > pos))

    def resident_at(self, pos: int) -> int:
        """Bytes of pre-window blocks live right after event `pos`: the remainder of the total."""
        live = int(self.events["bytes"].to_numpy()[self.live_mask(pos)].sum())
        return int(self.level[pos]) - live


def _match_blocks(addr: np.ndarray, nbytes: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Pair frees with allocations by address: (closed_by, unknown_free, size mismatches).

    A free closes the most recent open block at its address: the caching allocator hands an
    address out again only after it was freed, so at most one block is open there in practice.
    Vectorized: per address, the number of open blocks is a walk (+1 alloc, -1 free) held at 0
    by frees of unknown blocks; a free at depth d closes the last alloc that took the depth to d,
    which is the event just before it among that address's events at level d. `_match_blocks_loop`
    is the per-event stack it replaces (tests/test_memory.py holds the two to the same answer).
    """
    n = len(nbytes)
    closed_by = np.full(n, -1, dtype=np.int64)
    unknown_free = np.zeros(n, dtype=bool)
    nbytes = np.asarray(nbytes, dtype=np.int64)
    ev = np.flatnonzero(nbytes != 0)
    if not len(ev):
        return closed_by, unknown_free, 0
    a = np.asarray(addr, dtype=np.int64)[ev]
    order = np.lexsort((ev, a))
    pos = ev[order]
    step = np.where(nbytes[pos] > 0, 1, -1).astype(np.int64)
    new_group = np.r_[True, a[order][1:] != a[order][:-1]]
    group = np.cumsum(new_group) - 1
    total = np.cumsum(step)
    base = (total - step)[new_group]  # the running sum just before each address's first event
    walk = total - base[group]  # per-address running sum
    big = 2 * (len(pos) + 1)
    low = np.minimum.accumulate(walk - group * big) + group * big  # per-address running minimum
    depth = walk - np.minimum(low, 0)  # open blocks after each event (held at 0)
    before = np.r_[0, depth[:-1]]
    before[new_group] = 0  # open blocks before each event
    free = step < 0
    unknown = free & (before == 0)
    unknown_free[pos[unknown]] = True
    level = np.where(free, before, depth)  # the depth an alloc opens, or a free closes
    paired = ~unknown
    k = np.flatnonzero(paired)
    k = k[np.lexsort((pos[k], level[k], group[k]))]
    is_free = free[k]
    if is_free[:1].any():  # cannot happen: a level's first event is the alloc that opened it
        raise AssertionError("free before its allocation")
    at = np.flatnonzero(is_free)
    frees, allocs = pos[k[at]], pos[k[at - 1]]
    closed_by[allocs] = frees
    mismatches = int((nbytes[allocs] != -nbytes[frees]).sum())
    return closed_by, unknown_free, mismatches


def _match_blocks_loop(addr: np.ndarray, nbytes: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """The per-event stack per address that `_match_blocks` gives the answer of."""
    n = len(nbytes)
    closed_by = np.full(n, -1, dtype=np.int64)
    unknown_free = np.zeros(n, dtype=bool)
    open_at: dict[int, list[int]] = {}
    mismatches = 0
    for i in range(n):
        b = int(nbytes[i])
        a = int(addr[i])
        if b > 0:
            open_at.setdefault(a, []).append(i)
        elif b < 0:
            stack = open_at.get(a)
            if stack:
                j = stack.pop()
                closed_by[j] = i
                mismatches += int(nbytes[j]) != -b
            else:
                unknown_free[i] = True
    return closed_by, unknown_free, mismatches


def _reconstruct(device_events: pd.DataFrame) -> DeviceMemory:
    ev = device_events.reset_index(drop=True)
    dt, did = int(ev["device_type"].iat[0]), int(ev["device_id"].iat[0])
    nbytes = ev["bytes"].to_numpy(dtype=np.int64)
    addr = ev["addr"].fillna(-1).to_numpy(dtype=np.int64)
    closed_by, unknown_free, mismatches = _match_blocks(addr, nbytes)
    notes: list[str] = []
    total = ev["total_allocated"]
    if total.isna().all():
        start = 0
        notes.append("events carry no 'Total Allocated': the level is rebuilt from bytes, starting at 0")
    else:
        first = int(total.first_valid_index())
        start = int(total.iat[first]) - int(nbytes[: first + 1].sum())
    rebuilt = start + np.cumsum(nbytes)
    level = total.astype("float64").to_numpy()
    level = np.where(np.isnan(level), rebuilt, level).astype(np.int64)
    peak_pos = int(np.argmax(level))
    dm = DeviceMemory(device=device_label(dt, did), device_type=dt, device_id=did, events=ev, level=level,
                      closed_by=closed_by, unknown_free=unknown_free, start_level=start, peak_pos=peak_pos, notes=notes)
    _check(dm, rebuilt, mismatches)
    return dm


def _check(dm: DeviceMemory, rebuilt: np.ndarray, mismatches: int) -> None:
    """Say where the bytes of the events and the allocator's totals disagree (never adjust them)."""
    p = dm.peak_pos
    off = dm.level - rebuilt
    if (off != 0).any():
        first = int(np.flatnonzero(off)[0])
        dm.notes.append(
            f"'Total Allocated' departs from the running sum of the events' bytes at event {first} "
            f"(by {int(off[first])} B; {int(off[p])} B at the peak): allocator events are missing from the trace "
            "(dropped by the profiler, or made by another thread/stream the trace lost); the at-peak split "
            "still adds up, with the difference inside resident")
    if mismatches:
        dm.notes.append(f"{mismatches} free(s) released a different size than their address's last allocation")
    resident = dm.resident_at(p)
    nbytes = dm.events["bytes"].to_numpy()
    expected = dm.start_level + int(nbytes[: p + 1][dm.unknown_free[: p + 1]].sum())
    if resident != expected:
        dm.notes.append(f"resident at the peak is {resident} B, but the level before the window minus frees of "
                        f"pre-window blocks gives {expected} B: the events are not self-consistent")
    if resident < 0:
        dm.notes.append("resident is negative: the trace records frees of blocks it never allocated, beyond "
                        "what the allocator held before the window")
    if dm.start_level > dm.peak_bytes:
        dm.notes.append(f"the allocator held more just before the first event ({dm.start_level} B) than at any "
                        "event: the window's peak is below the level it started at")
    if dm.device_type == CPU:
        dm.notes.append("CPU: the CPU allocator counts only blocks allocated while the profiler ran and does not "
                        "report frees of older blocks, so weights loaded before the window are not in the total")


def device_memories(trace: Trace) -> dict[str, DeviceMemory]:
    """Reconstruction of each device with allocator events, keyed by label ("cuda:0", "cpu")."""
    cache = _cache(trace)
    if "device_memories" in cache:
        return cache["device_memories"]
    ev = memory_events(trace)
    out: dict[str, DeviceMemory] = {}
    # memory_events is sorted by device: each device's rows are one slice of it (a view, not a copy
    # as a groupby's groups are), in the order groupby(["device_type", "device_id"]) gives them.
    dt, did = ev["device_type"].to_numpy(), ev["device_id"].to_numpy()
    cuts = [*_device_starts(dt, did).tolist(), len(ev)] if len(ev) else []
    for lo, hi in zip(cuts[:-1], cuts[1:], strict=True):
        dm = _reconstruct(ev.iloc[lo:hi])
        out[dm.device] = dm
    cache["device_memories"] = out
    return out


def primary_device(trace: Trace) -> DeviceMemory | None:
    """The device the report is about: the CUDA device with the highest peak, else the CPU."""
    devs = list(device_memories(trace).values())
    if not devs:
        return None
    cuda = [d for d in devs if d.device_type == CUDA]
    return max(cuda or devs, key=lambda d: (d.peak_bytes, -d.device_id))


def _pick(trace: Trace, device: str | None) -> DeviceMemory | None:
    if device is None:
        return primary_device(trace)
    devs = device_memories(trace)
    if device not in devs:
        raise KeyError(f"no allocator events for device {device!r} (have: {', '.join(devs) or 'none'})")
    return devs[device]


# --- DataFrames for Python users ---------------------------------------------------------------

BLOCK_COLUMNS = ["device", "addr", "bytes", "alloc_ts", "free_ts", "phase", "group", "kind", "op", "op_name"]


def memory_blocks(trace: Trace, device: str | None = None) -> pd.DataFrame:
    """Every block allocated inside the window on `device` (default: the primary one), with its lifetime.

    ``free_ts`` is NaN for a block still live at the end of the window.
    """
    dm = _pick(trace, device)
    if dm is None:
        return pd.DataFrame(columns=BLOCK_COLUMNS)
    ev = dm.events
    alloc = ev["bytes"].to_numpy() > 0
    ts = ev["ts"].to_numpy()
    closed = dm.closed_by[alloc]
    out = ev.loc[alloc, ["device", "addr", "bytes", "ts", "phase", "kind", "op", "op_name"]].rename(
        columns={"ts": "alloc_ts"})
    out["free_ts"] = np.where(closed >= 0, ts[np.clip(closed, 0, None)], np.nan)
    out["group"] = map_distinct(out["phase"], group_of)
    return out[BLOCK_COLUMNS].reset_index(drop=True)


def live_blocks(trace: Trace, device: str | None = None, at_ts: float | None = None) -> pd.DataFrame:
    """The blocks live at the peak (or right after the last event at or before `at_ts`).

    The last row is the `resident` remainder (addr NA), so ``bytes`` sums to the allocator's total
    at that moment exactly.
    """
    dm = _pick(trace, device)
    if dm is None:
        return pd.DataFrame(columns=BLOCK_COLUMNS)
    pos = dm.peak_pos
    if at_ts is not None:
        pos = int(np.searchsorted(dm.events["ts"].to_numpy(), at_ts, side="right")) - 1
        if pos < 0:
            raise ValueError(f"no allocator event on {dm.device} at or before {at_ts} us")
    blocks = memory_blocks(trace, dm.device)
    alloc_pos = np.flatnonzero(dm.events["bytes"].to_numpy() > 0)
    live = blocks[dm.live_mask(pos)[alloc_pos]].reset_index(drop=True)
    resident = pd.DataFrame([{"device": dm.device, "addr": pd.NA, "bytes": dm.resident_at(pos), "alloc_ts": np.nan,
                              "free_ts": np.nan, "phase": RESIDENT, "group": RESIDENT, "kind": RESIDENT_KIND,
                              "op": -1, "op_name": ""}])
    return pd.concat([live, resident], ignore_index=True)[BLOCK_COLUMNS]


def memory_timeline(trace: Trace, device: str | None = None) -> pd.DataFrame:
    """One row per allocator event of `device`: ts, bytes, allocated (the allocator's total),
    reserved, rebuilt (start level + running sum of bytes), resident (pre-window bytes still live),
    phase, kind and op_name of the op that made it."""
    dm = _pick(trace, device)
    cols = ["device", "ts", "bytes", "allocated", "reserved", "rebuilt", "resident", "phase", "kind", "op_name",
            "addr", "event"]
    if dm is None:
        return pd.DataFrame(columns=cols)
    ev = dm.events
    nbytes = ev["bytes"].to_numpy(dtype=np.int64)
    out = pd.DataFrame({
        "device": dm.device, "ts": ev["ts"].to_numpy(), "bytes": nbytes, "allocated": dm.level,
        "reserved": ev["total_reserved"].to_numpy(), "rebuilt": dm.start_level + np.cumsum(nbytes),
        "resident": dm.start_level + np.cumsum(np.where(dm.unknown_free, nbytes, 0)),
        "phase": ev["phase"].to_numpy(), "kind": ev["kind"].to_numpy(), "op_name": ev["op_name"].to_numpy(),
        "addr": ev["addr"].to_numpy(), "event": ev["event"].to_numpy()})
    return out[cols]


def _occurrence_increments(dm: DeviceMemory) -> pd.Series:
    """Per phase: max over its occurrences of (highest level in the run - level at run entry)."""
    ev = dm.events
    if len(ev) == 0:
        return pd.Series(dtype="int64")
    # Runs by integer codes, their tops by reduceat: no per-event frame to group.
    codes, uniq = pd.factorize(ev["phase"], use_na_sentinel=False)
    first = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])  # each run's first event
    nbytes = ev["bytes"].to_numpy(dtype=np.int64)
    top = np.maximum.reduceat(dm.level, first)
    inc = np.clip(top - (dm.level[first] - nbytes[first]), 0, None)
    # The largest of each phase's runs, by code; then by phase name, as a group-by sorts them.
    run_code = codes[first]
    largest = np.full(len(uniq), np.iinfo(np.int64).min, dtype=np.int64)
    np.maximum.at(largest, run_code, inc)
    present = np.unique(run_code)
    names = np.asarray(uniq, dtype=object)[present]
    order = np.argsort(names, kind="stable")
    return pd.Series(largest[present][order], index=pd.Index(names[order], dtype=object, name="phase"),
                     name="inc")


def _phase_sums(a: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """What ``a.groupby("phase")`` gives as allocs and the sums of bytes, transient, at_peak and
    at_end, and ``a.groupby(["phase", "kind"])["bytes"].sum()``: summed by integer codes (exact
    int64 sums), rows in the group-bys' order (names sorted), without a group-by of strings."""
    phase_code, phases = pd.factorize(a["phase"].to_numpy(dtype=object), use_na_sentinel=False)
    kind_code, kinds = pd.factorize(a["kind"].to_numpy(dtype=object), use_na_sentinel=False)
    phases, kinds = np.asarray(phases, dtype=object), np.asarray(kinds, dtype=object)
    phase_rank = np.empty(len(phases), dtype=np.int64)
    phase_rank[np.argsort(phases, kind="stable")] = np.arange(len(phases))
    kind_rank = np.empty(len(kinds), dtype=np.int64)
    kind_rank[np.argsort(kinds, kind="stable")] = np.arange(len(kinds))

    def summed(code: np.ndarray, n: int, values: np.ndarray) -> np.ndarray:
        out = np.zeros(n, dtype=np.int64)
        np.add.at(out, code, values)
        return out

    order = np.argsort(phase_rank)  # phase codes in name order (every phase of `a` is present)
    cols = {"allocs": np.bincount(phase_code, minlength=len(phases)).astype(np.int64)}
    for name, col in (("alloc_bytes", "bytes"), ("transient_bytes", "transient"), ("live_at_peak_bytes", "at_peak"),
                      ("live_at_end_bytes", "at_end")):
        cols[name] = summed(phase_code, len(phases), a[col].to_numpy(dtype=np.int64))
    g = pd.DataFrame({k: v[order] for k, v in cols.items()}, index=pd.Index(phases[order], name="phase"))
    pair = phase_code.astype(np.int64) * max(len(kinds), 1) + kind_code
    pairs = np.unique(pair)
    pair_bytes = summed(np.searchsorted(pairs, pair), len(pairs), a["bytes"].to_numpy(dtype=np.int64))
    p, k = np.divmod(pairs, max(len(kinds), 1))
    by_name = np.lexsort((kind_rank[k], phase_rank[p]))
    index = pd.MultiIndex.from_arrays([phases[p[by_name]], kinds[k[by_name]]], names=["phase", "kind"])
    return g, pd.Series(pair_bytes[by_name], index=index, name="bytes")


def memory_phase_table(trace: Trace, device: str | None = None) -> pd.DataFrame:
    """Per phase (in vocabulary order) on `device`: PHASE_KEYS, from the blocks its ops allocated."""
    dm = _pick(trace, device)
    if dm is None:
        return pd.DataFrame(columns=PHASE_KEYS)
    ev = dm.events
    alloc = ev["bytes"].to_numpy() > 0
    a = ev.loc[alloc, ["phase", "kind", "bytes"]].copy()
    closed = dm.closed_by[alloc]
    a["transient"] = np.where(closed >= 0, a["bytes"], 0)
    a["at_peak"] = np.where(dm.live_mask(dm.peak_pos)[alloc], a["bytes"], 0)
    a["at_end"] = np.where(closed < 0, a["bytes"], 0)
    g, by_kind = _phase_sums(a)
    g["kind"] = by_kind.sort_values(ascending=False).reset_index().drop_duplicates("phase").set_index("phase")["kind"]
    inc = _occurrence_increments(dm)
    g = g.reindex(sorted(set(g.index) | set(inc.index), key=_phase_rank))
    g["peak_increment_bytes"] = inc.reindex(g.index).fillna(0)
    g = g.fillna({"allocs": 0, "alloc_bytes": 0, "transient_bytes": 0, "live_at_peak_bytes": 0,
                  "live_at_end_bytes": 0, "kind": ""})
    # A phase whose ops only freed (e.g. `other`: frees between ops) has nothing to say here.
    g = g[(g["allocs"] > 0) | (g["peak_increment_bytes"] > 0)]
    g.index.name = "phase"
    g = g.reset_index()
    g["group"] = map_distinct(g["phase"], group_of)
    for c in PHASE_KEYS[3:]:
        g[c] = g[c].astype("int64")
    return g[PHASE_KEYS]


def _phase_rank(phase: str) -> tuple[int, str]:
    return (PHASE_ORDER.index(phase), phase) if phase in PHASE_ORDER else (len(PHASE_ORDER), phase)


# --- the report section ------------------------------------------------------------------------


def fmt_bytes(b: float | None) -> str:
    """Bytes for a reader: binary units (GiB, MiB, KiB), as the allocator and NVML count."""
    if b is None:
        return "-"
    sign = "-" if b < 0 else ""
    b = abs(float(b))
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if b >= size:
            return f"{sign}{b / size:.{2 if unit == 'GiB' else 1}f} {unit}"
    return f"{sign}{int(b)} B"


def _at_peak(trace: Trace, dm: DeviceMemory) -> list[dict[str, Any]]:
    """Bytes live at the peak per phase, `resident` first then by bytes; each with its kinds."""
    live = live_blocks(trace, dm.device)
    live["blocks"] = (live["phase"] != RESIDENT).astype("int64")
    by_kind = live.groupby(["phase", "kind"], sort=False).agg(bytes=("bytes", "sum"), blocks=("blocks", "sum"))
    rows: list[dict[str, Any]] = []
    for phase, grp in by_kind.reset_index().groupby("phase", sort=False):
        grp = grp.sort_values("bytes", ascending=False, kind="stable")
        kinds = [{"kind": r.kind, "bytes": int(r.bytes), "blocks": int(r.blocks)} for r in grp.itertuples()]
        rows.append({"phase": phase, "bytes": sum(k["bytes"] for k in kinds),
                     "blocks": sum(k["blocks"] for k in kinds), "kind": kinds[0]["kind"], "kinds": kinds})
    return sorted(rows, key=lambda e: (e["phase"] != RESIDENT, -e["bytes"]))


def _device_rows(trace: Trace) -> list[dict[str, Any]]:
    rows = []
    for dm in device_memories(trace).values():
        reserved = dm.events["total_reserved"]
        rows.append({"device": dm.device, "events": len(dm.events), "peak_allocated_bytes": dm.peak_bytes,
                     "peak_ts_us": round(dm.peak_ts_us, 3),
                     "max_reserved_bytes": None if reserved.isna().all() else int(reserved.max()),
                     "start_allocated_bytes": dm.start_level})
    return rows


def memory_section(trace: Trace, measured: dict[str, Any] | None = None) -> dict[str, Any]:
    """The report's `memory` object (JSON-ready; "markdown" is the Markdown section body)."""
    dm = primary_device(trace)
    if dm is None:
        return _empty_section(trace, measured)
    at_peak = _at_peak(trace, dm)
    phases = memory_phase_table(trace, dm.device)
    reserved = dm.events["total_reserved"]
    sec: dict[str, Any] = {
        "available": True,
        "device": dm.device,
        "peak_allocated_bytes": dm.peak_bytes,
        "peak_ts_us": round(dm.peak_ts_us, 3),
        "max_reserved_bytes": None if reserved.isna().all() else int(reserved.max()),
        "start_allocated_bytes": dm.start_level,
        "resident_bytes": next(e["bytes"] for e in at_peak if e["phase"] == RESIDENT),
        "events": len(dm.events),
        "at_peak": at_peak,
        "phases": [_plain(r) for r in phases.to_dict(orient="records")],
        "devices": _device_rows(trace),
        "notes": list(dm.notes),
    }
    if measured is not None:
        sec["measured"] = measured_block(sec, measured)
    sec["summary"] = _summary(sec)
    sec["markdown"] = _markdown(sec)
    return sec


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    """numpy scalars -> Python numbers, so the dict encodes as JSON."""
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}


def _empty_section(trace: Trace, measured: dict[str, Any] | None) -> dict[str, Any]:
    why = ("the trace holds no allocator events: profile with profile_memory=True "
           "(qtrace profile does) to see what is live at the peak")
    sec: dict[str, Any] = {"available": False, "device": None, "peak_allocated_bytes": None, "peak_ts_us": None,
                           "at_peak": [], "phases": [], "devices": [], "notes": [why]}
    if measured is not None:
        sec["measured"] = measured_block(sec, measured)
    sec["summary"] = "no allocator events in the trace (profile_memory off)"
    sec["markdown"] = ("The trace holds no allocator events: profile with `profile_memory=True` (qtrace profile "
                       "does) to see what is live at the peak." + _measured_md(sec))
    return sec


# --- trace view beside the un-profiled measurements --------------------------------------------


def _num(d: Any, *keys: str) -> int | None:
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return int(d) if isinstance(d, int | float) and not isinstance(d, bool) else None


def _diff(a: int | None, b: int | None) -> int | None:
    return a - b if a is not None and b is not None else None


def measured_block(sec: dict[str, Any], measured: dict[str, Any]) -> dict[str, Any]:
    """The trace's view beside run.json's un-profiled figures, and what the allocator does not see."""
    footprint = _num(measured, "load", "footprint_bytes")
    max_alloc = _num(measured, "memory", "max_allocated_bytes")
    max_res = _num(measured, "memory", "max_reserved_bytes")
    nvml = _num(measured, "memory", "nvml_process_bytes")
    peak = sec.get("peak_allocated_bytes")
    resident = sec.get("resident_bytes")
    out: dict[str, Any] = {
        "load_footprint_bytes": footprint, "max_allocated_bytes": max_alloc, "max_reserved_bytes": max_res,
        "nvml_process_bytes": nvml, "cpu_peak_rss_bytes": _num(measured, "memory", "cpu_peak_rss_bytes"),
        "trace_peak_allocated_bytes": peak, "trace_resident_bytes": resident,
        "trace_max_reserved_bytes": sec.get("max_reserved_bytes"),
        # NVML sees the whole process; the caching allocator only what it reserved.
        "outside_allocator_bytes": _diff(nvml, max_res),
        "allocator_cache_bytes": _diff(max_res, max_alloc),
        "resident_beyond_footprint_bytes": _diff(resident, footprint),
        "trace_peak_minus_measured_bytes": _diff(peak, max_alloc),
    }
    notes = []
    if sec.get("device") and not str(sec["device"]).startswith("cuda") and max_alloc is not None:
        notes.append("the trace's device is not CUDA: its allocator figures do not compare with the CUDA ones")
    if out["outside_allocator_bytes"] is not None:
        notes.append(f"{fmt_bytes(out['outside_allocator_bytes'])} of the process's GPU memory (NVML) is outside "
                     "PyTorch's caching allocator: the CUDA context and loaded kernels, library handles and "
                     "workspaces not taken from the allocator (cuBLAS/cuBLASLt, cuDNN), anything cudaMalloc'ed "
                     "directly; no trace event shows it")
    if out["allocator_cache_bytes"] is not None:
        notes.append(f"max reserved exceeds max allocated by {fmt_bytes(out['allocator_cache_bytes'])}: blocks the "
                     "caching allocator keeps after they were freed (its cache) and fragmentation")
    if out["resident_beyond_footprint_bytes"] is not None and str(sec.get("device", "")).startswith("cuda"):
        notes.append(f"resident at the peak minus the load footprint (get_memory_footprint): "
                     f"{fmt_bytes(out['resident_beyond_footprint_bytes'])} (inputs, caches, buffers and state "
                     "that are not parameters, when positive)")
    d = out["trace_peak_minus_measured_bytes"]
    if d is not None and str(sec.get("device", "")).startswith("cuda"):
        notes.append(f"the profiled peak is {fmt_bytes(abs(d))} {'above' if d >= 0 else 'below'} the un-profiled "
                     "max_allocated (different passes; max_allocated counts since its last reset)")
    out["notes"] = notes
    return out


def _measured_md(sec: dict[str, Any]) -> str:
    m = sec.get("measured")
    if not m:
        return ""
    rows = [[label, fmt_bytes(m[key]), why] for key, label, why in (
        ("load_footprint_bytes", "load footprint", "run.json: parameters + buffers after loading"),
        ("max_allocated_bytes", "max allocated", "run.json: un-profiled passes"),
        ("max_reserved_bytes", "max reserved", "run.json: un-profiled passes"),
        ("nvml_process_bytes", "NVML process memory", "run.json: the driver's view"),
        ("trace_peak_allocated_bytes", "trace peak allocated", "this trace"),
        ("trace_resident_bytes", "trace resident at peak", "this trace: allocated before the window"),
        ("outside_allocator_bytes", "outside the allocator", "NVML - max reserved"),
        ("allocator_cache_bytes", "allocator cache", "max reserved - max allocated"),
    ) if m.get(key) is not None]
    out = "\n\n#### Beside the un-profiled measurements\n\n"
    out += md_table(["figure", "bytes", "source"], rows, "lrl") if rows else "run.json holds no memory figures."
    out += "\n" + "".join(f"\n- {md_escape(n)}" for n in m["notes"]) if m.get("notes") else ""
    return out


# --- text --------------------------------------------------------------------------------------


def _summary(sec: dict[str, Any]) -> str:
    """One line: peak, when, and the top entries live at it, with their main kind."""
    parts = []
    for e in sec["at_peak"][:4]:
        kind = "" if e["phase"] == RESIDENT or not e.get("kind") else f" ({e['kind']})"
        parts.append(f"{e['phase']} {fmt_bytes(e['bytes'])}{kind}")
    line = (f"peak {fmt_bytes(sec['peak_allocated_bytes'])} allocated on {sec['device']} at "
            f"{sec['peak_ts_us'] / 1000:.1f} ms: " + ", ".join(parts))
    quant = [p for p in sec["phases"] if p["phase"].startswith(("int8.", "nf4.")) and p["transient_bytes"] > 0]
    if quant:
        top = max(quant, key=lambda p: p["peak_increment_bytes"])
        line += (f"; largest quantization transient: {top['phase']} +{fmt_bytes(top['peak_increment_bytes'])} "
                 f"({top['kind']})")
    if sec["notes"] and any("departs" in n or "not self-consistent" in n for n in sec["notes"]):
        line += " [events inconsistent: see notes]"
    return line


def _markdown(sec: dict[str, Any]) -> str:
    peak = sec["peak_allocated_bytes"]
    out = [f"Allocator peak on {md_escape(sec['device'])}: **{fmt_bytes(peak)}** allocated at "
           f"{sec['peak_ts_us'] / 1000:.2f} ms (max reserved in the window "
           f"{fmt_bytes(sec.get('max_reserved_bytes'))}). "
           "Each block live at the peak belongs to the phase of the op that allocated it; `resident` is what was "
           "allocated before the profiled window (weights, quantization state, caches)."]
    rows = [[md_escape(e["phase"]), md_escape(k["kind"]), fmt_bytes(k["bytes"]), str(k["bytes"]),
             f"{k['bytes'] / peak * 100:.1f}%" if peak else "-", str(k["blocks"])]
            for e in sec["at_peak"] for k in e["kinds"]]
    out += ["", "#### Live at the peak", "",
            md_table(["phase", "kind", "size", "bytes", "share", "blocks"], rows, "llrrrr")]
    prow = [[md_escape(p["phase"]), md_escape(p["kind"]), str(p["allocs"]), fmt_bytes(p["alloc_bytes"]),
             fmt_bytes(p["transient_bytes"]), fmt_bytes(p["peak_increment_bytes"]),
             fmt_bytes(p["live_at_peak_bytes"]), fmt_bytes(p["live_at_end_bytes"])] for p in sec["phases"]]
    out += ["", "#### Allocations by phase", "",
            "Transient: allocated and freed inside the window. Peak increment: the most the allocator's total "
            "rose above its level when the phase began (max over its occurrences).", "",
            md_table(["phase", "main kind", "allocs", "allocated", "transient", "peak increment", "live at peak",
                      "live at end"], prow, "llrrrrrr")]
    others = [d for d in sec["devices"] if d["device"] != sec["device"]]
    if others:
        out += ["", "Other devices: " + md_escape(", ".join(
            f"{d['device']} peak {fmt_bytes(d['peak_allocated_bytes'])} ({d['events']} events)" for d in others))]
    if sec["notes"]:
        out += ["", "Notes:", ""] + [f"- {md_escape(n)}" for n in sec["notes"]]
    return "\n".join(out) + _measured_md(sec)


__all__ = ["KINDS", "PHASE_KEYS", "RESIDENT", "DeviceMemory", "device_memories", "fmt_bytes", "live_blocks",
           "measured_block", "memory_blocks", "memory_events", "memory_phase_table", "memory_section",
           "memory_timeline", "primary_device"]
