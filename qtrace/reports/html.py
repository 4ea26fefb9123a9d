"""Self-contained HTML reports: inline CSS, charts as base64 PNG data URIs, no URL to anywhere.

Every string that comes from a trace or a file name (kernel names, sources, labels, notes) goes
through `_e` (html.escape, quotes included) before it reaches the page; numbers are formatted
here. The page loads nothing: no scripts, fonts, stylesheets or images from the network.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path

from qtrace.analyzers.compare import Comparison, pass_count, run_labels
from qtrace.analyzers.ranking import ranking
from qtrace.analyzers.trace_analysis import TraceReport
from qtrace.fileio import write_bytes, write_text
from qtrace.markup import ms, pct
from qtrace.reports import charts as ch
from qtrace.reports import device_report

CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;
color:#222;line-height:1.45;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.3em;border-bottom:1px solid #ddd;margin-top:2em}
h3{font-size:1.05em;margin-top:1.5em}
table{border-collapse:collapse;font-size:.85em;margin:.6em 0}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right;vertical-align:top}
th{background:#f4f4f4}td.l,th.l{text-align:left}
td.name{font-family:monospace;font-size:.95em;text-align:left;max-width:560px;word-break:break-all}
tr.total td{font-weight:bold;background:#fafafa}
ul.answer li{margin:.2em 0}.note{color:#8a5a00}
figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.85em;color:#555}
code{background:#f4f4f4;padding:0 3px}
.swatch{display:inline-block;width:.9em;height:.9em;vertical-align:middle;margin-right:.3em;border:1px solid #999}
"""


def _e(x: object) -> str:
    return html.escape(str(x), quote=True)


def _img(png: bytes, alt: str, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure><img alt="{_e(alt)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def _table(headers: Sequence[str], rows: Iterable[Sequence[object]], left: int = 1,
           name_cols: Sequence[int] = (), total_last: bool = False) -> str:
    """An HTML table; every header and cell escaped. The first `left` columns align left."""
    rows = list(rows)
    head = "".join(f'<th class="l">{_e(h)}</th>' if i < left else f"<th>{_e(h)}</th>" for i, h in enumerate(headers))
    body = []
    for n, row in enumerate(rows):
        cells = []
        for i, c in enumerate(row):
            cls = "name" if i in name_cols else ("l" if i < left else "")
            cells.append(f'<td class="{cls}">{_e(c)}</td>' if cls else f"<td>{_e(c)}</td>")
        attr = ' class="total"' if total_last and n == len(rows) - 1 else ""
        body.append(f"<tr{attr}>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _page(title: str, body: list[str]) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{_e(title)}</title>"
            f"<style>{CSS}</style></head><body>\n" + "\n".join(body) +
            f"\n<p class=\"note\">Written by qtrace on {_e(stamp)}. This page is self-contained.</p>"
            "\n</body></html>\n")


def _annotated_note(files: Sequence[str]) -> str:
    if not files:
        return ""
    names = ", ".join(f"<code>{_e(f)}</code>" for f in files)
    return (f"<h2>Annotated trace</h2><p>{names} beside this page: every GPU event carries its phase, a "
            "&ldquo;qtrace phases&rdquo; track shows the phases of the GPU and of the launching thread, and "
            "allocator counters show allocated and reserved memory. Open it in the Perfetto UI or in Chrome's "
            "trace viewer; <code>qtrace view &lt;this folder&gt;</code> prints how.</p>")


def _kernel_table(r: TraceReport, top: int) -> str:
    k = r.kernels.head(top)
    labels = ch.kernel_labels(list(k["name"]))
    rows = [[lab.split(". ", 1)[0], row.name, row.phase, int(row.count), f"{row.gpu_time_us / 1000:.3f}",
             pct(row.share)] for lab, row in zip(labels, k.itertuples(), strict=True)]
    return _table(["#", "kernel (full name)", "phase", "count", "GPU ms", "share"], rows, left=3, name_cols=(1,))


def _phase_rows(r: TraceReport) -> list[list[object]]:
    rows: list[list[object]] = [
        [p.phase, p.group, ms(p.gpu_time_us, 3), pct(p.gpu_share), int(p.kernels), ms(p.cpu_time_us),
         int(p.launches), int(p.host_syncs), ms(p.host_sync_us), ms(p.exposed_us)] for p in r.phases.itertuples()]
    t = r.phases
    rows.append(["total", "", ms(t["gpu_time_us"].sum(), 3), pct(t["gpu_share"].sum()), int(t["kernels"].sum()),
                 ms(t["cpu_time_us"].sum()), int(t["launches"].sum()), int(t["host_syncs"].sum()),
                 ms(t["host_sync_us"].sum()), ms(t["exposed_us"].sum())])
    return rows


PHASE_HEADERS = ["phase", "group", "GPU ms", "GPU %", "kernels", "host CPU ms", "launches", "syncs", "sync ms",
                 "GPU-idle ms"]


def report_charts(reports: list[TraceReport], labels: list[str], top: int = 12) -> dict[str, tuple[str, bytes]]:
    """Charts of `qtrace report`: key -> (caption, PNG)."""
    out: dict[str, tuple[str, bytes]] = {}
    runs = [(lab, r.phases.set_index("phase")) for lab, r in zip(labels, reports, strict=True)]
    out["phases"] = ("GPU kernel time and GPU idle time (host side) by phase, per trace window.",
                     ch.to_png(ch.phase_stack_chart(runs, "window")))
    rows = [row for lab, r in zip(labels, reports, strict=True) for row in ch.busy_idle_rows(lab, r, pass_count(r)[0])]
    out["busy"] = ("GPU busy and idle time per profiler step (or per pass on average when the trace has no step "
                   "markers).", ch.to_png(ch.busy_idle_chart(rows, "GPU busy and idle")))
    for lab, r in zip(labels, reports, strict=True):
        if len(r.kernels):
            out[f"kernels:{lab}"] = (f"Heaviest kernels of {lab}; numbers refer to the table below.",
                                     ch.to_png(ch.top_kernels_chart(r.kernels, f"Top kernels: {lab}", top)))
    return out


def report_html(reports: list[TraceReport], annotated: Sequence[str] = (), top: int = 12) -> str:
    from qtrace.reports.trace_report import headline

    labels = run_labels(reports) if len(reports) > 1 else [reports[0].precision or "trace"]
    charts = report_charts(reports, labels, top)
    body = ["<h1>qtrace report</h1>"]
    for lab, r in zip(labels, reports, strict=True):
        title = " · ".join(x for x in (r.source, r.precision, r.device) if x)
        body.append(f"<h2>{_e(title)}</h2>")
        body.append('<ul class="answer">' + "".join(f"<li>{_e(line)}</li>" for line in headline(r)) + "</ul>")
        body.append("<h3>Phases</h3><p>GPU time adds up to the trace's GPU time; host CPU ms is the self time of "
                    "host ops in the phase; GPU-idle ms is the time the GPU sat idle while the launching thread was "
                    "in the phase (with GPU busy time it adds up to the window).</p>")
        body.append(_table(PHASE_HEADERS, _phase_rows(r), left=2, total_last=True))
        body += device_report.html_tables(r.extra.get("devices"), _table)
        key = f"kernels:{lab}"
        if key in charts:
            body.append("<h3>Top kernels</h3>")
            body.append(_img(charts[key][1], f"top kernels of {lab}", charts[key][0]))
            body.append(_kernel_table(r, top))
    body.append("<h2>Phase time per trace</h2>")
    body.append(_img(charts["phases"][1], "phase time", charts["phases"][0]))
    body.append("<h2>GPU busy and idle</h2>")
    body.append(_img(charts["busy"][1], "GPU busy and idle", charts["busy"][0]))
    body.append(_annotated_note(annotated))
    return _page("qtrace report", body)


def write_report_html(reports: list[TraceReport], out_dir: str | Path, annotated: Sequence[str] | None = None,
                      top: int = 12) -> Path:
    """`report.html` for `qtrace report --out`; names the annotated traces found beside it."""
    out = Path(out_dir)
    if annotated is None:
        annotated = sorted(p.name for p in out.glob("*annotated_trace*.json*"))
    path = out / "report.html"
    write_text(path, report_html(reports, annotated, top))
    return path


# --- compare -------------------------------------------------------------------------------------


def compare_charts(c: Comparison, top: int = 6) -> dict[str, tuple[str, bytes]]:
    """Charts of `qtrace compare`: key -> (caption, PNG). Per pass whenever pass counts are known."""
    out: dict[str, tuple[str, bytes]] = {}
    for comp in c.comparisons:
        cap = (f"Waterfall from {comp.baseline.label} to {comp.run.label}: solid bars are GPU kernel-time deltas "
               f"per phase, hatched bars GPU idle-time deltas while the host ran the phase; the bars add up.")
        out[f"waterfall:{comp.run.label}"] = (cap, ch.to_png(ch.waterfall_chart(comp, top)))
    out["ranking"] = ("Runs by latency (fastest on top): latency and peak memory against the baseline, and the "
                      "error (KL divergence of the outputs) against it; a bar's colour is the phase that adds the "
                      "most time.", ch.to_png(ch.ranking_chart(ranking(c))))
    per_pass = all(f.per_pass is not None for f in c.runs)
    runs = [(f.label, f.phases * (f.per_pass if per_pass else 1.0)) for f in c.runs]
    unit = "pass" if per_pass else "window"
    out["phases"] = (f"GPU kernel time and GPU idle time (host side) by phase, per {unit}.",
                     ch.to_png(ch.phase_stack_chart(runs, "pass" if per_pass else "window")))
    rows = [row for f in c.runs for row in ch.busy_idle_rows(f.label, f.report, f.passes)]
    out["busy"] = ("GPU busy and idle time per profiler step (or per pass on average when the trace has no step "
                   "markers).", ch.to_png(ch.busy_idle_chart(rows, "GPU busy and idle")))
    for f in c.runs:
        if len(f.report.kernels):
            out[f"kernels:{f.label}"] = (f"Heaviest kernels of {f.label}; numbers refer to the table below.",
                                         ch.to_png(ch.top_kernels_chart(f.report.kernels, f"Top kernels: {f.label}",
                                                                        max(top, 10))))
    return out


def compare_html(c: Comparison, charts: dict[str, tuple[str, bytes]], annotated: Sequence[str] = (),
                 top: int = 6) -> str:
    from qtrace.reports import compare_report as cr

    body = ["<h1>qtrace compare</h1>",
            f"<p>Baseline: <b>{_e(c.baseline.label)}</b> (<code>{_e(c.baseline.source)}</code>). Deltas are "
            f"{_e(cr.unit_words(c))}; per phase they add up to the run's total minus the baseline's.</p>"]
    body += [f'<p class="note">Note: {_e(n)}</p>' for n in c.notes]
    body.append("<h2>Runs</h2>")
    body.append(_table(cr.RUN_HEADERS, cr._run_rows(c), left=2))
    body.append("<h2>Ranking</h2>")
    body.append(_table(cr.RANK_HEADERS, cr.ranking_rows(c), left=2))
    body.append(f'<p class="note">{_e(cr.RANK_NOTE)}</p>')
    if "ranking" in charts:
        body.append(_img(charts["ranking"][1], "ranking", charts["ranking"][0]))
    if c.devices:  # a run used several GPUs: per GPU busy, waiting, peer copies, peak memory
        body.append(f"<h2>GPUs</h2><p>Per GPU, {_e(cr.unit_words(c))}.</p>")
        body.append(_table(cr.GPU_HEADERS, cr._gpu_rows(c), left=2))
    for comp in c.comparisons:
        lab = comp.run.label
        body.append(f"<h2>{_e(lab)} vs {_e(c.baseline.label)}</h2>")
        body.append('<ul class="answer">' + "".join(f"<li>{_e(x)}</li>" for x in cr.headline(c, comp, top)) + "</ul>")
        key = f"waterfall:{lab}"
        if key in charts:
            body.append(_img(charts[key][1], f"waterfall {lab}", charts[key][0]))
        body.append("<h3>Phase deltas</h3>")
        body.append(_table(cr.DELTA_HEADERS, cr._delta_rows(c, lab), left=2, total_last=True))
        for title, headers, rows in cr.memory_tables(c, lab):
            body.append(f"<h3>Memory: {_e(title.lower())} (delta)</h3>")
            body.append(_table(headers, rows))
    body.append("<h2>Phase time per run</h2>")
    body.append(_img(charts["phases"][1], "phase time per run", charts["phases"][0]))
    body.append("<h2>GPU busy and idle</h2>")
    body.append(_img(charts["busy"][1], "GPU busy and idle", charts["busy"][0]))
    body.append("<h2>Top kernels</h2>")
    for f in c.runs:
        key = f"kernels:{f.label}"
        if key in charts:
            body.append(f"<h3>{_e(f.label)}</h3>")
            body.append(_img(charts[key][1], f"top kernels of {f.label}", charts[key][0]))
            body.append(_kernel_table(f.report, max(top, 10)))
    body.append(_annotated_note(annotated))
    return _page("qtrace compare", body)


def write_compare_html(c: Comparison, out_dir: str | Path, top: int = 6, annotated: Sequence[str] | None = None,
                       charts: dict[str, tuple[str, bytes]] | None = None) -> Path:
    """`report.html` for `qtrace compare --out`."""
    out = Path(out_dir)
    charts = charts if charts is not None else compare_charts(c, top)
    if annotated is None:
        annotated = sorted(p.name for p in out.glob("*annotated_trace*.json*"))
    path = out / "report.html"
    write_text(path, compare_html(c, charts, annotated, top))
    return path


def write_chart_files(charts: dict[str, tuple[str, bytes]], out_dir: str | Path) -> dict[str, str]:
    """The PNGs beside the report (charts/<key>.png) for report.md: key -> relative path."""
    rel: dict[str, str] = {}
    for key, (_, png) in charts.items():
        name = "".join(c if c.isalnum() or c in "-_." else "_" for c in key.replace(":", "_")) + ".png"
        write_bytes(Path(out_dir) / "charts" / name, png)
        rel[key] = f"charts/{name}"
    return rel
