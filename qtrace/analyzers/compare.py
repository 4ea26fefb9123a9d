"""Compare runs (precisions) against a baseline, phase by phase, so the explanation balances.

Pure pandas over `TraceReport`s; no torch. The deltas of one comparison share one *unit*:

- ``window``: raw window totals, as `qtrace report` prints them. Used when every trace holds
  the same number of passes (or no pass count is known at all), so totals compare directly.
- ``pass``: each run's window totals divided by its pass count. Used when pass counts differ
  (e.g. a 3-step trace against a 5-step one).

A trace's pass count comes from its ProfilerStep markers, else the ``profile_steps`` of qtrace's
trace metadata, else the caller (``--passes``), else it is inferred when the sequence of top-level
host ops repeats exactly N times (the shared H100 traces: 3 identical forward passes).

Balance (per run; d(x) = x_run - x_baseline, all in the comparison's unit):

    sum over phases d(gpu_time_us)  = d(gpu_time_us)                    (phase table sums to gpu_time)
    sum over phases d(exposed_us)   = d(gpu_idle_us) - d(idle_unattributed_us)     (the latter is 0)
    d(gpu_busy_us) + d(gpu_idle_us) = d(span_us)
    d(gpu_busy_us)                  = d(gpu_time_us) - d(overlap_us)    (overlap: concurrent kernels)

so the trace waterfall  baseline span + sum d(gpu_time) - d(overlap) + sum d(exposed) + d(unattributed)
ends exactly at the run's span. Waterfalls are drawn per pass whenever pass counts are known. With
un-profiled latencies, the measured waterfall takes its GPU and host bars from the run folders' lean
traces (CUDA activity only, qtrace.analyzers.lean_compare); without lean traces it falls back to the
traced bars minus a per-event profiler cost; on CPU-only runs it scales the traced phase shares and
claims no explained share (see docs/compare.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from qtrace.analyzers import compare_devices, lean_compare
from qtrace.analyzers.attribution import op_phases, runtime_phases
from qtrace.analyzers.lean_timing import lean_summary
from qtrace.analyzers.phase_rules import PHASE_ORDER, group_of
from qtrace.analyzers.trace_analysis import TraceReport

DELTA_FIELDS = ("gpu_time_us", "cpu_time_us", "launches", "host_syncs", "host_sync_us", "exposed_us")
HOST_FIELDS = ("span_us", "gpu_busy_us", "gpu_idle_us", "launches", "syncs", "sync_us")
PRECISION_WORDS = ("fp32", "fp16", "bf16", "int8", "nf4", "fp4", "int4")
_TOL_US = 1e-6  # below this a balancing term is float noise and gets no bar of its own

SOURCE_MEASURED = "measured: un-profiled median per iteration, from run.json"
SOURCE_STEPS = "trace: median ProfilerStep span, profiled"


@dataclass
class RunFigures:
    """One run's figures in the comparison's unit (per pass, or per window)."""

    label: str
    report: TraceReport
    passes: int | None
    passes_source: str
    scale: float  # multiply a window total by this to get the comparison's unit
    per_pass: float | None  # multiply a figure in the comparison's unit by this to get it per pass
    phases: pd.DataFrame  # indexed by phase; DELTA_FIELDS columns, scaled
    host: dict[str, float]  # HOST_FIELDS scaled, plus overlap_us and idle_unattributed_us
    gpu_time_us: float
    measured_ms: float | None
    trace_ms: float  # profiled latency per pass from the trace (step median, or span per unit)
    trace_ms_source: str
    events: pd.Series  # host events the profiler recorded per phase (ops, annotations, runtime calls), scaled
    measured_spread_ms: float | None = None  # p90 - min of the un-profiled timed pass, per iteration
    lean: Any = None  # qtrace.analyzers.lean_timing.LeanTiming of the run folder's lean trace, if any
    lean_note: str | None = None  # why there is no lean timing

    @property
    def source(self) -> str:
        return self.report.source

    @property
    def joules_per_example(self) -> float | None:
        """NVML energy per example of the un-profiled timed pass (run.json), if measured."""
        return energy_per_example_j(self.report)

    @property
    def precision(self) -> str | None:
        return self.report.precision

    @property
    def inflation(self) -> float | None:
        """Profiled per-pass span / un-profiled latency: how much the profiler slowed this run."""
        if self.measured_ms and self.passes and self.per_pass is not None:
            return self.trace_ms / self.measured_ms
        return None

    @property
    def lean_inflation(self) -> float | None:
        """Lean traced ms per pass / un-profiled ms per iteration: what even the lean profiler costs."""
        span = self.lean.span_ms() if self.lean is not None else None
        return span / self.measured_ms if span and self.measured_ms else None

    @property
    def after_lean_ms(self) -> float | None:
        """Median of the un-profiled burst timed right after the lean pass (run.json latency_ms.after_lean)."""
        return measured_latency_ms(self.report, "after_lean")

    @property
    def timing_drift(self) -> float | None:
        """after_lean_ms / measured_ms: how far the host's speed moved across the lean pass (1.0: not at all)."""
        after = self.after_lean_ms
        return after / self.measured_ms if after and self.measured_ms else None

    @property
    def lean_trace(self) -> str | None:
        return self.lean.source if self.lean is not None else None


@dataclass
class RunComparison:
    """A run against the baseline: latency ratio, host delta, waterfalls."""

    run: RunFigures
    baseline: RunFigures
    latency_ratio: float | None
    latency_source: str
    host_delta: dict[str, float]
    gpu_time_us_delta: float
    waterfall_unit: str  # "pass" or "window"
    trace_waterfall: list[dict[str, Any]]
    measured_waterfall: list[dict[str, Any]] | None
    measured_note: str | None
    explained_share: float | None = None  # explained / measured latency delta (None: not claimed)
    explanation: str | None = None  # "lean trace" | "profiler cost model (no lean trace)" | "cpu: ..." | None

    @property
    def memory_delta(self) -> dict[str, float]:
        """Peak and resident memory of the run minus the baseline's (empty where unknown)."""
        return memory_totals_delta(self.baseline, self.run)


@dataclass
class Comparison:
    baseline: RunFigures
    runs: list[RunFigures]  # every run, the baseline included, in input order
    unit: str  # "pass" or "window"
    deltas: pd.DataFrame  # one row per (run, phase), phases only
    comparisons: list[RunComparison]  # one per non-baseline run
    memory_deltas: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # section -> rows
    notes: list[str] = field(default_factory=list)
    devices: list[dict[str, Any]] = field(default_factory=list)  # per (run, GPU) when a run used several GPUs

    def comparison_for(self, label: str) -> RunComparison:
        return next(c for c in self.comparisons if c.run.label == label)

    def to_dict(self) -> dict[str, Any]:
        return comparison_to_dict(self)


# --- labels and pass counts --------------------------------------------------------------------


def _stem(source: str) -> str:
    name = Path(source).name
    for suffix in (".json.gz", ".json", ".gz"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _guess_label(report: TraceReport) -> str:
    if report.precision:
        return report.precision
    stem = _stem(report.source)
    tokens = stem.replace("-", "_").split("_")
    for word in PRECISION_WORDS:
        if word in tokens:
            return word
    return stem


def run_labels(reports: list[TraceReport]) -> list[str]:
    """Short unique names: the precision where known (or found in the file name), else the file stem.

    Clashing names get the file stem (or, for `<precision>/trace.json.gz`, the folder) after a
    colon; names still equal (the same file twice) are numbered.
    """
    guessed = [_guess_label(r) for r in reports]
    labels = []
    for lab, r in zip(guessed, reports, strict=True):
        if guessed.count(lab) > 1:
            stem = _stem(r.source)
            lab = f"{lab}:{Path(r.source).parent.name if stem == 'trace' else stem}"
        labels.append(lab)
    dup = {lab for lab in labels if labels.count(lab) > 1}
    seen: dict[str, int] = {}
    out = []
    for lab in labels:
        if lab in dup:
            seen[lab] = seen.get(lab, 0) + 1
            lab = f"{guessed[len(out)]}#{seen[lab]}"
        out.append(lab)
    return out


MIN_PASS_OPS = 8  # a repeating unit shorter than this is not a model pass (e.g. one op called N times)


def repeated_passes(report: TraceReport) -> int | None:
    """N when the launch thread's top-level host ops are one sequence repeated exactly N > 1 times."""
    ops = report.trace.ops
    if not len(ops):
        return None
    top = ops[(ops["parent"] == -1) & (ops["cat"] == "cpu_op")]
    if top.empty:
        return None
    thread = top.groupby(["pid", "tid"]).size().idxmax()
    top = top[(top["pid"] == thread[0]) & (top["tid"] == thread[1])].sort_values("ts", kind="stable")
    names = top["name"].tolist()
    n = len(names)
    for k in range(n // MIN_PASS_OPS, 1, -1):
        if n % k == 0:
            unit = n // k
            if all(names[i * unit:(i + 1) * unit] == names[:unit] for i in range(1, k)):
                return k
    return None


def pass_count(report: TraceReport, passes: int | None = None) -> tuple[int | None, str]:
    """How many passes the trace window holds, and how we know."""
    if len(report.steps):
        return len(report.steps), "ProfilerStep markers"
    meta_steps = report.trace.qtrace_meta.get("profile_steps")
    if isinstance(meta_steps, int) and not isinstance(meta_steps, bool) and meta_steps > 0:
        return meta_steps, "qtrace metadata profile_steps"
    if passes:
        return passes, "--passes"
    inferred = repeated_passes(report)
    if inferred:
        return inferred, f"inferred: the top-level op sequence repeats {inferred} times"
    return None, "unknown"


def measured_latency_ms(report: TraceReport, block: str = "per_iter") -> float | None:
    """The positive, finite median of run.json's ``latency_ms.<block>`` (per_iter, after_lean), else None."""
    lat = ((report.measured or {}).get("latency_ms") or {}).get(block) or {}
    med = lat.get("median")
    if isinstance(med, int | float) and math.isfinite(med) and med > 0:
        return float(med)
    return None


def measured_spread_ms(report: TraceReport) -> float | None:
    """p90 - min of the un-profiled per-iteration latency: how far the timed pass itself moved.

    On a host whose CPU speed drifts, a host-bound pass moves with it; this spread is the size
    of a measured delta that timing noise alone can produce (used to read the residual).
    """
    lat = ((report.measured or {}).get("latency_ms") or {}).get("per_iter") or {}
    p90, low = lat.get("p90"), lat.get("min")
    if all(isinstance(v, int | float) and math.isfinite(v) for v in (p90, low)) and p90 >= low:
        return float(p90 - low)
    return None


# --- figures -----------------------------------------------------------------------------------


def energy_per_example_j(report: TraceReport) -> float | None:
    """Joules per example of the un-profiled timed pass (NVML), when run.json measured it."""
    energy = (report.measured or {}).get("energy") or {}
    value = energy.get("joules_per_example")
    return float(value) if isinstance(value, int | float) else None


def _figures(report: TraceReport, label: str, passes: int | None, passes_source: str, unit: str) -> RunFigures:
    scale = 1.0 / passes if unit == "pass" and passes else 1.0
    ph = report.phases.set_index("phase")
    table = pd.DataFrame({f: ph[f].astype(float) * scale if f in ph else 0.0 for f in DELTA_FIELDS},
                         index=ph.index)
    h = report.host
    host = {f: float(h.get(f, 0.0)) * scale for f in HOST_FIELDS}
    gpu_time = float(report.gpu_time_us) * scale
    # Two terms keep the waterfall exact whatever the trace: kernels running concurrently make
    # summed GPU time exceed busy (union) time; idle time outside every phase row is unattributed.
    host["overlap_us"] = gpu_time - host["gpu_busy_us"]
    host["idle_unattributed_us"] = host["gpu_idle_us"] - float(table["exposed_us"].sum())
    span = float(h.get("span_us", 0.0))
    if len(report.steps):
        trace_ms = float(report.steps["span_us"].median()) / 1000.0
        trace_src = SOURCE_STEPS
    elif passes:
        trace_ms = span / passes / 1000.0
        trace_src = f"trace: window span / {passes} passes, profiled"
    else:
        trace_ms = span / 1000.0
        trace_src = "trace: window span, profiled, pass count unknown"
    per_pass = (1.0 if unit == "pass" else 1.0 / passes) if passes else None
    return RunFigures(label=label, report=report, passes=passes, passes_source=passes_source, scale=scale,
                      per_pass=per_pass, phases=table, host=host, gpu_time_us=gpu_time,
                      measured_ms=measured_latency_ms(report), trace_ms=trace_ms, trace_ms_source=trace_src,
                      events=host_events(report.trace) * scale, measured_spread_ms=measured_spread_ms(report))


def host_events(trace: Any) -> pd.Series:
    """Host events the profiler recorded, per phase: ops, annotations and runtime calls.

    The profiler's own cost is roughly the same for every recorded event (a few µs on a busy
    host), which is why it inflates int8 (twice the ops and launches) more than fp16.
    """
    ops = op_phases(trace)
    rt = runtime_phases(trace)
    counts = pd.concat([ops["phase"], rt["phase"]], ignore_index=True).value_counts()
    return counts.astype(float)


def _phase_delta(base: RunFigures, run: RunFigures) -> pd.DataFrame:
    phases = [p for p in PHASE_ORDER if p in base.phases.index or p in run.phases.index]
    phases += [p for p in dict.fromkeys(list(base.phases.index) + list(run.phases.index)) if p not in phases]
    b = base.phases.reindex(phases, fill_value=0.0)
    r = run.phases.reindex(phases, fill_value=0.0)
    d = (r - b)[list(DELTA_FIELDS)]
    d.columns = [f"{c}_delta" for c in DELTA_FIELDS]
    d.insert(0, "group", [group_of(p) if p in PHASE_ORDER else p for p in phases])
    d.insert(0, "phase", phases)
    d.insert(0, "run", run.label)
    return d.reset_index(drop=True)


def _latency_ratio(base: RunFigures, run: RunFigures) -> tuple[float | None, str]:
    """Un-profiled latencies when both runs have them; else the profiled per-pass (or window) spans."""
    if base.measured_ms and run.measured_ms:
        return run.measured_ms / base.measured_ms, SOURCE_MEASURED
    if len(base.report.steps) and len(run.report.steps):
        src = SOURCE_STEPS
    elif base.passes and run.passes:
        src = "trace: window span per pass, profiled"
    else:
        src = "trace: window span, profiled; the windows are assumed to hold the same number of passes"
    if (base.passes and run.passes) or (len(base.report.steps) and len(run.report.steps)):
        b, r = base.trace_ms, run.trace_ms
    else:
        b, r = base.host["span_us"], run.host["span_us"]
    return (r / b if b > 0 else None), src


def waterfall_factor(base: RunFigures, run: RunFigures) -> tuple[float, str]:
    """Factor from the comparison unit to the waterfall's unit: per pass when both pass counts are known."""
    if base.per_pass is not None and run.per_pass is not None and base.per_pass == run.per_pass:
        return base.per_pass, "pass"
    if base.scale != 1.0 or run.scale != 1.0:  # deltas already per pass
        return 1.0, "pass"
    return 1.0, "window"


def trace_waterfall(base: RunFigures, run: RunFigures, deltas: pd.DataFrame,
                    factor: float = 1.0) -> list[dict[str, Any]]:
    """Baseline span -> run span: GPU-time delta per phase, overlap, GPU-idle delta per phase, rest.

    Every step has ``kind`` (start, gpu, overlap, host, unattributed, end), ``label``, ``phase``
    (or None) and ``value_us``; the non-total steps add up to end - start exactly. `factor`
    turns the comparison's unit into the waterfall's (1/passes for window totals).
    """
    steps: list[dict[str, Any]] = [{"kind": "start", "label": f"{base.label} span", "phase": None,
                                    "value_us": base.host["span_us"] * factor}]
    for row in deltas.itertuples():
        if row.gpu_time_us_delta != 0.0:
            steps.append({"kind": "gpu", "label": f"GPU {row.phase}", "phase": row.phase,
                          "value_us": float(row.gpu_time_us_delta) * factor})
    overlap = -(run.host["overlap_us"] - base.host["overlap_us"]) * factor
    if abs(overlap) > _TOL_US:
        steps.append({"kind": "overlap", "label": "concurrent-kernel overlap", "phase": None, "value_us": overlap})
    for row in deltas.itertuples():
        if row.exposed_us_delta != 0.0:
            steps.append({"kind": "host", "label": f"host {row.phase}", "phase": row.phase,
                          "value_us": float(row.exposed_us_delta) * factor})
    rest = (run.host["idle_unattributed_us"] - base.host["idle_unattributed_us"]) * factor
    if abs(rest) > _TOL_US:
        steps.append({"kind": "unattributed", "label": "GPU idle, no phase", "phase": None, "value_us": rest})
    steps.append({"kind": "end", "label": f"{run.label} span", "phase": None,
                  "value_us": run.host["span_us"] * factor})
    return steps


def profiler_cost_per_event_us(base: RunFigures) -> float | None:
    """µs the profiler added per recorded host event, from the baseline: (traced - measured) / events."""
    if not (base.measured_ms and base.per_pass is not None):
        return None
    events_per_pass = float(base.events.sum()) * base.per_pass
    if events_per_pass <= 0:
        return None
    cost = (base.trace_ms - base.measured_ms) * 1000.0 / events_per_pass
    return cost if cost > 0 else None


EXPLAIN_LEAN = "lean trace"
EXPLAIN_COST = "profiler cost model (no lean trace)"
EXPLAIN_CPU = "cpu: traced phase shares scaled to the measured time"


def explain_measured(base: RunFigures, run: RunFigures, trace_steps: list[dict[str, Any]],
                     unit: str) -> tuple[list[dict[str, Any]] | None, str | None, float | None, str | None]:
    """(measured waterfall, note, explained share, explanation source), best source first.

    Lean traces of both runs: bars from them. No CUDA activity in either trace: the CPU figure
    (no share claimed). Otherwise the per-event cost model, as the fallback it is.
    """
    if not (base.measured_ms and run.measured_ms):
        return None, "no un-profiled latency for both runs (give run folders from `qtrace profile`)", None, None
    if base.lean is not None and run.lean is not None:
        steps, residual, share = lean_compare.lean_waterfall(base.label, base.measured_ms, run.label, run.measured_ms,
                                                             base.lean, run.lean)
        cov = [f"{f.label} {f.lean.alignment.coverage:.0%}" for f in (base, run)
               if f.lean.alignment.coverage is not None]
        infl = [f"{f.label} x{f.lean_inflation:.2f}" for f in (base, run) if f.lean_inflation]
        drift = [f"{f.label} x{f.timing_drift:.2f}" for f in (base, run) if f.timing_drift]
        note = ("GPU and host bars per phase from the lean traces (CUDA activity only; lean traced / un-profiled: "
                + ", ".join(infl)
                + ("; timed again after the lean pass / before: " + ", ".join(drift) if drift else "")
                + "; phases carried over from the full traces, alignment coverage "
                + (", ".join(cov) or "n/a") + "); they explain "
                + (f"{share:.0%} of the measured delta" if share is not None else "a zero measured delta")
                + f", {residual / 1000:+.2f} ms is left unexplained" + residual_reading(base, run, residual))
        return steps, note, share, EXPLAIN_LEAN
    if not base.report.trace.has_gpu and not run.report.trace.has_gpu:
        steps = lean_compare.cpu_waterfall(
            base.label, base.measured_ms, base.phases * (base.per_pass or 1.0),
            base.host["span_us"] * (base.per_pass or 1.0), run.label, run.measured_ms,
            run.phases * (run.per_pass or 1.0), run.host["span_us"] * (run.per_pass or 1.0))
        return steps, lean_compare.CPU_NOTE, None, EXPLAIN_CPU
    steps, note = measured_waterfall(base, run, trace_steps, unit)
    if steps is None:
        return None, note, None, None
    explained = sum(s["value_us"] for s in steps[1:-1] if s["kind"] != "residual")
    d_meas = (run.measured_ms - base.measured_ms) * 1000.0
    return steps, note, (explained / d_meas if abs(d_meas) > _TOL_US else None), EXPLAIN_COST


def measured_waterfall(base: RunFigures, run: RunFigures, trace_steps: list[dict[str, Any]],
                       unit: str) -> tuple[list[dict[str, Any]] | None, str | None]:
    """Measured baseline latency -> measured run latency, explained by the trace without the profiler.

    The fallback where no lean trace exists (explain_measured picks).

    The profiler inflates host time by roughly a fixed cost per recorded event (op, annotation,
    runtime call) and hardly touches kernel time. So GPU bars stay as traced, and each host-side
    bar loses the profiler's cost of the extra events its phase recorded: c x (events delta),
    with c estimated on the baseline as (traced per-pass span - measured latency) / events per
    pass. What the model then leaves unexplained is shown as its own bar ("not explained"), so
    the bars add up to the measured delta exactly and the size of the gap is visible.
    """
    if not (base.measured_ms and run.measured_ms):
        return None, "no un-profiled latency for both runs (give run folders from `qtrace profile`)"
    if unit != "pass":
        return None, "pass count unknown, so traced figures cannot be set per iteration (pass --passes N)"
    d_meas = (run.measured_ms - base.measured_ms) * 1000.0
    gpu_kinds, host_kinds = ("gpu", "overlap"), ("host", "unattributed")
    out: list[dict[str, Any]] = [{"kind": "start", "label": f"{base.label} measured", "phase": None,
                                  "value_us": base.measured_ms * 1000.0}]
    out += [dict(s) for s in trace_steps[1:-1] if s["kind"] in gpu_kinds]
    cost = profiler_cost_per_event_us(base) or 0.0
    d_events = run.events.subtract(base.events, fill_value=0.0) * (run.per_pass or 1.0)
    for s in trace_steps[1:-1]:
        if s["kind"] not in host_kinds:
            continue
        correction = cost * float(d_events.get(s["phase"], 0.0)) if s["phase"] else 0.0
        out.append({**s, "value_us": s["value_us"] - correction, "traced_us": s["value_us"],
                    "profiler_us": correction})
    explained = sum(s["value_us"] for s in out[1:])
    residual = d_meas - explained
    out.append({"kind": "residual", "label": "not explained (drift, noise, model error)", "phase": None,
                "value_us": residual})
    out.append({"kind": "end", "label": f"{run.label} measured", "phase": None,
                "value_us": run.measured_ms * 1000.0})
    share = (explained / d_meas) if abs(d_meas) > _TOL_US else None
    note = (f"GPU bars as traced; each host bar minus the profiler's cost of its extra recorded events "
            f"({cost:.2f} µs per event, from the baseline: (traced - measured) / events); the trace explains "
            + (f"{share:.0%} of the measured delta" if share is not None else "a zero measured delta")
            + f", {residual / 1000:+.2f} ms is left unexplained" + residual_reading(base, run, residual))
    return out, note


def timing_spread_ms(base: RunFigures, run: RunFigures) -> float | None:
    """The timed passes' own spread: p90 - min of both runs, added (None when either lacks it)."""
    if base.measured_spread_ms is None or run.measured_spread_ms is None:
        return None
    return base.measured_spread_ms + run.measured_spread_ms


def delta_within_noise(base: RunFigures, run: RunFigures) -> bool | None:
    """Whether the measured latency delta is no larger than the timing spread; then an explained
    share (explained / delta) divides by noise and says nothing."""
    spread = timing_spread_ms(base, run)
    if spread is None or base.measured_ms is None or run.measured_ms is None:
        return None
    return abs(run.measured_ms - base.measured_ms) <= spread


def residual_reading(base: RunFigures, run: RunFigures, residual_us: float) -> str:
    """Whether timing noise alone can account for the residual: compared with the timed passes' spread."""
    spread = timing_spread_ms(base, run)
    if spread is None:
        return ""
    if abs(residual_us) / 1000.0 <= spread:
        return (f"; that is within the timed passes' own spread ({spread:.2f} ms, p90 - min of both runs), "
                "so timing noise can account for it")
    return (f"; that exceeds the timed passes' own spread ({spread:.2f} ms, p90 - min of both runs): the "
            "host's speed changed between the timed and the profiled passes, or the model misses a cost")


# --- memory (issue 4's section, when present) --------------------------------------------------

# The per-phase lists of the memory section that compare reads (docs/memory.md keeps these keys stable).
MEMORY_LISTS = ("at_peak", "phases")
MEMORY_TOTALS = ("peak_allocated_bytes", "max_reserved_bytes", "start_allocated_bytes", "resident_bytes")


def _memory_lists(section: Any) -> dict[str, dict[str, dict[str, float]]]:
    """Per-phase lists of a memory section: {list key: {phase: {numeric field: value}}}."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    if not isinstance(section, dict) or section.get("available") is False:
        return out
    for key in MEMORY_LISTS:
        value = section.get(key)
        if not isinstance(value, list) or not all(isinstance(v, dict) and "phase" in v for v in value):
            continue
        per: dict[str, dict[str, float]] = {}
        for row in value:
            acc = per.setdefault(str(row["phase"]), {})
            for k, v in row.items():
                if k != "phase" and isinstance(v, int | float) and not isinstance(v, bool):
                    acc[k] = acc.get(k, 0.0) + float(v)
        out[key] = per
    return out


def memory_deltas(base: RunFigures, run: RunFigures) -> dict[str, list[dict[str, Any]]]:
    """Per-phase memory deltas from report.extra['memory'] ({} while that analyzer is absent).

    ``at_peak``: bytes/blocks live at the allocator peak by phase (``resident`` included), so a
    run's ``bytes_delta`` add up to its ``peak_allocated_bytes`` delta. ``phases``: allocations,
    transients and peak increments per phase. Bytes are not divided by passes: a peak is a moment.
    """
    b_lists = _memory_lists(base.report.extra.get("memory"))
    r_lists = _memory_lists(run.report.extra.get("memory"))
    out: dict[str, list[dict[str, Any]]] = {}
    for key in MEMORY_LISTS:
        if key not in b_lists or key not in r_lists:
            continue
        b, r = b_lists[key], r_lists[key]
        phases = [p for p in ("resident", *PHASE_ORDER) if p in b or p in r]
        phases += [p for p in dict.fromkeys(list(b) + list(r)) if p not in phases]
        rows = []
        for p in phases:
            fields = dict.fromkeys(list(b.get(p, {})) + list(r.get(p, {})))
            row: dict[str, Any] = {"run": run.label, "phase": p}
            for f in fields:
                row[f"{f}_delta"] = r.get(p, {}).get(f, 0.0) - b.get(p, {}).get(f, 0.0)
            rows.append(row)
        out[key] = rows
    return out


def memory_totals_delta(base: RunFigures, run: RunFigures) -> dict[str, float]:
    """Deltas of the memory section's totals (peak_allocated_bytes, ...), where both runs have them."""
    b, r = base.report.extra.get("memory"), run.report.extra.get("memory")
    if not isinstance(b, dict) or not isinstance(r, dict):
        return {}
    out = {}
    for k in MEMORY_TOTALS:
        bv, rv = b.get(k), r.get(k)
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in (bv, rv)):
            out[f"{k}_delta"] = float(rv) - float(bv)
    return out


# --- entry point -------------------------------------------------------------------------------


def resolve_baseline(labels: list[str], reports: list[TraceReport], baseline: str | int | None) -> int:
    """Index of the baseline: None = the first; an int index; or a label, precision or file name."""
    from qtrace.errors import QtraceError

    if baseline is None:
        return 0
    if isinstance(baseline, int) or (isinstance(baseline, str) and baseline.isdigit()):
        i = int(baseline)
        if not 0 <= i < len(labels):
            raise QtraceError(f"--baseline {baseline}: index out of range (0..{len(labels) - 1})")
        return i
    for i, lab in enumerate(labels):
        if baseline == lab:
            return i
    matches = [i for i, r in enumerate(reports)
               if baseline in (r.precision, r.source, Path(r.source).name, _stem(r.source))]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise QtraceError(f"--baseline {baseline}: matches several runs ({', '.join(labels[i] for i in matches)})")
    raise QtraceError(f"--baseline {baseline}: no such run (runs: {', '.join(labels)})")


def _choose_unit(counts: list[tuple[int | None, str]], labels: list[str]) -> tuple[str, list, list[str]]:
    """Window totals when all traces hold the same number of passes (or none is known); else per pass."""
    known = [c for c, _ in counts if c]
    notes: list[str] = []
    if not known:
        notes.append("no trace says how many passes it holds (no ProfilerStep markers, no qtrace metadata, no "
                     "repeating op sequence): figures are per trace window, so the windows must hold the same "
                     "work (or pass --passes N)")
        return "window", counts, notes
    if len(known) < len(counts):
        unknown = [labels[i] for i, (c, _) in enumerate(counts) if not c]
        if len(set(known)) == 1:
            notes.append(f"pass count unknown for {', '.join(unknown)}: assumed {known[0]} like the others")
            counts = [(c or known[0], s if c else "assumed like the other runs") for c, s in counts]
        else:
            notes.append(f"pass count unknown for {', '.join(unknown)}: counted as 1 pass (pass --passes N)")
            counts = [(c or 1, s if c else "assumed 1") for c, s in counts]
    if len({c for c, _ in counts}) == 1:
        return "window", counts, notes
    notes.append("the traces hold different numbers of passes (" +
                 ", ".join(f"{labels[i]} {c}" for i, (c, _) in enumerate(counts)) + "): all figures are per pass")
    return "pass", counts, notes


def attach_lean(fig: RunFigures) -> None:
    """The run folder's lean trace, aligned and timed, when the run has a measured latency and GPU activity."""
    if not fig.measured_ms:
        return
    if not fig.report.trace.has_gpu:
        fig.lean_note = "no CUDA activity in the trace, so no lean trace"
        return
    fig.lean, fig.lean_note = lean_compare.find_lean(fig.source, fig.precision, fig.passes, fig.report.trace)


def compare_reports(reports: list[TraceReport], baseline: str | int | None = None,
                    passes: int | None = None, labels: list[str] | None = None, lean: bool = True) -> Comparison:
    """Compare each report against the baseline (the first unless named).

    lean: read the run folders' lean traces for the measured waterfall (False: the cost model only).
    """
    from qtrace.errors import QtraceError

    if len(reports) < 2:
        raise QtraceError(f"compare needs at least two runs, got {len(reports)}")
    labels = labels or run_labels(reports)
    b_index = resolve_baseline(labels, reports, baseline)
    unit, counts, notes = _choose_unit([pass_count(r, passes) for r in reports], labels)
    figs = [_figures(r, labels[i], counts[i][0], counts[i][1], unit) for i, r in enumerate(reports)]
    base = figs[b_index]
    if lean:
        for fig in figs:
            attach_lean(fig)
    models = {str(r.trace.qtrace_meta.get("model")) for r in reports if r.trace.qtrace_meta.get("model")}
    if len(models) > 1:
        notes.append(f"the runs are of different models ({', '.join(sorted(models))}): deltas mix model and precision")
    if not any(r.trace.has_gpu for r in reports):
        notes.append("no GPU activity in any trace: the host CPU time deltas (cpu_time_us_delta) carry the "
                     "comparison; GPU idle time is the whole span")
    devices = {r.device for r in reports if r.device}
    if len(devices) > 1:
        notes.append(f"the runs come from different devices ({', '.join(sorted(devices))})")
    gpu_note = compare_devices.device_note(figs)
    if gpu_note:
        notes.append(gpu_note)

    delta_frames, comps = [], []
    mem: dict[str, list[dict[str, Any]]] = {}
    for fig in figs:
        if fig is base:
            continue
        d = _phase_delta(base, fig)
        delta_frames.append(d)
        ratio, src = _latency_ratio(base, fig)
        host_delta = {f"{k}_delta": fig.host[k] - base.host[k]
                      for k in (*HOST_FIELDS, "overlap_us", "idle_unattributed_us")}
        factor, w_unit = waterfall_factor(base, fig)
        tw = trace_waterfall(base, fig, d, factor)
        mw, note, share, how = explain_measured(base, fig, tw, w_unit)
        comps.append(RunComparison(run=fig, baseline=base, latency_ratio=ratio, latency_source=src,
                                   host_delta=host_delta, gpu_time_us_delta=fig.gpu_time_us - base.gpu_time_us,
                                   waterfall_unit=w_unit, trace_waterfall=tw, measured_waterfall=mw,
                                   measured_note=note, explained_share=share, explanation=how))
        for key, rows in memory_deltas(base, fig).items():
            mem.setdefault(key, []).extend(rows)
    cols = ["run", "phase", "group", *(f"{c}_delta" for c in DELTA_FIELDS)]
    deltas = pd.concat(delta_frames, ignore_index=True) if delta_frames else pd.DataFrame(columns=cols)
    for col in ("launches_delta", "host_syncs_delta"):  # counts stay counts unless divided per pass
        if len(deltas) and (deltas[col] % 1 == 0).all():
            deltas[col] = deltas[col].astype("int64")
    return Comparison(baseline=base, runs=figs, unit=unit, deltas=deltas[cols], comparisons=comps,
                      memory_deltas=mem, notes=notes, devices=compare_devices.device_rows(figs))


# --- JSON --------------------------------------------------------------------------------------


def _num(x: float) -> float | int:
    """Counts stay ints when whole (per window), figures stay floats."""
    x = float(x)
    return int(x) if x.is_integer() and abs(x) < 2**53 else x


def _run_dict(c: Comparison, fig: RunFigures) -> dict[str, Any]:
    meta = fig.report.trace.qtrace_meta
    phases = []
    for phase, row in fig.phases.iterrows():
        phases.append({"phase": phase, "group": group_of(phase) if phase in PHASE_ORDER else phase,
                       **{f: _num(row[f]) if f in ("launches", "host_syncs") else float(row[f]) for f in DELTA_FIELDS}})
    out: dict[str, Any] = {
        "run": fig.label,
        "source": fig.source,
        "precision": fig.precision,
        "device": fig.report.device,
        "model": meta.get("model"),
        "passes": fig.passes,
        "passes_source": fig.passes_source,
        "gpu_time_us": fig.gpu_time_us,
        "gpu_time_us_window": float(fig.report.gpu_time_us),
        "latency": {"measured_ms": fig.measured_ms, "measured_spread_ms": fig.measured_spread_ms,
                    "trace_ms": fig.trace_ms, "trace_source": fig.trace_ms_source,
                    "profiler_inflation": fig.inflation,
                    # only run folders that timed a burst after the lean pass: older ones compare unchanged
                    **({"after_lean_ms": fig.after_lean_ms, "timing_drift": fig.timing_drift}
                       if fig.after_lean_ms else {})},
        "energy": (fig.report.measured or {}).get("energy"),
        "host": {k: _num(v) if k in ("launches", "syncs") else float(v) for k, v in fig.host.items()},
        "phases": phases,
        "is_baseline": fig is c.baseline,
        "lean_trace": fig.lean_trace,
        "lean_inflation": fig.lean_inflation,
    }
    if fig.lean is not None:
        out["lean"] = lean_summary(fig.lean)
    elif fig.lean_note:
        out["lean_note"] = fig.lean_note
    quality = (fig.report.measured or {}).get("quality")
    if quality is not None:  # only runs that measured it: older run folders compare byte-identically
        out["quality"] = quality
    if fig is c.baseline:
        out.update({"latency_ratio": 1.0, "latency_source": None})
        return out
    comp = c.comparison_for(fig.label)
    out.update({
        "latency_ratio": comp.latency_ratio,
        "latency_source": comp.latency_source,
        "gpu_time_us_delta": comp.gpu_time_us_delta,
        "host_delta": {k: _num(v) if k in ("launches_delta", "syncs_delta") else float(v)
                       for k, v in comp.host_delta.items()},
        "waterfall": {"unit": comp.waterfall_unit, "trace": comp.trace_waterfall, "measured": comp.measured_waterfall,
                      "measured_note": comp.measured_note},
        "explained_share": comp.explained_share,
        "explanation": comp.explanation,
    })
    mem = memory_totals_delta(c.baseline, fig)
    if mem:
        out["memory_delta"] = mem
    return out


def comparison_to_dict(c: Comparison) -> dict[str, Any]:
    deltas = []
    for row in c.deltas.to_dict(orient="records"):
        deltas.append({k: (_num(v) if k in ("launches_delta", "host_syncs_delta") else
                           float(v) if isinstance(v, int | float) else v) for k, v in row.items()})
    out: dict[str, Any] = {
        "baseline": c.baseline.source,
        "baseline_run": c.baseline.label,
        "unit": c.unit,
        "runs": [_run_dict(c, f) for f in c.runs],
        "deltas": deltas,
        "notes": c.notes,
    }
    if c.memory_deltas:
        out["memory_deltas"] = c.memory_deltas
    from qtrace.analyzers.ranking import ranking  # imports this module's types

    out["ranking"] = ranking(c)
    if c.devices:  # only when a run used several GPUs: other comparisons stay byte-identical
        out["devices"] = c.devices
    return out
