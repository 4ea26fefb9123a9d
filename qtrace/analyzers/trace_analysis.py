"""Assemble the analyzers' answers for one trace, or for each trace of a `qtrace profile` run.

`analyze_trace` returns a `TraceReport`: DataFrames for Python users and `to_dict()` for the
JSON output (the schema in docs/report.md). `load_target` resolves what a user passes on the
command line: a trace file or a run folder.
"""

from __future__ import annotations

import os
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pandas as pd

from qtrace.analyzers.attribution import gpu_phases
from qtrace.analyzers.host import host_summary, step_table
from qtrace.analyzers.kernels import kernel_table
from qtrace.analyzers.phases import coverage, gpu_time_us, phase_table
from qtrace.analyzers.precision import infer_precision
from qtrace.backends import BACKENDS, resolve
from qtrace.errors import QtraceError
from qtrace.fileio import INCOMPLETE_MARKER
from qtrace.tracefile.kineto import Trace, load_trace

TRACE_SUFFIXES = (".json", ".json.gz")
RUN_FILE = "run.json"


@dataclass
class TraceReport:
    """Everything qtrace says about one trace."""

    source: str
    trace: Trace
    phases: pd.DataFrame
    kernels: pd.DataFrame
    steps: pd.DataFrame
    host: dict[str, Any]
    gpu_time_us: float
    coverage: float
    precision: str | None = None
    measured: dict[str, Any] | None = None  # un-profiled figures from run.json, when known
    extra: dict[str, Any] = field(default_factory=dict)  # further analyzers' sections (memory, ...)

    @property
    def device(self) -> str | None:
        return self.trace.device_name

    def to_dict(self) -> dict[str, Any]:
        meta = self.trace.qtrace_meta
        out: dict[str, Any] = {
            "source": self.source,
            "precision": self.precision,
            "device": self.device,
            "model": meta.get("model"),
            "gpu_time_us": self.gpu_time_us,
            "coverage": self.coverage,
            "phases": _records(self.phases),
            "host": self.host,
            "steps": _records(self.steps),
            "kernels": _records(self.kernels),
        }
        if self.measured is not None:
            out["measured"] = self.measured
        out.update(self.extra)
        _merge_phase_fields(out)
        return out


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """DataFrame rows as JSON-ready dicts with plain Python numbers."""
    return msgspec.json.decode(df.to_json(orient="records", double_precision=15)) if len(df) else []


def precision_of(trace: Trace) -> str | None:
    meta = trace.qtrace_meta
    if meta.get("precision"):
        return str(meta["precision"])
    names = pd.Series(trace.ops["name"].unique(), dtype=object)  # a few hundred distinct names, not every op
    for backend in BACKENDS:
        found = backend.detect_precision(names) if backend.detect_precision else None
        if found:
            return found
    # No quantized op: what the GEMMs show, weighted by their GPU time (qtrace.analyzers.precision).
    return infer_precision(trace)


# Forking pays on big traces (the 407 MB benchmark trace holds 0.96M events; the committed
# 1.5 MB one 60k, whose sections take a fraction of a second). Above FORK_MAX_EVENTS the sections
# run in one process: a forked child's own arrays would add to the peak that a 2 GB trace (~4.8M
# events) must keep under 1.5 GB (docs/robustness.md).
FORK_MIN_EVENTS = 200_000
FORK_MAX_EVENTS = 4_000_000


def analyze_trace(trace: Trace, top: int = 15, measured: dict[str, Any] | None = None,
                  precision: str | None = None, fork_sections: bool = False) -> TraceReport:
    """Every section of the report on `trace`.

    `fork_sections=True` (what `qtrace report` and `compare` pass) computes the roofline and the
    backends' sections in a forked child while this process does the rest (qtrace.analyzers.forked), for a
    trace of FORK_MIN_EVENTS to FORK_MAX_EVENTS events; the report is the same either way.
    """
    from qtrace.analyzers import forked, memory

    pending = None
    if fork_sections and _fork_worth_it(trace):
        # The GPU events' phases first: the roofline reads them and nothing else cached, and every
        # other section too. Then the roofline in the child, the rest here (memory, the phase table,
        # the backends' sections, which reuse the op and runtime phases this process computes for
        # the phase table): measured on the 407 MB trace, the roofline is about half the sections'
        # work (docs/robustness.md, "A C scanner").
        gpu_phases(trace)
        pending = forked.Pending(lambda: _roofline_sections(trace))
        if not pending.forked:
            pending = None
    try:
        # The memory section first, and its per-event frames dropped once it is built: no other section
        # reads them, and on a big trace they are the largest frames after the tables (~165 MB at 2 GB
        # of trace), so the exposed-time segments and the later sections reuse their memory instead of
        # adding to it (docs/robustness.md, "Peak memory"). A Python user calling memory.* directly
        # keeps them cached.
        memory_section = memory.memory_section(trace, measured)
        memory.release(trace)
        report = TraceReport(
            source=trace.source,
            trace=trace,
            phases=phase_table(trace),
            kernels=kernel_table(trace, top),
            steps=step_table(trace),
            host=host_summary(trace),
            gpu_time_us=gpu_time_us(trace),
            coverage=coverage(trace),
            precision=precision or precision_of(trace),
            measured=measured,
        )
        sections = _extra_sections(trace, memory_section, pending)
    except BaseException:
        if pending is not None:
            pending.cancel()
        raise
    for name, section in sections.items():
        report.extra[name] = section
    return report


def _fork_worth_it(trace: Trace) -> bool:
    events = len(trace.ops) + len(trace.runtime) + len(trace.gpu) + len(trace.memory)
    return FORK_MIN_EVENTS <= events < FORK_MAX_EVENTS and len(trace.gpu) > 0


def _roofline_sections(trace: Trace) -> dict[str, Any]:
    """The roofline section (what a forked child computes)."""
    from qtrace.analyzers import roofline

    sections: dict[str, Any] = {"roofline": roofline.roofline_section(trace)}  # its phase_fields join each phase record
    roofline.release(trace)  # its units are read by no later section (projections load their own trace)
    return sections


def _backend_sections(trace: Trace) -> dict[str, Any]:
    """Each backend's own sections (LLM.int8 outliers), in report order."""
    sections: dict[str, Any] = {}
    for backend in BACKENDS:
        for name, ref in backend.analyses.items():
            section = resolve(ref)(trace)
            if section is not None:
                sections[name] = section
    return sections


def _extra_sections(trace: Trace, memory_section: dict[str, Any], pending: Any = None) -> dict[str, Any]:
    """Sections that answer further questions: memory, roofline, and each backend's own (LLM.int8 outliers)."""
    from qtrace.analyzers import devices

    sections: dict[str, Any] = {"memory": memory_section}
    per_device = devices.device_section(trace)  # only for GPU events on two or more devices
    if per_device is not None:
        sections["devices"] = per_device
    if pending is None:
        sections.update(_roofline_sections(trace))
        sections.update(_backend_sections(trace))
        return sections
    backend = _backend_sections(trace)  # here while the child computes the roofline
    sections.update(pending.result())
    sections.update(backend)
    return sections


def _merge_phase_fields(out: dict[str, Any]) -> None:
    """A section may carry per-phase fields (`phase_fields`: phase -> dict): join them into the phase records."""
    for name, section in list(out.items()):
        if isinstance(section, dict) and isinstance(section.get("phase_fields"), dict):
            for record in out.get("phases") or []:
                record.update(section["phase_fields"].get(record.get("phase"), {}))
            out[name] = {k: v for k, v in section.items() if k != "phase_fields"}


@dataclass
class Target:
    """What the user pointed at: one trace file, or a run folder with one trace per precision."""

    path: Path
    traces: list[tuple[str | None, Path]]  # (precision or None, trace path)
    run: dict[str, Any] | None = None
    ranks: list[int | None] = field(default_factory=list)  # per trace, for a folder of per-rank traces

    @property
    def incomplete(self) -> str | None:
        """A warning line when the run folder is marked INCOMPLETE (interrupted), else None."""
        if not self.path.is_dir() or not (self.path / INCOMPLETE_MARKER).is_file():
            return None
        done = ", ".join(p for p, _ in self.traces if p) or "none"
        return (f"{self.path} is an incomplete run (interrupted, or still running): reporting the precisions "
                f"it finished ({done})")

    def measured(self, precision: str | None) -> dict[str, Any] | None:
        if not self.run or precision is None:
            return None
        entry = self.run.get("precisions", {}).get(precision)
        if not isinstance(entry, dict):
            return None
        keep = ("latency_ms", "generate", "memory", "energy", "load", "timer", "compute_dtype", "status", "error",
                "findings", "quality", "placement")  # absent from runs before they existed: their reports are unchanged
        return {k: entry[k] for k in keep if k in entry}


def load_target(path: str | os.PathLike) -> Target:
    """Resolve a trace file or a `qtrace profile` run folder, or fail with one clear line."""
    p = Path(path)
    if not p.exists():
        raise QtraceError(f"{p}: no such file or folder")
    if p.is_file():
        return Target(path=p, traces=[(None, p)])
    run_file = p / RUN_FILE
    run: dict[str, Any] | None = None
    if run_file.is_file():
        try:
            run = msgspec.json.decode(run_file.read_bytes())
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            raise QtraceError(f"{run_file}: not valid JSON ({exc})") from None
        if not isinstance(run, dict):
            raise QtraceError(f"{run_file}: not a qtrace run.json (not an object)")
        if not isinstance(run.get("precisions") or {}, dict):
            raise QtraceError(f"{run_file}: not a qtrace run.json ('precisions' is not an object)")
    traces: list[tuple[str | None, Path]] = []
    if run is not None:
        for prec, entry in (run.get("precisions") or {}).items():
            if isinstance(entry, dict) and entry.get("trace"):
                tp = p / str(entry["trace"])
                if not tp.resolve().is_relative_to(p.resolve()):
                    raise QtraceError(f"{run_file}: the {prec} trace path {entry['trace']!r} leads out of the run "
                                      f"folder")
                if tp.is_file():
                    traces.append((str(prec), tp))
    ranks: list[int | None] = []
    if not traces:
        found = sorted(f for f in p.rglob("*") if f.is_file() and f.name.endswith(TRACE_SUFFIXES)
                       and f.name != RUN_FILE and ("trace" in f.name or _looks_like_trace(f)))
        ranks = [_rank_of(f) for f in found]
        if sum(r is not None for r in ranks) >= 2:  # a folder of per-rank traces (rank-0.json.gz, ...)
            traces = [(None, f) for f in found]
        else:
            ranks = []
            traces = [(f.parent.name if f.parent != p else None, f) for f in found]
    if not traces and run is not None:
        raise QtraceError(f"{p}: the run holds measurements but no trace (recorded with --profile-steps 0?)")
    if not traces:
        raise QtraceError(f"{p}: folder holds no trace (expected run.json from `qtrace profile`, or .json[.gz] "
                          "files holding traceEvents)")
    return Target(path=p, traces=traces, run=run, ranks=ranks)


_RANK_NAME = re.compile(r"(?i)(?:^|[^a-z])rank[-_]?(\d+)")
_SNIFF_BYTES = 1 << 16


def _rank_of(f: Path) -> int | None:
    """The rank a file name gives (rank-3.json.gz, trace_rank_3.json, rank3.pt.trace.json), else None."""
    m = _RANK_NAME.search(f.name)
    return int(m.group(1)) if m else None


def _looks_like_trace(f: Path) -> bool:
    """A JSON file of a folder is taken as a trace when its first bytes show a trace's layout.

    The name need not say "trace" (HTA's rank-N.json.gz); run.json, reports and other JSON do not
    open with a traceEvents key or a bare array of events.
    """
    try:
        with open(f, "rb") as fh:
            head = fh.read(_SNIFF_BYTES)
        if head[:2] == b"\x1f\x8b":
            head = zlib.decompressobj(wbits=31).decompress(head, _SNIFF_BYTES)
    except (OSError, zlib.error):
        return False
    text = head.lstrip()
    return b'"traceEvents"' in head or (text[:1] == b"[" and text[1:].lstrip()[:1] == b"{" and b'"ph"' in head)


def analyze_target(target: Target, top: int = 15, fork_sections: bool = False) -> list[TraceReport]:
    reports = []
    for precision, trace_path in target.traces:
        trace = load_trace(trace_path)
        reports.append(analyze_trace(trace, top=top, measured=target.measured(precision), precision=precision,
                                     fork_sections=fork_sections))
    return reports
