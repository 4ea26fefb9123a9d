"""Render TraceReports: terminal table, Markdown, CSV files and JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from qtrace.analyzers.phase_rules import QUANT_PHASES
from qtrace.analyzers.quality import quality_line
from qtrace.analyzers.trace_analysis import TraceReport
from qtrace.fileio import write_json, write_text
from qtrace.markup import md_escape, md_table, ms, pct, shorten, text_table
from qtrace.reports import device_report

PHASE_HEADERS = ["phase", "group", "GPU ms", "GPU %", "kernels", "host CPU ms", "launches", "syncs", "sync ms",
                 "GPU-idle ms"]


def finding_lines(r: TraceReport) -> list[str]:
    """Audit findings recorded with the run (`qtrace run` / `qtrace.record`), in the audit's order (by cost)."""
    found = (r.measured or {}).get("findings") or []
    ordered = [f for f in found if isinstance(f, dict)]
    return [f"Finding [{f.get('severity', '?')}] {f.get('id', '?')}: {f.get('title', '')}; fix: {f.get('fix', '')}"
            for f in ordered]


def headline(r: TraceReport) -> list[str]:
    """The answer first: audit findings, verdict, top phases, quantization share, measured latency."""
    lines = finding_lines(r)
    h = r.host
    lines.append(f"Verdict: {h['verdict']}")
    p = r.phases.sort_values("gpu_time_us", ascending=False)
    p = p[p["gpu_time_us"] > 0].head(3)
    if len(p):
        tops = ", ".join(f"{row.phase} {pct(row.gpu_share)} ({ms(row.gpu_time_us)} ms)" for row in p.itertuples())
        lines.append(f"Top phases by GPU time: {tops}")
    elif not r.trace.has_gpu and r.phases["cpu_time_us"].sum() > 0:
        total = r.phases["cpu_time_us"].sum()
        c = r.phases.sort_values("cpu_time_us", ascending=False).head(3)
        tops = ", ".join(f"{row.phase} {pct(row.cpu_time_us / total)} ({ms(row.cpu_time_us)} ms)"
                         for row in c.itertuples())
        lines.append(f"Top phases by host CPU time: {tops}")
    q = r.phases[r.phases["phase"].isin(QUANT_PHASES)]
    if len(q):
        lines.append(
            f"Quantization phases: {ms(q['gpu_time_us'].sum())} ms GPU ({pct(q['gpu_share'].sum())} of GPU time), "
            f"{ms(q['cpu_time_us'].sum())} ms host CPU, {int(q['host_syncs'].sum())} syncs, "
            f"{ms(q['exposed_us'].sum())} ms of GPU idle while the host ran them")
    if r.trace.has_gpu:
        lines.append(
            f"GPU time {ms(r.gpu_time_us)} ms in {int(r.phases['kernels'].sum())} kernels/copies, coverage "
            f"{pct(r.coverage)}; window {ms(h['span_us'])} ms: GPU busy {ms(h['gpu_busy_us'])} ms, idle "
            f"{ms(h['gpu_idle_us'])} ms; {h['launches']} launches, {h['syncs']} syncs ({ms(h['sync_us'])} ms)")
    else:
        line = f"Host op time {ms(h['host_op_us'])} ms over a window of {ms(h['span_us'])} ms"
        if h.get("comm_range_us"):
            line += f"; communication ranges {ms(h['comm_range_us'])} ms (summed over their threads)"
        lines.append(line)
    m = r.measured or {}
    lat = (m.get("latency_ms") or {}).get("per_iter") or {}
    if lat.get("median") is not None:
        steps = len(r.steps)
        line = (f"Measured without the profiler: median {lat['median']:.2f} ms per iteration "
                f"(p90 {lat.get('p90', 0):.2f})")
        if steps:
            per_step = r.steps["span_us"].median() / 1000
            line += f"; profiled step span {per_step:.2f} ms (the profiler slows it x{per_step / lat['median']:.1f})"
        lines.append(line)
    placed = (r.measured or {}).get("placement")
    if isinstance(placed, dict) and (placed.get("note") or placed.get("summary")):
        lines.append(f"Placement (--device-map {placed.get('strategy')}): {placed.get('note') or placed['summary']}")
    devs = r.extra.get("devices")
    if isinstance(devs, dict) and devs.get("summary"):
        lines.append(f"Devices: {devs['summary']}")
    mem = r.extra.get("memory")
    if isinstance(mem, dict) and mem.get("summary"):
        lines.append(f"Memory: {mem['summary']}")
    lines += _extra_headlines(r)
    return lines


def _extra_headlines(r: TraceReport) -> list[str]:
    """Roofline, LLM.int8 outliers and energy (run.json), when known."""
    out = []
    roof = r.extra.get("roofline")
    if isinstance(roof, dict) and roof.get("headline"):
        out.append(roof["headline"])
    outl = r.extra.get("outliers")
    if isinstance(outl, dict) and outl.get("summary"):
        out.append(outl["summary"])
    quality = quality_line((r.measured or {}).get("quality"))
    if quality:
        out.append(quality)
    energy = (r.measured or {}).get("energy")
    if isinstance(energy, dict) and energy.get("joules_per_iter") is not None:
        bits = [f"{energy['joules_per_iter']:.3f} J per iteration"]
        for key, label in (("joules_per_example", "per example"), ("joules_per_token", "per generated token")):
            if energy.get(key) is not None:
                bits.append(f"{energy[key]:.4f} J {label}")
        out.append(f"Energy ({energy.get('source', 'nvml')}, un-profiled pass): " + ", ".join(bits))
    return out


def _title(r: TraceReport) -> str:
    bits = [r.source]
    # None: no quantized op, no metadata and no GEMM that shows its type (qtrace.analyzers.precision).
    bits.append(f"precision {r.precision or 'unknown'}")
    if r.device:
        bits.append(r.device)
    return " · ".join(bits)


def _phase_rows(r: TraceReport) -> list[list[str]]:
    return [[row.phase, row.group, ms(row.gpu_time_us, 3), pct(row.gpu_share), str(row.kernels),
             ms(row.cpu_time_us), str(row.launches), str(row.host_syncs), ms(row.host_sync_us), ms(row.exposed_us)]
            for row in r.phases.itertuples()]


def _kernel_rows(r: TraceReport, width: int, escape: bool) -> list[list[str]]:
    rows = []
    for k in r.kernels.itertuples():
        name = shorten(k.name, width)
        rows.append([md_escape(name) if escape else name, k.phase, str(k.count), ms(k.gpu_time_us, 3), pct(k.share)])
    return rows


def _step_rows(r: TraceReport) -> list[list[str]]:
    return [[str(s.step), ms(s.span_us), ms(s.gpu_span_us), ms(s.gpu_time_us), ms(s.gpu_busy_us), ms(s.gpu_idle_us),
             str(s.launches), str(s.syncs), ms(s.sync_us)] for s in r.steps.itertuples()]


# Host span: ProfilerStep start to the next one's; GPU span: the step's GPU work to the next step's
# (both partition their timeline: host_analysis.step_table).
STEP_HEADERS = ["step", "host span ms", "GPU span ms", "GPU ms", "busy ms", "idle ms", "launches", "syncs",
                "sync ms"]
KERNEL_HEADERS = ["kernel", "phase", "count", "GPU ms", "share"]


def render_text(reports: list[TraceReport]) -> str:
    out = []
    for r in reports:
        out.append(f"== {_title(r)}")
        out += headline(r)
        out.append("")
        out.append(text_table(PHASE_HEADERS, _phase_rows(r), "ll" + "r" * 8))
        out += device_report.render_text(r.extra.get("devices"))
        if len(r.steps):
            out += ["", text_table(STEP_HEADERS, _step_rows(r))]
        if len(r.kernels):
            out += ["", text_table(KERNEL_HEADERS, _kernel_rows(r, 60, escape=False), "llrrr")]
        roof = r.extra.get("roofline")
        if isinstance(roof, dict) and roof.get("text"):
            out += ["", roof["text"]]
        out.append("")
    return "\n".join(out)


def render_markdown(reports: list[TraceReport]) -> str:
    out = ["# qtrace report", ""]
    for r in reports:
        out.append(f"## {md_escape(_title(r))}")
        out.append("")
        out += [f"- {md_escape(line)}" for line in headline(r)]
        out += ["", "### Phases", "",
                "GPU time adds up to the trace's GPU time; host CPU ms is the self time of host ops in the "
                "phase; GPU-idle ms is the time the GPU sat idle while the launching thread was in the phase.", ""]
        out.append(md_table(PHASE_HEADERS, [[md_escape(c) for c in row] for row in _phase_rows(r)], "ll" + "r" * 8))
        out += device_report.render_markdown(r.extra.get("devices"))
        if len(r.steps):
            out += ["", "### Steps", "", md_table(STEP_HEADERS, _step_rows(r))]
        if len(r.kernels):
            out += ["", "### Top kernels", "", md_table(KERNEL_HEADERS, _kernel_rows(r, 90, escape=True), "llrrr")]
        mem = r.extra.get("memory")
        if isinstance(mem, dict) and mem.get("markdown"):
            out += ["", "### Memory", "", mem["markdown"]]
        for key, title in (("roofline", "Roofline"), ("outliers", "LLM.int8 outliers")):
            section = r.extra.get(key)
            if isinstance(section, dict) and section.get("markdown"):
                out += ["", f"### {title}", "", section["markdown"]]
        out.append("")
    return "\n".join(out)


def to_json_obj(reports: list[TraceReport], source: str, run: dict[str, Any] | None) -> dict[str, Any]:
    """One trace: its object. A run folder: {"source", "run", "reports": [one object per precision]}."""
    if run is None and len(reports) == 1:
        return _strip(reports[0].to_dict())
    return {"source": source, "run": {k: run.get(k) for k in ("settings", "environment")} if run else None,
            "reports": [_strip(r.to_dict()) for r in reports]}


def _strip(d: dict[str, Any]) -> dict[str, Any]:
    mem = d.get("memory")
    if isinstance(mem, dict):
        d["memory"] = {k: v for k, v in mem.items() if k != "markdown"}
    for key in ("roofline", "outliers"):
        if isinstance(d.get(key), dict):
            d[key] = {k: v for k, v in d[key].items() if k not in ("markdown", "text")}
    return d


def write_outputs(reports: list[TraceReport], out: Path, source: str, run: dict[str, Any] | None) -> list[Path]:
    """report.md, report.json and per-trace CSVs (phases, kernels, steps) into `out`."""
    written = []
    write_text(out / "report.md", render_markdown(reports))
    written.append(out / "report.md")
    write_json(out / "report.json", to_json_obj(reports, source, run))
    written.append(out / "report.json")
    for r in reports:
        prefix = f"{r.precision}_" if r.precision and len(reports) > 1 else ""
        for name, df in (("phases", r.phases), ("kernels", r.kernels), ("steps", r.steps)):
            path = out / f"{prefix}{name}.csv"
            write_text(path, df.to_csv(index=False))
            written.append(path)
        devs = r.extra.get("devices")
        if isinstance(devs, dict) and devs.get("devices"):  # a trace with GPU events on several devices
            for name, key in (("devices", "devices"), ("device_phases", "phases"), ("device_copies", "copies")):
                path = out / f"{prefix}{name}.csv"
                write_text(path, pd.DataFrame(devs[key]).to_csv(index=False))
                written.append(path)
    return written


RANK_HEADERS = ["rank", "time ms", "measure", "GPU ms", "busy ms", "idle ms"]


def _rank_rows(ranks: dict[str, Any]) -> list[list[str]]:
    return [[str(r["rank"]), ms(r["time_us"]), r["measure"], ms(r["gpu_time_us"]), ms(r["gpu_busy_us"]),
             ms(r["gpu_idle_us"])] for r in ranks["ranks"]]


def render_ranks_text(ranks: dict[str, Any]) -> str:
    """The cross-rank summary (qtrace.analyzers.ranks) after the per-rank sections."""
    return "\n".join(["== across ranks", ranks["summary"], "", text_table(RANK_HEADERS, _rank_rows(ranks)), ""])


def render_ranks_markdown(ranks: dict[str, Any]) -> str:
    return "\n".join(["## Across ranks", "", f"- {md_escape(ranks['summary'])}", "",
                      md_table(RANK_HEADERS, [[md_escape(c) for c in row] for row in _rank_rows(ranks)]), ""])


def render_csv(reports: list[TraceReport]) -> str:
    """The phase tables of all reports as one CSV on stdout (a `source` column tells them apart)."""
    frames = []
    for r in reports:
        df = r.phases.copy()
        df.insert(0, "precision", r.precision or "")
        df.insert(0, "source", r.source)
        frames.append(df)
    return pd.concat(frames, ignore_index=True).to_csv(index=False)


__all__ = ["render_text", "render_markdown", "render_ranks_text", "render_ranks_markdown",
 "render_csv", "to_json_obj", "write_outputs", "headline"]
