"""The seed course notebook's measuring logic (earino/applied-deep-learning week5_lab), as a
plain script, on random-weight checkpoints and random token ids instead of the dataset.

    python examples/seed_lab/lab.py CHECKPOINT_DIR [--models encoder,decoder] [--ckpt fp32|fp16]
                                    [--precisions fp16,int8,int4] [--val-batches N]

Kept exactly as the notebook does it: the from_pretrained arguments per precision (int8 and int4
pass no dtype), empty_cache + reset_peak_memory_stats before loading, fp16 autocast + no_grad
around every forward at every precision, batch 32, dynamic padding up to 128 tokens, an untimed
inference pass, then latency on 256 examples: 3 warm-up + 5 timed batches (perf_counter with a
synchronize before and after), median / 32 = ms per example, max_memory_allocated read once at
the end. Changed: `--val-batches` (default 8) batches stand in for the 6,430-example validation
pass, and labels are random, so accuracy and macro-F1 only show that the pipeline runs.
Run it unchanged under `qtrace run -- python examples/seed_lab/lab.py ...` to have it explained.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, BitsAndBytesConfig

NUM_LABELS = 113
MAX_LENGTH = 128
BATCH = 32


def load_model_at_precision(model_id: str, precision: str, num_labels: int = NUM_LABELS) -> torch.nn.Module:
    kwargs = {"num_labels": num_labels, "device_map": {"": 0}}
    if precision == "fp16":
        kwargs["dtype"] = torch.float16
    elif precision == "int8":
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    elif precision == "int4":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.float16)
    model = AutoModelForSequenceClassification.from_pretrained(model_id, **kwargs)
    model.eval()
    return model


def make_texts(n: int, vocab: int, seed: int) -> list[list[int]]:
    """Token-id "texts" of random lengths (the tokenizer's output stands in for the complaints)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(24, 2 * MAX_LENGTH, size=n)  # some longer than 128: truncation matters
    return [rng.integers(3, vocab, size=int(k)).tolist() for k in lengths]


def tokenize(batch: list[list[int]], pad_id: int, left: bool, device: str) -> dict[str, torch.Tensor]:
    """padding=True, truncation=True, max_length=128, return_tensors="pt"; left padding for the decoder."""
    rows = [t[:MAX_LENGTH] for t in batch]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        sl = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, sl] = torch.tensor(r)
        mask[i, sl] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


def run_inference(model: torch.nn.Module, texts: list[list[int]], pad_id: int, left: bool,
                  batch_size: int = BATCH) -> np.ndarray:
    all_logits = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            enc = tokenize(texts[i:i + batch_size], pad_id, left, model.device)
            with torch.amp.autocast("cuda", dtype=torch.float16):
                out = model(**enc)
            all_logits.append(out.logits.float().cpu().numpy())
    return np.concatenate(all_logits)


def measure_latency(model: torch.nn.Module, texts: list[list[int]], pad_id: int, left: bool,
                    batch_size: int = BATCH, n_warmup: int = 3, n_timed: int = 5) -> float:
    batches = []
    for i in range(n_warmup + n_timed):  # pre-tokenized on the device: tokenization is not timed
        start = (i * batch_size) % max(1, len(texts) - batch_size)
        batches.append(tokenize(texts[start:start + batch_size], pad_id, left, model.device))
    with torch.no_grad():
        for b in batches[:n_warmup]:
            with torch.amp.autocast("cuda", dtype=torch.float16):
                model(**b)
        torch.cuda.synchronize()
        times_ms = []
        for b in batches[n_warmup:]:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            with torch.amp.autocast("cuda", dtype=torch.float16):
                model(**b)
            torch.cuda.synchronize()
            times_ms.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times_ms) / batch_size)


def macro_f1(y: np.ndarray, p: np.ndarray) -> float:
    scores = []
    for c in np.union1d(y, p):
        tp = np.sum((p == c) & (y == c))
        fp, fn = np.sum((p == c) & (y != c)), np.sum((p != c) & (y == c))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else 0.0


def measure_quantized_model(name: str, model_id: str, precision: str, left: bool, val_batches: int) -> dict:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()  # before the load, as the notebook does
    model = load_model_at_precision(model_id, precision)
    pad_id = model.config.pad_token_id
    if pad_id is None:  # fix_pad_token: pad = eos
        pad_id = model.config.eos_token_id
        model.config.pad_token_id = pad_id
    vocab = model.config.vocab_size
    val = make_texts(val_batches * BATCH, vocab, seed=42)
    labels = np.random.default_rng(42).integers(0, NUM_LABELS, size=len(val))
    logits = run_inference(model, val, pad_id, left)
    preds = logits.argmax(-1)
    latency = measure_latency(model, make_texts(256, vocab, seed=7), pad_id, left)
    vram_gb = torch.cuda.max_memory_allocated() / 1e9
    row = {"model": name, "precision": precision, "accuracy": float(np.mean(preds == labels)),
           "macro_f1": macro_f1(labels, preds), "latency_ms": latency, "vram_gb": vram_gb, "batch_size": BATCH}
    del model
    gc.collect()
    torch.cuda.empty_cache()
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="The seed notebook's latency and VRAM table")
    ap.add_argument("checkpoints", type=Path)
    ap.add_argument("--models", default="encoder,decoder")
    ap.add_argument("--ckpt", default="fp32", choices=("fp32", "fp16"))
    ap.add_argument("--precisions", default="fp16,int8,int4")
    ap.add_argument("--val-batches", type=int, default=8)
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("lab.py measures on a CUDA GPU (as the notebook does); none is available", file=sys.stderr)
        return 2
    rows = []
    models = a.models.split(",")
    for precision in a.precisions.split(","):  # the notebook's order: enc fp16, dec fp16, enc int8, ...
        for name in models:
            rows.append(measure_quantized_model(name, str(a.checkpoints / f"{name}-{a.ckpt}"), precision,
                                                left=(name == "decoder"), val_batches=a.val_batches))
            print(f"{name} {precision}: {rows[-1]['latency_ms']:.2f} ms/example, {rows[-1]['vram_gb']:.2f} GB",
                  flush=True)
    import pandas as pd

    summary_df = pd.DataFrame(rows).sort_values(["model", "precision"])
    summary_df = summary_df.round({"accuracy": 4, "macro_f1": 4, "latency_ms": 2, "vram_gb": 2})
    print(summary_df.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
