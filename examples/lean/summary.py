"""Summary of a lean-trace GPU session: explained share and lean inflation per case.

    python3 examples/lean/summary.py RUNS_DIR [--json summary.json]

For every run folder under RUNS_DIR, `python3 -m qtrace compare DIR --format json` (the same
command a user runs), then one row per run compared with the baseline: measured ms, how the
measured delta is explained (lean trace or the fallback), explained_share, lean_inflation of
both runs, the alignment coverage, and the residual.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any


def compare(run_dir: Path) -> dict[str, Any] | None:
    res = subprocess.run([sys.executable, "-m", "qtrace", "compare", str(run_dir), "--format", "json"],
                         capture_output=True, text=True, timeout=300)
    if res.returncode != 0:
        print(f"{run_dir.name}: compare failed: {res.stderr.strip()[-300:]}", file=sys.stderr)
        return None
    return json.loads(res.stdout)


def rows(case: str, out: dict[str, Any]) -> list[dict[str, Any]]:
    runs = {r["run"]: r for r in out["runs"]}
    base = runs[out["baseline_run"]]
    found = []
    for r in out["runs"]:
        if r["is_baseline"]:
            continue
        steps = (r.get("waterfall") or {}).get("measured") or []
        residual = next((s["value_us"] for s in steps if s["kind"] == "residual"), None)
        found.append({
            "case": case, "run": r["run"], "baseline": base["run"],
            "base_ms": base["latency"]["measured_ms"], "run_ms": r["latency"]["measured_ms"],
            "explanation": r.get("explanation"), "explained_share": r.get("explained_share"),
            "lean_inflation_base": base.get("lean_inflation"), "lean_inflation_run": r.get("lean_inflation"),
            "full_inflation_run": r["latency"].get("profiler_inflation"),
            "drift_base": base["latency"].get("timing_drift"), "drift_run": r["latency"].get("timing_drift"),
            "coverage_base": ((base.get("lean") or {}).get("alignment") or {}).get("coverage"),
            "coverage_run": ((r.get("lean") or {}).get("alignment") or {}).get("coverage"),
            "residual_ms": residual / 1000.0 if residual is not None else None,
            "lean_trace": r.get("lean_trace"),
        })
    return found


def fmt(x: Any, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    table: list[dict[str, Any]] = []
    dirs = sorted(p.parent for p in Path(args.runs).glob("*/run.json"))
    # One process per run folder, in parallel: the GPU host has 16 cores and the visit little time left.
    with ThreadPoolExecutor(max_workers=8) as pool:
        for d, out in zip(dirs, pool.map(compare, dirs), strict=True):
            if out is not None:
                table += rows(d.name, out)
    head = ("case", "run", "base ms", "run ms", "explained", "lean infl base", "lean infl run", "full infl run",
            "drift base", "drift run", "coverage", "residual ms", "explanation")
    lines = [head]
    for r in table:
        cov = min((c for c in (r["coverage_base"], r["coverage_run"]) if c is not None), default=None)
        lines.append((r["case"], f"{r['run']}/{r['baseline']}", fmt(r["base_ms"], ".2f"), fmt(r["run_ms"], ".2f"),
                      fmt(r["explained_share"], ".0%"), fmt(r["lean_inflation_base"], ".2f"),
                      fmt(r["lean_inflation_run"], ".2f"), fmt(r["full_inflation_run"], ".2f"),
                      fmt(r["drift_base"], ".2f"), fmt(r["drift_run"], ".2f"), fmt(cov, ".1%"),
                      fmt(r["residual_ms"], "+.2f"), r["explanation"] or "-"))
    widths = [max(len(str(x[i])) for x in lines) for i in range(len(head))]
    for x in lines:
        print("  ".join(str(c).ljust(w) for c, w in zip(x, widths, strict=True)))
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
