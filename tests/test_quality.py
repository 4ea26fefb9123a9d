"""Quality figures against independent torch computations, and the probe's baseline handling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from qtrace.analyzers import quality
from qtrace.capture.quality import QualityProbe


def _pair(seed: int = 0, shape: tuple[int, ...] = (2, 7, 50)) -> tuple[np.ndarray, np.ndarray]:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g) * 3
    other = base + 0.3 * torch.randn(shape, generator=g)
    return base.numpy(), other.numpy()


def test_compare_logits_against_torch() -> None:
    base, other = _pair()
    got = quality.compare_logits(base, other)
    b = torch.from_numpy(base).double().reshape(-1, base.shape[-1])
    o = torch.from_numpy(other).double().reshape(-1, base.shape[-1])
    kl_rows = F.kl_div(F.log_softmax(o, -1), F.log_softmax(b, -1), log_target=True, reduction="none").sum(-1)
    assert got["kl_mean"] == pytest.approx(F.kl_div(F.log_softmax(o, -1), F.log_softmax(b, -1), log_target=True,
                                                     reduction="batchmean").item(), rel=1e-9)
    assert got["kl_max"] == pytest.approx(kl_rows.max().item(), rel=1e-9)
    assert got["top1_agreement"] == pytest.approx((b.argmax(-1) == o.argmax(-1)).double().mean().item())
    assert got["max_abs_diff"] == pytest.approx((b - o).abs().max().item(), rel=1e-6)
    assert got["mean_abs_diff"] == pytest.approx((b - o).abs().mean().item(), rel=1e-6)


def test_identical_logits() -> None:
    base, _ = _pair(1)
    got = quality.compare_logits(base, base.copy())
    assert got["top1_agreement"] == 1.0 and got["max_abs_diff"] == 0.0 and got["kl_mean"] == pytest.approx(0, abs=1e-12)


def test_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        quality.compare_logits(np.zeros((2, 3)), np.zeros((3, 3)))


def test_perplexity_against_cross_entropy() -> None:
    base, _ = _pair(2)
    ids = torch.randint(0, base.shape[-1], base.shape[:2], generator=torch.Generator().manual_seed(3))
    logits = torch.from_numpy(base).double()
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, base.shape[-1]), ids[:, 1:].reshape(-1))
    assert quality.perplexity(base, ids.numpy()) == pytest.approx(math.exp(ce.item()), rel=1e-9)


def test_quality_block_and_line() -> None:
    base, other = _pair(4)
    ids = np.zeros(base.shape[:2], dtype=np.int64)
    block = quality.quality_block("fp32", {"rows": 2}, base, other, ids, quality.perplexity(base, ids))
    assert block["baseline"] == "fp32" and "not task accuracy" in block["note"]
    assert block["perplexity"] > 0 and block["baseline_perplexity"] > 0
    line = quality.quality_line(block)
    assert line.startswith("Quality vs fp32") and "top-1 agreement" in line and "perplexity" in line
    assert quality.quality_line(None) is None
    assert "baseline" in quality.quality_line({"baseline": "fp32", "is_baseline": True})


class _Out:
    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits


class _Toy(torch.nn.Module):
    """A tiny causal 'LM': embedding + linear, with a config as the probe reads it."""

    class config:  # noqa: N801 - mimics a transformers config attribute
        vocab_size = 32
        pad_token_id = 0

    def __init__(self, noise: float = 0.0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(32, 16)
        self.head = torch.nn.Linear(16, 32)
        if noise:
            with torch.no_grad():
                self.head.weight.add_(noise * torch.randn_like(self.head.weight))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, use_cache: bool = False) -> _Out:
        return _Out(self.head(self.emb(input_ids)))


def test_probe_baseline_then_compare() -> None:
    probe = QualityProbe("forward", "decoder", batch_size=8, seq_len=12, seed=5)
    first = probe.observe("fp32", _Toy())
    assert first["is_baseline"] and first["inputs"]["rows"] == 4 and first["perplexity"] > 0
    same = probe.observe("copy", _Toy())
    assert same["top1_agreement"] == 1.0 and same["max_abs_diff"] == 0.0
    noisy = probe.observe("noisy", _Toy(noise=0.5))
    assert noisy["baseline"] == "fp32" and noisy["kl_mean"] > 0 and noisy["max_abs_diff"] > 0
    # Independent: the same ids through both models by hand.
    from qtrace.capture.protocol import prompt_ids

    ids = prompt_ids(32, 0, 4, 12, 5)
    with torch.no_grad():
        b, o = _Toy()(ids, None).logits, _Toy(noise=0.5)(ids, None).logits
    assert noisy["max_abs_diff"] == pytest.approx((b - o).abs().max().item(), rel=1e-5)


def test_probe_error_does_not_raise() -> None:
    probe = QualityProbe("classify", "encoder", batch_size=1, seq_len=4, seed=0)
    out = probe.observe("fp32", object())
    assert "error" in out and probe.baseline is None
