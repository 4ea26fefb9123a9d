"""Rank the runs of a comparison by latency, memory and error: the table for choosing a precision.

One row per run (the baseline included): its latency (the un-profiled median where run.json has
one, else the traced ms per pass, and the row says which), its peak memory (the allocator peak of
the timed pass on a GPU, else the loaded model's footprint; named too), its error against the
baseline (run.json's quality block: KL, top-1 agreement, max |dlogit|), and the phase that adds
the most time against the baseline (from the measured waterfall where there is one, else the
traced one), with the explained share. Ranks are 1 = best; a run without a figure ranks after the
others, and ties share a rank.

Pure: reads `Comparison` objects, no torch.
"""

from __future__ import annotations

import math
from typing import Any

from qtrace.analyzers.compare import Comparison, RunComparison, RunFigures, delta_within_noise

PEAK_KEYS = (("max_allocated_bytes", "allocator peak"), ("footprint_bytes", "model footprint"))


def peak_memory(fig: RunFigures) -> tuple[float | None, str | None]:
    """(bytes, what they are) for one run from its run.json entry, or (None, None)."""
    m = fig.report.measured or {}
    mem, load = m.get("memory") or {}, m.get("load") or {}
    for key, what in PEAK_KEYS:
        v = (mem if key in mem else load).get(key)
        if isinstance(v, int | float) and v > 0:
            return float(v), what
    return None, None


def _finite(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and math.isfinite(v) else None


def main_phase(comp: RunComparison) -> tuple[str | None, float | None]:
    """The phase whose bars (GPU + host) add the most time, in ms per pass, and that time."""
    steps = comp.measured_waterfall or comp.trace_waterfall
    by_phase: dict[str, float] = {}
    for s in steps:
        if s.get("kind") in ("gpu", "host") and s.get("phase"):
            by_phase[s["phase"]] = by_phase.get(s["phase"], 0.0) + float(s["value_us"])
    if not by_phase:
        return None, None
    phase, us = max(by_phase.items(), key=lambda kv: kv[1])
    return (phase, us / 1000.0) if us > 0 else (None, None)


def _ranks(values: list[float | None]) -> list[int]:
    """1 = smallest; None after every figure; equal figures share a rank."""
    known = sorted({v for v in values if v is not None})
    last = len(known) + 1
    return [known.index(v) + 1 if v is not None else last for v in values]


def ranking(c: Comparison) -> list[dict[str, Any]]:
    """Rows sorted by latency (see the module doc); JSON-ready."""
    rows = []
    base_peak, _ = peak_memory(c.baseline)
    base_ms = c.baseline.measured_ms or c.baseline.trace_ms
    for f in c.runs:
        comp = None if f is c.baseline else c.comparison_for(f.label)
        latency = f.measured_ms if f.measured_ms else f.trace_ms
        peak, peak_what = peak_memory(f)
        q = (f.report.measured or {}).get("quality") or {}
        kl = 0.0 if f is c.baseline else _finite(q.get("kl_mean"))
        phase, phase_ms = main_phase(comp) if comp else (None, None)
        rows.append({
            "run": f.label, "precision": f.precision, "is_baseline": f is c.baseline,
            "latency_ms": latency, "latency_source": "measured" if f.measured_ms else "traced",
            "latency_ratio": latency / base_ms if latency and base_ms else None,
            "peak_bytes": peak, "peak_source": peak_what,
            "peak_ratio": peak / base_peak if peak and base_peak else None,
            "kl_mean": kl, "top1_agreement": 1.0 if f is c.baseline else _finite(q.get("top1_agreement")),
            "max_abs_diff": 0.0 if f is c.baseline else _finite(q.get("max_abs_diff")),
            "main_phase": phase, "main_phase_ms": phase_ms,
            "explained_share": comp.explained_share if comp else None,
            # A delta inside the timing noise makes any share meaningless (e.g. 1702% of 0.16 ms).
            "delta_within_noise": None if f is c.baseline else delta_within_noise(c.baseline, f),
        })
    for key, rank in (("latency_ms", "rank_latency"), ("peak_bytes", "rank_memory"), ("kl_mean", "rank_error")):
        for row, r in zip(rows, _ranks([row[key] for row in rows]), strict=True):
            row[rank] = r
    return sorted(rows, key=lambda r: (r["rank_latency"], r["run"]))
