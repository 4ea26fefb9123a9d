"""Per-phase time of each pass from a lean trace (CUDA activity only), phases from the alignment.

Definitions, per pass k (one profiled step; docs/compare.md "Lean timing"):

* span: [s, e] with s = the earliest start and e = the latest end of the pass's runtime calls
  and GPU events (a step's calls are those cut by its closing cudaDeviceSynchronize; a GPU event
  belongs to the step of the call that launched it).
* GPU part of a phase: its share of the GPU busy time (union of the pass's GPU intervals); an
  instant where c events run at once gives 1/c of it to each. gpu_time_us (summed durations)
  is kept beside it; overlap_us = gpu_time_us - gpu_busy_us.
* host part of a phase: the GPU idle time (s..e minus busy) while the host was issuing that
  phase's work. Each idle instant t is charged by the launching thread's runtime calls: to the
  call in progress at t, else to the next call starting after t (the host was preparing it),
  else (after the pass's last call) to the last call. A call's phase: a launch (kernel, copy,
  memset) takes the phase of the GPU event it launched (correlation id); a sync without a
  correlated GPU event the phase of the last launch before it; any other call (cudaGetDevice,
  cudaEventRecord, ...) the phase of the next launch after it.

So, per pass and exactly (to float rounding): sum over phases (GPU part + host part) = span.

Pure pandas; no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from qtrace.analyzers.attribution import ASYNC_COPY_CALLS, SYNC_CALLS
from qtrace.analyzers.lean_alignment import UNMATCHED, Alignment, align
from qtrace.analyzers.lean_steps import step_bounds
from qtrace.tracefile.kineto import Trace, load_trace

PHASE_FIELDS = ("gpu_time_us", "gpu_busy_us", "host_us", "launches", "syncs", "sync_us")
NO_PHASE = "other"


@dataclass
class LeanTiming:
    """Per pass and per phase lean figures, plus their mean per pass."""

    passes: pd.DataFrame  # one row per pass: pass, span_us, gpu_busy_us, gpu_time_us, overlap_us, idle_us
    phases: pd.DataFrame  # one row per (pass, phase): PHASE_FIELDS
    alignment: Alignment
    source: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        """Passes timed: rows of `passes` times the passes each stands for (a whole window may hold several)."""
        return len(self.passes) * self.alignment.lean_steps.passes_per_step

    @property
    def _per_row(self) -> int:
        return self.alignment.lean_steps.passes_per_step

    def per_pass(self) -> pd.DataFrame:
        """Mean over passes, indexed by phase (a phase absent from a pass counts 0 there)."""
        if self.phases.empty:
            return pd.DataFrame(columns=list(PHASE_FIELDS))
        return self.phases.groupby("phase")[list(PHASE_FIELDS)].sum() / max(self.n, 1)

    def span_ms(self) -> float | None:
        return float(self.passes["span_us"].mean()) / 1000.0 / self._per_row if self.n else None

    def totals(self) -> dict[str, float]:
        """Mean per pass of the pass totals (span_us, gpu_busy_us, gpu_time_us, overlap_us, idle_us)."""
        cols = ["span_us", "gpu_busy_us", "gpu_time_us", "overlap_us", "idle_us"]
        return {c: float(self.passes[c].mean()) / self._per_row if self.n else 0.0 for c in cols}


def runtime_call_phases(lean: Trace, gpu_phase: pd.Series) -> pd.DataFrame:
    """Runtime calls of the lean trace with `phase`, `is_launch`, `is_sync` (rules in the module doc)."""
    rt = lean.runtime.copy()
    gpu = lean.gpu
    launched = pd.DataFrame({"runtime": gpu["runtime"].to_numpy(), "phase": gpu_phase.reindex(gpu.index).to_numpy(),
                             "name": gpu["name"].astype(str).to_numpy()})
    launched = launched[launched["runtime"] >= 0]
    first = launched.drop_duplicates("runtime", keep="first").set_index("runtime")["phase"]
    rt["is_launch"] = rt.index.isin(first.index)
    pageable = launched[launched["name"].str.contains("Pageable", regex=False)]["runtime"]
    rt["is_sync"] = rt["name"].isin(SYNC_CALLS) | (rt["name"].isin(ASYNC_COPY_CALLS) & rt.index.isin(pageable))
    phase = pd.Series(first.reindex(rt.index).to_numpy(), index=rt.index, dtype=object)
    order = rt.sort_values("ts", kind="stable").index
    launch_phase = phase.where(rt["is_launch"])
    last_launch = launch_phase.loc[order].ffill()
    next_launch = launch_phase.loc[order].bfill()
    syncs = rt["is_sync"] & ~rt["is_launch"]
    others = ~rt["is_sync"] & ~rt["is_launch"]
    phase.loc[syncs] = last_launch.reindex(rt.index)[syncs].fillna(next_launch.reindex(rt.index)[syncs])
    phase.loc[others] = next_launch.reindex(rt.index)[others].fillna(last_launch.reindex(rt.index)[others])
    rt["phase"] = phase.fillna(NO_PHASE).to_numpy()
    return rt


def _split_pass(s: float, e: float, g_start: np.ndarray, g_end: np.ndarray, g_phase: np.ndarray,
                h_end: np.ndarray, h_phase: np.ndarray) -> tuple[dict[str, float], dict[str, float], float]:
    """(GPU busy share per phase, host share per phase, busy) over [s, e]; the two add up to e - s.

    The timeline is cut at every GPU start/end and at every host boundary; each elementary
    piece is either busy (split among the c events covering it) or idle (charged to the host
    phase in force: the call whose end is the first at or after the piece).
    """
    g_start, g_end = np.clip(g_start, s, e), np.clip(g_end, s, e)
    bounds = np.maximum.accumulate(h_end) if len(h_end) else h_end
    x = np.unique(np.concatenate([[s, e], g_start, g_end, np.clip(bounds, s, e)]))
    length = np.diff(x)
    mid = (x[:-1] + x[1:]) / 2.0
    cover = (np.searchsorted(np.sort(g_start), mid, side="right") - np.searchsorted(np.sort(g_end), mid,
                                                                                       side="right"))
    busy_w = np.where(cover > 0, length / np.maximum(cover, 1), 0.0)
    cum = np.concatenate([[0.0], np.cumsum(busy_w)])
    i0, i1 = np.searchsorted(x, g_start), np.searchsorted(x, g_end)
    share = cum[i1] - cum[i0]
    gpu_part: dict[str, float] = {}
    for ph, v in pd.Series(share).groupby(g_phase).sum().items():
        gpu_part[str(ph)] = float(v)
    host_part: dict[str, float] = {}
    idle = cover == 0
    if idle.any():
        if len(bounds):
            k = np.minimum(np.searchsorted(bounds, mid[idle], side="left"), len(bounds) - 1)
            who = h_phase[k]
        else:
            who = np.full(int(idle.sum()), NO_PHASE, dtype=object)
        for ph, v in pd.Series(length[idle]).groupby(who).sum().items():
            host_part[str(ph)] = float(v)
    return gpu_part, host_part, float(length[~idle].sum())


def lean_timing(lean: Trace, alignment: Alignment) -> LeanTiming:
    """Per pass: span, GPU part and host part of each phase, launches, syncs (see the module doc)."""
    steps = alignment.lean_steps
    gpu = lean.gpu
    g_phase = alignment.phases["phase"]
    rt = runtime_call_phases(lean, g_phase)
    thread = steps.launch_thread
    on_thread = ((rt["pid"].astype(str) == thread[0]) & (rt["tid"].astype(str) == thread[1])).to_numpy() \
        if thread else np.zeros(len(rt), dtype=bool)
    rt_step = steps.runtime if len(steps.runtime) == len(rt) else np.full(len(rt), -1)
    g_step = steps.gpu if len(steps.gpu) == len(gpu) else np.full(len(gpu), -1)
    pass_rows, phase_rows = [], []
    for k in range(steps.n):
        r = rt[(rt_step == k)]
        g = gpu[g_step == k]
        bounds = step_bounds(r, g)
        if bounds is None:
            continue
        s, e = bounds
        host = r[on_thread[rt_step == k]].sort_values("ts", kind="stable")
        gpu_part, host_part, busy = _split_pass(
            s, e, g["ts"].to_numpy(), g["end"].to_numpy(), g_phase.reindex(g.index).to_numpy(dtype=object),
            host["end"].to_numpy(), host["phase"].to_numpy(dtype=object))
        gtime = g.groupby(g_phase.reindex(g.index).to_numpy())["dur"].sum()
        launches = r[r["is_launch"]].groupby("phase").size()
        sync = r[r["is_sync"]]
        syncs, sync_us = sync.groupby("phase").size(), sync.groupby("phase")["dur"].sum()
        phases = dict.fromkeys([*gpu_part, *host_part, *gtime.index, *launches.index, *syncs.index])
        for ph in phases:
            phase_rows.append({"pass": k, "phase": str(ph), "gpu_time_us": float(gtime.get(ph, 0.0)),
                               "gpu_busy_us": gpu_part.get(str(ph), 0.0), "host_us": host_part.get(str(ph), 0.0),
                               "launches": int(launches.get(ph, 0)), "syncs": int(syncs.get(ph, 0)),
                               "sync_us": float(sync_us.get(ph, 0.0))})
        gsum = float(g["dur"].sum())
        pass_rows.append({"pass": k, "start_us": s, "end_us": e, "span_us": e - s, "gpu_busy_us": busy,
                          "gpu_time_us": gsum, "overlap_us": gsum - busy, "idle_us": (e - s) - busy})
    passes = pd.DataFrame(pass_rows, columns=["pass", "start_us", "end_us", "span_us", "gpu_busy_us", "gpu_time_us",
                                              "overlap_us", "idle_us"])
    phases_df = pd.DataFrame(phase_rows, columns=["pass", "phase", *PHASE_FIELDS])
    notes = list(alignment.notes)
    if UNMATCHED in set(phases_df["phase"]):
        notes.append(f"phase '{UNMATCHED}': lean GPU work (and the host time issuing it) the alignment could not "
                     "label")
    return LeanTiming(passes, phases_df, alignment, str(lean.source), notes)


def lean_timing_files(full_path: str | Path, lean_path: str | Path, expected_steps: int | None = None) -> LeanTiming:
    """Load a full + lean pair, align, time (the few lines a committed-pair test needs)."""
    return lean_timing_for(load_trace(full_path), lean_path, expected_steps)


def lean_timing_for(full: Trace, lean_path: str | Path, expected_steps: int | None = None) -> LeanTiming:
    """Load the lean trace of an already loaded full one, align, time.

    compare has the full trace (and its cached phases) from its report: loading it again here
    read every full trace twice.
    """
    lean = load_trace(lean_path)
    return lean_timing(lean, align(full, lean, expected_steps))


def lean_summary(t: LeanTiming) -> dict[str, Any]:
    """JSON-ready: per-pass totals, per-phase means per pass, alignment figures."""
    per = t.per_pass()
    return {"lean_trace": t.source, "passes": t.n, **{k: v for k, v in t.totals().items()},
            "phases": [{"phase": str(p), **{f: float(row[f]) for f in PHASE_FIELDS}} for p, row in per.iterrows()],
            "alignment": t.alignment.summary(), "notes": list(t.notes)}
