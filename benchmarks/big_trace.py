"""Big-trace benchmark: qtrace's loader and analyzers against HTA 0.5.0 and plain ``json.load``.

Builds a ~400 MB Kineto trace by repeating the three forward passes of the committed real
H100 LLM.int8 trace (traces/h100_qwen05-shape_int8_bs1_seq128.json.gz) back to back. Each
copy's timestamps are shifted past the previous copy, and its correlation ids (and the ac2g
flow ids, which equal them), External ids and Ev Idx values are offset, so every kernel still
pairs with its launch and every runtime call with its op. The text is patched in place, so the
result keeps Kineto's own formatting (pretty, one key group per line); the header gains
``"distributedInfo": {"rank": 0}``, which HTA needs. `qtrace report` on the result gives exactly 16x
the source's GPU time, launches and host op time per phase; only syncs differ (+2 per copy
boundary: the profiler's own cudaDeviceSynchronize calls at each copy's start and stop now fall
inside the window).

Then it runs, one after the other, each in a fresh subprocess on this machine:

- ``qtrace report --format json BIG`` (stdout discarded),
- HTA: ``TraceAnalysis(trace_dir=..., trace_files={0: name})`` + ``get_gpu_kernel_breakdown(visualize=False)``,
- plain ``json.load`` of the same file, as a reference point,

and prints wall time, CPU time and peak RSS (``os.wait4`` rusage of that child alone) of each
over ``--repeat`` rounds (median, min and max; the order of the tools alternates between rounds,
so a slow spell of a shared machine hits them alike), the load average during the rounds, and the
ratios HTA/qtrace per round. It is a benchmark that prints figures, not a test.

Usage::

    python benchmarks/big_trace.py                      # ~400 MB under /tmp/qtrace-bench, 3 rounds of all three
    python benchmarks/big_trace.py --target-mb 100      # a smaller trace
    python benchmarks/big_trace.py --target-mb 2000 --only qtrace   # the 2 GB case (HTA is skipped above 1 GB)
    python benchmarks/big_trace.py --only qtrace --repeat 5
    python benchmarks/big_trace.py --build-only --out /tmp/big.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO / "traces" / "h100_qwen05-shape_int8_bs1_seq128.json.gz"
GAP_US = 1000  # idle time between two copies of the passes

# The values a copy must shift: timestamps, and the ids that pair events with each other.
_FIELDS = re.compile(r'("ts": |"External id": |"correlation": |"id": |"Ev Idx": )(\d+)(\.\d+)?')
_EVENT_SEP = "\n  },\n  {"


def _split(text: str) -> tuple[str, list[str], str]:
    """(header up to and including '"traceEvents": [', event texts, trailer from the closing ']')."""
    start = text.index('"traceEvents": [') + len('"traceEvents": [')
    end = text.rindex("\n  ]")
    body = text[start:end]
    if not (body.startswith("\n  {") and body.endswith("\n  }")):
        raise SystemExit(f"{SOURCE}: not laid out the way Kineto writes traces")
    events = body[len("\n  {"):-len("\n  }")].split(_EVENT_SEP)
    return text[:start], ["\n  {" + e + "\n  }" for e in events], text[end:]


def build(source: Path, dst: Path, target_mb: float, gz: bool = False) -> dict:
    """Write the big trace to `dst`; returns what went into it."""
    text = gzip.decompress(source.read_bytes()).decode("utf-8")
    header, events, trailer = _split(text)
    parsed = [json.loads(e) for e in events]  # validates the split: each piece is one event
    first_meta = next(i for i, e in enumerate(parsed) if e.get("ph") == "M")
    body, tail = events[:first_meta], events[first_meta:]
    body_parsed, tail_parsed = parsed[:first_meta], parsed[first_meta:]
    if any(e.get("ph") == "M" for e in body_parsed):
        raise SystemExit(f"{source}: metadata events are mixed into the profiled events")

    t0 = min(e["ts"] for e in body_parsed if "ts" in e)
    t1 = max(e["ts"] + e.get("dur", 0) for e in body_parsed if "ts" in e)
    shift_us = int(t1 - t0) + 1 + GAP_US

    def max_of(key: str, in_args: bool = True) -> int:
        vals = [(e.get("args") or {}).get(key) if in_args else e.get(key) for e in body_parsed]
        return max((v for v in vals if isinstance(v, int)), default=0)

    ext_step = max_of("External id") + 1
    corr_step = max(max_of("correlation"), max_of("id", in_args=False)) + 1
    idx_step = max(max_of("Ev Idx"), max((e.get("args") or {}).get("Ev Idx", 0) for e in tail_parsed)) + 1

    body_text = ",".join(body)
    copies = max(1, round(target_mb * 1e6 / len(body_text)))
    pieces = _FIELDS.split(body_text)  # [text, key, int part, fraction, text, key, ...]

    # Header: add distributedInfo (HTA reads the rank from it) in Kineto's top-level indent.
    if '"distributedInfo"' not in header:
        at = header.rindex('  "traceEvents": [')
        header = header[:at] + '  "distributedInfo": {"rank": 0},\n' + header[at:]

    # Trailer events: the profiler span covers every copy; the window-end marker moves to the end.
    span_extra = (copies - 1) * shift_us

    def patch_tail(ev_text: str, ev: dict) -> str:
        if ev.get("cat") == "Trace" and "dur" in ev:
            return re.sub(r'"dur": (\d+)', lambda m: f'"dur": {int(m.group(1)) + span_extra}', ev_text, count=1)
        if ev.get("name") == "Record Window End":
            return re.sub(r'"ts": (\d+)', lambda m: f'"ts": {int(m.group(1)) + span_extra}', ev_text, count=1)
        return ev_text

    tail_text = ",".join(patch_tail(t, e) for t, e in zip(tail, tail_parsed, strict=True))

    offsets = {'"ts": ': shift_us, '"External id": ': ext_step, '"correlation": ': corr_step,
               '"id": ': corr_step, '"Ev Idx": ': idx_step}
    keys = pieces[1::4]
    ints = [int(v) for v in pieces[2::4]]
    steps = [offsets[k] for k in keys]
    base = [p or "" for p in pieces]  # fractions of integer values are None
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".part")
    opener = (lambda p: gzip.open(p, "wt", encoding="utf-8", compresslevel=1)) if gz else \
        (lambda p: open(p, "w", encoding="utf-8"))  # noqa: SIM115
    with opener(tmp) as out:
        out.write(header)
        for k in range(copies):
            if k:
                out.write(",")
            base[2::4] = [str(v + k * st) for v, st in zip(ints, steps, strict=True)]
            out.write("".join(base))
        out.write(",")
        out.write(tail_text)
        out.write(trailer)
    os.replace(tmp, dst)
    return {"path": str(dst), "bytes_on_disk": dst.stat().st_size, "copies": copies,
            "events": copies * len(body) + len(tail), "source_events": len(events), "shift_us": shift_us}


# ---------------------------------------------------------------- measurement

_HTA_SNIPPET = """
import logging, os, sys, warnings
warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)
from hta.trace_analysis import TraceAnalysis
path = sys.argv[1]
a = TraceAnalysis(trace_dir=os.path.dirname(path), trace_files={0: os.path.basename(path)})
kernel_type_df, kernel_df = a.get_gpu_kernel_breakdown(visualize=False)
print(len(kernel_df), "kernel rows", file=sys.stderr)
"""

_JSON_SNIPPET = """
import gzip, json, sys
p = sys.argv[1]
with (gzip.open(p, "rb") if p.endswith(".gz") else open(p, "rb")) as fh:
    d = json.load(fh)
print(len(d["traceEvents"]), "events", file=sys.stderr)
"""


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants (Linux: /proc/PID/task/TID/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
    return out


def _tree_memory(pid: int) -> tuple[float, float]:
    """(summed RSS, summed PSS) of `pid` and its descendants, in MB. RSS counts a page shared by a
    forked child in both; PSS splits it between them, so the summed PSS is what the tree holds."""
    rss = pss = 0
    for p in _tree(pid):
        try:
            text = Path(f"/proc/{p}/smaps_rollup").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("Rss:"):
                rss += int(line.split()[1])
            elif line.startswith("Pss:"):
                pss += int(line.split()[1])
    return rss / 1024, pss / 1024


def measure(cmd: list[str], cwd: Path = REPO, tree_memory: bool = False) -> dict:
    """Run `cmd` in a fresh child; its wall time, peak RSS (wait4: the largest of the child and its
    children, not their sum) and exit status; with `tree_memory`, the peak summed RSS and PSS of the
    child and its descendants, sampled every 20 ms (the sampling takes CPU: compare times without it)."""
    t0 = time.perf_counter()
    peaks = [0.0, 0.0]
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, cwd=cwd)
        while True:
            done, status, usage = os.wait4(proc.pid, os.WNOHANG if tree_memory else 0)
            if done:
                break
            rss, pss = _tree_memory(proc.pid)
            peaks = [max(peaks[0], rss), max(peaks[1], pss)]
            time.sleep(0.02)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        stderr = err.read().decode("utf-8", "replace").strip()
    out = {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024,
           "rc": proc.returncode, "stderr_tail": stderr.splitlines()[-1] if stderr else ""}
    if tree_memory:
        out["tree_rss_mb"], out["tree_pss_mb"] = peaks
    return out


def commands(path: Path) -> dict[str, list[str]]:
    py = sys.executable
    return {
        "qtrace": [py, "-m", "qtrace", "report", "--format", "json", str(path)],
        "hta": [py, "-c", _HTA_SNIPPET, str(path)],
        "json.load": [py, "-c", _JSON_SNIPPET, str(path)],
    }


def _versions() -> str:
    """Versions of what is measured (read in a child would cost a second; importlib.metadata is enough)."""
    from importlib import metadata

    out = [f"python {sys.version.split()[0]}"]
    for dist in ("msgspec", "numpy", "pandas", "HolisticTraceAnalysis"):
        try:
            out.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            out.append(f"{dist} (not installed)")
    rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if rev.returncode == 0:
        out.append(f"qtrace @ {rev.stdout.strip()}")
    return ", ".join(out)


def _read_through(path: Path) -> float:
    """Seconds to read `path` once (into the page cache)."""
    t0 = time.perf_counter()
    with open(path, "rb") as fh:
        while fh.read(16 << 20):
            pass
    return time.perf_counter() - t0


def _median(xs: list[float]) -> float:
    ys = sorted(xs)
    mid = len(ys) // 2
    return ys[mid] if len(ys) % 2 else (ys[mid - 1] + ys[mid]) / 2


def _spread(xs: list[float], unit: str, fmt: str = "{:.2f}") -> str:
    """'median (min-max, n rounds)' of a figure over the rounds."""
    if len(xs) == 1:
        return f"{fmt.format(xs[0])} {unit}"
    return f"{fmt.format(_median(xs))} {unit} (min {fmt.format(min(xs))}, max {fmt.format(max(xs))})"


# HTA holds about 5 bytes of memory per byte of trace (2.07 GB on 383 MB): above this size it is
# not run unless asked (--hta-max-mb), and qtrace is reported alone.
HTA_MAX_MB = 1000.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", type=Path, default=SOURCE, help="real Kineto trace whose passes are repeated")
    ap.add_argument("--out", type=Path, default=None,
                    help="where to write the big trace (default under /tmp, named by its size; never the repo)")
    ap.add_argument("--target-mb", type=float, default=400.0,
                    help="approximate size of the big trace (2000: the 2 GB case, qtrace alone unless --hta-max-mb)")
    ap.add_argument("--gz", action="store_true", help="write it gzipped (.json.gz)")
    ap.add_argument("--reuse", action="store_true", help="reuse --out if it exists instead of rebuilding")
    ap.add_argument("--build-only", action="store_true")
    ap.add_argument("--only", choices=["qtrace", "hta", "json.load"], action="append",
                    help="run only these (repeatable); default all three")
    ap.add_argument("--repeat", type=int, default=3,
                    help="rounds; each round runs every tool once, the order alternating between rounds, so a "
                         "slow spell of a shared machine hits all tools alike; medians and min-max are printed")
    ap.add_argument("--baseline", type=Path, default=None,
                    help="a folder holding another copy of the qtrace package (e.g. `git archive` of an older "
                         "commit): timed as 'baseline' in the same rounds, for a before/after on one machine")
    ap.add_argument("--hta-max-mb", type=float, default=HTA_MAX_MB,
                    help="do not run HTA on a trace larger than this (its memory grows ~5x the file size)")
    ap.add_argument("--tree-memory", action="store_true",
                    help="also sample the summed RSS and PSS of each tool's process tree every 20 ms (qtrace's "
                         "decode helper and forked child included); the sampling takes CPU, so time without it")
    args = ap.parse_args(argv)

    out = args.out or Path(tempfile.gettempdir()) / "qtrace-bench" / f"big_int8_trace_{int(args.target_mb)}mb.json"
    if args.gz and not out.name.endswith(".gz"):
        out = out.with_name(out.name + ".gz")
    if args.reuse and out.exists():
        print(f"reusing {out} ({out.stat().st_size / 1e6:.0f} MB on disk)")
    elif args.build_only:
        t0 = time.perf_counter()
        info = build(args.source, out, args.target_mb, gz=args.gz)
        print(f"built {out}: {info['bytes_on_disk'] / 1e6:.0f} MB on disk, {info['events']:,} events "
              f"({info['copies']} copies of the {info['source_events']:,}-event source) "
              f"in {time.perf_counter() - t0:.1f} s", flush=True)
        return 0
    else:
        # Build in a child: this process stays small, so a measured child's peak RSS is its own
        # (a forked child starts out sharing its parent's pages, and rusage would count them).
        cmd = [sys.executable, __file__, "--build-only", "--source", str(args.source), "--out", str(out),
               "--target-mb", str(args.target_mb)] + (["--gz"] if args.gz else [])
        subprocess.run(cmd, check=True)

    size_mb = out.stat().st_size / 1e6
    print(f"machine: {os.cpu_count()} CPUs; {_versions()}")
    print(f"trace: {out} ({size_mb:.0f} MB on disk)")
    # Warm-up: the file read once before the rounds, so that the first tool of round 1 does not
    # alone pay for reading it from disk (a cold read made one such round 1.8x slower).
    print(f"warm-up: read the trace in {_read_through(out):.2f} s", flush=True)
    chosen = {n: c for n, c in commands(out).items() if not args.only or n in args.only}
    cwd = {n: REPO for n in chosen}
    if args.baseline is not None:  # `python -m qtrace` from that folder imports its copy first
        chosen["baseline"] = commands(out)["qtrace"]
        cwd["baseline"] = args.baseline.resolve()
    if "hta" in chosen and size_mb > args.hta_max_mb:
        print(f"hta: not run on a {size_mb:.0f} MB trace (above --hta-max-mb {args.hta_max_mb:.0f}; it would need "
              f"about {5 * size_mb / 1000:.0f} GB of memory): qtrace is reported alone")
        del chosen["hta"]
    runs: dict[str, list[dict]] = {n: [] for n in chosen}
    loads = [os.getloadavg()[0]]
    names = list(chosen)
    for r in range(max(1, args.repeat)):
        for name in (names if r % 2 == 0 else names[::-1]):
            m = measure(chosen[name], cwd[name], args.tree_memory)
            runs[name].append(m)
            tree = (f"  tree RSS {m['tree_rss_mb']:5.0f} MB  tree PSS {m['tree_pss_mb']:5.0f} MB"
                    if args.tree_memory else "")
            print(f"  round {r + 1}: {name:10s} wall {m['wall_s']:6.2f} s  CPU {m['cpu_s']:6.2f} s  "
                  f"peak RSS {m['peak_rss_mb']:5.0f} MB{tree}  load {os.getloadavg()[0]:.1f}"
                  + ("" if m["rc"] == 0 else f"  FAILED rc={m['rc']}: {m['stderr_tail']}"), flush=True)
            loads.append(os.getloadavg()[0])
    ok = {n: all(m["rc"] == 0 for m in rs) for n, rs in runs.items()}
    for name, rs in runs.items():
        status = "ok" if ok[name] else "FAILED"
        print(f"{name:10s} wall {_spread([m['wall_s'] for m in rs], 's')}   "
              f"CPU {_spread([m['cpu_s'] for m in rs], 's')}   "
              f"peak RSS {_spread([m['peak_rss_mb'] for m in rs], 'MB', '{:.0f}')}   {status}  ({len(rs)} rounds)",
              flush=True)
        if args.tree_memory:
            print(f"{'':10s} process tree: summed RSS {_spread([m['tree_rss_mb'] for m in rs], 'MB', '{:.0f}')}, "
                  f"summed PSS {_spread([m['tree_pss_mb'] for m in rs], 'MB', '{:.0f}')}", flush=True)
    print(f"load average (1 min) over the rounds: {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} CPUs"
          + ("; other work competed: CPU seconds are the steadier figure" if max(loads) > 1.5 else ""))
    q = runs.get("qtrace")
    for other, goal in (("hta", " (goal: >= 10x faster, <= 0.25x its memory)"), ("json.load", ""), ("baseline", "")):
        o = runs.get(other)
        if not (q and o and ok["qtrace"] and ok[other]):
            continue
        pairs = list(zip(q, o, strict=True))
        wall = [b["wall_s"] / a["wall_s"] for a, b in pairs]
        cpu = [b["cpu_s"] / a["cpu_s"] for a, b in pairs]
        mem = max(a["peak_rss_mb"] for a in q) / max(b["peak_rss_mb"] for b in o)
        print(f"qtrace vs {other}: {_spread(wall, 'x faster by wall time', '{:.1f}')} (per round), "
              f"{_spread(cpu, 'x by CPU time', '{:.1f}')}, {mem:.2f}x its peak memory{goal}")
    if q and ok["qtrace"] and size_mb >= 1500:
        peak = max(m["peak_rss_mb"] for m in q)
        print(f"qtrace on {size_mb / 1000:.1f} GB: peak RSS {peak / 1000:.2f} GB (goal: under 1.5 GB) -> "
              + ("met" if peak < 1500 else "NOT met"))
    return 0 if all(ok.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
