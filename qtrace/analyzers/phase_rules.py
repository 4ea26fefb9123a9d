"""The phase rules: the one table that maps trace events to quantization phases.

Vocabulary and call nesting: see docs/phases.md (from the design notes). Each GPU event (and
each host op) is described by a *context* read from the trace:

- ``kind``: ``kernel``, ``gpu_memcpy``, ``gpu_memset`` or ``cpu_op`` (host ops have no kernel);
- ``quant_op``: the innermost op of a quantization backend enclosing the launch, e.g. a
  ``bitsandbytes::`` op (``""`` if none; backends register their op prefixes);
- ``below_quant_op``: the op names under that op, outermost first, ``/``-joined;
- ``module``: the class name of the innermost ``qtrace.module:`` annotation (``""`` if none);
- ``weight``: that module's weight tensor class when it is a tensor subclass (torchao), else ``""``;
- ``ops``: the names of all enclosing host ops, innermost first, ``/``-joined;
- ``kernel``: the GPU event's name.

Rules are tried in order and the first match wins, so attribution goes by op ancestry first (the
backend's op and the aten op under it), then qtrace's module annotations, then the aten op, and
by kernel name last. Each pattern is a regular expression searched in its context field. The
backends (`qtrace/backends/<name>/phase_rules.py`) contribute their phases and two blocks of
rows: their op rules at the top and their kernel-name rules at the head of the kernel block.
"""

from __future__ import annotations

import functools
import re

import pandas as pd

from qtrace.backends import BACKENDS, Rule
from qtrace.backends.base import GEMM_OPS

# The model's own phases, after every backend's (phase id -> (group a reader knows, what lands there)).
MODEL_PHASES: dict[str, tuple[str, str]] = {
    "dense.gemm": ("fp16 GEMM", "GEMMs of non-quantized layers and of NF4 layers after dequant"),
    "attention": ("model", "attention: sdpa / flash / softmax"),
    "norm": ("model", "layer / RMS norm"),
    "elementwise": ("model", "activations, residual adds, rotary, casts, reductions, concatenation"),
    "embedding": ("model", "embedding lookups"),
    "memcpy": ("transfers", "copies and memsets not claimed by a phase above"),
    "other": ("other", "not matched by any rule"),
}
PHASES: dict[str, tuple[str, str]] = {**{p: v for b in BACKENDS for p, v in b.phases.items()}, **MODEL_PHASES}

PHASE_ORDER = list(PHASES)
QUANT_PHASES = [p for b in BACKENDS for p in b.phases]

STEP_ANNOTATION = re.compile(r"^(ProfilerStep#\d+|qtrace\.step:.*)$")
MODULE_ANNOTATION_PREFIX = "qtrace.module:"

_ATTENTION_OPS = (r"aten::(_?scaled_dot_product\w*|_flash_attention\w*|_efficient_attention\w*|_cudnn_attention\w*"
                  r"|_?softmax|_safe_softmax)\b")
_NORM_OPS = r"aten::(layer_norm|native_layer_norm|rms_norm|_fused_rms_norm|group_norm|batch_norm|native_batch_norm)\b"
_COPY_KINDS = r"^gpu_mem(cpy|set)$"


RULES: list[Rule] = [
    # --- each backend's own ops (the bitsandbytes op and the aten op under it, ...) ----------
    *(rule for b in BACKENDS for rule in b.op_rules),
    # --- qtrace module annotations -----------------------------------------------------------
    Rule("norm", "inside a norm module", module=r"Norm"),
    Rule("embedding", "inside an embedding module", module=r"Embedding"),
    Rule("attention", "attention math inside an attention module", module=r"Attention", ops=_ATTENTION_OPS),
    Rule("attention", "attention score GEMMs inside an attention module", module=r"Attention",
         ops=r"aten::(bmm|baddbmm|matmul)\b"),
    Rule("dense.gemm", "GEMM of a linear module", module=r"^(Linear|Conv1D|NonDynamicallyQuantizableLinear)$",
         ops=GEMM_OPS),
    # --- aten op ancestry --------------------------------------------------------------------
    Rule("attention", "attention ops", ops=_ATTENTION_OPS),
    Rule("norm", "norm ops", ops=_NORM_OPS),
    Rule("embedding", "embedding lookup", ops=r"aten::(embedding|embedding_bag)\b"),
    Rule("dense.gemm", "dense matmul ops", ops=GEMM_OPS),
    Rule("memcpy", "copies and memsets", kind=_COPY_KINDS),
    Rule("elementwise", "other aten ops of the model (pointwise, reductions, cat, casts)", ops=r"aten::"),
    # --- kernel names, when the trace has no op ancestry (e.g. a GPU-only trace) -------------
    *(rule for b in BACKENDS for rule in b.kernel_rules),
    Rule("attention", "attention kernels", kernel=r"flash|fmha|sdpa|attention|[Ss]oftmax"),
    Rule("norm", "norm kernels", kernel=r"layer_norm|rms_norm|LayerNorm|RMSNorm|layernorm"),
    Rule("embedding", "embedding kernels", kernel=r"embedding|indexSelect"),
    Rule("dense.gemm", "GEMM kernels", kernel=r"gemm|nvjet|cutlass|xmma|cublas|splitKreduce|sgemm|hgemm"),
    Rule("elementwise", "pointwise / reduction kernels",
         kernel=r"elementwise|reduce_kernel|CatArrayBatchedCopy|vectorized|unrolled|index|gather|scatter|copy|fill"),
]

_CONTEXT_FIELDS = ("kind", "quant_op", "below_quant_op", "module", "weight", "ops", "kernel")


def _check_rules() -> None:
    for rule in RULES:
        if rule.phase not in PHASES:
            raise ValueError(f"rule names unknown phase {rule.phase!r}")
        for pattern in rule.fields().values():
            re.compile(pattern)


_check_rules()


@functools.cache
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def group_of(phase: str) -> str:
    return PHASES.get(phase, PHASES["other"])[0]


def classify(contexts: pd.DataFrame) -> pd.Series:
    """Phase of each row of `contexts` (columns: kind, bnb, below_bnb, module, ops, kernel).

    Vectorized over unique contexts: a trace has many kernels but few distinct contexts.
    """
    if contexts.empty:
        return pd.Series([], dtype=object, index=contexts.index)
    # A context without `weight` (callers from before the field existed) reads as no subclass weight.
    ctx = contexts.reindex(columns=list(_CONTEXT_FIELDS), fill_value="").fillna("").astype(str)
    unique = ctx.drop_duplicates().reset_index(drop=True)
    phase = pd.Series("other", index=unique.index, dtype=object)
    open_rows = pd.Series(True, index=unique.index)
    for rule in RULES:
        if not open_rows.any():
            break
        hit = open_rows.copy()
        for field_name, pattern in rule.fields().items():
            rx = _compiled(pattern)
            hit &= unique[field_name].map(lambda text, rx=rx: rx.search(text) is not None).astype(bool)
        phase[hit] = rule.phase
        open_rows &= ~hit
    unique["phase"] = phase
    merged = ctx.merge(unique, on=list(_CONTEXT_FIELDS), how="left")
    return pd.Series(merged["phase"].to_numpy(), index=contexts.index, dtype=object)


def rules_table() -> pd.DataFrame:
    """The rules as a table, for `docs/` and for users who ask why an event landed where it did."""
    return pd.DataFrame([{"order": i, "phase": r.phase, "group": group_of(r.phase), "why": r.why, **r.fields()}
                         for i, r in enumerate(RULES)])
