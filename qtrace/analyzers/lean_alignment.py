"""Label a lean trace's GPU events with the phases of the full trace of the same steps.

The lean trace (CUDA activity only) times the work without the full profiler's host cost but
has no host ops, so no phases. Its kernel sequence per stream is the full trace's one for the
same work. Alignment, per step and per stream, in time order: the two name sequences are matched
as difflib.SequenceMatcher matches them (longest matching blocks, so a few extra or missing kernels on
either side only leave those unmatched instead of shifting everything after them). A matched
lean event takes its full twin's phase; an unmatched one gets the phase ``unmatched`` and is
counted, never spread over the others.

Pure pandas; no torch.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from qtrace.analyzers.attribution import gpu_phases
from qtrace.analyzers.lean_steps import Steps, trace_steps
from qtrace.analyzers.seqmatch import matching_blocks
from qtrace.tracefile.kineto import Trace, load_trace

UNMATCHED = "unmatched"


@dataclass
class Alignment:
    """Phase of each lean GPU event, and how well the two traces matched."""

    phases: pd.DataFrame  # per lean GPU event (index: trace.gpu's): step, stream, name, dur, phase, matched, full_row
    lean_steps: Steps
    full_steps: int
    coverage: float | None  # matched lean GPU time / all lean GPU time in steps (None: no GPU time)
    matched_events: int
    unmatched_lean: int
    unmatched_full: int
    unmatched_names: list[tuple[str, int]]  # most frequent unmatched kernel names (either side), with counts
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"coverage": self.coverage, "matched_events": self.matched_events,
                "unmatched_lean_events": self.unmatched_lean, "unmatched_full_events": self.unmatched_full,
                "unmatched_names": [{"name": n, "count": c} for n, c in self.unmatched_names],
                "lean_steps": self.lean_steps.n, "lean_steps_source": self.lean_steps.source,
                "full_steps": self.full_steps, "notes": list(self.notes)}


def _full_step_ordinals(full: Trace) -> tuple[np.ndarray, int]:
    """Step ordinal 0..n-1 of each full-trace GPU event (from ProfilerStep numbers), -1 outside."""
    gp = gpu_phases(full)
    numbers = gp["step"].to_numpy()
    known = np.unique(numbers[numbers >= 0])
    if not len(known):
        steps = trace_steps(full)
        return steps.gpu, steps.n
    ordinal = np.searchsorted(known, numbers)
    return np.where(numbers >= 0, ordinal, -1).astype(np.int64), len(known)


def name_blocks(f_names: list[str], g_names: list[str]) -> list[tuple[int, int, int]]:
    """difflib.SequenceMatcher(None, f_names, g_names, autojunk=False).get_matching_blocks(), sentinel dropped.

    autojunk off: a model repeats its kernels hundreds of times, which the heuristic would discard.
    qtrace.analyzers.seqmatch gives difflib's blocks without its quadratic search (a generation step
    holds tens of thousands of launches).
    """
    codes, _ = pd.factorize(pd.Series([*f_names, *g_names], dtype=object), sort=False)
    return matching_blocks(codes[:len(f_names)], codes[len(f_names):])


def align(full: Trace, lean: Trace, expected_steps: int | None = None) -> Alignment:
    """Match lean GPU events to full-trace ones per step and stream, by kernel name, in order."""
    gp = gpu_phases(full)
    full_step, n_full = _full_step_ordinals(full)
    steps = trace_steps(lean, expected_steps or n_full)
    notes = list(steps.notes)
    lg = lean.gpu
    lean_step = steps.gpu.copy()
    if steps.n != n_full:
        notes.append(f"the lean trace holds {steps.n} step(s), the full one {n_full}: aligned over the whole "
                     "window instead of step by step")
        lean_step = np.where(lean_step >= 0, 0, -1)
        full_step = np.where(full_step >= 0, 0, -1)
    out = pd.DataFrame({"step": lean_step, "stream": lg["stream"].to_numpy() if len(lg) else [],
                        "name": lg["name"].astype(str).to_numpy() if len(lg) else [],
                        "dur": lg["dur"].to_numpy() if len(lg) else []}, index=lg.index)
    out["phase"] = UNMATCHED
    out["matched"] = False
    out["full_row"] = -1
    full_df = pd.DataFrame({"step": full_step, "stream": gp["stream"].to_numpy(), "name": gp["name"].astype(str),
                            "ts": gp["ts"].to_numpy(), "phase": gp["phase"].to_numpy()}, index=gp.index)
    lean_df = out.assign(ts=lg["ts"].to_numpy() if len(lg) else [])
    missing: Counter[str] = Counter()
    unmatched_full = 0
    full_groups = {k: g.sort_values("ts", kind="stable") for k, g in full_df[full_df["step"] >= 0].groupby(
        ["step", "stream"], dropna=False)}
    lean_groups = {k: g.sort_values("ts", kind="stable") for k, g in lean_df[lean_df["step"] >= 0].groupby(
        ["step", "stream"], dropna=False)}
    for key in sorted(set(full_groups) | set(lean_groups), key=str):
        f = full_groups.get(key, full_df.iloc[:0])
        g = lean_groups.get(key, lean_df.iloc[:0])
        f_names, g_names = f["name"].tolist(), g["name"].tolist()
        f_hit = np.zeros(len(f), dtype=bool)
        g_hit = np.zeros(len(g), dtype=bool)
        for a, b, size in name_blocks(f_names, g_names):
            if size:
                rows = g.index[b:b + size]
                out.loc[rows, "phase"] = f["phase"].to_numpy()[a:a + size]
                out.loc[rows, "full_row"] = f.index[a:a + size].to_numpy()
                f_hit[a:a + size] = True
                g_hit[b:b + size] = True
        unmatched_full += int((~f_hit).sum())
        missing.update(np.asarray(f_names, dtype=object)[~f_hit].tolist())
        missing.update(np.asarray(g_names, dtype=object)[~g_hit].tolist())
    out["matched"] = out["full_row"] >= 0
    in_steps = out["step"] >= 0
    total = float(out.loc[in_steps, "dur"].sum())
    matched_time = float(out.loc[in_steps & out["matched"], "dur"].sum())
    coverage = matched_time / total if total > 0 else None
    unmatched_lean = int((in_steps & ~out["matched"]).sum())
    if unmatched_lean or unmatched_full:
        notes.append(f"{unmatched_lean} lean and {unmatched_full} full-trace GPU events found no twin (phase "
                     f"'{UNMATCHED}' for the lean ones); coverage {coverage:.1%} of the lean GPU time"
                     if coverage is not None else f"{unmatched_lean} lean GPU events found no twin")
    return Alignment(out, steps, n_full, coverage, int(out["matched"].sum()), unmatched_lean, unmatched_full,
                     missing.most_common(5), notes)


def align_files(full_path: str | Path, lean_path: str | Path, expected_steps: int | None = None) -> Alignment:
    """Load a full + lean trace pair and align them (what a test of a committed pair calls)."""
    return align(load_trace(full_path), load_trace(lean_path), expected_steps)
