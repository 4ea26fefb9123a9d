"""How `qtrace compare` scales with the events per step: a committed run folder, repeated k times.

A generation run folder (`qtrace profile --task generate`) holds one ProfilerStep per generate
call with tens of thousands of launches in it; the committed run folders hold forward passes of
a few thousand. This script makes a generation-shaped copy of a committed run folder: every
trace (full and lean) repeats the events of its recorded window k times back to back (each copy
shifted by the window's length; correlation ids, the ac2g flow ids, which equal them, and External
ids offset per copy so launches still pair with their kernels), and the full trace's ProfilerStep
markers are replaced by one step that holds every copy. run.json is copied unchanged, so the
measured latencies, and so the lean waterfall, stay in place.

Then it times `qtrace compare --format json` of each copy in a fresh subprocess (stdout
discarded) and prints k -> seconds; with ``--profile DIR`` it also writes cProfile output per k.

Usage::

    python benchmarks/compare_scaling.py traces/lean/qwen_bs1 --k 1,2,4,8
    python benchmarks/compare_scaling.py traces/lean/qwen_bs1 --k 8 --profile /tmp/prof --build-only
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

_STEP = re.compile(r"^ProfilerStep#\d+$")
_OFFSET = 10_000_000  # id offset per copy: far above any id a committed trace holds


def _window(events: list[dict[str, Any]]) -> tuple[float, float]:
    """(first start, last end) of the timed events (metadata 'M' events have no time)."""
    timed = [e for e in events if e.get("ph") != "M" and "ts" in e]
    return min(float(e["ts"]) for e in timed), max(float(e["ts"]) + float(e.get("dur", 0.0)) for e in timed)


def _shifted(e: dict[str, Any], copy: int, dt: float) -> dict[str, Any]:
    """One event of copy `copy`: time shifted by copy x dt, ids offset so every copy's ids are its own."""
    out = dict(e)
    out["ts"] = float(e["ts"]) + copy * dt
    if e.get("ph") in ("s", "f") and isinstance(e.get("id"), int):
        out["id"] = e["id"] + copy * _OFFSET
    args = e.get("args")
    if isinstance(args, dict):
        args = dict(args)
        for key in ("correlation", "External id"):
            if isinstance(args.get(key), int) and args[key] > 0:
                args[key] += copy * _OFFSET
        out["args"] = args
    return out


def _one_step(steps: list[dict[str, Any]], end: float, cat: str) -> list[dict[str, Any]]:
    """One ProfilerStep#1 from the first step's start to `end` (the last copy's last step end)."""
    first = [s for s in steps if s.get("cat") == cat]
    if not first:
        return []
    start = min(float(s["ts"]) for s in first)
    return [{**first[0], "name": "ProfilerStep#1", "ts": start, "dur": end - start}]


def scale_trace(doc: dict[str, Any], k: int) -> dict[str, Any]:
    """The trace with its window's events repeated k times, and (full traces) one step holding them all."""
    events = doc["traceEvents"]
    meta = [e for e in events if e.get("ph") == "M" or "ts" not in e]
    timed = [e for e in events if e.get("ph") != "M" and "ts" in e]
    start, end = _window(timed)
    dt = (end - start) + 1.0  # the next copy starts 1 µs after this one's last event ends
    steps = [e for e in timed if _STEP.match(str(e.get("name", "")))]
    body = [e for e in timed if not _STEP.match(str(e.get("name", "")))]
    out = list(meta)
    for c in range(k):
        out += [_shifted(e, c, dt) for e in body]
    for cat in ("user_annotation", "gpu_user_annotation"):
        ends = [float(s["ts"]) + float(s["dur"]) for s in steps if s.get("cat") == cat]
        if ends:
            out += _one_step(steps, max(ends) + (k - 1) * dt, cat)
    return {**doc, "traceEvents": out}


def scale_run(src: Path, dst: Path, k: int) -> Path:
    """Copy run folder `src` to `dst` with every trace scaled k times."""
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    for f in sorted(dst.rglob("*.json.gz")):
        with gzip.open(f, "rt") as fh:
            doc = json.load(fh)
        with gzip.open(f, "wt", compresslevel=1) as fh:
            json.dump(scale_trace(doc, k), fh)
    return dst


def time_compare(run: Path, profile: Path | None = None) -> float:
    """Seconds of `qtrace compare RUN --format json` in a fresh interpreter (this checkout's qtrace)."""
    cmd = [sys.executable]
    if profile is not None:
        cmd += ["-m", "cProfile", "-o", str(profile)]
    cmd += ["-m", "qtrace", "compare", str(run), "--format", "json"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a committed run folder (run.json + <precision>/trace.json.gz)")
    ap.add_argument("--k", default="1,2,4,8", help="copies of the window, comma separated")
    ap.add_argument("--out", type=Path, default=Path("/tmp/qtrace-compare-scaling"))
    ap.add_argument("--profile", type=Path, default=None, help="write cProfile output per k here")
    ap.add_argument("--build-only", action="store_true")
    args = ap.parse_args()
    ks = [int(x) for x in args.k.split(",")]
    for k in ks:
        dst = scale_run(args.run, args.out / f"{args.run.name}_k{k}", k)
        if args.build_only:
            print(f"k={k}: {dst}")
            continue
        prof = None
        if args.profile is not None:
            args.profile.mkdir(parents=True, exist_ok=True)
            prof = args.profile / f"{args.run.name}_k{k}.prof"
        print(f"k={k}: {time_compare(dst, prof):.2f} s", flush=True)


if __name__ == "__main__":
    main()
