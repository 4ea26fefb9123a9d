"""Per-GPU rows of a comparison in which some run used several GPUs (fp16 split over two against int8 on one).

The comparison itself (ratios, waterfalls, phase deltas) is computed on the trace-wide figures:
GPU time summed over every device and the wall-clock span with its union busy time (at least one
GPU working), so a two-GPU run and a one-GPU run balance in the same terms. These rows add what a
sum hides: per GPU its busy time, how long it waited for the other GPU, its peer-copy time, and
the un-profiled peak memory that run.json recorded for it. Pure pandas; no torch.
"""

from __future__ import annotations

from typing import Any

from qtrace.analyzers.devices import device_table, devices_of

DEVICE_FIELDS = ("gpu_time_us", "busy_us", "idle_us", "waiting_us", "copy_us")


def device_count(report: Any) -> int:
    return len(devices_of(report.trace)) if report.trace.has_gpu else 0


def measured_device_memory(report: Any) -> dict[int, dict[str, Any]]:
    """run.json's per-device memory of the un-profiled pass, by device index ({} when not recorded)."""
    mem = (report.measured or {}).get("memory") or {}
    out: dict[int, dict[str, Any]] = {}
    for d in mem.get("per_device") or []:
        if isinstance(d, dict) and isinstance(d.get("index"), int):
            out[d["index"]] = d
    return out


def device_rows(runs: list[Any]) -> list[dict[str, Any]]:
    """One row per (run, GPU), in the comparison's unit (each run's `scale`); [] unless a run used two or more GPUs."""
    if not any(device_count(f.report) >= 2 for f in runs):
        return []
    rows = []
    for f in runs:
        if not f.report.trace.has_gpu:
            continue
        mem = measured_device_memory(f.report)
        for d in device_table(f.report.trace).to_dict(orient="records"):
            m = mem.get(int(d["device"]), {})
            rows.append({"run": f.label, "device": int(d["device"]),
                         **{k: float(d[k]) * f.scale for k in DEVICE_FIELDS},
                         "busy_share": float(d["busy_share"]), "copies": int(d["copies"]),
                         "max_allocated_bytes": m.get("max_allocated_bytes"),
                         "nvml_process_bytes": m.get("nvml_process_bytes")})
    return rows


def device_note(runs: list[Any]) -> str | None:
    """A note when the runs used different numbers of GPUs, else None."""
    counts = {f.label: device_count(f.report) for f in runs if f.report.trace.has_gpu}
    if len(set(counts.values())) <= 1:
        return None
    used = ", ".join(f"{k} {v} GPU{'s' if v != 1 else ''}" for k, v in counts.items())
    return (f"the runs use different numbers of GPUs ({used}): ratios and deltas use GPU time summed over the "
            "GPUs and the wall-clock span (busy = at least one GPU working); per-GPU busy and waiting time is in "
            "the GPUs table")
