"""The torch side of the quality cost: the same fixed inputs through every precision's model.

The first precision of a run that loads is the baseline: its logits are kept (on the CPU, as
float32) and every later precision's are compared with them by qtrace.analyzers.quality. The
inputs are seeded from the run's seed, so they are the same for every precision (and the same
as the first rows of the workload's prompt 0).
"""

from __future__ import annotations

from typing import Any

from qtrace.analyzers import quality as figures

MAX_ROWS = 4  # enough positions for stable figures; keeps a 152k-vocabulary baseline under ~0.3 GB


class QualityProbe:
    def __init__(self, task: str, kind: str, batch_size: int, seq_len: int, seed: int) -> None:
        self.task = task
        self.kind = kind
        self.rows = min(batch_size, MAX_ROWS)
        self.seq_len = seq_len
        self.seed = seed
        self.baseline: tuple[str, Any, float | None] | None = None  # (precision, logits, perplexity)

    @property
    def causal_lm(self) -> bool:
        return self.kind == "decoder" and self.task != "classify"

    def inputs(self) -> dict[str, Any]:
        output = "class logits" if self.task == "classify" else ("LM logits" if self.causal_lm else "MLM logits")
        return {"rows": self.rows, "seq_len": self.seq_len, "seed": self.seed, "output": output}

    def observe(self, precision: str, model: Any) -> dict[str, Any]:
        """The quality block of `precision` (the first one observed becomes the baseline)."""
        try:
            logits, ids = self._logits(model)
        except Exception as exc:  # quality is a side figure: it must never cost the precision's timing
            return {"baseline": self.baseline[0] if self.baseline else None, "error": f"{type(exc).__name__}: {exc}"}
        ids_np = ids if self.causal_lm else None
        if self.baseline is None:
            ppl = figures.perplexity(logits, ids) if self.causal_lm else None
            self.baseline = (precision, logits, ppl)
            out: dict[str, Any] = {"baseline": precision, "is_baseline": True, "inputs": self.inputs()}
            if ppl is not None:
                out["perplexity"] = round(ppl, 4)
            return out
        base_name, base, base_ppl = self.baseline
        return figures.quality_block(base_name, self.inputs(), base, logits, ids_np, base_ppl)

    def _logits(self, model: Any) -> tuple[Any, Any]:
        import torch

        from qtrace.capture.protocol import prompt_ids

        cfg = model.config
        ids = prompt_ids(int(cfg.vocab_size), int(cfg.pad_token_id), self.rows, self.seq_len, self.seed)
        device = next(model.parameters()).device
        extra = {"use_cache": False} if self.kind == "decoder" else {}
        with torch.inference_mode():
            out = model(input_ids=ids.to(device), attention_mask=torch.ones_like(ids).to(device), **extra)
        return out.logits.float().cpu().numpy(), ids.numpy()
