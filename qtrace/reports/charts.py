"""Matplotlib charts for the reports, rendered to PNG bytes without a display.

Figures are built with `matplotlib.figure.Figure` and the Agg canvas directly, never pyplot, so
no global backend is chosen or needed (MPLBACKEND, DISPLAY are irrelevant) and nothing leaks
between charts. Each phase has one colour in every chart (`PHASE_COLORS`, keyed by
`taxonomy.PHASE_ORDER`). Every string drawn is passed through `_tex_safe` (a kernel name with
two "$" would otherwise switch matplotlib into math mode).
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from typing import Any

# The Agg canvas is attached explicitly (no pyplot, no matplotlib.use): a user's interactive
# backend is left alone, and rendering never needs a display.
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from qtrace.analyzers.phase_rules import PHASE_ORDER

# One colour per phase: int8 phases warm, NF4 purple, dense GEMM blue, model ops green/cyan, rest grey.
_PALETTE = {
    "int8.outlier_detect": "#d62728",
    "int8.outlier_gather": "#ff9896",
    "int8.act_quant": "#ff7f0e",
    "int8.gemm": "#8c564b",
    "int8.dequant": "#e377c2",
    "int8.outlier_gemm": "#bcbd22",
    "nf4.dequant": "#9467bd",
    "nf4.fused_gemm": "#c5b0d5",
    # torchao: earth tones and dark blues, apart from the bitsandbytes and model colours
    "torchao.act_quant": "#e6550d",
    "torchao.act_prep": "#fdae6b",
    "torchao.weight_dequant": "#756bb1",
    "torchao.int8_gemm": "#ad494a",
    "torchao.int4_gemm": "#7b4173",
    "torchao.fp8_gemm": "#8c6d31",
    "torchao.wo_gemm": "#3182bd",
    "torchao.scale_apply": "#de9ed6",
    "torchao.pack": "#5254a3",
    "torchao.glue": "#b5cf6b",
    "torchao.repr_probe": "#e7969c",
    # GPTQModel (GPTQ / AWQ): teals and olives, apart from the others
    "gptqmodel.unpack": "#9edae5",
    "gptqmodel.dequant": "#8c564c",
    "gptqmodel.dequant_gemm": "#6baed6",
    "gptqmodel.int4_gemm": "#a55194",
    "gptqmodel.repack": "#cedb9c",
    "gptqmodel.glue": "#e7cb94",
    "fp8.gemm": "#393b79",
    "fp4.gemm": "#6b6ecf",
    "dense.gemm": "#1f77b4",
    "conv": "#637939",
    "attention": "#17becf",
    "norm": "#aec7e8",
    "elementwise": "#2ca02c",
    "embedding": "#98df8a",
    "compiled": "#e7ba52",
    "device.copy": "#d6616b",
    "comm": "#843c39",
    "memcpy": "#7f7f7f",
    "other": "#c7c7c7",
}
_FALLBACK = ["#393b79", "#31a354", "#9c9ede", "#cedb9c", "#e7cb94", "#ad494a", "#a55194", "#6baed6"]
PHASE_COLORS: dict[str, str] = {p: _PALETTE.get(p, _FALLBACK[i % len(_FALLBACK)]) for i, p in enumerate(PHASE_ORDER)}
TOTAL_COLOR = "#4d4d4d"
NEUTRAL_COLOR = "#9e9e9e"
BUSY_COLOR = "#1f77b4"
IDLE_COLOR = "#e0e0e0"
HOST_HATCH = "////"
DPI = 110


def phase_color(phase: str | None) -> str:
    return PHASE_COLORS.get(phase or "", NEUTRAL_COLOR)


def _tex_safe(text: object) -> str:
    return str(text).replace("$", r"\$")


def to_png(fig: Figure) -> bytes:
    """PNG bytes of a figure; no 'Software' tag (it carries a URL)."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


def _ms(us: float) -> float:
    return us / 1000.0


def _fmt_ms(us: float, signed: bool = False) -> str:
    v = us / 1000.0
    digits = 2 if abs(v) >= 0.1 or v == 0 else 3
    return f"{v:+.{digits}f} ms" if signed else f"{v:.{digits}f} ms"


# --- kernel names --------------------------------------------------------------------------------

_WRAPPERS = {"Kernel", "Kernel2", "device_kernel", "kernel"}
_HINTS = (re.compile(r"(\w+_kernel_cuda)\b"), re.compile(r"(\w+KernelImpl)\b"), re.compile(r"(\w*Functor\w*)"),
          re.compile(r"(\w+Ops)\b"), re.compile(r"(\w+_kernel)\b"))


def _cut_params(name: str) -> str:
    """Drop the parameter list: everything from the first '(' outside template brackets."""
    depth = 0
    for i, ch in enumerate(name):
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth = max(depth - 1, 0)
        elif ch == "(" and depth == 0 and i > 0:
            return name[:i]
    return name


def _split_template(name: str) -> tuple[str, str]:
    i = name.find("<")
    if i <= 0:
        return name, ""
    return name[:i], name[i + 1:name.rfind(">")] if ">" in name else name[i + 1:]


def _last_component(name: str) -> str:
    name = name.replace("(anonymous namespace)::", "")
    return name.rsplit("::", 1)[-1].strip()


def short_kernel_name(name: str, width: int = 52) -> str:
    """A readable kernel name: no return type, parameters or namespaces; the functor named.

    ``void at::native::elementwise_kernel<128, 4, ...MulFunctor<float>...>(...)`` becomes
    ``elementwise_kernel · MulFunctor``; ``cutlass::Kernel2<cutlass_80_..._s8_...>`` becomes the
    cutlass configuration name. Copies (Memcpy/Memset) stay as they are.
    """
    n = str(name).strip()
    if n.startswith(("Memcpy", "Memset")):
        return n if len(n) <= width else n[: width - 1] + "…"
    if n.startswith("void "):
        n = n[5:]
    n = _cut_params(n.replace("(anonymous namespace)::", ""))
    base, args = _split_template(n)
    base = _last_component(base)
    if base in _WRAPPERS and args:
        first = args.split(",", 1)[0]
        out = _last_component(_cut_params(first))
    else:
        hint = ""
        if args:
            for pattern in _HINTS:
                found = [m for m in pattern.findall(args) if m != base and m not in ("gpu_kernel_impl",)]
                if found:
                    # The innermost functor names the op (BinaryFunctor<..., MulFunctor> -> MulFunctor).
                    hint = found[-1] if "Functor" in pattern.pattern else found[0]
                    break
        plain_args = re.sub(r"\b\w+::", "", args).strip()
        if hint:
            out = f"{base} · {hint}"
        elif args and "<" not in plain_args and len(base) + len(plain_args) + 2 <= width:
            out = f"{base}<{plain_args}>"  # short template arguments tell variants apart (dtype, block size)
        else:
            out = f"{base}<…>" if args else base
    out = out or n
    return out if len(out) <= width else out[: width - 1] + "…"


def kernel_labels(names: Sequence[str], width: int = 52) -> list[str]:
    """Numbered short names ("1. reduce_kernel · or_kernel_cuda"): numbers tie a bar to its table row."""
    return [f"{i + 1}. {short_kernel_name(n, width)}" for i, n in enumerate(names)]


# --- waterfall -----------------------------------------------------------------------------------


def _merge_small(steps: list[dict[str, Any]], top: int) -> list[dict[str, Any]]:
    """Per section (GPU bars, host bars), the `top` largest bars by size; the rest merged into one bar."""
    out: list[dict[str, Any]] = []
    sections = (("GPU", ("gpu", "overlap")), ("host", ("host", "unattributed")), ("CPU estimate", ("scaled",)))
    for title, kinds in sections:
        items = sorted((s for s in steps if s["kind"] in kinds), key=lambda s: -abs(s["value_us"]))
        keep, rest = items[:top], items[top:]
        out += keep
        # A merged bar under half a microsecond would read "-0.000 ms": noise, not a finding.
        if rest and abs(sum(s["value_us"] for s in rest)) >= 0.5:
            out.append({"kind": kinds[0], "label": f"{title}: {len(rest)} other phases", "phase": None,
                        "value_us": sum(s["value_us"] for s in rest), "merged": True})
    out += [s for s in steps if s["kind"] == "residual"]  # what the trace does not explain: always shown
    return out


def _bar_label(step: dict[str, Any]) -> str:
    if step["kind"] == "host" and step.get("phase") == "other":
        return "host other (Python, no op)"
    return str(step["label"])


def _waterfall_axes(ax: Any, steps: list[dict[str, Any]], top: int, title: str, unit: str) -> None:
    start, end = steps[0], steps[-1]
    bars = [start, *_merge_small(steps[1:-1], top), end]
    y = list(range(len(bars)))
    cum = start["value_us"]
    lefts, widths, colors, hatches, labels = [], [], [], [], []
    for b in bars:
        v = b["value_us"]
        if b["kind"] in ("start", "end"):
            lefts.append(0.0)
            widths.append(_ms(v))
            colors.append(TOTAL_COLOR)
            hatches.append("")
        else:
            lefts.append(_ms(min(cum, cum + v)))
            widths.append(abs(_ms(v)))
            colors.append(phase_color(b.get("phase")) if b.get("phase") else NEUTRAL_COLOR)
            hatches.append(HOST_HATCH if b["kind"] in ("host", "unattributed") else "")
            cum += v
        labels.append(_tex_safe(_bar_label(b)))
    ax.barh(y, widths, left=lefts, color=colors, hatch=hatches, edgecolor="#333333", linewidth=0.5, height=0.7)
    xmax = max(lefts[i] + widths[i] for i in range(len(bars)))
    ax.set_xlim(0, xmax * 1.22 if xmax > 0 else 1)
    pad = xmax * 0.01
    cum = start["value_us"]
    for i, b in enumerate(bars):
        v = b["value_us"]
        if b["kind"] in ("start", "end"):
            text = _fmt_ms(v)
        else:
            text = _fmt_ms(v, signed=True)
            cum += v
        ax.text(lefts[i] + widths[i] + pad, i, text, va="center", ha="left", fontsize=8)
    # Connector lines make the running total readable from bar to bar.
    cum = start["value_us"]
    for i, b in enumerate(bars[:-1]):
        if b["kind"] != "start":
            cum += b["value_us"]
        ax.plot([_ms(cum), _ms(cum)], [i + 0.35, i + 0.65], color="#666666", linewidth=0.6)
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"time per {unit} (ms)" if unit in ("pass", "iteration") else "time in the trace window (ms)")
    ax.set_title(_tex_safe(title), fontsize=9, loc="left")
    ax.grid(axis="x", color="#eeeeee", linewidth=0.6)
    ax.set_axisbelow(True)


def waterfall_chart(comp: Any, top: int = 6) -> Figure:
    """Baseline latency -> this run's latency; one panel from the trace, one measured when known.

    `comp` is an `analyzers.compare.RunComparison`. Solid bars: GPU kernel-time delta per
    phase; hatched: GPU idle-time delta while the host was in the phase.
    """
    run = comp.run
    panels = [("trace", comp.trace_waterfall)]
    if comp.measured_waterfall:
        panels.append(("measured", comp.measured_waterfall))
    n_bars = max(len([*_merge_small(p[1][1:-1], top)]) + 2 for p in panels)
    fig = Figure(figsize=(7.2 * len(panels), 0.34 * n_bars + 1.6))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    unit = comp.waterfall_unit
    for ax, (kind, steps) in zip(axes, panels, strict=True):
        d = steps[-1]["value_us"] - steps[0]["value_us"]
        if kind == "trace":
            ratio = steps[-1]["value_us"] / steps[0]["value_us"] if steps[0]["value_us"] else float("nan")
            title = (f"Profiled trace: {_fmt_ms(d, signed=True)} per {unit} (x{ratio:.2f})" if unit == "pass"
                     else f"Profiled trace window: {_fmt_ms(d, signed=True)} (x{ratio:.2f})")
            _waterfall_axes(ax, steps, top, title, unit)
        else:
            title = f"Measured without profiler: {_fmt_ms(d, signed=True)} per iteration (x{comp.latency_ratio:.2f})"
            infl = [f"{f.label} x{f.inflation:.1f}" for f in (comp.baseline, run) if f.inflation]
            residual = sum(s["value_us"] for s in steps if s["kind"] == "residual")
            sub = []
            if infl:
                sub.append("profiler inflation " + ", ".join(infl))
            if comp.explanation and comp.explanation.startswith("cpu"):
                sub.append("CPU: traced phase shares x measured time, an estimate; no explained share")
            elif abs(d) > 0:
                how = ("bars from the lean traces" if comp.explanation == "lean trace"
                       else "host bars less the profiler's cost per event")
                sub.append(f"{how}; trace explains {1 - residual / d:.0%}")
            _waterfall_axes(ax, steps, top, title + "\n" + "; ".join(sub), "iteration")
    handles = [Patch(facecolor="white", edgecolor="#333333", label="GPU kernel time delta"),
               Patch(facecolor="white", edgecolor="#333333", hatch=HOST_HATCH,
                     label="GPU idle delta while the host ran the phase")]
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=8, frameon=False, bbox_to_anchor=(0.5, -0.02))
    fig.suptitle(_tex_safe(f"Where the time goes: {comp.baseline.label} → {run.label}"), fontsize=11, x=0.01,
                 ha="left")
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    return fig


# --- stacked phase bars --------------------------------------------------------------------------


def phase_stack_chart(runs: Sequence[tuple[str, Any]], unit: str) -> Figure:
    """Per run, GPU time and GPU idle time (exposed host time) stacked by phase.

    `runs`: (label, phase DataFrame indexed by phase with gpu_time_us and exposed_us) in the
    unit named by `unit` ("pass" or "window").
    """
    fig = Figure(figsize=(max(6.5, 2.2 + 1.3 * len(runs) * 2), 4.6))
    axes = fig.subplots(1, 2)
    present = [p for p in PHASE_ORDER if any(p in df.index for _, df in runs)]
    extra = [p for _, df in runs for p in df.index if p not in PHASE_ORDER]
    present += list(dict.fromkeys(extra))
    x = list(range(len(runs)))
    for ax, col, title in ((axes[0], "gpu_time_us", "GPU kernel time by phase"),
                           (axes[1], "exposed_us", "GPU idle while the host was in the phase")):
        bottoms = [0.0] * len(runs)
        for p in present:
            vals = [_ms(float(df[col].get(p, 0.0))) if p in df.index else 0.0 for _, df in runs]
            if not any(vals):
                continue
            ax.bar(x, vals, bottom=bottoms, color=phase_color(p), edgecolor="white", linewidth=0.4, width=0.6,
                   hatch=HOST_HATCH if col == "exposed_us" else "")
            bottoms = [b + v for b, v in zip(bottoms, vals, strict=True)]
        top = max(bottoms) if bottoms else 0
        for xi, b in zip(x, bottoms, strict=True):
            ax.text(xi, b + top * 0.01, f"{b:.2f}", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(x, [_tex_safe(lab) for lab, _ in runs], fontsize=9)
        ax.set_ylabel(f"ms per {unit}" if unit == "pass" else "ms in the trace window")
        ax.set_ylim(0, top * 1.1 if top > 0 else 1)
        ax.set_xlim(-0.75, len(runs) - 0.25)  # a lone run keeps a bar's width instead of filling the panel
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", color="#eeeeee", linewidth=0.6)
        ax.set_axisbelow(True)
    handles = [Patch(facecolor=phase_color(p), label=_tex_safe(p)) for p in present]
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False,
               title="phase", title_fontsize=8)
    fig.tight_layout()
    return fig


# --- ranking -------------------------------------------------------------------------------------


def ranking_chart(rows: Sequence[dict[str, Any]]) -> Figure:
    """Three panels sharing the runs (fastest on top): latency, peak memory (both vs the baseline)
    and KL divergence to the baseline; each bar coloured by the phase that adds the most time."""
    order = list(rows)[::-1]  # matplotlib draws the first bar at the bottom
    labels = [_tex_safe(r["run"]) for r in order]
    fig = Figure(figsize=(10.5, 0.42 * len(order) + 1.6))
    axes = fig.subplots(1, 3, sharey=True)
    panels = ((axes[0], "latency_ratio", "latency vs baseline (x)", "{:.2f}x"),
              (axes[1], "peak_ratio", "peak memory vs baseline (x)", "{:.2f}x"),
              (axes[2], "kl_mean", "KL to baseline (nats)", "{:.1e}"))
    y = list(range(len(order)))
    for ax, key, title, fmt in panels:
        vals = [r.get(key) for r in order]
        colors = [phase_color(r.get("main_phase")) if r.get("main_phase") else "#9e9e9e" for r in order]
        ax.barh(y, [v or 0.0 for v in vals], color=colors, height=0.6)
        top = max((v for v in vals if v), default=1.0)
        for yi, v in zip(y, vals, strict=True):
            ax.text((v or 0.0) + top * 0.01, yi, "n/a" if v is None else fmt.format(v), va="center", fontsize=8)
        if key != "kl_mean":
            ax.axvline(1.0, color="#555555", linewidth=0.8, linestyle="--")
        ax.set_xlim(0, top * 1.25)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="x", color="#eeeeee", linewidth=0.6)
        ax.set_axisbelow(True)
    axes[0].set_yticks(y, labels, fontsize=9)
    phases = list(dict.fromkeys(r["main_phase"] for r in rows if r.get("main_phase")))
    if phases:
        fig.legend(handles=[Patch(facecolor=phase_color(p), label=_tex_safe(p)) for p in phases],
                   loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False,
                   title="adds most time", title_fontsize=8)
    fig.tight_layout()
    return fig


# --- GPU busy / idle -----------------------------------------------------------------------------


def busy_idle_chart(rows: Sequence[tuple[str, float, float]], title: str) -> Figure:
    """Horizontal stacked bars of GPU busy and idle time, one per (label, busy_us, idle_us)."""
    fig = Figure(figsize=(7.5, 0.36 * len(rows) + 1.5))
    ax = fig.subplots()
    y = list(range(len(rows)))
    busy = [_ms(b) for _, b, _ in rows]
    idle = [_ms(i) for _, _, i in rows]
    ax.barh(y, busy, color=BUSY_COLOR, height=0.65, label="GPU busy")
    ax.barh(y, idle, left=busy, color=IDLE_COLOR, edgecolor="#999999", linewidth=0.4, height=0.65, label="GPU idle")
    span_max = max((b + i for b, i in zip(busy, idle, strict=True)), default=0.0)
    for yi, b, i in zip(y, busy, idle, strict=True):
        share = i / (b + i) if b + i > 0 else 0.0
        ax.text(b + i + span_max * 0.01, yi, f"{b + i:.2f} ms, idle {share:.0%}", va="center", fontsize=8)
    ax.set_xlim(0, span_max * 1.3 if span_max > 0 else 1)
    ax.set_yticks(y, [_tex_safe(r[0]) for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("span (ms)")
    ax.set_title(_tex_safe(title), fontsize=10, loc="left")
    ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=2, fontsize=8, frameon=False)
    ax.grid(axis="x", color="#eeeeee", linewidth=0.6)
    ax.set_axisbelow(True)
    fig.tight_layout()
    return fig


def busy_idle_rows(label: str, report: Any, passes: int | None) -> list[tuple[str, float, float]]:
    """One row per ProfilerStep; without markers, the window averaged per pass (or the whole window)."""
    steps = report.steps
    if len(steps):
        return [(f"{label} · step {int(s.step)}", float(s.gpu_busy_us), float(s.gpu_idle_us))
                for s in steps.itertuples()]
    h = report.host
    if passes:
        return [(f"{label} · mean of {passes} passes", h["gpu_busy_us"] / passes, h["gpu_idle_us"] / passes)]
    return [(f"{label} · whole window", h["gpu_busy_us"], h["gpu_idle_us"])]


# --- top kernels ---------------------------------------------------------------------------------


def top_kernels_chart(kernels: Any, title: str, top: int = 12) -> Figure:
    """Horizontal bars of the heaviest kernels (numbered short names), coloured by phase."""
    k = kernels.head(top)
    fig = Figure(figsize=(8.0, 0.34 * max(len(k), 1) + 1.4))
    ax = fig.subplots()
    y = list(range(len(k)))
    vals = [_ms(v) for v in k["gpu_time_us"]]
    ax.barh(y, vals, color=[phase_color(p) for p in k["phase"]], height=0.7)
    vmax = max(vals, default=0.0)
    for yi, v, share in zip(y, vals, k["share"], strict=True):
        ax.text(v + vmax * 0.01, yi, f"{v:.2f} ms ({share:.0%})", va="center", fontsize=8)
    ax.set_xlim(0, vmax * 1.4 if vmax > 0 else 1)  # room for the value label of the longest bar
    ax.set_yticks(y, [_tex_safe(lab) for lab in kernel_labels(list(k["name"]))], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("GPU time in the trace window (ms)")
    ax.set_title(_tex_safe(title), fontsize=10, loc="left")
    phases = list(dict.fromkeys(k["phase"]))
    # Below the axes: beside them it collides with the value labels of the longest bars.
    ax.legend(handles=[Patch(facecolor=phase_color(p), label=_tex_safe(p)) for p in phases], loc="upper center",
              bbox_to_anchor=(0.5, -0.16), ncol=min(len(phases), 4), fontsize=7, frameon=False)
    ax.grid(axis="x", color="#eeeeee", linewidth=0.6)
    ax.set_axisbelow(True)
    fig.tight_layout()
    return fig
