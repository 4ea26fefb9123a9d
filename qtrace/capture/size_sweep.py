"""`qtrace sweep A,B,C ...`: the sweep's model axis (issue 17), with decode regimes and time budgets.

Each point (model x decode regime x seq len x batch size) is one `qtrace.profile` run over all
precisions in ``<out>/points/<model>/<decode>_bs<B>_seq<S>/``. A point that runs out of memory
or past its time budget is recorded as ``oom`` / ``timeout`` and the sweep goes on; points left
when the whole sweep's budget is spent are recorded as ``skipped``. Written next to the table:

- ``size.png``: ratio to the baseline against parameter count (log x), one line per precision
  and batch (dotted: the linear model past the largest size), plus decode ms/token against the
  bytes/bandwidth floor for both decode regimes;
- ``sweep.json``: rows, size crossovers, the extrapolation, memory limits per card, and per
  point the trace explanation (which of weight bytes, host/launch overhead or compute sets
  each step), all from qtrace.analyzers.crossover.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from qtrace.analyzers import crossover as xo
from qtrace.capture.sweep import ROW_COLUMNS, baseline_of, crossovers, parse_int_list, rows_from_run
from qtrace.errors import QtraceError

SIZE_COLUMNS = ["model", "params", "decode", "ttft_ms", "decode_ms_per_token", "load_seconds", "stream_bytes",
                "floor_ms_per_token", "floor_ratio", "activation_bytes", "dominant_prefill", "dominant_decode",
                "dominant_forward"]
NUMERIC = ["params", "ttft_ms", "decode_ms_per_token", "load_seconds", "stream_bytes", "floor_ms_per_token",
           "floor_ratio", "activation_bytes"]
_PHASE_LINE = re.compile(r"^\[\w+\] (loading|warm-up|profiling)")


class PointBudgetExceeded(Exception):
    """Raised from the progress hook when a point has used its time budget."""


def model_facts(name: str) -> dict[str, Any]:
    """params (logical count, meta device), and the input-embedding size when it is not tied
    to the head (decode reads every weight once per token except the embedding table: it
    gathers B rows of it)."""
    from qtrace.capture import models

    if name in models.PRESETS:
        preset = models.PRESETS[name]
        config, kind = preset.config(), preset.kind
    else:
        from transformers import AutoConfig

        spec = models.resolve_model(name)
        config, kind = AutoConfig.from_pretrained(str(spec.path), local_files_only=True), spec.kind
    hidden = models.hidden_size(config)
    vocab = int(models._cfg(config, "vocab_size") or 0)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    return {"params": models.count_params(config, kind), "embedding_elems": 0 if tied else hidden * vocab}


def size_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    from qtrace.capture.sweep import frame

    df = frame(rows).join(pd.DataFrame(rows, columns=SIZE_COLUMNS)) if rows else pd.DataFrame(
        columns=ROW_COLUMNS + SIZE_COLUMNS)
    for c in NUMERIC:
        df[c] = pd.to_numeric(df[c], errors="coerce")
    return df


def point_status(status: str | None, error: str | None) -> str | None:
    """ok / oom / timeout / unsupported / error from a run.json entry."""
    if status in ("ok", "unsupported") or not error:
        return status
    if "OutOfMemory" in error or "out of memory" in error:
        return "oom"
    if "PointBudgetExceeded" in error:
        return "timeout"
    return status


def rows_for_point(run: dict[str, Any], model: str, facts: dict[str, Any], bs: int, seq: int, decode: str,
                   point: str, hbm_gbps: float | None) -> list[dict[str, Any]]:
    rows = rows_from_run(run, bs, seq, point)
    for r, e in zip(rows, (run.get("precisions") or {}).values(), strict=True):
        e = e or {}
        gen = e.get("generate") or {}
        load = e.get("load") or {}
        elem = 4 if e.get("compute_dtype") == "float32" else 2
        stream = r["footprint_bytes"] - elem * facts["embedding_elems"] if r["footprint_bytes"] else None
        floor = xo.floor_ms(stream, hbm_gbps)
        per_token = (gen.get("decode_ms_per_token") or {}).get("median")
        r.update(model=model, params=facts["params"], decode=decode, status=point_status(r["status"], r["error"]),
                 ttft_ms=(gen.get("ttft_ms") or {}).get("median"), decode_ms_per_token=per_token,
                 load_seconds=load.get("seconds"), stream_bytes=stream, floor_ms_per_token=floor,
                 floor_ratio=per_token / floor if per_token and floor else None,
                 activation_bytes=(r["peak_memory_bytes"] - r["footprint_bytes"])
                 if r["peak_memory_bytes"] is not None and r["footprint_bytes"] else None)
    return rows


def missing_rows(precisions: list[str], model: str, facts: dict[str, Any], bs: int, seq: int, decode: str,
                 point: str, status: str, error: str) -> list[dict[str, Any]]:
    return [{"precision": p, "batch_size": bs, "seq_len": seq, "status": status, "error": error, "point": point,
             "model": model, "params": facts["params"], "decode": decode} for p in precisions]


def primary_metric(task: str) -> str:
    return "decode_ms_per_token" if task == "generate" else "latency_ms_per_example"


def analyse(df: pd.DataFrame, baseline: str, task: str) -> dict[str, Any]:
    metrics = ["decode_ms_per_token", "ttft_ms", "latency_ms_per_example"] if task == "generate" else [
        "latency_ms_per_example"]
    size = [c for m in metrics for c in xo.size_crossovers(df, baseline, m)]
    size += xo.size_crossovers(df, baseline, "peak_memory_bytes")
    extra = [c for m in metrics for c in xo.extrapolate(df, baseline, m)]
    by_model = {}
    for (model, decode), g in df.assign(decode=df["decode"].fillna("dynamic")).groupby(["model", "decode"], sort=False):
        by_model[f"{model} ({decode})"] = crossovers(g, baseline, "latency_ms_per_example")
    return {"size_crossovers": size, "extrapolation": extra, "memory_limits": xo.memory_limits(df),
            "batch_crossovers": by_model}


def run_size_sweep(models: list[str], precisions: list[str] | None, batch_sizes: str | list[int],
                   seq_lens: str | list[int] = "128", task: str = "generate", decodes: tuple[str, ...] = ("dynamic",),
                   out: str | Path | None = None, force: bool = False, profile_steps: int = 0,
                   baseline: str | None = None, point_budget_s: float | None = None,
                   time_budget_s: float | None = None, runner: Callable[..., Any] | None = None,
                   progress: Callable[[str], None] | None = None, quiet: bool = False,
                   **profile_kwargs: Any) -> Any:
    """The model axis of `qtrace sweep` (see the module docstring); returns a SweepResult."""
    from datetime import datetime

    from qtrace import fileio
    from qtrace.capture import models as qmodels
    from qtrace.capture.runner import one_line
    from qtrace.capture.sweep import SweepResult, _stderr, start_sweep_folder

    bs_list = parse_int_list(batch_sizes, "batch-size")
    seq_list = parse_int_list(seq_lens, "seq-len")
    for d in decodes:
        if d not in ("dynamic", "static"):
            raise QtraceError(f"--decode: {d!r} is not dynamic or static")
    if runner is None:
        from qtrace.capture.runner import profile as runner

        for m in models:
            qmodels.resolve_model(m)
    facts = {m: model_facts(m) for m in models}
    models = sorted(models, key=lambda m: facts[m]["params"])
    say = progress if progress is not None else (None if quiet else _stderr)
    out_path = Path(out) if out is not None else Path("qtrace-runs") / (
        f"sweep-{Path(models[0]).name}-x{len(models)}-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
    out_path = start_sweep_folder(out_path, force,
                                  "qtrace sweep started; if this file remains, the sweep was interrupted")
    settings: dict[str, Any] = {"model": ",".join(models), "models": models, "task": task, "precisions": precisions,
                                "batch_sizes": bs_list, "seq_lens": seq_list, "decode": list(decodes),
                                "baseline": baseline, "profile_steps": profile_steps,
                                "point_budget_s": point_budget_s, "time_budget_s": time_budget_s,
                                "params": {m: facts[m]["params"] for m in models}, **profile_kwargs}
    rows: list[dict[str, Any]] = []
    explanations: dict[str, Any] = {}
    t_start = time.monotonic()
    total = len(models) * len(decodes) * len(seq_list) * len(bs_list)
    i = 0
    hbm = None
    df = size_frame([])
    found: dict[str, Any] = {}
    for model in models:
        for decode in decodes:
            for seq in seq_list:
                for bs in bs_list:
                    i += 1
                    point = f"points/{model}/{decode}_bs{bs}_seq{seq}"
                    chosen = precisions or ["fp16", "int8", "nf4"]
                    if time_budget_s is not None and time.monotonic() - t_start > time_budget_s:
                        rows += missing_rows(chosen, model, facts[model], bs, seq, decode, point, "skipped",
                                             f"sweep time budget {time_budget_s:g} s spent")
                        continue
                    if say:
                        say(f"[sweep {i}/{total}] {model}, decode {decode}, batch {bs}, seq {seq}")
                    sink = _budget_sink(say, point_budget_s)
                    try:
                        result = runner(model=model, precisions=precisions, task=task, batch_size=bs, seq_len=seq,
                                        profile_steps=profile_steps, out=out_path / point, force=True,
                                        progress=sink, quiet=quiet, decode=decode, **profile_kwargs)
                    except Exception as exc:  # a point that fails as a whole must not stop the sweep
                        status = point_status("error", one_line(exc)) or "error"
                        rows += missing_rows(chosen, model, facts[model], bs, seq, decode, point, status,
                                             one_line(exc))
                        continue
                    run = result.run
                    env = run.get("environment") or {}
                    settings.setdefault("device_name", env.get("device_name"))
                    if settings["precisions"] is None:
                        settings["precisions"] = list(run.get("precisions") or {})
                    if hbm is None:
                        from qtrace.gpu_peaks import peaks_for

                        hbm = peaks_for(env.get("device_name")).values.get("hbm_gbps") \
                            if env.get("device_type") == "cuda" else None
                    new = rows_for_point(run, model, facts[model], bs, seq, decode, point, hbm)
                    explain_point(result, new, bs, seq, explanations)
                    rows += new
                    df = size_frame(rows)
                    found = analyse(df, baseline_of(settings["precisions"], baseline), task)
                    # The plot too: a sweep killed by an outer timeout still leaves a readable picture.
                    write_size_outputs(df, found, explanations, out_path, settings, with_plot=True)
    df = size_frame(rows)
    base = baseline_of(settings["precisions"] or list(df["precision"].drop_duplicates()), baseline)
    settings["baseline"] = base
    found = analyse(df, base, task) if len(df) else {}
    files = write_size_outputs(df, found, explanations, out_path, settings, with_plot=True)
    fileio.clear_incomplete(out_path)
    if say:
        for c in found.get("size_crossovers", []) + found.get("extrapolation", []):
            say(c["message"])
        say(f"wrote {', '.join(str(f) for f in files)}")
    messages = found.get("size_crossovers", []) + found.get("extrapolation", [])
    return SweepResult(out_path, df, messages, settings, [], files)


def _budget_sink(say: Callable[[str], None] | None, budget: float | None) -> Callable[[str], None]:
    """Progress hook that stops a point at its next phase (load, warm-up, profiling) once the
    point has run `budget` seconds; the runner records the precision as failed and goes on."""
    t0 = time.monotonic()

    def sink(msg: str) -> None:
        if say:
            say(msg)
        if budget is not None and time.monotonic() - t0 > budget and _PHASE_LINE.match(msg):
            raise PointBudgetExceeded(f"point time budget {budget:g} s exceeded")

    return sink


def explain_point(result: Any, rows: list[dict[str, Any]], bs: int, seq: int, into: dict[str, Any]) -> None:
    """The trace explanation of each precision of a point that recorded a trace."""
    from qtrace.analyzers.crossover import explain_steps
    from qtrace.tracefile import load_trace

    for r in rows:
        entry = (result.run.get("precisions") or {}).get(r["precision"]) or {}
        if not entry.get("trace"):
            continue
        try:
            info = explain_steps(load_trace(result.out / entry["trace"]), r["stream_bytes"], r["params"], bs, seq)
        except Exception as exc:  # an unreadable trace loses its explanation, not the sweep
            info = {"error": f"{type(exc).__name__}: {exc}"}
        into[f"{r['point']}/{r['precision']}"] = info
        for kind, step in (info.get("steps") or {}).items():
            r[f"dominant_{kind}"] = step["dominant"]


# ---------------------------------------------------------------------------------------
# Outputs


def _clean(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return None if math.isnan(v) else float(v)
    return v


def write_size_outputs(df: pd.DataFrame, found: dict[str, Any], explanations: dict[str, Any], out: Path,
                       settings: dict[str, Any], with_plot: bool = True) -> list[Path]:
    from qtrace.fileio import write_json, write_text

    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "sweep.csv", out / "sweep.json", out / "sweep.md"]
    write_text(paths[0], df.to_csv(index=False))
    records = [{k: _clean(v) for k, v in r.items()} for r in df.to_dict(orient="records")]
    write_json(paths[1], {"settings": settings, "rows": records, **found, "explanations": explanations})
    md = size_markdown(df, found, settings)
    if with_plot and len(df):
        md += "\n![size sweep](size.png)\n"
    write_text(paths[2], md)
    if with_plot and len(df):
        paths.append(plot_sizes(df, found, out / "size.png", settings))
    return paths


def _f(x: Any, digits: int = 2) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _s(v: Any) -> str:
    return v if isinstance(v, str) and v else "-"


def size_markdown(df: pd.DataFrame, found: dict[str, Any], settings: dict[str, Any]) -> str:
    from qtrace.markup import md_escape, md_table, mib

    lines = ["# qtrace sweep: model sizes", ""]
    for k in ("models", "task", "precisions", "batch_sizes", "seq_lens", "decode", "baseline", "device_name"):
        if k in settings:
            lines.append(f"- {k}: {md_escape(settings.get(k))}")
    lines += ["", "## Where a quantized precision first beats the baseline", ""]
    lines += [f"- {md_escape(c['message'])}" for c in found.get("size_crossovers", [])] or ["- (nothing to compare)"]
    lines += ["", "## Extrapolation", ""]
    lines += [f"- {md_escape(c['message'])}" for c in found.get("extrapolation", [])] or ["- (fewer than two sizes)"]
    if found.get("extrapolation"):
        lines += ["", f"Assumption: {md_escape(found['extrapolation'][0]['assumption'])}."]
    lines += ["", "## Memory: largest size that fits", ""]
    for m in found.get("memory_limits", []):
        if not m.get("cards"):
            continue
        cells = "; ".join(f"{card}: {v['largest_named'] or 'none'} (<= {xo.fmt_params(max(v['max_params'], 0))})"
                          for card, v in m["cards"].items())
        lines.append(f"- {m['precision']} batch {m['batch_size']}: {md_escape(cells)}")
    if found.get("memory_limits"):
        lines += ["", f"Assumption: {md_escape(found['memory_limits'][0]['assumption'])}."]
    head = ["model", "precision", "decode", "batch", "prefill ms", "ms/token", "floor ms/token", "x floor", "tok/s",
            "ms/example", "peak", "footprint", "load s", "prefill", "decode step", "status"]
    rows = []
    for r in df.sort_values(["params", "decode", "batch_size", "precision"], kind="stable").to_dict(orient="records"):
        rows.append([md_escape(r["model"]), r["precision"], str(r["decode"]), str(r["batch_size"]), _f(r["ttft_ms"]),
                     _f(r["decode_ms_per_token"], 3), _f(r["floor_ms_per_token"], 3), _f(r["floor_ratio"], 1),
                     _f(r["tokens_per_s"], 1), _f(r["latency_ms_per_example"], 2), mib(r["peak_memory_bytes"]),
                     mib(r["footprint_bytes"]), _f(r["load_seconds"], 1), md_escape(_s(r.get("dominant_prefill"))),
                     md_escape(_s(r.get("dominant_decode")) if _s(r.get("dominant_decode")) != "-"
                               else _s(r.get("dominant_forward"))),
                     md_escape(r["status"] if r["status"] == "ok" else f"{r['status']}: {r['error']}")])
    lines += ["", "## Table", "", md_table(head, rows, "lllrrrrrrrrrrlll"), "",
              "floor ms/token: streamed weight bytes (footprint minus an untied input embedding) / HBM bandwidth.",
              "prefill / decode step: what sets that step's time in the point's trace (weight bytes, "
              "host/launch overhead, compute).", ""]
    return "\n".join(lines)


def plot_sizes(df: pd.DataFrame, found: dict[str, Any], path: Path, settings: dict[str, Any]) -> Path:
    """Ratio to the baseline against params (log x), one line per precision and batch; dotted:
    the fitted linear model past the largest size. Right panel (generate): decode ms/token of
    both regimes with each precision's bytes/bandwidth floor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    task = settings.get("task", "generate")
    metric = primary_metric(task)
    base = settings.get("baseline") or baseline_of(list(df["precision"].drop_duplicates()))
    ok = df[(df["status"].fillna("ok") == "ok") & df["params"].notna()].copy()
    ok["decode"] = ok["decode"].fillna("dynamic")
    generate = task == "generate"
    fig, axes = plt.subplots(1, 2 if generate else 1, figsize=(13 if generate else 7, 5), squeeze=False)
    ax = axes[0][0]
    colors = {p: f"C{i}" for i, p in enumerate(df["precision"].drop_duplicates())}
    styles = ["-", "--", "-.", ":"]
    batches = sorted(ok["batch_size"].dropna().unique())
    fits = {(c["precision"], c["batch_size"], c["decode"]): c for c in found.get("extrapolation", [])
            if c["metric"] == metric and c.get("fit")}
    xmax = max(float(ok["params"].max()) if len(ok) else 1e9, 72e9)
    measured_max = 0.0
    for (p, bs, decode), g in ok.groupby(["precision", "batch_size", "decode"], sort=False):
        if p == base:
            continue
        b = ok[(ok["precision"] == base) & (ok["batch_size"] == bs) & (ok["decode"] == decode)]
        merged = g.merge(b[["params", metric]], on="params", suffixes=("", "_base")).sort_values("params")
        merged = merged[merged[metric].notna() & merged[f"{metric}_base"].notna()]
        if merged.empty:
            continue
        ls = styles[batches.index(bs) % len(styles)]
        label = f"{p} b{int(bs)}" + (" static" if decode == "static" else "")
        ratio = merged[metric] / merged[f"{metric}_base"]
        ax.plot(merged["params"], ratio, ls, color=colors[p], marker="s" if decode == "static" else "o", label=label)
        measured_max = max(measured_max, float(ratio.max()))
        fit = fits.get((p, int(bs), decode))
        if fit:
            xs = np.geomspace(float(merged["params"].max()), xmax, 20)
            q, f = fit["fit"], fit["baseline_fit"]
            num, den = q["a"] + q["b_per_billion"] * xs / 1e9, f["a"] + f["b_per_billion"] * xs / 1e9
            # A fitted time <= 0 is outside the model (a noisy slope): no ratio there, not a pole.
            ys = np.divide(num, den, out=np.full_like(xs, np.nan), where=(num > 0) & (den > 0))
            ax.plot(xs, ys, ":", color=colors[p], alpha=0.6)
    ax.axhline(1.0, color="k", lw=1)
    if measured_max > 0:  # the measured ratios set the scale; an extrapolation may leave the plot
        ax.set_ylim(0, max(2.0, 1.5 * measured_max))
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel(f"{metric} / {base} (below 1: quantized is faster)")
    ax.set_title(f"ratio to {base}; dotted: linear model extrapolated", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, ncol=2)
    if generate:
        ax2 = axes[0][1]
        one = ok[ok["batch_size"] == (batches[0] if batches else 1)]
        for (p, decode), g in one.groupby(["precision", "decode"], sort=False):
            g = g.sort_values("params")
            g = g[g["decode_ms_per_token"].notna()]
            if g.empty:
                continue
            ax2.plot(g["params"], g["decode_ms_per_token"], "-" if decode == "dynamic" else "--", color=colors[p],
                     marker="s" if decode == "static" else "o", label=f"{p} {decode}")
            if decode == "dynamic" and g["floor_ms_per_token"].notna().any():
                ax2.plot(g["params"], g["floor_ms_per_token"], ":", color=colors[p], alpha=0.8,
                         label=f"{p} bytes/bandwidth floor")
        ax2.set_xscale("log")
        ax2.set_yscale("log")
        ax2.set_xlabel("parameters")
        ax2.set_ylabel("decode ms/token")
        ax2.set_title(f"batch {int(batches[0]) if batches else 1}: eager vs static+CUDA graphs vs floor", fontsize=9)
        ax2.grid(True, which="both", alpha=0.3)
        if ax2.get_legend_handles_labels()[0]:
            ax2.legend(fontsize=7)
    bits = [settings.get("task"), settings.get("device_name")]
    fig.suptitle(" · ".join(str(b) for b in bits if b))
    fig.tight_layout()
    from qtrace.fileio import atomic_open

    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110)
    plt.close(fig)
    return path
