"""`qtrace sweep`: the measurement protocol over batch sizes (and prompt lengths), and where a
quantized precision starts to pay.

Each point (batch size x seq len) is one `qtrace.profile` run over all precisions, in its own
folder ``<out>/points/bs<B>_seq<S>/`` (run.json, and traces when profiling is on). The sweep
collects one row per precision and point into a DataFrame and writes:

- ``sweep.csv`` / ``sweep.json`` / ``sweep.md``: the table, the crossovers and the settings;
- ``sweep.png``: latency per example and peak memory per precision against batch size (log2 x).

A **crossover** is where a quantized precision's metric (lower is better) goes from worse than
the baseline's to better, or back, between two measured batch sizes; the batch size of the
crossing is estimated by interpolating log(ratio) linearly in log2(batch size). When it never
happens in the measured range the sweep says so, with the closest ratio.

Crossover logic, tables and the plot are pure functions over the DataFrame (`crossovers`,
`to_markdown`, `plot`); only `run_sweep` measures anything.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from qtrace.backends import quantized_precisions
from qtrace.errors import QtraceError

QUANTIZED = quantized_precisions()
BASELINE_ORDER = ("fp16", "bf16", "fp32")
METRICS = {
    "latency_ms_per_example": "latency per example (ms)",
    "peak_memory_bytes": "peak memory",
}
ROW_COLUMNS = ["precision", "batch_size", "seq_len", "status", "error", "latency_ms_per_example",
               "latency_ms_per_example_p90", "latency_ms_per_iter", "examples_per_s", "tokens_per_s",
               "peak_memory_bytes", "memory_metric", "footprint_bytes", "joules_per_example", "point",
               "kl_mean", "top1_agreement", "max_abs_diff"]
QUALITY_FIELDS = ("kl_mean", "top1_agreement", "max_abs_diff")


# ---------------------------------------------------------------------------------------
# Rows


def parse_int_list(text: str | Iterable[int], what: str) -> list[int]:
    """'1,4,16,64' -> [1, 4, 16, 64] (sorted, unique, each >= 1), or one clear error."""
    items = text.split(",") if isinstance(text, str) else list(text)
    out: list[int] = []
    for raw in items:
        s = str(raw).strip()
        if not s:
            continue
        try:
            v = int(s)
        except ValueError:
            raise QtraceError(f"--{what}: {s!r} is not an integer (give a comma list such as 1,4,16,64)") from None
        if v < 1:
            raise QtraceError(f"--{what}: values must be at least 1, got {v}")
        if v not in out:
            out.append(v)
    if not out:
        raise QtraceError(f"--{what}: give at least one value")
    return sorted(out)


def rows_from_run(run: dict[str, Any], batch_size: int, seq_len: int, point: str | None = None) -> list[dict[str, Any]]:
    """One row per precision of a `qtrace profile` run.json (dict)."""
    rows = []
    for precision, e in (run.get("precisions") or {}).items():
        e = e or {}
        lat = e.get("latency_ms") or {}
        ex = lat.get("per_example") or {}
        it = lat.get("per_iter") or {}
        mem = e.get("memory") or {}
        gen = e.get("generate") or {}
        energy = e.get("energy") or {}
        quality = e.get("quality") or {}
        peak, metric = mem.get("max_allocated_bytes"), "max_allocated_bytes"
        if peak is None and mem.get("cpu_peak_rss_bytes") is not None:
            peak, metric = mem.get("cpu_peak_rss_bytes"), "cpu_peak_rss_bytes"
        per_ex = ex.get("median")
        rows.append({
            "precision": precision, "batch_size": batch_size, "seq_len": seq_len,
            "status": e.get("status"), "error": e.get("error"),
            "latency_ms_per_example": per_ex, "latency_ms_per_example_p90": ex.get("p90"),
            "latency_ms_per_iter": it.get("median"),
            "examples_per_s": 1000.0 / per_ex if per_ex else None,
            "tokens_per_s": gen.get("tokens_per_s"),
            "peak_memory_bytes": peak, "memory_metric": metric if peak is not None else None,
            "footprint_bytes": (e.get("load") or {}).get("footprint_bytes"),
            "joules_per_example": energy.get("joules_per_example"),
            "point": point,
            # error against the run's baseline precision (same inputs); 0 / 1 for the baseline itself
            **{k: (0.0 if k != "top1_agreement" else 1.0) if quality.get("is_baseline") else quality.get(k)
               for k in QUALITY_FIELDS},
        })
    return rows


def frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=ROW_COLUMNS)
    for c in ("latency_ms_per_example", "latency_ms_per_example_p90", "latency_ms_per_iter", "examples_per_s",
              "tokens_per_s", "peak_memory_bytes", "footprint_bytes", "joules_per_example", *QUALITY_FIELDS):
        df[c] = pd.to_numeric(df[c], errors="coerce")
    return df


def baseline_of(precisions: Iterable[str], requested: str | None = None) -> str:
    """The precision quantized ones are compared with: `requested`, else fp16, bf16, fp32, else the first."""
    ps = list(precisions)
    if requested:
        if requested not in ps:
            raise QtraceError(f"--baseline {requested}: not among the swept precisions ({', '.join(ps)})")
        return requested
    for b in BASELINE_ORDER:
        if b in ps:
            return b
    return ps[0]


# ---------------------------------------------------------------------------------------
# Crossovers


def crossovers(df: pd.DataFrame, baseline: str, metric: str = "latency_ms_per_example") -> list[dict[str, Any]]:
    """Where each other precision crosses `baseline` on `metric` (lower is better), per seq_len.

    Returns one dict per (precision, seq_len): ``status`` is ``crosses`` (with ``crossings``,
    each {from_batch, to_batch, batch_size_est, direction}), ``always_better``, ``never`` or
    ``no_data``; ``ratios`` maps batch size -> metric / baseline metric.
    """
    out: list[dict[str, Any]] = []
    ok = df[(df["status"].fillna("ok") == "ok") & df[metric].notna() & (df[metric] > 0)]
    for seq_len in sorted(df["seq_len"].dropna().unique()):
        base = ok[(ok["precision"] == baseline) & (ok["seq_len"] == seq_len)].set_index("batch_size")[metric]
        for precision in [p for p in df["precision"].drop_duplicates() if p != baseline]:
            mine = ok[(ok["precision"] == precision) & (ok["seq_len"] == seq_len)].set_index("batch_size")[metric]
            common = sorted(set(base.index) & set(mine.index))
            entry: dict[str, Any] = {"precision": precision, "baseline": baseline, "metric": metric,
                                     "seq_len": int(seq_len), "batches": [int(b) for b in common]}
            if not common:
                entry.update(status="no_data", ratios={}, crossings=[],
                             message=f"{precision} vs {baseline} at seq {int(seq_len)}: no batch size where both ran")
                out.append(entry)
                continue
            ratios = {int(b): float(mine[b] / base[b]) for b in common}
            entry["ratios"] = ratios
            better = [ratios[b] <= 1.0 for b in common]
            crossings = []
            for (b0, g0), (b1, g1) in zip(zip(common, better, strict=True), list(zip(common, better, strict=True))[1:],
                                          strict=False):
                if g0 == g1:
                    continue
                y0, y1 = math.log(ratios[b0]), math.log(ratios[b1])
                x0, x1 = math.log2(b0), math.log2(b1)
                x = x0 + (x1 - x0) * (0.0 - y0) / (y1 - y0) if y1 != y0 else x0
                crossings.append({"from_batch": int(b0), "to_batch": int(b1), "batch_size_est": round(2 ** x, 2),
                                  "direction": "becomes_better" if g1 else "becomes_worse"})
            entry["crossings"] = crossings
            if crossings:
                entry["status"] = "crosses"
            elif all(better):
                entry["status"] = "always_better"
            else:
                entry["status"] = "never"
            entry["message"] = _message(entry)
            out.append(entry)
    return out


def _message(e: dict[str, Any]) -> str:
    what = METRICS.get(e["metric"], e["metric"])
    lo, hi = min(e["batches"]), max(e["batches"])
    rng = f"batch {lo}..{hi}, seq {e['seq_len']}"
    p, b = e["precision"], e["baseline"]
    ratios = e["ratios"]
    if e["status"] == "always_better":
        worst = max(ratios.values())
        return f"{p} beats {b} on {what} at every measured batch size ({rng}); at worst {worst:.2f}x of {b}"
    if e["status"] == "never":
        best_b = min(ratios, key=ratios.get)
        return (f"{p} never beats {b} on {what} in the measured range ({rng}); closest at batch {best_b}: "
                f"{ratios[best_b]:.2f}x of {b}")
    parts = []
    for c in e["crossings"]:
        verb = "overtakes" if c["direction"] == "becomes_better" else "falls behind"
        parts.append(f"{verb} {b} at batch ~{c['batch_size_est']:g} (between {c['from_batch']} and {c['to_batch']})")
    return f"{p} " + "; then ".join(parts) + f" on {what} ({rng})"


# ---------------------------------------------------------------------------------------
# Outputs


def _fmt(x: Any, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}f}"


def _sci(x: Any) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.2e}"


def to_markdown(df: pd.DataFrame, found: list[dict[str, Any]], settings: dict[str, Any] | None = None) -> str:
    from qtrace.markup import md_escape, md_table, mib

    lines = ["# qtrace sweep", ""]
    if settings:
        keys = ("model", "task", "precisions", "batch_sizes", "seq_lens", "baseline", "device_name", "profiled")
        lines += [f"- {k}: {md_escape(settings.get(k))}" for k in keys if k in settings] + [""]
    lines += ["## Where quantization pays", ""]
    lines += [f"- {md_escape(c['message'])}" for c in found] or ["- (no comparison: one precision only)"]
    head = ["precision", "batch", "seq", "ms/example", "p90", "ms/iter", "examples/s", "peak memory", "J/example",
            "KL (nats)", "top-1", "status"]
    rows = []
    for r in df.sort_values(["seq_len", "batch_size", "precision"], kind="stable").to_dict(orient="records"):
        rows.append([r["precision"], str(r["batch_size"]), str(r["seq_len"]), _fmt(r["latency_ms_per_example"], 3),
                     _fmt(r["latency_ms_per_example_p90"], 3), _fmt(r["latency_ms_per_iter"], 2),
                     _fmt(r["examples_per_s"], 1), mib(r["peak_memory_bytes"]), _fmt(r["joules_per_example"], 4),
                     _sci(r["kl_mean"]), _fmt(r["top1_agreement"], 3),
                     md_escape(r["status"] if r["status"] == "ok" else f"{r['status']}: {r['error']}")])
    mm = df["memory_metric"].dropna().unique()
    lines += ["", "## Table", "", md_table(head, rows, "lrrrrrrrrrrl"), "",
              f"Peak memory is {', '.join(mm) if len(mm) else 'unknown'} of the un-profiled timed pass. KL and top-1: "
              "the outputs against the baseline precision's on the same inputs (random weights: quantization error, "
              "not task accuracy).", ""]
    return "\n".join(lines)


def plot(df: pd.DataFrame, found: list[dict[str, Any]], path: Path, title: str | None = None) -> Path:
    """Latency per example and peak memory per precision against batch size (log2 x), crossovers marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator, ScalarFormatter

    ok = df[df["status"].fillna("ok") == "ok"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    seqs = sorted(df["seq_len"].dropna().unique())
    styles = ["-", "--", ":", "-."]
    colors = {p: f"C{i}" for i, p in enumerate(df["precision"].drop_duplicates())}
    batches = sorted(df["batch_size"].dropna().unique())
    panels = (("latency_ms_per_example", "latency per example (ms)", 1.0),
              ("peak_memory_bytes", "peak memory (MiB)", 2.0**20))
    for ax, (metric, label, scale) in zip(axes, panels, strict=True):
        for p, color in colors.items():
            for i, s in enumerate(seqs):
                d = ok[(ok["precision"] == p) & (ok["seq_len"] == s)].sort_values("batch_size")
                d = d[d[metric].notna()]
                if d.empty:
                    continue
                name = p if len(seqs) == 1 else f"{p} seq {s}"
                ax.plot(d["batch_size"], d[metric] / scale, styles[i % len(styles)], color=color, marker="o",
                        label=name)
        notes = []
        for c in found:
            if c["metric"] != metric:
                continue
            for x in c.get("crossings", []):
                ax.axvline(x["batch_size_est"], color=colors.get(c["precision"], "k"), linestyle=":", alpha=0.7)
                ax.annotate(f"{c['precision']} {'<' if x['direction'] == 'becomes_better' else '>'} "
                            f"{c['baseline']} @~{x['batch_size_est']:g}", (x["batch_size_est"], 1.0),
                            xycoords=("data", "axes fraction"), rotation=90, va="top", ha="right", fontsize=8)
            if c["status"] == "never":
                notes.append(f"{c['precision']} never beats {c['baseline']}")
            elif c["status"] == "always_better":
                notes.append(f"{c['precision']} always beats {c['baseline']}")
        if notes:
            ax.set_title("; ".join(notes), fontsize=9)
        ax.set_xscale("log", base=2)
        if batches:
            ax.xaxis.set_major_locator(FixedLocator(batches))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xticklabels([str(int(b)) for b in batches])
        if metric == "latency_ms_per_example" and len(ok[metric].dropna()) and (ok[metric].dropna() > 0).all():
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(ScalarFormatter())
            ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("batch size")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    from qtrace.fileio import atomic_open

    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=120)
    plt.close(fig)
    return path


def write_outputs(df: pd.DataFrame, found: list[dict[str, Any]], out: Path, settings: dict[str, Any],
                  notes: list[str] | None = None, with_plot: bool = True) -> list[Path]:
    from qtrace.fileio import write_json, write_text

    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "sweep.csv", out / "sweep.json", out / "sweep.md"]
    write_text(paths[0], df.to_csv(index=False))
    records = [{k: (None if isinstance(v, float) and math.isnan(v) else (int(v) if isinstance(v, np.integer) else v))
                for k, v in r.items()} for r in df.to_dict(orient="records")]
    write_json(paths[1], {"settings": settings, "rows": records, "crossovers": found, "notes": notes or []})
    md = to_markdown(df, found, settings)
    if notes:
        md += "\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    if with_plot and len(df):
        md += "\n![sweep](sweep.png)\n"
    write_text(paths[2], md)
    if with_plot and len(df):
        paths.append(plot(df, found, out / "sweep.png", title=_title(settings)))
    return paths


def _title(settings: dict[str, Any]) -> str:
    bits = [settings.get("model"), settings.get("task"), settings.get("device_name")]
    return " · ".join(str(b) for b in bits if b)


# ---------------------------------------------------------------------------------------
# Measuring


@dataclass
class SweepResult:
    out: Path
    frame: pd.DataFrame
    crossovers: list[dict[str, Any]]
    settings: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)


def run_sweep(model: str | None, precisions: str | list[str] | None, batch_sizes: str | list[int],
              seq_lens: str | list[int] = "128", task: str = "forward", out: str | Path | None = None,
              force: bool = False, profile: bool = False, profile_steps: int = 3, baseline: str | None = None,
              runner: Callable[..., Any] | None = None, progress: Callable[[str], None] | None = None,
              quiet: bool = False, decode: str | list[str] = "dynamic", point_budget_s: float | None = None,
              time_budget_s: float | None = None, **profile_kwargs: Any) -> SweepResult:
    """Run `qtrace.profile` at every (batch size, seq len) point; write the table and plot.

    runner: a function with `qtrace.profile`'s signature (default: qtrace.capture.runner.profile), for tests.
    profile_kwargs: passed through (new_tokens, warmup, iters, device, seed, int8_threshold,
    outlier_dims, trust_remote_code).

    Several models (``qwen2.5-0.5b,1.5b,3b``: short names resolve within the first's family), a
    decode regime other than dynamic, or a time budget run the model axis instead
    (qtrace.capture.size_sweep).
    """
    from qtrace import fileio
    from qtrace.capture.models import PRECISIONS, PRESETS, parse_precisions
    from qtrace.capture.size_presets import expand_models

    names = expand_models(model, PRESETS)
    decodes = tuple(d.strip() for d in (decode.split(",") if isinstance(decode, str) else decode) if d.strip())
    if len(names) > 1 or decodes != ("dynamic",) or point_budget_s is not None or time_budget_s is not None:
        from qtrace.capture.size_sweep import run_size_sweep

        chosen_p = parse_precisions(precisions) if precisions is not None else None
        return run_size_sweep(names, chosen_p, batch_sizes, seq_lens, task=task, decodes=decodes or ("dynamic",),
                              out=out, force=force, profile_steps=profile_steps if profile else 0,
                              baseline=baseline, point_budget_s=point_budget_s, time_budget_s=time_budget_s,
                              runner=runner, progress=progress, quiet=quiet, **profile_kwargs)

    bs_list = parse_int_list(batch_sizes, "batch-size")
    seq_list = parse_int_list(seq_lens, "seq-len")
    chosen = parse_precisions(precisions) if precisions is not None else None
    if chosen is not None and baseline is not None and baseline not in chosen:
        raise QtraceError(f"--baseline {baseline}: not among --precision {','.join(chosen)}")
    if baseline is not None and baseline not in PRECISIONS:
        raise QtraceError(f"--baseline {baseline}: choose from {', '.join(PRECISIONS)}")
    if runner is None:
        from qtrace.capture import models
        from qtrace.capture.runner import profile as runner

        models.resolve_model(model)  # a missing model is one error line, before any folder is made
    say = progress if progress is not None else (None if quiet else _stderr)
    out_path = Path(out) if out is not None else Path("qtrace-runs") / (
        f"sweep-{Path(model or 'tiny-llama').name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
    out_path = start_sweep_folder(out_path, force, "qtrace sweep started; if this file remains, the sweep was "
                                                   "interrupted and sweep.csv holds only the finished points")
    rows: list[dict[str, Any]] = []
    settings: dict[str, Any] = {"model": model or "tiny-llama", "task": task, "precisions": chosen,
                                "batch_sizes": bs_list, "seq_lens": seq_list, "baseline": baseline,
                                "profiled": profile, "profile_steps": profile_steps if profile else 0,
                                **{k: v for k, v in profile_kwargs.items()}}
    notes: list[str] = []  # without --profile each point is measured with --profile-steps 0: no trace
    found: list[dict[str, Any]] = []
    total = len(bs_list) * len(seq_list)
    i = 0
    df = frame([])
    for seq in seq_list:
        for bs in bs_list:
            i += 1
            point = f"bs{bs}_seq{seq}"
            if say:
                say(f"[sweep {i}/{total}] batch {bs}, seq {seq}")
            result = runner(model=model, precisions=chosen, task=task, batch_size=bs, seq_len=seq,
                            profile_steps=profile_steps if profile else 0, out=out_path / "points" / point,
                            force=True, progress=say, quiet=quiet, **profile_kwargs)
            run = result.run
            if settings["precisions"] is None:
                settings["precisions"] = list(run.get("precisions") or {})
            env = run.get("environment") or {}
            settings.setdefault("device_name", env.get("device_name"))
            rows += rows_from_run(run, bs, seq, f"points/{point}")
            df = frame(rows)
            base = baseline_of(settings["precisions"], baseline)
            settings["baseline"] = base
            found = crossovers(df, base, "latency_ms_per_example") + crossovers(df, base, "peak_memory_bytes")
            write_outputs(df, found, out_path, settings, notes, with_plot=False)
    files = write_outputs(df, found, out_path, settings, notes, with_plot=True)
    fileio.clear_incomplete(out_path)
    if say:
        for c in found:
            say(c["message"])
        say(f"wrote {', '.join(str(f) for f in files)}")
    return SweepResult(out_path, df, found, settings, notes, files)


def start_sweep_folder(out_path: Path, force: bool, incomplete_note: str) -> Path:
    """Make (or, with force, clear the points of) a sweep's folder and mark it incomplete until it ends."""
    from qtrace import fileio

    out_path = fileio.prepare_out_dir(out_path, force)
    if force:
        shutil.rmtree(out_path / "points", ignore_errors=True)
    fileio.mark_incomplete(out_path, incomplete_note)
    return out_path


def _stderr(msg: str) -> None:
    import sys

    print(msg, file=sys.stderr, flush=True)
