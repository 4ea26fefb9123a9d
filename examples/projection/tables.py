"""Projected vs measured latencies and ratios, from committed H100 run folders (and H200 ones when given).

Every figure comes from traces/seed/*/ (run.json + traces measured on an H100 by `qtrace profile`)
and `qtrace.analyzers.projection_run`; the seed's T4 ratios are the seed post's table. Run from
the repository root:

    python examples/projection/tables.py > examples/projection/tables.md
    python examples/projection/tables.py --h200 DIR     # DIR holds H200 run folders (any depth)

Sections: (1) identity, H100 -> H100 (the model on its own measurements); (2) H100 -> T4 for the
seed workload beside the seed's T4 table, with the host speed varied; (3) H100 -> H200 against H200
measurements of the same protocol (model, task, batch, sequence), when DIR is given.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from qtrace.analyzers.projection_run import project_target
from qtrace.analyzers.trace_analysis import load_target
from qtrace.gpu_peaks import spec_by_key_or_name

SEED = Path("traces/seed")
PRECISIONS = ("fp16", "int8", "nf4")
# The seed post's T4 table (latency ratio to fp16), encoder = ModernBERT-base, decoder = Qwen2.5-0.5B.
SEED_T4 = {"ModernBERT-base": {"int8": 2.51, "nf4": 1.38}, "Qwen2.5-0.5B": {"int8": 2.50, "nf4": 1.57}}
MODEL_NAMES = {"modernbert-base": "ModernBERT-base", "qwen2.5-0.5b": "Qwen2.5-0.5B"}
HOST_SPEEDS = (0.5, 1.0, 2.0)


def _settings(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "run.json").read_text())["settings"]


def traced_runs(root: Path) -> list[Path]:
    """Run folders under `root` whose run.json names traces that are there (some seed folders hold only run.json)."""
    out = []
    for rj in sorted(root.rglob("run.json")):
        run = json.loads(rj.read_text())
        traces = [e.get("trace") for e in (run.get("precisions") or {}).values() if isinstance(e, dict)]
        if any(t and (rj.parent / t).is_file() for t in traces):
            out.append(rj.parent)
    return out


def _key(run_dir: Path) -> tuple:
    s = _settings(run_dir)
    return (s.get("preset") or s.get("model"), s.get("task"), s.get("batch_size"), s.get("seq_len"),
            s.get("outlier_dims"), s.get("int8_threshold"))


def _by_precision(proj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["precision"]: p for p in proj["precisions"]}


def _ms(us: float | None) -> str:
    return "-" if us is None else f"{us / 1000:.2f}"


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _err(proj: float | None, meas: float | None) -> str:
    return "-" if proj is None or not meas else f"{(proj / meas - 1) * 100:+.1f}%"


def identity_table(runs: list[Path]) -> str:
    rows = ["| run | precision | un-profiled ms | rebuilt ms | error | x fp16 measured | x fp16 rebuilt | "
            "profiled trace span ms | rebuilt span ms | host factor F0 (profiler) |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    h100 = spec_by_key_or_name("h100-sxm")
    for run_dir in runs:
        if _settings(run_dir).get("task") != "classify":
            continue
        proj = project_target(load_target(run_dir), h100)
        for prec, p in _by_precision(proj).items():
            lat, r = p["latency"], p.get("ratio") or {}
            tl = p["timeline"]
            rows.append(f"| {run_dir.name} | {prec} | {_ms(lat['measured_us'])} | {_ms(lat['projected_us'])} | "
                        f"{_err(lat['projected_us'], lat['measured_us'])} | {_x(r.get('measured'))} | "
                        f"{_x(r.get('projected'))} | {tl['measured']['span_us'] / 1000:.3f} | "
                        f"{tl['rebuilt_measured']['span_us'] / 1000:.3f} | "
                        f"{lat['host_speed_profiler']:.3f} ({lat['calibration']}) |")
    return "\n".join(rows)


def t4_table(runs: list[Path]) -> str:
    t4 = spec_by_key_or_name("t4")
    rows = ["| run (H100) | model | batch | host speed | precision | H100 ms | T4 projected ms | T4 GPU busy ms/pass | "
            "x fp16 on H100 | x fp16 projected on T4 | x fp16 seed T4 (measured) | projected - seed |",
            "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for run_dir in runs:
        s = _settings(run_dir)
        model = MODEL_NAMES.get(s.get("preset") or "")
        if model is None or s.get("task") != "classify" or s.get("outlier_dims"):
            continue
        for hs in HOST_SPEEDS:
            proj = project_target(load_target(run_dir), t4, hs)
            for prec, p in _by_precision(proj).items():
                r = p.get("ratio") or {}
                seed = SEED_T4[model].get(prec)
                tl = p["timeline"].get("projected_unprofiled") or p["timeline"]["projected_profiled"]
                busy = sum(x["gpu_busy_us"] for x in tl["steps"]) / max(len(tl["steps"]), 1)
                diff = "-" if seed is None or r.get("projected") is None else f"{r['projected'] - seed:+.2f}"
                part = " (partial)" if p["partial"] else ""
                rows.append(f"| {run_dir.name} | {model} | {s['batch_size']} | {hs:g} | {prec} | "
                            f"{_ms(p['latency']['measured_us'])} | {_ms(p['latency']['projected_us'])}{part} | "
                            f"{_ms(busy)} | {_x(r.get('measured'))} | {_x(r.get('projected'))} | "
                            f"{_x(seed)} | {diff} |")
    return "\n".join(rows)


def t4_breakdown(run_dir: Path) -> str:
    """Per phase on the T4 projection (host speed 1): where the kernel time goes, per pass."""
    proj = project_target(load_target(run_dir), spec_by_key_or_name("t4"))
    rows = ["| precision | phase | H100 GPU ms/pass | T4 projected GPU ms/pass | x | main model (share of H100 time) |",
            "|---|---|---:|---:|---:|---|"]
    for prec, p in _by_precision(proj).items():
        n = max(len(p["timeline"]["projected_profiled"]["steps"]), 1)
        for r in p["phases"]:
            if r["measured_us"] < 50:
                continue
            main = max(r["class_shares"], key=r["class_shares"].get)
            rows.append(f"| {prec} | {r['phase']} | {r['measured_us'] / n / 1000:.2f} | "
                        f"{r['projected_us'] / n / 1000:.2f} | {_x(r['ratio'])} | {main} "
                        f"{r['class_shares'][main] * 100:.0f}% |")
    return "\n".join(rows)


def h200_table(h100_runs: list[Path], h200_root: Path) -> str:
    h200_runs = traced_runs(h200_root) if h200_root.is_dir() else []
    if not h200_runs:
        return f"No H200 run folders with traces under {h200_root}: nothing to compare yet."
    by_key = {_key(r): r for r in h100_runs}
    spec = spec_by_key_or_name("h200")
    rows = ["| H200 run | H100 run | precision | H200 measured ms | projected ms | error | x fp16 H200 measured | "
            "x fp16 projected | x fp16 H100 |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    notes = []
    for run_dir in h200_runs:
        src = by_key.get(_key(run_dir))
        if src is None:
            notes.append(f"- {run_dir}: no H100 trace of the same protocol {_key(run_dir)}")
            continue
        proj = _by_precision(project_target(load_target(src), spec))
        meas = json.loads((run_dir / "run.json").read_text())["precisions"]
        base = (meas.get("fp16") or {}).get("latency_ms", {}).get("per_iter", {}).get("median")
        for prec in PRECISIONS:
            if prec not in proj or prec not in meas:
                continue
            m = meas[prec]["latency_ms"]["per_iter"]["median"] * 1000
            p = proj[prec]
            r = p.get("ratio") or {}
            mx = m / (base * 1000) if base and prec != "fp16" else None
            rows.append(f"| {run_dir.name} | {src.name} | {prec} | {_ms(m)} | {_ms(p['latency']['projected_us'])} | "
                        f"{_err(p['latency']['projected_us'], m)} | {_x(mx)} | {_x(r.get('projected'))} | "
                        f"{_x(r.get('measured'))} |")
    return "\n".join(rows + ([""] + notes if notes else []))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=Path, default=SEED, help="H100 run folders (default traces/seed)")
    ap.add_argument("--h200", type=Path, default=None, help="folder holding H200 run folders of the same protocol")
    args = ap.parse_args()
    runs = traced_runs(args.seed)
    print("<!-- generated by examples/projection/tables.py; do not edit -->")
    print(f"H100 run folders with traces: {', '.join(r.name for r in runs)} (the others hold only run.json).\n")
    print("## 1. Identity: H100 traces projected onto the H100\n")
    print(identity_table(runs))
    print("\n## 2. H100 -> T4, beside the seed's T4 table\n")
    print(t4_table(runs))
    for name in ("qwen_bs16", "mb_bs1"):
        if (args.seed / name) in runs:
            print(f"\n### {name} on a T4 (projected, host speed 1), per phase\n")
            print(t4_breakdown(args.seed / name))
    print("\n## 3. H100 -> H200 against H200 measurements\n")
    print(h200_table(runs, args.h200) if args.h200 else "No --h200 folder given: the H200 visit has not run yet.")


if __name__ == "__main__":
    main()
