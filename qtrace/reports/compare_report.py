"""Render a Comparison: terminal table, Markdown, CSV and JSON, and the files of `--out`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from qtrace.analyzers.compare import EXPLAIN_COST, EXPLAIN_CPU, Comparison, RunComparison
from qtrace.analyzers.quality import quality_line
from qtrace.analyzers.ranking import ranking
from qtrace.fileio import write_json, write_text
from qtrace.markup import md_escape, md_table, mib, ms, pct, text_table

DELTA_HEADERS = ["phase", "group", "ΔGPU ms", "ΔCPU ms", "Δlaunches", "Δsyncs", "Δsync ms", "ΔGPU-idle ms"]


def _signed_ms(us: float | None, digits: int = 2) -> str:
    if us is None:
        return "-"
    v = us / 1000.0
    if round(v, digits) == 0:
        return f"{0:.{digits}f}"
    return f"{v:+.{digits}f}"


def _signed_count(x: float) -> str:
    x = float(x)
    if x == 0:
        return "0"
    return f"{x:+.0f}" if x.is_integer() else f"{x:+.1f}"


def unit_words(c: Comparison) -> str:
    if c.unit == "pass":
        return "per pass"
    passes = {f.passes for f in c.runs}
    if len(passes) == 1 and None not in passes:
        return f"per trace window ({passes.pop()} passes each)"
    return "per trace window"


def _contributors(comp: RunComparison, top: int) -> str:
    steps = [s for s in comp.trace_waterfall[1:-1] if s["kind"] in ("gpu", "host")]
    steps.sort(key=lambda s: -abs(s["value_us"]))
    return ", ".join(f"{s['label']} {_signed_ms(s['value_us'])} ms" for s in steps[:top]) or "none"


def headline(c: Comparison, comp: RunComparison, top: int) -> list[str]:
    """The answer first: the ratio and its source, then how the span delta splits, then the biggest bars."""
    base, run = comp.baseline, comp.run
    lines = []
    if comp.latency_ratio is not None:
        lat = ""
        if comp.latency_source.startswith("measured"):
            lat = f": {base.measured_ms:.2f} -> {run.measured_ms:.2f} ms"
        lines.append(f"{run.label} vs {base.label}: x{comp.latency_ratio:.2f} the latency "
                     f"({comp.latency_source}){lat}")
    tw = comp.trace_waterfall
    unit = "per pass" if comp.waterfall_unit == "pass" else "per trace window"
    gpu = sum(s["value_us"] for s in tw[1:-1] if s["kind"] in ("gpu", "overlap"))
    host = sum(s["value_us"] for s in tw[1:-1] if s["kind"] in ("host", "unattributed"))
    lines.append(f"Trace, {unit}: span {ms(tw[0]['value_us'])} -> {ms(tw[-1]['value_us'])} ms "
                 f"({_signed_ms(tw[-1]['value_us'] - tw[0]['value_us'])} ms) = GPU busy {_signed_ms(gpu)} ms "
                 f"+ GPU idle (host side) {_signed_ms(host)} ms")
    lines.append(f"Biggest contributors: {_contributors(comp, top)}")
    hd = comp.host_delta
    infl = [f"{f.label} x{f.inflation:.1f}" for f in (base, run) if f.inflation]
    lines.append(f"Host, {unit_words(c)}: syncs {_signed_count(hd['syncs_delta'])} "
                 f"({_signed_ms(hd['sync_us_delta'])} ms blocked), launches {_signed_count(hd['launches_delta'])}"
                 + (f"; profiler inflation {', '.join(infl)}" if infl else ""))
    mw = comp.measured_waterfall
    if mw and comp.explanation == EXPLAIN_CPU:
        bars = sorted(mw[1:-1], key=lambda s: -abs(s["value_us"]))[:top]
        lines.append(f"Measured, per iteration: {ms(mw[0]['value_us'])} -> {ms(mw[-1]['value_us'])} ms; CPU estimate "
                     f"by phase: " + (", ".join(f"{s['label']} {_signed_ms(s['value_us'])} ms" for s in bars) or "none")
                     + f" ({comp.measured_note})")
    elif mw:
        m_gpu = sum(s["value_us"] for s in mw[1:-1] if s["kind"] in ("gpu", "overlap"))
        m_host = sum(s["value_us"] for s in mw[1:-1] if s["kind"] in ("host", "unattributed"))
        m_rest = sum(s["value_us"] for s in mw[1:-1] if s["kind"] == "residual")
        lines.append(f"Measured, per iteration: {ms(mw[0]['value_us'])} -> {ms(mw[-1]['value_us'])} ms = "
                     f"GPU {_signed_ms(m_gpu)} ms + host side {_signed_ms(m_host)} ms + not explained "
                     f"{_signed_ms(m_rest)} ms" + _explained_words(comp) + f" ({comp.measured_note})")
    elif comp.measured_note:
        lines.append(f"Measured waterfall: not available ({comp.measured_note})")
    mem = comp.memory_delta
    if "peak_allocated_bytes_delta" in mem:
        b_peak = (base.report.extra.get("memory") or {}).get("peak_allocated_bytes")
        r_peak = (run.report.extra.get("memory") or {}).get("peak_allocated_bytes")
        lines.append(f"Memory: allocator peak {_mib(mem['peak_allocated_bytes_delta'])} "
                     f"({b_peak / 2**20:.1f} -> {r_peak / 2**20:.1f} MiB in the traces)")
    quality = quality_line((run.report.measured or {}).get("quality"))
    if quality:  # measured by `qtrace profile` against its own run's baseline, which it names
        lines.append(quality)
    return lines


def _explained_words(comp: RunComparison) -> str:
    """'; explained 87% (source); lean inflation fp16 x1.05, int8 x1.08' beside the measured split."""
    out = ""
    if comp.explained_share is not None:
        out += f"; explained {comp.explained_share:.0%} ({comp.explanation})"
    if comp.explanation == EXPLAIN_COST:
        why = sorted({f.lean_note for f in (comp.baseline, comp.run) if f.lean is None and f.lean_note})
        out += "; fallback: " + ("; ".join(why) or "no lean trace for both runs")
    infl = [f"{f.label} x{f.lean_inflation:.2f}" for f in (comp.baseline, comp.run) if f.lean_inflation]
    if infl:
        out += "; lean inflation " + ", ".join(infl)
    drift = [f"{f.label} x{f.timing_drift:.2f}" for f in (comp.baseline, comp.run) if f.timing_drift]
    if drift:
        out += "; host drift across the lean pass " + ", ".join(drift)
    return out


def _delta_rows(c: Comparison, label: str) -> list[list[str]]:
    d = c.deltas[c.deltas["run"] == label]
    rows = [[r.phase, r.group, _signed_ms(r.gpu_time_us_delta, 3), _signed_ms(r.cpu_time_us_delta),
             _signed_count(r.launches_delta), _signed_count(r.host_syncs_delta), _signed_ms(r.host_sync_us_delta),
             _signed_ms(r.exposed_us_delta)] for r in d.itertuples()]
    rows.append(["total", "", _signed_ms(d["gpu_time_us_delta"].sum(), 3), _signed_ms(d["cpu_time_us_delta"].sum()),
                 _signed_count(d["launches_delta"].sum()), _signed_count(d["host_syncs_delta"].sum()),
                 _signed_ms(d["host_sync_us_delta"].sum()), _signed_ms(d["exposed_us_delta"].sum())])
    return rows


def _run_rows(c: Comparison) -> list[list[str]]:
    rows = []
    for f in c.runs:
        comp = None if f is c.baseline else c.comparison_for(f.label)
        rows.append([f.label + (" (baseline)" if f is c.baseline else ""), f.precision or "-",
                     str(f.passes or "?"), ms(f.gpu_time_us), ms(f.host["span_us"]),
                     f"{f.measured_ms:.2f}" if f.measured_ms else "-", f"{f.trace_ms:.2f}",
                     f"x{f.inflation:.1f}" if f.inflation else "-",
                     f"x{comp.latency_ratio:.2f}" if comp and comp.latency_ratio else "-",
                     _energy_cell(f, c.baseline)])
    return rows


def _energy_cell(f: Any, base: Any) -> str:
    """J/example of the timed pass, with its ratio to the baseline's (NVML energy counter)."""
    j, b = f.joules_per_example, base.joules_per_example
    if j is None:
        return "-"
    return f"{j:.3f}" + (f" (x{j / b:.2f})" if b and f is not base else "")


RUN_HEADERS = ["run", "precision", "passes", "GPU ms", "span ms", "measured ms", "traced ms/pass", "inflation",
               "ratio", "J/example"]


MEMORY_TABLES = {
    "at_peak": ("Live at the allocator peak", [("bytes_delta", "Δbytes"), ("blocks_delta", "Δblocks")]),
    "phases": ("Allocations per phase", [("allocs_delta", "Δallocs"), ("alloc_bytes_delta", "Δallocated"),
                                         ("transient_bytes_delta", "Δtransient"),
                                         ("peak_increment_bytes_delta", "Δpeak increment"),
                                         ("live_at_peak_bytes_delta", "Δlive at peak")]),
}


def _mib(v: float | None) -> str:
    if v is None:
        return "-"
    return "0" if v == 0 else f"{v / 2**20:+.2f} MiB"


def memory_tables(c: Comparison, label: str) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, headers, rows) per memory section that both runs have; bytes as signed MiB."""
    out = []
    for key, (title, cols) in MEMORY_TABLES.items():
        rows = [m for m in c.memory_deltas.get(key, []) if m["run"] == label]
        if not rows:
            continue
        # All-zero rows say nothing (the JSON keeps them).
        rows = [m for m in rows if any(m.get(f) for f, _ in cols)]
        if not rows:
            continue
        cells = [[str(m["phase"])] + [_mib(m.get(f)) if "bytes" in f else _signed_count(m.get(f, 0.0))
                                      for f, _ in cols] for m in rows]
        out.append((title, ["phase", *(h for _, h in cols)], cells))
    return out


RANK_HEADERS = ["#", "run", "latency ms", "vs baseline", "peak", "vs baseline", "KL (nats)", "top-1", "max |dlogit|",
                "adds most", "explained"]


def _num_cell(v: float | None, spec: str, prefix: str = "") -> str:
    return "-" if v is None else prefix + format(v, spec)


def _explained_cell(r: dict[str, Any]) -> str:
    cell = _num_cell(r["explained_share"], ".0%")
    return cell + " (delta within noise)" if r.get("delta_within_noise") and cell != "-" else cell


def ranking_rows(c: Comparison) -> list[list[str]]:
    """Runs by latency, with memory and error beside (ranks in brackets where they differ)."""
    rows = []
    for r in ranking(c):
        lat = _num_cell(r["latency_ms"], ".2f") + ("" if r["latency_source"] == "measured" else " (traced)")
        peak = "-" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2**20:.0f} MiB ({r['peak_source']})"
        phase = "-" if r["main_phase"] is None else f"{r['main_phase']} {r['main_phase_ms']:+.2f} ms"
        rows.append([str(r["rank_latency"]), r["run"] + (" (baseline)" if r["is_baseline"] else ""), lat,
                     _num_cell(r["latency_ratio"], ".2f", "x"), peak + f" [#{r['rank_memory']}]",
                     _num_cell(r["peak_ratio"], ".2f", "x"), _num_cell(r["kl_mean"], ".2e") + f" [#{r['rank_error']}]",
                     _num_cell(r["top1_agreement"], ".1%"), _num_cell(r["max_abs_diff"], ".3g"), phase,
                     _explained_cell(r)])
    return rows


RANK_NOTE = ("Ranked by latency; [#n] ranks memory and error (1 = least). Error is against the baseline on the same "
             "inputs (with random weights: quantization error, not task accuracy); '-' where not measured. "
             "'delta within noise': the measured latency delta is no larger than both runs' timing spread "
             "(p90 - min), so its explained share divides by noise.")
GPU_HEADERS = ["run", "GPU", "GPU ms", "busy ms", "busy %", "waits for other GPU ms", "peer copy ms",
               "peak alloc (un-profiled)"]


def _gpu_rows(c: Comparison) -> list[list[str]]:
    return [[d["run"], str(d["device"]), ms(d["gpu_time_us"]), ms(d["busy_us"]), pct(d["busy_share"]),
             ms(d["waiting_us"]), ms(d["copy_us"], 3), mib(d["max_allocated_bytes"])] for d in c.devices]


def render_text(c: Comparison, top: int = 5) -> str:
    out = [f"== Baseline: {c.baseline.label} ({c.baseline.source}); deltas {unit_words(c)}"]
    out += [f"note: {n}" for n in c.notes]
    out += ["", text_table(RUN_HEADERS, _run_rows(c))]
    out += ["", "== Ranking", text_table(RANK_HEADERS, ranking_rows(c)), RANK_NOTE]
    if c.devices:
        out += ["", f"GPUs ({unit_words(c)}):", text_table(GPU_HEADERS, _gpu_rows(c), "ll" + "r" * 6)]
    for comp in c.comparisons:
        out += ["", f"== {comp.run.label} vs {c.baseline.label} ({comp.run.source})"]
        out += headline(c, comp, top)
        out += ["", text_table(DELTA_HEADERS, _delta_rows(c, comp.run.label), "ll" + "r" * 6)]
        for title, headers, rows in memory_tables(c, comp.run.label):
            out += ["", f"Memory: {title.lower()} (delta):", text_table(headers, rows)]
    out.append("")
    return "\n".join(out)


def render_markdown(c: Comparison, top: int = 5, charts: dict[str, str] | None = None) -> str:
    """Markdown report; `charts` maps a chart key to a relative PNG path to reference."""
    charts = charts or {}
    out = ["# qtrace compare", "",
           f"Baseline: **{md_escape(c.baseline.label)}** (`{md_escape(c.baseline.source)}`). "
           f"Deltas are {md_escape(unit_words(c))}; per phase they add up to the run's total minus the baseline's.",
           ""]
    out += [f"- Note: {md_escape(n)}" for n in c.notes]
    out += ["", "## Runs", "", md_table(RUN_HEADERS, [[md_escape(x) for x in r] for r in _run_rows(c)])]
    out += ["", "## Ranking", "", md_table(RANK_HEADERS, [[md_escape(x) for x in r] for r in ranking_rows(c)]), "",
            md_escape(RANK_NOTE)]
    if "ranking" in charts:
        out += ["", f"![ranking]({charts['ranking']})"]
    if c.devices:
        out += ["", "## GPUs", "", f"Per GPU, {md_escape(unit_words(c))}: busy is the union of its events; it waits "
                "while idle and another GPU works; peak alloc is run.json's un-profiled figure for that GPU.", "",
                md_table(GPU_HEADERS, [[md_escape(x) for x in r] for r in _gpu_rows(c)], "ll" + "r" * 6)]
    if "phases" in charts:
        out += ["", f"![phase time per run]({charts['phases']})"]
    for comp in c.comparisons:
        lab = comp.run.label
        out += ["", f"## {md_escape(lab)} vs {md_escape(c.baseline.label)}", ""]
        out += [f"- {md_escape(line)}" for line in headline(c, comp, top)]
        if f"waterfall:{lab}" in charts:
            out += ["", f"![waterfall {md_escape(lab)}]({charts[f'waterfall:{lab}']})"]
        out += ["", "### Phase deltas", "",
                "ΔGPU ms adds up to the GPU-time delta; ΔGPU-idle ms is the change of GPU idle time while the "
                "launching thread was in the phase, and adds up to the GPU-idle delta.", "",
                md_table(DELTA_HEADERS, [[md_escape(x) for x in r] for r in _delta_rows(c, lab)], "ll" + "r" * 6)]
        out += ["", "### Waterfall steps", "", md_table(["step", "trace ms", "measured ms"], _waterfall_rows(comp))]
        for title, headers, rows in memory_tables(c, lab):
            out += ["", f"### Memory: {md_escape(title.lower())} (delta)", "",
                    md_table(headers, [[md_escape(x) for x in r] for r in rows])]
    if "busy" in charts:
        out += ["", "## GPU busy and idle", "", f"![GPU busy and idle]({charts['busy']})"]
    kernel_charts = [k for k in charts if k.startswith("kernels:")]
    if kernel_charts:
        out += ["", "## Top kernels", ""]
        out += [f"![top kernels {md_escape(k.split(':', 1)[1])}]({charts[k]})" for k in kernel_charts]
    out.append("")
    return "\n".join(out)


def _waterfall_rows(comp: RunComparison) -> list[list[str]]:
    measured = {(s["kind"], s["label"]): s["value_us"] for s in (comp.measured_waterfall or [])}
    rows = []
    for s in comp.trace_waterfall:
        total = s["kind"] in ("start", "end")
        if not total and abs(s["value_us"]) < 0.5:  # under half a microsecond: noise in a table of ms
            continue
        m = measured.get((s["kind"], s["label"]))
        if total and comp.measured_waterfall:
            m = comp.measured_waterfall[0 if s["kind"] == "start" else -1]["value_us"]
        fmt = ms if total else _signed_ms
        rows.append([md_escape(s["label"]), fmt(s["value_us"]), fmt(m) if m is not None else "-"])
    for s in comp.measured_waterfall or []:
        if s["kind"] not in ("start", "end") and not any(s["label"] == t["label"] for t in comp.trace_waterfall):
            rows.insert(-1, [md_escape(s["label"]), "-", _signed_ms(s["value_us"])])
    return rows


def deltas_frame(c: Comparison) -> pd.DataFrame:
    return c.deltas.copy()


def render_csv(c: Comparison) -> str:
    """The (run, phase) delta rows; a run's rows add up to its totals minus the baseline's."""
    return deltas_frame(c).to_csv(index=False)


def runs_frame(c: Comparison) -> pd.DataFrame:
    rows: list[dict[str, Any]] = []
    for f in c.runs:
        comp = None if f is c.baseline else c.comparison_for(f.label)
        rows.append({"run": f.label, "source": f.source, "precision": f.precision, "baseline": f is c.baseline,
                     "passes": f.passes, "gpu_time_us": f.gpu_time_us, **f.host, "measured_ms": f.measured_ms,
                     "trace_ms": f.trace_ms, "profiler_inflation": f.inflation,
                     "joules_per_example": f.joules_per_example,
                     "latency_ratio": 1.0 if comp is None else comp.latency_ratio,
                     "latency_source": None if comp is None else comp.latency_source})
    return pd.DataFrame(rows)


def write_outputs(c: Comparison, out: Path, top: int = 5, charts: dict[str, str] | None = None) -> list[Path]:
    """report.md, compare.json, deltas.csv, runs.csv into `out`."""
    written = []
    for name, text in (("report.md", render_markdown(c, top, charts)), ("deltas.csv", render_csv(c)),
                       ("runs.csv", runs_frame(c).to_csv(index=False))):
        write_text(out / name, text)
        written.append(out / name)
    if c.devices:  # a run used several GPUs
        write_text(out / "devices.csv", pd.DataFrame(c.devices).to_csv(index=False))
        written.append(out / "devices.csv")
    write_json(out / "compare.json", c.to_dict())
    written.append(out / "compare.json")
    return written
