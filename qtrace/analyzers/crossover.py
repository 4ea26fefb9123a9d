"""Where does quantization stop losing? Pure functions over a size-sweep table (no torch).

The table has one row per (model, precision, batch_size, seq_len, decode) point with at least
``params`` (logical parameter count), ``status`` and the lower-is-better metrics
(``decode_ms_per_token``, ``ttft_ms``, ``latency_ms_per_example``, ``peak_memory_bytes``).

- `size_crossovers`: per precision and batch, the ratio to the baseline at each measured size
  and the first size where the precision is not slower (ratio <= 1), or "never in this range";
- `extrapolate`: the assumption ``time = a + b * params`` per precision (at a fixed precision the
  weight bytes are proportional to the parameter count, so this is ``a + b' * weight_bytes``),
  fitted by least squares on the measured sizes; the crossover is where the two lines meet,
  ``N* = (a_q - a_base) / (b_base - b_q)``, when the quantized slope is the smaller one;
- `memory_limits`: peak memory (footprint + activations) fitted as ``a + b * params`` per
  precision and batch, and the largest parameter count that fits each card;
- `explain_steps`: per step kind of a trace (prefill / decode / forward), whether weight bytes,
  host/launch overhead or compute sets its time, against the roofline floors.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

# Cards the memory question is asked for (bytes as sold; usable = capacity - RESERVE_BYTES).
CARDS = {"T4 16 GB": 16e9, "24 GB": 24e9, "A100/H100 80 GB": 80e9, "H200 141 GB": 141e9}
# CUDA context, cuBLAS workspace and allocator slack that max_memory_allocated does not count.
RESERVE_BYTES = 1.0e9
# Named sizes the memory answer is phrased in (published parameter counts).
NAMED_SIZES = {"0.5B": 0.49e9, "1.5B": 1.54e9, "3B": 3.09e9, "7B": 7.62e9, "8B": 8.03e9, "14B": 14.7e9,
               "32B": 32.8e9, "70B": 70.6e9, "72B": 72.7e9}
# A step is host-bound when its GPU is busy less than this share of the step's wall time.
HOST_BOUND_BUSY = 0.5
GROUP = ["precision", "batch_size", "seq_len", "decode"]


def _ok(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    d = df[(df["status"].fillna("ok") == "ok") & df[metric].notna() & df["params"].notna()]
    d = d[d[metric] > 0]
    if "decode" not in d.columns:
        d = d.assign(decode="dynamic")
    return d.assign(decode=d["decode"].fillna("dynamic"))


def _keys(df: pd.DataFrame) -> list[tuple]:
    d = df.assign(decode=df["decode"].fillna("dynamic")) if "decode" in df.columns else df.assign(decode="dynamic")
    return sorted({tuple(r) for r in d[["batch_size", "seq_len", "decode"]].itertuples(index=False)},
                  key=lambda k: (str(k[2]), k[1], k[0]))


def fmt_params(n: float) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def size_crossovers(df: pd.DataFrame, baseline: str, metric: str) -> list[dict[str, Any]]:
    """Per (precision, batch, seq, decode): ratios to `baseline` by size and the first size where
    the precision is not worse; ``status`` crosses / always_better / never / no_data."""
    ok = _ok(df, metric)
    out: list[dict[str, Any]] = []
    precisions = [p for p in df["precision"].drop_duplicates() if p != baseline]
    for bs, seq, decode in _keys(df):
        at = ok[(ok["batch_size"] == bs) & (ok["seq_len"] == seq) & (ok["decode"] == decode)]
        base = at[at["precision"] == baseline].groupby("params")[metric].median()
        for p in precisions:
            mine = at[at["precision"] == p].groupby("params")[metric].median()
            sizes = sorted(set(base.index) & set(mine.index))
            e: dict[str, Any] = {"precision": p, "baseline": baseline, "metric": metric, "batch_size": int(bs),
                                 "seq_len": int(seq), "decode": decode, "sizes": [float(s) for s in sizes]}
            models = at[at["precision"] == p].drop_duplicates("params").set_index("params")
            names = {float(s): str(models.loc[s, "model"]) if "model" in models.columns else fmt_params(s)
                     for s in sizes}
            e["ratios"] = {names[float(s)]: float(mine[s] / base[s]) for s in sizes}
            where = f"{p} vs {baseline}, {metric}, batch {int(bs)}, seq {int(seq)}" + (
                f", decode {decode}" if decode != "dynamic" else "")
            if not sizes:
                e.update(status="no_data", first_better=None, message=f"{where}: no size where both ran")
                out.append(e)
                continue
            better = [float(mine[s] / base[s]) <= 1.0 for s in sizes]
            first = next((s for s, b in zip(sizes, better, strict=True) if b), None)
            e["first_better"] = names[float(first)] if first is not None else None
            e["first_better_params"] = float(first) if first is not None else None
            if all(better):
                e["status"] = "always_better"
                e["message"] = f"{where}: not slower at any measured size (from {names[float(sizes[0])]})"
            elif first is None:
                best = min(sizes, key=lambda s: mine[s] / base[s])
                e["status"] = "never"
                e["message"] = (f"{where}: never in this range ({names[float(sizes[0])]}..{names[float(sizes[-1])]}); "
                                f"closest {mine[best] / base[best]:.2f}x at {names[float(best)]}")
            else:
                e["status"] = "crosses"
                e["message"] = (f"{where}: first beats {baseline} at {e['first_better']} "
                                f"({mine[first] / base[first]:.2f}x)")
            out.append(e)
    return out


def fit_line(x: list[float] | np.ndarray, y: list[float] | np.ndarray) -> tuple[float, float] | None:
    """Least-squares (a, b) of y = a + b*x; None with fewer than two distinct x."""
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(xs) < 2 or len(set(xs.tolist())) < 2:
        return None
    b, a = np.polyfit(xs, ys, 1)
    return float(a), float(b)


def extrapolate(df: pd.DataFrame, baseline: str, metric: str,
                at: tuple[float, ...] = (32.8e9, 70.6e9)) -> list[dict[str, Any]]:
    """The linear model per precision and where it puts the crossover (see the module docstring)."""
    ok = _ok(df, metric)
    out: list[dict[str, Any]] = []
    for bs, seq, decode in _keys(df):
        here = ok[(ok["batch_size"] == bs) & (ok["seq_len"] == seq) & (ok["decode"] == decode)]
        b_rows = here[here["precision"] == baseline]
        base_fit = fit_line(b_rows["params"], b_rows[metric])
        for p in [q for q in df["precision"].drop_duplicates() if q != baseline]:
            q_rows = here[here["precision"] == p]
            fit = fit_line(q_rows["params"], q_rows[metric])
            e: dict[str, Any] = {"precision": p, "baseline": baseline, "metric": metric, "batch_size": int(bs),
                                 "seq_len": int(seq), "decode": decode,
                                 "assumption": f"{metric} = a + b * params per precision (weight bytes are "
                                               f"proportional to params at a fixed precision), least squares "
                                               f"over the measured sizes",
                                 "fit": None, "baseline_fit": None, "crossover_params": None}
            if fit is None or base_fit is None:
                e.update(status="no_fit", message=f"{p} vs {baseline} ({metric}, batch {int(bs)}): fewer than two "
                                                  f"sizes measured for both, no extrapolation")
                out.append(e)
                continue
            (aq, bq), (ab, bb) = fit, base_fit
            e["fit"] = {"a": aq, "b_per_billion": bq * 1e9, "sizes": len(q_rows)}
            e["baseline_fit"] = {"a": ab, "b_per_billion": bb * 1e9, "sizes": len(b_rows)}
            e["ratio_at"] = {fmt_params(n): _ratio(aq + bq * n, ab + bb * n) for n in at}
            largest = float(max(q_rows["params"].max(), b_rows["params"].max()))
            where = f"{p} vs {baseline} ({metric}, batch {int(bs)}, seq {int(seq)}" + (
                f", decode {decode})" if decode != "dynamic" else ")")
            if bq >= bb:
                e["status"] = "never"
                e["message"] = (f"{where}: per-billion slope {bq * 1e9:.3g} >= {baseline}'s {bb * 1e9:.3g}, so the "
                                f"lines never meet above {fmt_params(largest)}: never, under this model")
                if aq + bq * largest <= ab + bb * largest:
                    e["status"] = "already_better"
                    e["message"] = f"{where}: already better at {fmt_params(largest)} (slope would close the gap later)"
            else:
                n_star = (aq - ab) / (bb - bq)
                e["crossover_params"] = float(n_star)
                e["status"] = "extrapolated" if n_star > largest else "within_range"
                e["message"] = (f"{where}: lines meet at ~{fmt_params(max(n_star, 0.0))} parameters "
                                f"({'beyond' if n_star > largest else 'within'} the measured {fmt_params(largest)})")
            out.append(e)
    return out


def _ratio(a: float, b: float) -> float | None:
    return float(a / b) if b and b > 0 and not math.isnan(a) else None


def memory_limits(df: pd.DataFrame, cards: dict[str, float] | None = None,
                  reserve: float = RESERVE_BYTES) -> list[dict[str, Any]]:
    """Per precision and batch: peak = a + b*params fitted on measured points; per card the
    largest parameter count that fits and the largest named size below it."""
    cards = cards or CARDS
    ok = _ok(df, "peak_memory_bytes")
    out: list[dict[str, Any]] = []
    for (p, bs, seq, decode), g in ok.groupby(["precision", "batch_size", "seq_len", "decode"], sort=True):
        g = g.sort_values("params")
        fit = fit_line(g["params"], g["peak_memory_bytes"])
        e: dict[str, Any] = {"precision": p, "batch_size": int(bs), "seq_len": int(seq), "decode": decode,
                             "measured": {str(r["model"]) if "model" in g.columns else fmt_params(r["params"]):
                                          {"peak_bytes": float(r["peak_memory_bytes"]),
                                           "footprint_bytes": _num(r.get("footprint_bytes")),
                                           "activation_bytes": _num(r["peak_memory_bytes"] - r["footprint_bytes"])
                                           if _num(r.get("footprint_bytes")) is not None else None}
                                          for r in g.to_dict(orient="records")},
                             "assumption": f"peak = a + b * params, least squares over {len(g)} measured sizes; "
                                           f"usable = card - {reserve / 1e9:.1f} GB (context, workspace)",
                             "cards": {}}
        if fit is None:
            e["fit"] = None
            out.append(e)
            continue
        a, b = fit
        e["fit"] = {"a_bytes": a, "bytes_per_param": b}
        for card, cap in cards.items():
            n_max = (cap - reserve - a) / b if b > 0 else math.inf
            fits = [name for name, n in NAMED_SIZES.items() if n <= n_max]
            e["cards"][card] = {"max_params": float(n_max), "largest_named": fits[-1] if fits else None,
                                "first_not_fitting": next((name for name, n in NAMED_SIZES.items() if n > n_max),
                                                          None)}
        out.append(e)
    return out


def _num(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def floor_ms(stream_bytes: float | None, hbm_gbps: float | None) -> float | None:
    """The roofline floor of one pass that streams `stream_bytes` from HBM once (ms)."""
    if not stream_bytes or not hbm_gbps:
        return None
    return float(stream_bytes) / (hbm_gbps * 1e9) * 1e3


def classify_step(wall_us: float, gpu_us: float, t_bytes_us: float | None, t_compute_us: float | None) -> str:
    """Which of the three sets a step's time: host/launch overhead when the GPU is busy for less
    than half the step, else weight bytes or compute, whichever ideal time is larger."""
    if wall_us <= 0:
        return "unknown"
    if gpu_us < HOST_BOUND_BUSY * wall_us:
        return "host/launch overhead"
    if t_bytes_us is None and t_compute_us is None:
        return "unknown"
    return "compute" if (t_compute_us or 0.0) > (t_bytes_us or 0.0) else "weight bytes"


def explain_steps(trace: Any, stream_bytes: float | None, params: float | None, batch_size: int, seq_len: int,
                  peaks: Any = None) -> dict[str, Any]:
    """Per step kind of a qtrace trace (prefill, decode, forward): mean wall and GPU time per call,
    the ideal times at the roofs (weights streamed once: bytes / HBM bandwidth; 2*params*tokens
    flops / fp16 peak), and which dominates; plus the trace's host verdict and per-phase bounds."""
    from qtrace.analyzers.attribution import gpu_phases
    from qtrace.analyzers.host import host_summary
    from qtrace.analyzers.roofline import phase_roofline
    from qtrace.gpu_peaks import peaks_for

    peaks = peaks or peaks_for(trace.device_name)
    bw = peaks.values.get("hbm_gbps")
    fp16 = peaks.ops_per_s("fp16")
    ops = trace.ops
    gpu = gpu_phases(trace)
    steps: dict[str, Any] = {}
    for kind in ("prefill", "decode", "forward"):
        ann = ops[(ops["cat"] == "user_annotation") & (ops["name"] == f"qtrace.step:{kind}")]
        if ann.empty:
            continue
        calls = len(ann)
        wall = float(ann["dur"].sum()) / calls
        g = float(gpu.loc[gpu["step_name"] == kind, "dur"].sum()) / calls
        tokens = batch_size * (1 if kind == "decode" else seq_len)
        t_bytes = stream_bytes / (bw * 1e9) * 1e6 if stream_bytes and bw else None
        t_comp = 2.0 * params * tokens / fp16 * 1e6 if params and fp16 else None
        # A CPU trace has no GPU timeline: its steps are all host time, nothing to split.
        dominant = classify_step(wall, g, t_bytes, t_comp) if len(gpu) else "cpu (no GPU in trace)"
        steps[kind] = {"calls": calls, "wall_us": wall, "gpu_us": g, "gpu_busy_share": g / wall if wall else None,
                       "ideal_bytes_us": t_bytes, "ideal_compute_us": t_comp, "dominant": dominant,
                       "floor_share": (max(t_bytes or 0, t_comp or 0) / wall) if wall else None}
    host = host_summary(trace)
    phases = phase_roofline(trace, peaks)
    top = phases.sort_values("gpu_time_us", ascending=False).head(4) if len(phases) else phases
    return {"steps": steps, "host_verdict": host["verdict"], "syncs": host["syncs"], "launches": host["launches"],
            "phase_bounds": {str(r["phase"]): r["bound"] for r in top.to_dict(orient="records")},
            "hbm_gbps": bw}
