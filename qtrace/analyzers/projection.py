"""Project each kernel of a trace onto another GPU: how long would the same work take there?

The question: "if this trace's kernels ran on GPU X, how long would each one take?". The
timeline (what that does to GPU idle time and latency) is `qtrace.analyzers.projection_timeline`.

Per roofline unit (`qtrace.analyzers.roofline.units`: one launching op, its bytes and ops, its GPU
time) with measured time ``t``, ideal times at the measured GPU's roofs ``m = bytes / BW``,
``c = ops / peak[dtype]`` and at the target's ``m'``, ``c'`` (datasheet peaks on both sides), the
model depends on the unit's roofline label on the measured GPU (docs/projection.md):

- ``memory`` / ``compute``: the kernel keeps its efficiency against the roof that binds it,
  ``t' = t * max(m', c') / max(m, c)``. A memory-bound kernel scales with the bandwidth ratio, a
  compute-bound one with the ratio of its dtype's math peaks; if the ridge point moves, the other
  roof takes over;
- ``latency`` (too small to reach a roof: launch and ramp-up set its time): ``t' = max(t,
  max(m', c') / LATENCY_EFFICIENCY)``: the measured time, unless on the target the work alone
  would need longer than that at half the roof;
- ``transfer`` (host<->device copies): measured time (no PCIe figure in the table);
- unknown work (no shapes, ``aten::index``, ...): units shorter than ``LATENCY_US`` per event keep
  their time (``unknown_kept``); longer ones scale with the bandwidth ratio (``unknown_scaled``);
- every projected unit is floored at ``min(t, KERNEL_FLOOR_US * events)``: no kernel gets faster
  than about the fixed cost of a launch unless it was measured faster;
- ``refused``: the kernel needs a hardware feature the target lacks (bf16 or fp8 tensor cores,
  int8 tensor cores): not projected; its measured time stands in, and the projection is partial;
- ``substituted`` flag: flash-attention kernels on a GPU without them (PyTorch falls back to the
  memory-efficient kernel): projected by the same model, flagged.

On the measured GPU itself every ratio is exactly 1.0, so each kernel's projected time equals its
measured time bit for bit (the identity check). Pure pandas, no torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from qtrace.analyzers.attribution import gpu_phases
from qtrace.analyzers.phase_rules import PHASE_ORDER
from qtrace.analyzers.roofline import LATENCY_SMALL_UTIL, LATENCY_US, unit_bounds, unit_of_event, units
from qtrace.errors import QtraceError
from qtrace.gpu_peaks import FEATURES, DeviceSpec, Peaks, datasheet_peaks, features_of, match_device
from qtrace.tracefile.kineto import Trace

LATENCY_EFFICIENCY = LATENCY_SMALL_UTIL  # a latency-bound kernel is assumed to reach at most this share of a roof
KERNEL_FLOOR_US = 2.0  # about the fixed cost of a kernel (roofline.LATENCY_IDEAL_US): the fastest a projection goes

CLASSES = ("memory", "compute", "latency", "transfer", "unknown_kept", "unknown_scaled", "refused")
CLASS_MODEL = {
    "memory": "keeps its share of the binding roof: t x max(m', c') / max(m, c) (bandwidth ratio while memory-bound)",
    "compute": "keeps its share of the binding roof: t x max(m', c') / max(m, c) (math-peak ratio of its dtype)",
    "latency": f"keeps its measured time, unless its work needs longer at {LATENCY_EFFICIENCY:.0%} of the "
               "target's roof",
    "transfer": "host<->device copy: measured time kept (no PCIe figure in the peak table)",
    "unknown_kept": f"unknown work, under {LATENCY_US:g} µs per event: measured time kept",
    "unknown_scaled": f"unknown work, {LATENCY_US:g} µs per event or more: scaled by the bandwidth ratio",
    "refused": "needs a hardware feature the target lacks: not projected (measured time stands in)",
}

_BF16_MATH = re.compile(r"bf16|bfloat16", re.I)
_FP8 = re.compile(r"e4m3|e5m2|fp8|float8", re.I)
_INT8_MMA = re.compile(r"imma|igemm|i\d+gemm_s8|_s8_|gemm_s8|int8_gemm", re.I)
_TENSOR_MATH = re.compile(r"gemm|xmma|cutlass|wgmma|mma|flash|fmha|attention|attn", re.I)
_FLASH = re.compile(r"flash", re.I)


@dataclass
class KernelProjection:
    """Per-unit and per-event projected times of one trace onto one target."""

    measured_device: str | None
    measured_peaks: Peaks
    target: DeviceSpec
    target_peaks: Peaks
    units: pd.DataFrame  # units(trace) + t_mem_us, t_comp_us, bound, cls, needs, refused, substituted, projected_us
    event_us: np.ndarray  # projected duration of each row of gpu_phases(trace)

    @property
    def partial(self) -> bool:
        return bool(self.units["refused"].any()) if len(self.units) else False


def measured_spec(trace: Trace) -> DeviceSpec | None:
    return match_device(trace.device_name)


def measured_cc(trace: Trace) -> str | None:
    """Compute capability of the traced GPU: the trace's deviceProperties, else the peak table's entry."""
    props = trace.metadata.get("deviceProperties")
    if isinstance(props, list) and props and isinstance(props[0], dict):
        major, minor = props[0].get("computeMajor"), props[0].get("computeMinor")
        if isinstance(major, int) and isinstance(minor, int):
            return f"{major}.{minor}"
    spec = measured_spec(trace)
    return spec.compute_capability if spec and spec.compute_capability else None


def kernel_needs(kernel: str, dtype: Any, has_flops: bool, has_int_ops: bool) -> list[str]:
    """The FEATURES a unit's kernel needs, from its math dtype and its kernel name."""
    name = str(kernel or "")
    needs: list[str] = []
    if has_int_ops or (_INT8_MMA.search(name) and _TENSOR_MATH.search(name)):
        needs.append("int8_tensor_cores")
    if (dtype == "bf16" and has_flops) or (_BF16_MATH.search(name) and _TENSOR_MATH.search(name)):
        needs.append("bf16_tensor_cores")
    if dtype == "fp8" or _FP8.search(name):
        needs.append("fp8_tensor_cores")
    if _FLASH.search(name):
        needs.append("flash_attention")
    return needs


SUBSTITUTABLE = {"flash_attention"}  # a different kernel does the same work on GPUs without it


def project_kernels(trace: Trace, target: DeviceSpec) -> KernelProjection:
    """Projected time of every unit and GPU event of `trace` on `target` (datasheet peaks on both sides)."""
    spec = measured_spec(trace)
    if spec is None:
        raise QtraceError(f"{trace.source}: no peak table entry for the traced GPU "
                          f"({trace.device_name or 'unknown device'}), so its kernels' efficiency is unknown")
    mp, tp = datasheet_peaks(spec), datasheet_peaks(target)
    u = unit_bounds(units(trace), mp).reset_index(drop=True)
    n = len(u)
    gpu_us = u["gpu_us"].to_numpy(dtype=float)
    events = u["events"].to_numpy(dtype=float)
    nbytes = u["bytes"].to_numpy(dtype=float)
    hbm = (u["link"] == "hbm").to_numpy() & ~np.isnan(nbytes)
    ops = u["flops"].fillna(0).to_numpy(dtype=float) + u["int_ops"].fillna(0).to_numpy(dtype=float)
    has_flops = u["flops"].notna().to_numpy()
    has_int = u["int_ops"].notna().to_numpy()
    has_math = has_flops | has_int
    dtypes = u["dtype"].to_numpy(dtype=object)
    bound = u["bound"].to_numpy(dtype=object)

    def ideal(peaks: Peaks) -> np.ndarray:
        bw = peaks.bandwidth_bps()
        t_mem = np.where(hbm, nbytes / bw * 1e6, np.nan) if bw else np.full(n, np.nan)
        peak = np.array([peaks.ops_per_s(d) or np.nan for d in dtypes], dtype=float) if n else np.zeros(0)
        with np.errstate(divide="ignore", invalid="ignore"):
            t_comp = np.where(has_math & hbm, ops / peak * 1e6, np.nan)
        return np.where(has_math, np.fmax(t_mem, t_comp), t_mem), np.where(has_math, np.isnan(peak), False)

    ideal_m, _ = ideal(mp)
    ideal_t, no_peak_t = ideal(tp)
    bw_ratio = mp.values["hbm_gbps"] / tp.values["hbm_gbps"]

    cls = np.full(n, "unknown_scaled", dtype=object)
    roof = np.isin(bound, ["memory", "compute"])
    cls[roof] = bound[roof]
    cls[bound == "latency"] = "latency"
    cls[bound == "transfer"] = "transfer"
    unknown = ~roof & ~np.isin(bound, ["latency", "transfer"])
    per_event = np.divide(gpu_us, np.maximum(events, 1.0))
    cls[unknown & (per_event < LATENCY_US)] = "unknown_kept"

    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = ideal_t / ideal_m
    proj = gpu_us.copy()
    sel = roof & np.isfinite(ratio)
    proj[sel] = gpu_us[sel] * ratio[sel]
    lat = cls == "latency"
    lat_floor = np.where(np.isfinite(ideal_t), ideal_t / LATENCY_EFFICIENCY, 0.0)
    proj[lat] = np.maximum(gpu_us[lat], lat_floor[lat])
    scaled = cls == "unknown_scaled"
    proj[scaled] = gpu_us[scaled] * bw_ratio
    # A roof unit whose dtype has no peak on the target (and is not refused below) falls back to bandwidth.
    fallback = roof & ~np.isfinite(ratio)
    proj[fallback] = gpu_us[fallback] * bw_ratio
    cls[fallback] = "unknown_scaled"
    proj = np.maximum(proj, np.minimum(gpu_us, KERNEL_FLOOR_US * events))

    have = target.features()
    needs = [kernel_needs(k, d, f, i) for k, d, f, i in
             zip(u["kernel"].to_numpy(dtype=object), dtypes, has_flops, has_int, strict=True)]
    lacking = [[f for f in nd if have.get(f) is False] for nd in needs]
    refused = np.array([any(f not in SUBSTITUTABLE for f in lk) for lk in lacking], dtype=bool)
    refused |= no_peak_t & roof & np.isin(dtypes, ["bf16", "int8", "fp8"])  # tensor math with no peak on the target
    substituted = np.array([any(f in SUBSTITUTABLE for f in lk) for lk in lacking], dtype=bool) & ~refused
    proj[refused] = gpu_us[refused]
    cls[refused] = "refused"

    u["ideal_measured_us"] = ideal_m
    u["ideal_target_us"] = ideal_t
    u["cls"] = cls
    u["needs"] = [",".join(nd) or None for nd in needs]
    u["lacking"] = [",".join(lk) or None for lk in lacking]
    u["refused"] = refused
    u["substituted"] = substituted
    u["projected_us"] = proj
    scale = np.divide(proj, gpu_us, out=np.ones(n), where=gpu_us > 0)
    ev_unit = unit_of_event(trace)
    dur = gpu_phases(trace)["dur"].to_numpy(dtype=float)
    event_us = dur * scale[ev_unit] if len(dur) else dur
    return KernelProjection(trace.device_name, mp, target, tp, u, event_us)


def class_table(kp: KernelProjection) -> pd.DataFrame:
    """Per model class: units, measured and projected GPU time, and the model's one-line statement."""
    u = kp.units
    rows = []
    for c in CLASSES:
        sel = u[u["cls"] == c]
        if not len(sel):
            continue
        rows.append({"class": c, "units": int(len(sel)), "measured_us": float(sel["gpu_us"].sum()),
                     "projected_us": float(sel["projected_us"].sum()), "model": CLASS_MODEL[c]})
    return pd.DataFrame(rows, columns=["class", "units", "measured_us", "projected_us", "model"])


def phase_projection(trace: Trace, kp: KernelProjection) -> pd.DataFrame:
    """Per phase: measured and projected GPU time, refused time, and each class's share of the measured time."""
    g = gpu_phases(trace)
    cols = ["phase", "measured_us", "projected_us", "ratio", "refused_us", "class_shares"]
    if not len(g):
        return pd.DataFrame(columns=cols)
    df = pd.DataFrame({"phase": g["phase"].to_numpy(dtype=object), "m": g["dur"].to_numpy(dtype=float),
                       "p": kp.event_us})
    ev_unit = unit_of_event(trace)
    df["cls"] = kp.units["cls"].to_numpy(dtype=object)[ev_unit]
    rows = []
    for phase in [p for p in PHASE_ORDER if p in set(df["phase"])]:
        sel = df[df["phase"] == phase]
        m, p = float(sel["m"].sum()), float(sel["p"].sum())
        shares = sel.groupby("cls")["m"].sum()
        shares = (shares / m).sort_values(ascending=False) if m > 0 else shares * 0
        rows.append({"phase": phase, "measured_us": m, "projected_us": p, "ratio": p / m if m > 0 else None,
                     "refused_us": float(sel.loc[sel["cls"] == "refused", "m"].sum()),
                     "class_shares": {str(k): float(v) for k, v in shares.items()}})
    return pd.DataFrame(rows, columns=cols)


def refused_kernels(kp: KernelProjection, top: int = 10) -> list[dict[str, Any]]:
    """The kernels not projected, by measured time: name, phase, units, GPU µs, the features the target lacks."""
    u = kp.units[kp.units["refused"]]
    if not len(u):
        return []
    agg = u.groupby(["kernel", "phase", "lacking"], sort=False).agg(units=("gpu_us", "size"), gpu_us=("gpu_us", "sum"))
    agg = agg.sort_values("gpu_us", ascending=False).head(top).reset_index()
    return [{"kernel": str(r["kernel"]), "phase": str(r["phase"]), "lacking": str(r["lacking"]),
             "units": int(r["units"]), "gpu_us": float(r["gpu_us"])} for r in agg.to_dict(orient="records")]


def feature_lines(target: DeviceSpec, measured: str | None) -> list[str]:
    """What the target can and cannot run, next to the measured GPU, one line per feature."""
    have_t = target.features()
    have_m = features_of(measured)
    lines = []
    for key, (need, label) in FEATURES.items():
        t = have_t.get(key)
        m = have_m.get(key)
        lines.append(f"{label} (sm_{need[0]}{need[1]}+): target {_yes(t)}, measured GPU {_yes(m)}")
    return lines


def _yes(v: bool | None) -> str:
    return "unknown" if v is None else ("yes" if v else "no")
