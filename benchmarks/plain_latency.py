"""Independent latency check for `qtrace profile`: a plain CUDA-event loop, no qtrace code.

It loads the same checkpoint (a preset folder that `qtrace profile` cached, or any local HF
folder) with transformers + bitsandbytes directly, builds the same random token ids (seeded
torch.randint, pad id avoided), applies the same outlier emulation when asked (N hidden dims of
every norm weight x30, dims from a seeded randperm), and times forward passes with CUDA events
after a warm-up. It prints one JSON line per precision: median, p90, min (ms per iteration).

    python benchmarks/plain_latency.py ~/.cache/qtrace/presets/qwen2.5-0.5b \\
        --task classify --precision fp16,int8,nf4 --batch-size 1 --seq-len 128 --compare RUN_DIR

With --compare RUN_DIR it also reads RUN_DIR/run.json and prints the ratio to qtrace's median
per precision (goal: within 5%).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, BitsAndBytesConfig

NUM_LABELS = 113  # the seed experiment's classification head size
OUTLIER_SEED = 1234
ENCODERS = {"bert", "modernbert", "roberta", "deberta", "deberta-v2", "distilbert", "xlm-roberta"}
OUTLIER_SCALE = 30.0


def load(path: str, precision: str, task: str, threshold: float, device: str = "cuda:0") -> torch.nn.Module:
    cls = AutoModelForSequenceClassification if task == "classify" else AutoModelForCausalLM
    dev = torch.device(device)
    kwargs: dict = {"local_files_only": True, "use_safetensors": True,
                    "device_map": {"": dev.index or 0} if dev.type == "cuda" else {"": "cpu"}}
    if task == "classify":
        kwargs["num_labels"] = NUM_LABELS
    head = ["score", "classifier", "lm_head", "head"]  # the output head stays un-quantized
    # Quantized layers compute in fp16 on a GPU; on the CPU (smoke tests only) in fp32, where
    # fp16 matmuls are slow and would measure the dtype, not the protocol.
    act = torch.float16 if dev.type == "cuda" else torch.float32
    if precision == "int8":
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=threshold,
                                                           llm_int8_skip_modules=head)
        kwargs["dtype"] = act
    elif precision == "nf4":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=act, llm_int8_skip_modules=head)
        kwargs["dtype"] = act
    else:
        kwargs["dtype"] = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[precision]
    model = cls.from_pretrained(path, **kwargs).eval()
    if getattr(model.config, "pad_token_id", None) is None:
        eos = getattr(model.config, "eos_token_id", None)
        model.config.pad_token_id = (eos[0] if isinstance(eos, list) else eos) if eos is not None else 0
    return model


def scale_norms(model: torch.nn.Module, n: int) -> None:
    if n <= 0:
        return
    hidden = int(model.config.hidden_size)
    dims = sorted(torch.randperm(hidden, generator=torch.Generator().manual_seed(OUTLIER_SEED))[:n].tolist())
    with torch.no_grad():
        for module in model.modules():
            w = getattr(module, "weight", None)
            if "norm" in type(module).__name__.lower() and isinstance(w, torch.Tensor) and w.dim() == 1 \
                    and w.numel() == hidden:
                w[torch.tensor(dims, device=w.device)] *= OUTLIER_SCALE


def time_forward(model: torch.nn.Module, batch: int, seq: int, seed: int, warmup: int, iters: int,
                 mask: bool = True) -> list[float]:
    """ms per forward: CUDA events on a GPU, perf_counter on the CPU (a smoke-test path)."""
    vocab = int(model.config.vocab_size)
    pad = int(model.config.pad_token_id)
    device = next(model.parameters()).device
    ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))
    ids = torch.where(ids == pad, (ids + 1) % vocab, ids).to(device)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)} if mask else {"input_ids": ids}
    # Decoders run without a KV cache, as qtrace's forward/classify task does; encoders have none.
    extra = {} if model.config.model_type in ENCODERS else {"use_cache": False}
    with torch.inference_mode():
        for _ in range(warmup):
            model(**inputs, **extra)
        if device.type != "cuda":
            ms = []
            for _ in range(iters):
                t0 = time.perf_counter()
                model(**inputs, **extra)
                ms.append((time.perf_counter() - t0) * 1e3)
            return ms
        torch.cuda.synchronize()
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
        for start, end in events:
            start.record()
            model(**inputs, **extra)
            end.record()
        torch.cuda.synchronize()
    return [s.elapsed_time(e) for s, e in events]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir")
    ap.add_argument("--task", choices=["classify", "forward"], default="classify")
    ap.add_argument("--precision", default="fp16,int8,nf4")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--outlier-dims", type=int, default=0)
    ap.add_argument("--int8-threshold", type=float, default=6.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--compare", default=None, help="a qtrace run folder measured on the same inputs")
    ap.add_argument("--no-mask", action="store_true",
                    help="call the model without attention_mask (a diagnostic variant, not qtrace's inputs)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("plain_latency: needs a CUDA GPU", file=sys.stderr)
        return 2
    AutoConfig.from_pretrained(args.model_dir, local_files_only=True)  # fail early on a bad folder
    run = json.loads((Path(args.compare) / "run.json").read_text()) if args.compare else None
    for precision in args.precision.split(","):
        model = load(args.model_dir, precision, args.task, args.int8_threshold)
        scale_norms(model, args.outlier_dims)
        ms = time_forward(model, args.batch_size, args.seq_len, args.seed, args.warmup, args.iters,
                          mask=not args.no_mask)
        out = {"precision": precision, "batch_size": args.batch_size, "seq_len": args.seq_len,
               "outlier_dims": args.outlier_dims, "attention_mask": not args.no_mask,
               "median_ms": statistics.median(ms),
               "p90_ms": sorted(ms)[int(0.9 * (len(ms) - 1))], "min_ms": min(ms), "n": len(ms),
               "device": torch.cuda.get_device_name(0), "torch": torch.__version__}
        if run is not None and not args.no_mask:
            q = run["precisions"].get(precision, {}).get("latency_ms", {}).get("per_iter", {}).get("median")
            if q:
                out["qtrace_median_ms"] = q
                out["qtrace_over_plain"] = q / out["median_ms"]
        print(json.dumps(out), flush=True)
        del model
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
