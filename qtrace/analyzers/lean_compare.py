"""The measured waterfall from lean traces, and the honest CPU figure, for `qtrace compare`.

* `find_lean`: a run folder's `<precision>/lean_trace.json.gz` (run.json `lean_trace`), aligned
  with the full trace and timed (qtrace.analyzers.lean_timing), or why there is none.
* `lean_waterfall`: measured baseline latency -> measured run latency, with the GPU and host bars
  of each phase from the two lean traces (per pass) and a `residual` bar for the rest: shown,
  never scaled away.
* `cpu_waterfall`: with no CUDA activity there is no lean trace, and the profiler's cost cannot be
  told apart from the work: the bars are the traced pass's phase shares scaled to each run's
  measured time, labelled as such, and no explained share is claimed.

Pure pandas; no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pandas as pd

from qtrace.analyzers.lean_timing import LeanTiming, lean_timing_for
from qtrace.analyzers.phase_rules import PHASE_ORDER
from qtrace.tracefile.kineto import Trace

_TOL_US = 1e-6
CPU_NOTE = ("no CUDA activity, so no lean trace: the profiler's cost cannot be told apart from the work. Bars: "
            "each run's traced phase shares (self time of the phase's ops / traced span) scaled to its measured "
            "time; an estimate that assumes the profiler slowed every phase alike, not an explanation, so no "
            "explained share is given")


def lean_trace_path(source: str, precision: str | None) -> tuple[Path | None, str | None]:
    """(lean trace path, or None and why) for a full trace at `<run>/<precision>/trace.json.gz`."""
    full = Path(source)
    run_file = full.parent.parent / "run.json"
    if precision and run_file.is_file():
        try:
            run = msgspec.json.decode(run_file.read_bytes())
        except (msgspec.DecodeError, OSError, UnicodeDecodeError):
            run = None
        entry = ((run or {}).get("precisions") or {}).get(precision) if isinstance(run, dict) else None
        if isinstance(entry, dict):
            rel = entry.get("lean_trace")
            if rel:
                p = run_file.parent / str(rel)
                if p.resolve().is_relative_to(run_file.parent.resolve()) and p.is_file():
                    return p, None
                return None, f"run.json names lean trace {rel!r}, which is missing"
            if entry.get("lean_note"):
                return None, str(entry["lean_note"])
    sibling = full.parent / "lean_trace.json.gz"
    if full.name.startswith("trace.json") and sibling.is_file():
        return sibling, None
    return None, "no lean trace (recorded before lean traces existed, or not a run folder)"


def find_lean(source: str, precision: str | None, passes: int | None,
              full: Trace) -> tuple[LeanTiming | None, str | None]:
    """The lean timing of `full` (the trace at `source`, already loaded), or why there is none."""
    path, why = lean_trace_path(source, precision)
    if path is None:
        return None, why
    try:
        return lean_timing_for(full, path, passes), None
    except Exception as exc:  # a broken lean trace must not take the comparison down with it
        return None, f"lean trace {path} unreadable ({type(exc).__name__}: {exc})"


def _ordered(phases: list[str]) -> list[str]:
    known = [p for p in PHASE_ORDER if p in phases]
    return known + sorted(p for p in set(phases) if p not in known)


def lean_waterfall(base_label: str, base_ms: float, run_label: str, run_ms: float, base: LeanTiming,
                   run: LeanTiming) -> tuple[list[dict[str, Any]], float, float | None]:
    """(steps, residual µs, explained share) from two lean timings, both per pass."""
    b, r = base.per_pass(), run.per_pass()
    phases = _ordered([*b.index, *r.index])
    b, r = b.reindex(phases, fill_value=0.0), r.reindex(phases, fill_value=0.0)
    out: list[dict[str, Any]] = [{"kind": "start", "label": f"{base_label} measured", "phase": None,
                                  "value_us": base_ms * 1000.0}]
    for p in phases:
        d = float(r.at[p, "gpu_time_us"] - b.at[p, "gpu_time_us"])
        if d != 0.0:
            out.append({"kind": "gpu", "label": f"GPU {p}", "phase": p, "value_us": d})
    overlap = -(run.totals()["overlap_us"] - base.totals()["overlap_us"])
    if abs(overlap) > _TOL_US:
        out.append({"kind": "overlap", "label": "concurrent-kernel overlap", "phase": None, "value_us": overlap})
    for p in phases:
        d = float(r.at[p, "host_us"] - b.at[p, "host_us"])
        if d != 0.0:
            out.append({"kind": "host", "label": f"host {p}", "phase": p, "value_us": d})
    explained = sum(s["value_us"] for s in out[1:])
    d_meas = (run_ms - base_ms) * 1000.0
    residual = d_meas - explained
    out.append({"kind": "residual", "label": "not explained (drift, noise, lean profiler cost)", "phase": None,
                "value_us": residual})
    out.append({"kind": "end", "label": f"{run_label} measured", "phase": None, "value_us": run_ms * 1000.0})
    share = explained / d_meas if abs(d_meas) > _TOL_US else None
    return out, residual, share


def _scaled_shares(phases: pd.DataFrame, span_us: float, measured_us: float) -> pd.Series:
    """Each phase's share of the traced span x measured time.

    On a CPU every op runs on the host, so a phase's traced time is its ops' self time
    (cpu_time_us); the rest of the span (Python between ops, annotations) is "no phase".
    """
    parts = phases["cpu_time_us"].astype(float).copy()
    rest = span_us - float(parts.sum())
    if rest > _TOL_US:
        parts.loc["no phase"] = rest
    total = float(parts.sum())
    return parts * (measured_us / total) if total > 0 else parts * 0.0


def cpu_waterfall(base_label: str, base_ms: float, base_phases: pd.DataFrame, base_span_us: float,
                  run_label: str, run_ms: float, run_phases: pd.DataFrame,
                  run_span_us: float) -> list[dict[str, Any]]:
    """Measured baseline -> measured run, one bar per phase: d(traced share x measured time). Adds up exactly."""
    b = _scaled_shares(base_phases, base_span_us, base_ms * 1000.0)
    r = _scaled_shares(run_phases, run_span_us, run_ms * 1000.0)
    phases = _ordered([*b.index, *r.index])
    out: list[dict[str, Any]] = [{"kind": "start", "label": f"{base_label} measured", "phase": None,
                                  "value_us": base_ms * 1000.0}]
    for p in phases:
        d = float(r.get(p, 0.0) - b.get(p, 0.0))
        if d != 0.0:
            out.append({"kind": "scaled", "label": f"{p} (traced share x measured)",
                        "phase": None if p == "no phase" else p, "value_us": d})
    out.append({"kind": "end", "label": f"{run_label} measured", "phase": None, "value_us": run_ms * 1000.0})
    return out
