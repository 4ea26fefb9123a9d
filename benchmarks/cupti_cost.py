"""What CUPTI costs per CUDA call, and whether any lean-profiler setting avoids it (issue 14).

Why: a lean trace (CUDA activity only) ran host-bound passes 1.24-1.33x slower than un-profiled ones
on an H200 (benchmarks/lean_overhead.py, examples/lean/README.md), and the explanation over-counts by
about as much. Before that cost can be removed or corrected it has to be known: is it a fixed cost per
CUDA call (then it scales with launches, and a pass of fewer, bigger kernels pays less), a start-up
cost a longer warm-up absorbs, or a setting of the profiler? Everything here runs in one process,
interleaved in rounds (un-profiled, then each profiled arm), and is timed by the host clock around
the work plus a device sync, the same way in every arm, so trace spans play no part:

1. ``launch``: N tiny kernels (an in-place add on a one-element tensor) per block, us per op;
2. ``forward``: the model's forward (classify, like `qtrace profile --task classify`), ms per pass.

Arms: ``plain`` (no profiler), ``lean`` (torch.profiler with CUDA activity only, what qtrace's lean
pass recorded before visit 4; timed after --inner-warmup ops or passes inside the active session),
``lean_noext`` (the same with external correlation off, where torch offers the setting: what
qtrace's lean pass records since). Each profiled block is its
own session, as a lean pass is. Prints one JSON line per (what, arm) with the median and spread over
rounds, the per-call cost (arm - plain) and the process line (device, versions, TEARDOWN_CUPTI).

    TEARDOWN_CUPTI=1 python benchmarks/cupti_cost.py qwen2.5-0.5b --precision fp16,int8
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from qtrace.capture import models
from qtrace.capture import protocol as capture
from qtrace.capture.environment import environment, resolve_device
from qtrace.errors import QtraceError
from qtrace.tracefile.kineto import load_trace


@contextlib.contextmanager
def lean_session(no_external_correlation: bool) -> Iterator[Any]:
    """An active torch.profiler session with CUDA activity only (Kineto's start/stop chatter kept off
    the terminal). External correlation off is qtrace's lean pass as it records now
    (`capture.lean_experimental_config`); on is torch's default, the lean pass before visit 4."""
    from torch.profiler import ProfilerActivity, profile

    kwargs: dict[str, Any] = {}
    if no_external_correlation:
        kwargs["experimental_config"] = capture.lean_experimental_config()
    prof = profile(activities=[ProfilerActivity.CUDA], record_shapes=False, profile_memory=False, **kwargs)
    with capture.native_output_filtered():
        prof.__enter__()
    try:
        yield prof
    finally:
        with capture.native_output_filtered():
            prof.__exit__(None, None, None)


def timed(work: Callable[[], None], n: int, dev: torch.device) -> float:
    """Host seconds for n calls of work, from the first call to the device being idle after the last."""
    torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    for _ in range(n):
        work()
    torch.cuda.synchronize(dev)
    return time.perf_counter() - t0


def block(arm: str, work: Callable[[], None], n: int, inner_warmup: int, dev: torch.device) -> float | None:
    """Seconds per call of work in one block of the given arm (None: the arm is not offered here)."""
    if arm == "plain":
        timed(work, inner_warmup, dev)
        return timed(work, n, dev) / n
    if arm == "lean_noext" and capture.lean_experimental_config() is None:
        return None
    with lean_session(arm == "lean_noext"):
        timed(work, inner_warmup, dev)  # inside the session: what a profiler warm-up step absorbs
        return timed(work, n, dev) / n


def spread(values: list[float], scale: float) -> dict[str, float]:
    return {
        "median": round(statistics.median(values) * scale, 4),
        "min": round(min(values) * scale, 4),
        "max": round(max(values) * scale, 4),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="a qtrace preset name or local model folder")
    ap.add_argument("--precision", default="fp16,int8")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--launches", type=int, default=3000, help="tiny kernels per launch block")
    ap.add_argument("--passes", type=int, default=4, help="forwards per forward block")
    ap.add_argument("--inner-warmup", type=int, default=2, help="forwards (x100 for launches) before timing a block")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    try:
        precisions = models.parse_precisions(args.precision)
    except QtraceError as exc:
        print(f"cupti_cost.py: {exc}", file=sys.stderr)
        return 2
    dev = resolve_device(args.device)
    if dev.type != "cuda":
        print("cupti_cost.py: CUPTI's cost needs a CUDA device; this one is a CPU", file=sys.stderr)
        return 2
    torch.cuda.set_device(dev)
    arms = ["plain", "lean", "lean_noext"]
    spec = models.resolve_model(args.model)
    cases: dict[str, tuple[Callable[[], None], int, int, float, str]] = {}
    x = torch.zeros(1, device=dev)
    cases["launch"] = (lambda: x.add_(1.0), args.launches, 100 * args.inner_warmup, 1e6, "us per op")
    calls: dict[str, int] = {}
    with models.quiet_libraries(), torch.inference_mode():
        for p in precisions:
            loaded = models.load_model(spec, p, "classify", dev)
            work = capture.make_workload(loaded.model, spec.kind, "classify", args.batch_size, args.seq_len, 0, 0, dev)
            capture.warm_up(loaded.model, work, 3, dev)

            def forward(m: Any = loaded.model, w: Any = work) -> None:
                capture.run_forward(m, w)

            cases[f"forward_{p}"] = (forward, args.passes, args.inner_warmup, 1e3, "ms per pass")
            calls[f"forward_{p}"] = count_runtime_calls(forward, dev)
        res: dict[tuple[str, str], list[float]] = {(c, a): [] for c in cases for a in arms}
        for r in range(args.rounds):
            order = arms if r % 2 == 0 else arms[::-1]
            for c, (work, n, inner, _, _) in cases.items():
                for a in order:
                    v = block(a, work, n, inner, dev)
                    if v is not None:
                        res[(c, a)].append(v)
    for c, (_, _n, _, scale, unit) in cases.items():
        plain = res[(c, "plain")]
        for a in arms:
            vals = res[(c, a)]
            if not vals:
                print(json.dumps({"what": c, "arm": a, "offered": False}), flush=True)
                continue
            line: dict[str, Any] = {"what": c, "arm": a, "unit": unit, **spread(vals, scale)}
            if a != "plain":
                ratios = [v / p for v, p in zip(vals, plain, strict=False)]
                line["over_plain"] = spread(ratios, 1.0)
                if c in calls and calls[c]:
                    extra_us = [(v - p) * 1e6 / calls[c] for v, p in zip(vals, plain, strict=False)]
                    line["extra_us_per_runtime_call"] = spread(extra_us, 1.0)
            if c in calls:
                line["runtime_calls_per_pass"] = calls[c]
            print(json.dumps(line), flush=True)
    env = environment(dev)
    print(
        json.dumps(
            {
                "process": True,
                "teardown_cupti": os.environ.get(capture.CUPTI_TEARDOWN_VAR),
                "device": env["device_name"],
                "versions": env["versions"],
                "rounds": args.rounds,
                "launches": args.launches,
                "passes": args.passes,
                "inner_warmup": args.inner_warmup,
                "batch_size": args.batch_size,
                "seq_len": args.seq_len,
            }
        ),
        flush=True,
    )
    return 0


def count_runtime_calls(work: Callable[[], None], dev: torch.device) -> int:
    """CUDA runtime and driver calls of one call of work, counted in a lean session's trace."""
    with lean_session(False) as prof:
        work()
        torch.cuda.synchronize(dev)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "calls.json"
        prof.export_chrome_trace(str(path))
        return len(load_trace(path).runtime)


if __name__ == "__main__":
    sys.exit(main())
