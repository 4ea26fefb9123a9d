"""Interleaved generation timing: is a quantized precision really faster or slower than fp16 here?

`qtrace sweep` times each precision in turn, so a host whose speed drifts within seconds (the GPU
hosts' does) can move a ratio by tens of percent. This benchmark holds every precision's model in
memory at once and times one `generate` call of each per round, in a rotated order, with fp16
timed twice per round as an A/A control (`fp16~`): the spread of fp16~/fp16 is how far two
identical measurements disagree on this host, so a ratio inside it is not a result.

    python benchmarks/interleaved_generate.py llama3-8b --precision fp16,nf4,int8 --rounds 5

The model is built by qtrace's loader (a size preset is built on the GPU); the timing is plain
code: CUDA events around `model.generate`, greedy, exactly --new-tokens tokens. One JSON line per
round, then a summary line with per-arm medians, min-max, and each ratio to fp16 per round.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from qtrace.capture import models


def time_generate(model: torch.nn.Module, ids: torch.Tensor, new_tokens: int, pad: int) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                   min_new_tokens=new_tokens, do_sample=False, num_beams=1, use_cache=True, pad_token_id=pad)
    end.record()
    torch.cuda.synchronize()
    return float(start.elapsed_time(end))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--precision", default="fp16,nf4,int8")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("interleaved_generate: needs a CUDA GPU", file=sys.stderr)
        return 2
    dev = torch.device("cuda:0")
    precisions = models.parse_precisions(args.precision)
    if "fp16" not in precisions:
        precisions = ["fp16", *precisions]
    spec = models.resolve_model(args.model)
    loaded = {}
    for p in precisions:
        t0 = time.perf_counter()
        loaded[p] = models.load_model(spec, p, "generate", dev, seed=args.seed).model.eval()
        print(json.dumps({"loaded": p, "seconds": round(time.perf_counter() - t0, 2),
                          "allocated_gb": round(torch.cuda.memory_allocated(dev) / 2**30, 2)}), flush=True)
    vocab = int(loaded["fp16"].config.vocab_size)
    pad = int(getattr(loaded["fp16"].config, "pad_token_id", None) or 0)
    g = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, vocab, (args.batch_size, args.seq_len), generator=g).to(dev)
    arms = [*precisions, "fp16~"]  # fp16~: the same fp16 model again, the A/A control
    model_of = {a: loaded[a.rstrip("~")] for a in arms}
    with torch.inference_mode():
        for a in arms[:-1]:
            for _ in range(args.warmup):
                time_generate(model_of[a], ids, args.new_tokens, pad)
        times: dict[str, list[float]] = {a: [] for a in arms}
        for r in range(args.rounds):
            order = arms[r % len(arms):] + arms[:r % len(arms)]
            row = {a: time_generate(model_of[a], ids, args.new_tokens, pad) for a in order}
            for a, ms in row.items():
                times[a].append(ms)
            print(json.dumps({"round": r, "order": order, "ms": {a: round(v, 2) for a, v in row.items()}}),
                  flush=True)
    ratios = {a: [t / f for t, f in zip(times[a], times["fp16"], strict=True)] for a in arms if a != "fp16"}
    summary = {
        "model": args.model, "batch_size": args.batch_size, "seq_len": args.seq_len,
        "new_tokens": args.new_tokens, "rounds": args.rounds, "device": torch.cuda.get_device_name(dev),
        "torch": torch.__version__,
        "median_ms": {a: round(statistics.median(v), 2) for a, v in times.items()},
        "min_max_ms": {a: [round(min(v), 2), round(max(v), 2)] for a, v in times.items()},
        "ratio_to_fp16_per_round": {a: [round(x, 3) for x in v] for a, v in ratios.items()},
        "ratio_to_fp16_median": {a: round(statistics.median(v), 3) for a, v in ratios.items()},
    }
    print(json.dumps({"summary": summary}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
