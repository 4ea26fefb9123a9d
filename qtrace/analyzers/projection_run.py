"""Assemble a projection of one trace, or of each precision of a run folder, onto a target GPU.

The question: "what would this run's latency per pass, its ratio to fp16 and its phase breakdown
be on GPU X (with a host F times as fast)?". Kernels: `qtrace.analyzers.projection`; timeline:
`qtrace.analyzers.projection_timeline`. Figures are projections, labelled as such; the
assumptions travel with them (docs/projection.md).

Latency per pass:

- run folder (``run.json`` has the un-profiled ``latency_ms.per_iter.median``): the profiler slows
  the host (1.2-2.5x on the H100 host), so first the host factor F0 is found at which the rebuilt
  *measured* timeline's mean step equals the un-profiled latency (`calibrate_host_speed`); the
  projection then uses F0 x host_speed. Latency = the projected timeline's mean step span;
- a plain trace: the projected mean ``ProfilerStep`` span with the profiler's host cost left in
  (``basis: profiled_steps``), or the whole window when the trace has no steps (``window``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from qtrace.analyzers.attribution import gpu_phases
from qtrace.analyzers.phases import phase_table
from qtrace.analyzers.projection import (
    CLASS_MODEL,
    KERNEL_FLOOR_US,
    LATENCY_EFFICIENCY,
    class_table,
    feature_lines,
    measured_cc,
    measured_spec,
    phase_projection,
    project_kernels,
    refused_kernels,
)
from qtrace.analyzers.projection_timeline import Timeline, calibrate_host_speed, rebuild
from qtrace.analyzers.trace_analysis import Target, precision_of
from qtrace.gpu_peaks import CC_SOURCE, DeviceSpec
from qtrace.tracefile.kineto import Trace, load_trace

BASELINES = ("fp16", "bf16", "fp32")
ASSUMPTIONS = [
    "kernels keep the efficiency they reached on the measured GPU against the roof that binds them "
    "(datasheet peaks on both GPUs); latency-bound kernels keep their measured time unless their work needs longer "
    f"at {LATENCY_EFFICIENCY:.0%} of the target's roof; no kernel projects below min(measured, "
    f"{KERNEL_FLOOR_US:g} µs per event)",
    "the same kernels run on the target (same library versions and kernel choices); kernels needing a feature the "
    "target lacks are refused, not projected",
    "host work (Python, dispatch, launches, sync wake-ups) scales by 1 / host factor; launch latencies and gaps "
    "between queued kernels are kept",
    "syncs wait for all GPU work launched before them; one launching thread",
    "un-profiled latency: the profiler's cost is modelled as a slower host (F0, fitted so the measured GPU's "
    "rebuilt step equals the un-profiled latency)",
]


def _timeline_dict(tl: Timeline) -> dict[str, Any]:
    return {"span_us": tl.span_us, "gpu_busy_us": tl.gpu_busy_us, "gpu_idle_us": tl.gpu_idle_us,
            "step_mean_us": tl.step_mean_us, "steps": tl.steps.to_dict(orient="records"),
            "host_speed": tl.host_speed}


def _target_dict(spec: DeviceSpec) -> dict[str, Any]:
    return {"key": spec.key, "name": spec.name, "compute_capability": spec.compute_capability or None,
            "peaks": spec.peaks(), "datasheet": spec.source, "compute_capability_source": CC_SOURCE,
            "features": spec.features()}


def project_trace(trace: Trace, target: DeviceSpec, host_speed: float = 1.0, precision: str | None = None,
                  unprofiled_ms: float | None = None) -> dict[str, Any]:
    """The projection of one trace onto `target` as a JSON-ready dict."""
    kp = project_kernels(trace, target)
    measured_dur = gpu_phases(trace)["dur"].to_numpy(dtype=float)
    mspec = measured_spec(trace)
    check = rebuild(trace, measured_dur, 1.0)
    from qtrace.analyzers.host import host_summary

    host = host_summary(trace)
    measured_tl = {"span_us": host["span_us"], "gpu_busy_us": host["gpu_busy_us"], "gpu_idle_us": host["gpu_idle_us"]}
    profiled = rebuild(trace, kp.event_us, host_speed)
    u = kp.units
    ph = phase_projection(trace, kp)
    pt = phase_table(trace)
    host_ms = dict(zip(pt["phase"], pt["cpu_time_us"], strict=True)) if len(pt) else {}
    phases = []
    for r in ph.to_dict(orient="records"):
        cpu = float(host_ms.get(r["phase"], 0.0))
        phases.append({**r, "host_cpu_us": cpu, "projected_host_cpu_us": cpu / host_speed})
    out: dict[str, Any] = {
        "source": trace.source,
        "precision": precision or precision_of(trace),
        "measured_device": trace.device_name,
        "measured_table_entry": mspec.key if mspec else None,
        "measured_compute_capability": measured_cc(trace),
        "target": _target_dict(target),
        "host_speed": host_speed,
        "partial": kp.partial,
        "refused_us": float(u.loc[u["refused"], "gpu_us"].sum()),
        "refused_kernels": refused_kernels(kp),
        "substituted_us": float(u.loc[u["substituted"], "gpu_us"].sum()),
        "features": feature_lines(target, measured_cc(trace)),
        "gpu_time_us": {"measured": float(measured_dur.sum()), "projected": float(np.sum(kp.event_us))},
        "classes": class_table(kp).to_dict(orient="records"),
        "phases": phases,
        "timeline": {"measured": measured_tl, "rebuilt_measured": _timeline_dict(check),
                     "projected_profiled": _timeline_dict(profiled)},
        "rebuild_residual_us": check.span_us - host["span_us"],
    }
    latency = {"basis": "profiled_steps" if profiled.step_mean_us is not None else "window",
               "measured_us": check.step_mean_us if check.step_mean_us is not None else host["span_us"],
               "projected_us": profiled.step_mean_us if profiled.step_mean_us is not None else profiled.span_us,
               "host_speed_profiler": None, "calibration": None}
    if unprofiled_ms is not None and check.step_mean_us is not None:
        f0, status = calibrate_host_speed(trace, unprofiled_ms * 1000.0)
        un = rebuild(trace, kp.event_us, f0 * host_speed)
        latency.update({"basis": "unprofiled", "measured_us": unprofiled_ms * 1000.0,
                        "projected_us": un.step_mean_us, "host_speed_profiler": f0, "calibration": status})
        out["timeline"]["projected_unprofiled"] = _timeline_dict(un)
    out["latency"] = latency
    return out


def _unprofiled_ms(target: Target, precision: str | None) -> float | None:
    m = target.measured(precision) or {}
    v = ((m.get("latency_ms") or {}).get("per_iter") or {}).get("median")
    return float(v) if isinstance(v, int | float) and v > 0 else None


def project_target(target: Target, gpu: DeviceSpec, host_speed: float = 1.0) -> dict[str, Any]:
    """Every trace of a trace file or run folder, projected; ratios to the dense baseline when there is one."""
    results = []
    for precision, path in target.traces:
        trace = load_trace(path)
        results.append(project_trace(trace, gpu, host_speed, precision, _unprofiled_ms(target, precision)))
    base = next((r for b in BASELINES for r in results if r["precision"] == b), None)
    for r in results:
        lat = r["latency"]
        if base is not None and base is not r and base["latency"]["projected_us"] and lat["projected_us"]:
            r["ratio"] = {"baseline": base["precision"],
                          "projected": lat["projected_us"] / base["latency"]["projected_us"],
                          "measured": lat["measured_us"] / base["latency"]["measured_us"],
                          "partial": bool(r["partial"] or base["partial"])}
        else:
            r["ratio"] = None
    return {"kind": "projection", "path": str(target.path), "target": _target_dict(gpu), "host_speed": host_speed,
            "assumptions": ASSUMPTIONS, "class_models": CLASS_MODEL, "precisions": results,
            "partial": any(r["partial"] for r in results)}
