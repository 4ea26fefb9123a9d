"""Render a projection (`qtrace.analyzers.projection_run.project_target`): text, Markdown, CSV, JSON, --out files.

Every rendering says PROJECTION in its title and lists its assumptions: these are estimates from
a trace measured on another GPU, never measurements.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from qtrace.fileio import write_json, write_text
from qtrace.markup import md_escape, md_table, ms, pct, shorten, text_table

SUMMARY_HEADERS = ["precision", "measured ms", "projected ms", "x base measured", "x base projected",
                   "GPU busy ms/step", "GPU idle ms/step", "basis", "partial"]
PHASE_HEADERS = ["phase", "GPU ms measured", "GPU ms projected", "x", "host CPU ms (trace) / F", "refused ms",
                 "main model"]
CLASS_HEADERS = ["model", "units", "GPU ms measured", "GPU ms projected"]


def _label(p: dict[str, Any]) -> str:
    return str(p["precision"]) if p["precision"] else "trace"


def _x(v: Any) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _step_busy(p: dict[str, Any]) -> tuple[float | None, float | None]:
    tl = p["timeline"].get("projected_unprofiled") or p["timeline"]["projected_profiled"]
    steps = tl["steps"]
    if not steps:
        return tl["gpu_busy_us"], tl["gpu_idle_us"]
    return (sum(s["gpu_busy_us"] for s in steps) / len(steps), sum(s["gpu_idle_us"] for s in steps) / len(steps))


def summary_rows(proj: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for p in proj["precisions"]:
        busy, idle = _step_busy(p)
        r = p.get("ratio") or {}
        rows.append({"precision": _label(p), "measured_latency_us": p["latency"]["measured_us"],
                     "projected_latency_us": p["latency"]["projected_us"], "ratio_measured": r.get("measured"),
                     "ratio_projected": r.get("projected"), "baseline": r.get("baseline"),
                     "projected_gpu_busy_us_per_step": busy, "projected_gpu_idle_us_per_step": idle,
                     "basis": p["latency"]["basis"], "host_speed": p["host_speed"],
                     "host_speed_profiler": p["latency"]["host_speed_profiler"], "partial": p["partial"],
                     "refused_us": p["refused_us"], "target": proj["target"]["key"],
                     "measured_device": p["measured_device"]})
    return rows


def _summary_cells(proj: dict[str, Any]) -> list[list[str]]:
    return [[str(r["precision"]), ms(r["measured_latency_us"]), ms(r["projected_latency_us"]), _x(r["ratio_measured"]),
             _x(r["ratio_projected"]), ms(r["projected_gpu_busy_us_per_step"]),
             ms(r["projected_gpu_idle_us_per_step"]), r["basis"], "PARTIAL" if r["partial"] else "no"]
            for r in summary_rows(proj)]


def _phase_cells(p: dict[str, Any]) -> list[list[str]]:
    rows = []
    for r in p["phases"]:
        shares = r["class_shares"] or {}
        main = max(shares, key=shares.get) if shares else "-"
        rows.append([r["phase"], ms(r["measured_us"], 3), ms(r["projected_us"], 3), _x(r["ratio"]),
                     ms(r["projected_host_cpu_us"], 2), ms(r["refused_us"], 3),
                     f"{main} {pct(shares.get(main))}" if shares else "-"])
    return rows


def _class_cells(p: dict[str, Any]) -> list[list[str]]:
    return [[c["class"], str(c["units"]), ms(c["measured_us"], 3), ms(c["projected_us"], 3)] for c in p["classes"]]


def title(proj: dict[str, Any]) -> str:
    t = proj["target"]
    pk = t["peaks"]
    peaks = ", ".join(f"{v:g} {u}" for k, u in (("hbm_gbps", "GB/s"), ("fp16_tflops", "fp16 TFLOPS"),
                                                  ("bf16_tflops", "bf16 TFLOPS"), ("int8_tops", "int8 TOPS"))
                      if (v := pk.get(k)) is not None)
    measured = sorted({str(p["measured_device"]) for p in proj["precisions"]})
    return (f"PROJECTION (an estimate, not a measurement) of {proj['path']}: measured on {', '.join(measured)} -> "
            f"{t['name']} (sm_{(t['compute_capability'] or '?').replace('.', '')}, datasheet {peaks}), "
            f"host speed x{proj['host_speed']:g}")


def _headline(proj: dict[str, Any]) -> list[str]:
    lines = []
    for p in proj["precisions"]:
        lat = p["latency"]
        r = p.get("ratio")
        ratio = f", {r['projected']:.2f}x {r['baseline']} (measured {r['measured']:.2f}x)" if r else ""
        cal = (f"; profiler host cost removed with host factor {lat['host_speed_profiler']:.2f} "
               f"({lat['calibration']})") if lat["host_speed_profiler"] else ""
        part = "; PARTIAL: " + _refused_words(p) if p["partial"] else ""
        if p["substituted_us"] > 0:
            part += (f"; {ms(p['substituted_us'], 3)} ms of flash-attention kernels have no such kernel on the target "
                     "(PyTorch falls back to another attention kernel): projected as if it reached the same "
                     "efficiency")
        lines.append(f"{_label(p)}: {ms(lat['measured_us'])} ms -> projected {ms(lat['projected_us'])} ms per "
                     f"{'pass' if lat['basis'] != 'window' else 'trace window'} ({lat['basis']}){ratio}{cal}{part}")
    return lines


def _refused_words(p: dict[str, Any]) -> str:
    ks = p["refused_kernels"]
    lack = sorted({f for k in ks for f in k["lacking"].split(",")})
    return (f"{ms(p['refused_us'], 3)} ms of measured GPU time in {sum(k['units'] for k in ks)}+ kernels cannot run "
            f"on the target (lacks {', '.join(lack)}) and is not projected (measured time stands in)")


def _identity_line(p: dict[str, Any]) -> str:
    m = p["timeline"]["measured"]["span_us"]
    res = p["rebuild_residual_us"]
    return (f"timeline model check: the measured trace rebuilt on itself spans {ms(m + res, 3)} ms against "
            f"{ms(m, 3)} ms measured (residual {res:+.3f} µs)")


def render_text(proj: dict[str, Any]) -> str:
    out = ["== " + title(proj), *_headline(proj), "",
           text_table(SUMMARY_HEADERS, _summary_cells(proj), "lrrrrrrll"), ""]
    for p in proj["precisions"]:
        out += [f"-- {_label(p)} ({p['source']})", _identity_line(p),
                text_table(CLASS_HEADERS, _class_cells(p), "lrrr"), "",
                text_table(PHASE_HEADERS, _phase_cells(p), "lrrrrrl"), ""]
        if p["refused_kernels"]:
            out.append("not projected (the target lacks a feature):")
            out += [f"  {shorten(k['kernel'], 90)} [{k['phase']}] {k['units']} units {ms(k['gpu_us'], 3)} ms: lacks "
                    f"{k['lacking']}" for k in p["refused_kernels"]]
            out.append("")
    out += ["Features: " + "; ".join(proj["precisions"][0]["features"])] if proj["precisions"] else []
    out += ["Assumptions:"] + [f"- {a}" for a in proj["assumptions"]]
    return "\n".join(out)


def render_markdown(proj: dict[str, Any]) -> str:
    out = [f"## {md_escape(title(proj))}", "", *[f"- {md_escape(h)}" for h in _headline(proj)], "",
           md_table(SUMMARY_HEADERS, [[md_escape(c) for c in r] for r in _summary_cells(proj)], "lrrrrrrll"), ""]
    for p in proj["precisions"]:
        out += [f"### {md_escape(_label(p))} ({md_escape(p['source'])})", "", md_escape(_identity_line(p)), "",
                md_table(CLASS_HEADERS, [[md_escape(c) for c in r] for r in _class_cells(p)], "lrrr"), "",
                md_table(PHASE_HEADERS, [[md_escape(c) for c in r] for r in _phase_cells(p)], "lrrrrrl"), ""]
        if p["refused_kernels"]:
            out += ["Not projected (the target lacks a feature):", ""]
            out += [f"- `{md_escape(shorten(k['kernel'], 90))}` \\[{md_escape(k['phase'])}\\] {k['units']} units, "
                    f"{ms(k['gpu_us'], 3)} ms: lacks {md_escape(k['lacking'])}" for k in p["refused_kernels"]]
            out.append("")
    out += ["### Models per kernel class", ""]
    out += [f"- `{md_escape(k)}`: {md_escape(v)}" for k, v in proj["class_models"].items()]
    if proj["precisions"]:
        out += ["", "### Features", ""] + [f"- {md_escape(f)}" for f in proj["precisions"][0]["features"]]
    out += ["", "### Assumptions", ""] + [f"- {md_escape(a)}" for a in proj["assumptions"]]
    out += ["", "See docs/projection.md."]
    return "\n".join(out)


def summary_frame(proj: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame(summary_rows(proj))


def phases_frame(proj: dict[str, Any]) -> pd.DataFrame:
    rows = [{"precision": p["precision"], **{k: v for k, v in r.items() if k != "class_shares"},
             "class_shares": ";".join(f"{k}={v:.4f}" for k, v in (r["class_shares"] or {}).items())}
            for p in proj["precisions"] for r in p["phases"]]
    return pd.DataFrame(rows)


def classes_frame(proj: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame([{"precision": p["precision"], **c} for p in proj["precisions"] for c in p["classes"]])


def render_csv(proj: dict[str, Any]) -> str:
    return summary_frame(proj).to_csv(index=False)


def write_outputs(proj: dict[str, Any], out: Path) -> list[Path]:
    """projection.md, projection.json and three CSVs (summary, phases, classes) in `out`."""
    files = {"projection.md": render_markdown(proj) + "\n", "projection_summary.csv": render_csv(proj),
             "projection_phases.csv": phases_frame(proj).to_csv(index=False),
             "projection_classes.csv": classes_frame(proj).to_csv(index=False)}
    written = []
    for name, text in files.items():
        write_text(out / name, text)
        written.append(out / name)
    write_json(out / "projection.json", proj)
    written.append(out / "projection.json")
    return written
