"""Quality cost of a precision: how far its outputs moved from the baseline's on the same inputs.

Pure numpy (no torch): qtrace.capture.quality runs the models and hands the logits here.

With qtrace's presets the weights are random, so these figures measure quantization *error*
(how much the quantized model's outputs drift from the baseline's), not task accuracy: a
random model's perplexity is about its vocabulary size whatever the precision.
"""

from __future__ import annotations

from typing import Any

import numpy as np

NOTE = "quantization error against the baseline on the same inputs; with random weights not task accuracy"


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64, copy=False)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def perplexity(logits: np.ndarray, ids: np.ndarray) -> float:
    """exp(mean next-token cross-entropy) of a causal LM on its prompt: logits [B, T, V], ids [B, T]."""
    logp = log_softmax(logits[:, :-1])
    target = ids[:, 1:]
    nll = -np.take_along_axis(logp, target[..., None], axis=-1)[..., 0]
    return float(np.exp(nll.mean()))


def compare_logits(base: np.ndarray, other: np.ndarray) -> dict[str, float]:
    """Figures of `other` against `base` (same shape, last axis the classes / vocabulary).

    top1_agreement: share of positions whose argmax agrees; kl_mean / kl_max: KL(base || other)
    per position in nats, mean and max over positions; max_abs_diff / mean_abs_diff: of the raw logits.
    """
    if base.shape != other.shape:
        raise ValueError(f"logits shapes differ: {base.shape} vs {other.shape}")
    b = base.reshape(-1, base.shape[-1]).astype(np.float64)
    o = other.reshape(-1, other.shape[-1]).astype(np.float64)
    lb, lo = log_softmax(b), log_softmax(o)
    kl = (np.exp(lb) * (lb - lo)).sum(axis=-1)
    diff = np.abs(b - o)
    return {
        "top1_agreement": float((b.argmax(axis=-1) == o.argmax(axis=-1)).mean()),
        "kl_mean": float(kl.mean()),
        "kl_max": float(kl.max()),
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
    }


def quality_block(baseline: str, inputs: dict[str, Any], base: np.ndarray, other: np.ndarray,
                  ids: np.ndarray | None, base_ppl: float | None) -> dict[str, Any]:
    """The `quality` block of run.json for one precision (`ids` given: a causal LM, perplexity too)."""
    out: dict[str, Any] = {"baseline": baseline, "inputs": inputs, **_rounded(compare_logits(base, other))}
    if ids is not None:
        out["perplexity"] = round(perplexity(other, ids), 4)
        out["baseline_perplexity"] = None if base_ppl is None else round(base_ppl, 4)
    out["note"] = NOTE
    return out


def _rounded(d: dict[str, float]) -> dict[str, float]:
    return {k: float(f"{v:.6g}") for k, v in d.items()}


def quality_line(q: dict[str, Any] | None) -> str | None:
    """One line for a report: "vs fp32: top-1 99.2%, KL 1.2e-04 nats, max |dlogit| 0.031, ppl 8210 (8200)"."""
    if not isinstance(q, dict):
        return None
    if q.get("error"):
        return f"Quality vs {q.get('baseline') or 'baseline'}: not measured ({q['error']})"
    if q.get("is_baseline"):
        ppl = f"; perplexity on the prompt {q['perplexity']:.4g}" if q.get("perplexity") is not None else ""
        return f"Quality: this precision is the baseline the others are measured against{ppl}"
    if q.get("top1_agreement") is None:
        return None
    bits = [f"top-1 agreement {100 * q['top1_agreement']:.1f}%", f"KL {q['kl_mean']:.3g} nats (max {q['kl_max']:.3g})",
            f"|dlogit| max {q['max_abs_diff']:.3g}, mean {q['mean_abs_diff']:.3g}"]
    if q.get("perplexity") is not None:
        bits.append(f"perplexity {q['perplexity']:.4g} (baseline {q.get('baseline_perplexity') or 0:.4g})")
    return f"Quality vs {q['baseline']} (same inputs; random weights: quantization error, not accuracy): " \
        + ", ".join(bits)
