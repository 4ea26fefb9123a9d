"""What the lean profiler costs, timed in one process, and whether a profiler session taxes later passes.

Why: `qtrace compare` explains a measured slowdown with lean traces (CUDA activity only), so the
explanation can add up only as far as a lean pass keeps an un-profiled pass's speed. Two process-level
measurements cannot tell that cost from the host's own drift (its CPU speed moves within seconds), so
here everything is interleaved in one process, precisions taking turns (order alternating), and every
lean pass is bracketed by two short un-profiled blocks of the same model:

1. ``before``: timed blocks of every precision before any profiler ran in the process;
2. ``lean``: per round and precision, a timed block, a lean pass (`qtrace.capture.protocol.lean_pass`:
   one profiler warm-up step + --steps recorded steps, exactly what `qtrace profile` records), a timed
   block. Each recorded step's span comes from its trace (first runtime call or kernel to the last
   event of the step, as `qtrace compare` measures it); ``lean_over_bracket`` = that span / the mean
   of the two bracketing blocks' medians;
3. ``after``: timed blocks again once every lean pass is done. ``after / before`` shows whether the
   profiler left a cost behind: Kineto keeps CUPTI initialised after a session unless TEARDOWN_CUPTI=1
   (run this once with TEARDOWN_CUPTI=0 and once with 1 to see both).

Before the lean rounds it primes CUPTI with one throwaway lean session, as `qtrace profile` does
(--no-prime: measure without it).

A precision may carry an LLM.int8 threshold, ``int8@0``: with --outlier-dims, ``fp16,int8,int8@0``
interleaves the outlier path on and off in one process (the measured side of issue 14's causal check).

Prints one JSON line per precision, then one for the process. Needs a CUDA device.

    TEARDOWN_CUPTI=1 python benchmarks/lean_overhead.py qwen2.5-0.5b --precision fp16,int8 --batch-size 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from qtrace.analyzers.lean_steps import step_bounds, sync_steps
from qtrace.capture import models
from qtrace.capture import protocol as capture
from qtrace.capture.environment import environment, resolve_device
from qtrace.errors import QtraceError
from qtrace.tracefile.kineto import load_trace


def step_spans_ms(path: Path, expected: int) -> list[float]:
    """Per recorded step of a lean trace: first event start to last event end, in ms."""
    trace = load_trace(path)
    steps = sync_steps(trace, expected)
    spans = []
    for k in range(steps.n):
        bounds = step_bounds(trace.runtime[steps.runtime == k], trace.gpu[steps.gpu == k])
        if bounds is not None:
            spans.append((bounds[1] - bounds[0]) / 1000.0)
    return spans


def block(model: object, work: capture.Workload, iters: int, dev: torch.device) -> float:
    return statistics.median(capture.timed_pass(model, work, iters, dev).per_iter_ms)


def parse_labels(text: str) -> dict[str, tuple[str, float]]:
    """`fp16,int8,int8@0` -> {label: (precision, LLM.int8 threshold)}; ValueError with one line."""
    out = {}
    for label in (t.strip() for t in text.split(",")):
        name, at, thr = label.partition("@")
        try:
            models.parse_precisions(name)
        except QtraceError as exc:
            raise ValueError(str(exc)) from None
        if at and name != "int8":
            raise ValueError(f"{label!r}: only int8 takes a threshold (int8@THRESHOLD)")
        try:
            out[label] = (name, float(thr) if at else 6.0)
        except ValueError:
            raise ValueError(f"{label!r}: the threshold after '@' is not a number") from None
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="a qtrace preset name or local model folder")
    ap.add_argument("--precision", default="fp16,int8")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=4, help="lean passes per precision")
    ap.add_argument("--block-iters", type=int, default=5, help="timed forwards per block")
    ap.add_argument("--steps", type=int, default=2, help="recorded steps per lean pass")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--outlier-dims", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--no-prime", action="store_true", help="skip qtrace's throwaway first lean session")
    args = ap.parse_args()
    try:
        labels = parse_labels(args.precision)
    except ValueError as exc:
        print(f"lean_overhead.py: {exc}", file=sys.stderr)
        return 2
    dev = resolve_device(args.device)
    if dev.type != "cuda":
        print("lean_overhead.py: a lean trace records CUDA activity; this device is a CPU", file=sys.stderr)
        return 2
    teardown_before = os.environ.get(capture.CUPTI_TEARDOWN_VAR)
    spec = models.resolve_model(args.model)
    env = environment(dev)
    torch.cuda.set_device(dev)
    precisions = list(labels)
    loaded, works = {}, {}
    with models.quiet_libraries(), torch.inference_mode(), tempfile.TemporaryDirectory() as tmp:
        for p in precisions:
            name, thr = labels[p]
            loaded[p] = models.load_model(spec, name, "classify", dev, thr)
            models.apply_outlier_dims(loaded[p].model, args.outlier_dims)
            works[p] = capture.make_workload(loaded[p].model, spec.kind, "classify", args.batch_size, args.seq_len,
                                             0, 0, dev)
            capture.warm_up(loaded[p].model, works[p], args.warmup, dev)
        res = {p: {"before": [], "lean_steps": [], "brackets": [], "ratios": [], "after": []} for p in precisions}

        def order(r: int) -> list[str]:
            return precisions if r % 2 == 0 else precisions[::-1]

        for r in range(args.rounds):
            for p in order(r):
                res[p]["before"].append(block(loaded[p].model, works[p], args.block_iters, dev))
        if not args.no_prime:  # as `qtrace profile` does before its first lean pass
            capture.prime_cupti(loaded[precisions[0]].model, works[precisions[0]], dev)
        for r in range(args.rounds):
            for p in order(r):
                m, w = loaded[p].model, works[p]
                pre = block(m, w, args.block_iters, dev)
                path = Path(tmp) / f"{p}_{r}.json.gz"
                capture.lean_pass(m, w, args.steps, dev, path, {"precision": p})
                post = block(m, w, args.block_iters, dev)
                spans = step_spans_ms(path, args.steps)
                bracket = (pre + post) / 2
                res[p]["lean_steps"].extend(spans)
                res[p]["brackets"].append([round(pre, 3), round(post, 3)])
                res[p]["ratios"].extend(s / bracket for s in spans)
        for r in range(args.rounds):
            for p in order(r):
                res[p]["after"].append(block(loaded[p].model, works[p], args.block_iters, dev))
    for p in precisions:
        x = res[p]
        before, after = statistics.median(x["before"]), statistics.median(x["after"])
        print(json.dumps({
            "precision": p, "batch_size": args.batch_size, "outlier_dims": args.outlier_dims,
            "before_ms": round(before, 3), "after_ms": round(after, 3), "after_over_before": round(after / before, 4),
            "lean_step_ms_median": round(statistics.median(x["lean_steps"]), 3),
            "lean_over_bracket_median": round(statistics.median(x["ratios"]), 4),
            "lean_over_bracket_min": round(min(x["ratios"]), 4), "lean_over_bracket_max": round(max(x["ratios"]), 4),
            "bracket_post_over_pre_median": round(statistics.median(b[1] / b[0] for b in x["brackets"]), 4),
            "before_blocks": [round(v, 3) for v in x["before"]], "after_blocks": [round(v, 3) for v in x["after"]],
            "brackets": x["brackets"],
        }), flush=True)
    print(json.dumps({"process": True, "teardown_cupti_env_at_start": teardown_before,
                      "teardown_cupti_in_force": os.environ.get(capture.CUPTI_TEARDOWN_VAR),
                      "device": env["device_name"], "versions": env["versions"], "rounds": args.rounds,
                      "primed": not args.no_prime,
                      "block_iters": args.block_iters, "steps": args.steps}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
