"""qtrace's timed pass against the plain loop, interleaved in one process so host drift hits both alike.

Why: on the shared H100 host the launching CPU's speed moved 1.4x within 20 seconds, on every
CPU (benchmarks/cpu_placement.py, examples/seed/README.md), and a batch-1 forward is host-bound, so
two processes run a minute apart rarely agree within 5% whatever they measure (the same tool
against itself did in 2 of 25 rounds). Here both sides live
in one process and take turns in short blocks (order alternating: Q P, P Q, ...), so every
stretch of fast or slow host is shared out evenly (--control puts a second plain copy in qtrace's
seat: the A/A noise floor of the same design):

- qtrace side: `qtrace.capture.models.load_model` + `capture.make_workload` + `capture.warm_up` +
  `capture.timed_pass`, the functions `qtrace profile` runs for its latency figure;
- plain side: plain_latency.py's own loader, inputs and CUDA-event loop (no qtrace code).

Both models are loaded side by side. Prints one JSON line per (precision, batch): pooled medians,
their ratio, the median of the per-block ratios, and the A/A noise (how much one side's
consecutive blocks differ), which says how close any two measurements on this host can be.

    python benchmarks/latency_agreement.py qwen2.5-0.5b --precision fp16,int8,nf4 --batch-size 1,64

The first argument is anything `qtrace profile` accepts (preset, folder); presets are built
into QTRACE_CACHE first. Runs on the CPU too (perf_counter instead of CUDA events), as a smoke test.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys

import torch
from plain_latency import load as plain_load  # same directory: the independent side
from plain_latency import time_forward as plain_time

from qtrace.capture import models
from qtrace.capture import protocol as capture
from qtrace.capture.environment import environment, resolve_device


def _median_abs_log_step(values: list[float]) -> float:
    """Median |log(b/a)| over consecutive blocks, as a ratio (1.0 = no block-to-block change)."""
    steps = [abs(math.log(b / a)) for a, b in zip(values, values[1:], strict=False) if a > 0 and b > 0]
    return math.exp(statistics.median(steps)) if steps else 1.0


def agree(spec: models.ModelSpec, precision: str, batch: int, seq: int, blocks: int, block_iters: int,
          warmup: int, dev: torch.device, control: bool = False) -> dict:
    plain_model = plain_load(str(spec.path), precision, "classify", 6.0, str(dev))
    plain_time(plain_model, batch, seq, 0, warmup, 1)
    if control:  # A/A: a second plain copy in qtrace's seat, to measure this design's own noise
        other = plain_load(str(spec.path), precision, "classify", 6.0, str(dev))
        plain_time(other, batch, seq, 0, warmup, 1)

        def q_block() -> list[float]:
            return plain_time(other, batch, seq, 0, 0, block_iters)
    else:
        loaded = models.load_model(spec, precision, "classify", dev)
        work = capture.make_workload(loaded.model, spec.kind, "classify", batch, seq, 0, 0, dev)
        capture.warm_up(loaded.model, work, warmup, dev)

        def q_block() -> list[float]:
            return capture.timed_pass(loaded.model, work, block_iters, dev).per_iter_ms
    q_blocks: list[list[float]] = []
    p_blocks: list[list[float]] = []
    for b in range(blocks):
        for side in (("q", "p") if b % 2 == 0 else ("p", "q")):
            if side == "q":
                q_blocks.append(q_block())
            else:
                p_blocks.append(plain_time(plain_model, batch, seq, 0, 0, block_iters))
    if control:
        del other
    else:
        models.free_model(loaded)
    del plain_model
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    q_all = [x for blk in q_blocks for x in blk]
    p_all = [x for blk in p_blocks for x in blk]
    q_med = [statistics.median(blk) for blk in q_blocks]
    p_med = [statistics.median(blk) for blk in p_blocks]
    block_ratios = [q / p for q, p in zip(q_med, p_med, strict=True)]
    ratio = statistics.median(q_all) / statistics.median(p_all)
    return {
        "sides": "plain/plain (A/A control)" if control else "qtrace/plain",
        "precision": precision, "batch_size": batch, "seq_len": seq, "blocks": blocks, "block_iters": block_iters,
        "qtrace_median_ms": round(statistics.median(q_all), 3), "plain_median_ms": round(statistics.median(p_all), 3),
        "qtrace_over_plain": round(ratio, 4), "within_5pct": abs(ratio - 1) <= 0.05,
        "block_ratio_median": round(statistics.median(block_ratios), 4),
        "block_ratio_min": round(min(block_ratios), 4), "block_ratio_max": round(max(block_ratios), 4),
        "aa_block_step_qtrace": round(_median_abs_log_step(q_med), 4),
        "aa_block_step_plain": round(_median_abs_log_step(p_med), 4),
        "host_range_over_blocks": round(max(q_med + p_med) / min(q_med + p_med), 3),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="a qtrace preset name or local model folder")
    ap.add_argument("--precision", default="fp16,int8,nf4")
    ap.add_argument("--batch-size", default="1", help="comma list")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--blocks", type=int, default=12, help="turns per side")
    ap.add_argument("--block-iters", type=int, default=5, help="timed forwards per turn")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--control", action="store_true",
                    help="A/A: time a second plain copy instead of qtrace (the noise floor of this design)")
    args = ap.parse_args()
    dev = resolve_device(args.device)
    spec = models.resolve_model(args.model)
    env = environment(dev)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    # As `qtrace profile` runs its precisions (loading included); the plain loop has its own.
    with models.quiet_libraries(), torch.inference_mode():
        for batch in (int(b) for b in args.batch_size.split(",")):
            for precision in args.precision.split(","):
                out = agree(spec, precision, batch, args.seq_len, args.blocks, args.block_iters, args.warmup, dev,
                            args.control)
                out.update(device=env["device_name"], torch=env["versions"]["torch"],
                           cpu_affinity=env.get("cpu_affinity"))
                print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
