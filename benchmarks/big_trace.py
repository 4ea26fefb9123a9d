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

and prints wall time and peak RSS (``os.wait4`` rusage of that child alone) of each, and the
ratios HTA/qtrace. It is a benchmark that prints figures, not a test.

Usage::

    python benchmarks/big_trace.py                      # build /tmp/qtrace-bench/big_int8_trace.json, run all
    python benchmarks/big_trace.py --target-mb 100      # a smaller trace
    python benchmarks/big_trace.py --only qtrace --repeat 3
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


def measure(cmd: list[str]) -> dict:
    """Run `cmd` in a fresh child; its wall time, peak RSS (wait4: this child only) and exit status."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        stderr = err.read().decode("utf-8", "replace").strip()
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024,
            "rc": proc.returncode,
            "stderr_tail": stderr.splitlines()[-1] if stderr else ""}


def commands(path: Path) -> dict[str, list[str]]:
    py = sys.executable
    return {
        "qtrace": [py, "-m", "qtrace", "report", "--format", "json", str(path)],
        "hta": [py, "-c", _HTA_SNIPPET, str(path)],
        "json.load": [py, "-c", _JSON_SNIPPET, str(path)],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", type=Path, default=SOURCE, help="real Kineto trace whose passes are repeated")
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "qtrace-bench" / "big_int8_trace.json",
                    help="where to write the big trace (default under /tmp; never the repo)")
    ap.add_argument("--target-mb", type=float, default=400.0, help="approximate size of the big trace")
    ap.add_argument("--gz", action="store_true", help="write it gzipped (.json.gz)")
    ap.add_argument("--reuse", action="store_true", help="reuse --out if it exists instead of rebuilding")
    ap.add_argument("--build-only", action="store_true")
    ap.add_argument("--only", choices=["qtrace", "hta", "json.load"], action="append",
                    help="run only these (repeatable); default all three")
    ap.add_argument("--repeat", type=int, default=1,
                    help="rounds (one run per tool each); the best wall and CPU time and the highest peak RSS are kept")
    args = ap.parse_args(argv)

    out = args.out
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

    print(f"machine: {os.cpu_count()} CPUs, python {sys.version.split()[0]}")
    results: dict[str, dict] = {}
    chosen = {n: c for n, c in commands(out).items() if not args.only or n in args.only}
    runs: dict[str, list[dict]] = {n: [] for n in chosen}
    # Rounds of one run per tool: a slow spell of a shared machine then hits every tool alike.
    for r in range(max(1, args.repeat)):
        for name, cmd in chosen.items():
            runs[name].append(measure(cmd))
            m = runs[name][-1]
            if args.repeat > 1:
                print(f"  round {r + 1}: {name:10s} wall {m['wall_s']:6.2f} s  CPU {m['cpu_s']:6.2f} s  "
                      f"peak RSS {m['peak_rss_mb']:5.0f} MB", flush=True)
    for name, rs in runs.items():
        best = dict(min(rs, key=lambda m: m["wall_s"]))
        best["cpu_s"] = min(m["cpu_s"] for m in rs)
        best["peak_rss_mb"] = max(m["peak_rss_mb"] for m in rs)
        results[name] = best
        status = "ok" if all(m["rc"] == 0 for m in rs) else f"FAILED rc={best['rc']}: {best['stderr_tail']}"
        print(f"{name:10s} wall {best['wall_s']:7.2f} s   CPU {best['cpu_s']:7.2f} s   "
              f"peak RSS {best['peak_rss_mb']:7.0f} MB   {status}  (best of {len(rs)})", flush=True)
    if os.getloadavg()[0] > 1.5:
        print(f"note: load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs: other work competed; "
              "CPU seconds are the steadier figure")
    q = results.get("qtrace")
    for other, goal in (("hta", " (goal >= 5x faster, <= 0.5x memory)"), ("json.load", "")):
        o = results.get(other)
        if q and o and q["rc"] == 0 and o["rc"] == 0:
            print(f"qtrace vs {other}: {o['wall_s'] / q['wall_s']:.1f}x faster by wall time, "
                  f"{o['cpu_s'] / q['cpu_s']:.1f}x by CPU time, {q['peak_rss_mb'] / o['peak_rss_mb']:.2f}x its "
                  f"peak memory{goal}")
    return 0 if all(r["rc"] == 0 for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
