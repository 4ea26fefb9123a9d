"""The phase rules: the one table that maps trace events to quantization phases.

Vocabulary and call nesting: see docs/phases.md (from the design notes). Each GPU event (and
each host op) is described by a *context* read from the trace:

- ``kind``: ``kernel``, ``gpu_memcpy``, ``gpu_memset`` or ``cpu_op`` (host ops have no kernel);
- ``bnb``: the innermost ``bitsandbytes::`` op enclosing the launch (``""`` if none);
- ``below_bnb``: the op names under that bnb op, outermost first, ``/``-joined;
- ``module``: the class name of the innermost ``qtrace.module:`` annotation (``""`` if none);
- ``ops``: the names of all enclosing host ops, innermost first, ``/``-joined;
- ``kernel``: the GPU event's name.

Rules are tried in order and the first match wins, so attribution goes by op ancestry first (the
bitsandbytes op and the aten op under it), then qtrace's module annotations, then the aten op,
and by kernel name last. Each pattern is a regular expression searched in its context field.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import pandas as pd

# phase id -> (group a reader knows, what lands there)
PHASES: dict[str, tuple[str, str]] = {
    "int8.outlier_detect": ("outlier extraction", "abs/compare/any/nonzero of the outlier check, with its copies"),
    "int8.outlier_gather": ("outlier extraction", "index of activation and weight outlier columns, weight dequant"),
    "int8.act_quant": ("quantize", "row-wise int8 quantization of activations, zeroing outlier columns"),
    "int8.gemm": ("int8 GEMM", "the int8 x int8 -> int32 matmul"),
    "int8.dequant": ("dequant-sum", "int32 -> fp16 dequant, bias add, casts"),
    "int8.outlier_gemm": ("fp16 outlier GEMM", "the fp16 matmul of outlier columns and its sum into the output"),
    "nf4.dequant": ("dequant", "NF4 -> fp16 weight dequant (kDequantizeBlockwise) and scale offsets"),
    "nf4.fused_gemm": ("4-bit GEMM (fused)", "fused dequant+GEMM kernels; dequant cannot be separated"),
    "dense.gemm": ("fp16 GEMM", "GEMMs of non-quantized layers and of NF4 layers after dequant"),
    "attention": ("model", "attention: sdpa / flash / softmax"),
    "norm": ("model", "layer / RMS norm"),
    "elementwise": ("model", "activations, residual adds, rotary, casts, reductions, concatenation"),
    "embedding": ("model", "embedding lookups"),
    "memcpy": ("transfers", "copies and memsets not claimed by a phase above"),
    "other": ("other", "not matched by any rule"),
}

PHASE_ORDER = list(PHASES)
QUANT_PHASES = [p for p in PHASES if p.startswith(("int8.", "nf4."))]

STEP_ANNOTATION = re.compile(r"^(ProfilerStep#\d+|qtrace\.step:.*)$")
MODULE_ANNOTATION_PREFIX = "qtrace.module:"

_GEMM_OPS = r"aten::(mm|addmm|bmm|baddbmm|matmul|linear|_int_mm|addmv|mv|_scaled_mm)\b"
_ATTENTION_OPS = (r"aten::(_?scaled_dot_product\w*|_flash_attention\w*|_efficient_attention\w*|_cudnn_attention\w*"
                  r"|_?softmax|_safe_softmax)\b")
_NORM_OPS = r"aten::(layer_norm|native_layer_norm|rms_norm|_fused_rms_norm|group_norm|batch_norm|native_batch_norm)\b"
_COPY_KINDS = r"^gpu_mem(cpy|set)$"
_NF4_OPS = r"bitsandbytes::(gemm_4bit|gemv_4bit|dequantize_4bit|dequantize_blockwise|dequantize_nf4)"


@dataclass(frozen=True)
class Rule:
    """Match when every given pattern is found in its context field; then the event is `phase`."""

    phase: str
    why: str
    bnb: str | None = None
    below_bnb: str | None = None
    module: str | None = None
    ops: str | None = None
    kernel: str | None = None
    kind: str | None = None

    def fields(self) -> dict[str, str]:
        return {k: v for k, v in (("bnb", self.bnb), ("below_bnb", self.below_bnb), ("module", self.module),
                                   ("ops", self.ops), ("kernel", self.kernel), ("kind", self.kind)) if v}


RULES: list[Rule] = [
    # --- LLM.int8: by the bitsandbytes op and the aten op under it ---------------------------
    Rule("int8.act_quant", "the row-wise quantization kernel", bnb="int8_vectorwise_quant", kernel="kInt8VectorQuant"),
    Rule("int8.outlier_detect", "outlier check: |A| >= threshold, any(), .item() sync, nonzero",
         bnb="int8_vectorwise_quant",
         below_bnb=r"^aten::(abs|ge|gt|any|is_nonzero|item|_local_scalar_dense|argwhere|nonzero|unique|amax|max)\b"),
    Rule("int8.act_quant", "zeroing outlier columns (index_put_) and the rest of the quantization op",
         bnb="int8_vectorwise_quant"),
    Rule("int8.act_quant", "older bitsandbytes quantization ops", bnb=r"int8_double_quant|int8_row_stats|int8_quant"),
    Rule("int8.outlier_gather", "weight outlier columns back to float", bnb="int8_vectorwise_dequant"),
    Rule("int8.gemm", "int8 x int8 -> int32 matmul", bnb="int8_linear_matmul"),
    Rule("int8.dequant", "int32 accumulator -> fp16 with row/col scales", bnb="int8_mm_dequant"),
    Rule("int8.dequant", "bias add and casts around the scaled matmul", bnb="int8_scaled_mm"),
    Rule("int8.outlier_gather", "A[:, cols] and CB[:, cols]", bnb="int8_mixed_scaled_mm", below_bnb=r"^aten::index\b"),
    Rule("int8.outlier_gemm", "the fp16 outlier matmul, its copy and the sum",
         bnb="int8_mixed_scaled_mm", below_bnb=r"."),
    Rule("int8.dequant", "the mixed matmul op's own dispatch: it wraps the scaled matmul and the sum",
         bnb="int8_mixed_scaled_mm"),
    # --- NF4 ---------------------------------------------------------------------------------
    Rule("nf4.fused_gemm", "fused 4-bit dequant+GEMM kernel", bnb=_NF4_OPS, kernel=r"gemm_4bit|gemv_4bit|kgemm_4bit"),
    Rule("nf4.fused_gemm", "one-token 4-bit GEMV op (older bitsandbytes)", bnb="gemv_4bit"),
    Rule("nf4.dequant", "blockwise dequant kernels", bnb=_NF4_OPS, kernel=r"[Dd]equantize"),
    Rule("dense.gemm", "the GEMM after dequantizing NF4 weights", bnb=_NF4_OPS, below_bnb=_GEMM_OPS),
    Rule("nf4.dequant", "scale offset add and buffers of the 4-bit path", bnb=_NF4_OPS),
    # --- qtrace module annotations -----------------------------------------------------------
    Rule("norm", "inside a norm module", module=r"Norm"),
    Rule("embedding", "inside an embedding module", module=r"Embedding"),
    Rule("attention", "attention math inside an attention module", module=r"Attention", ops=_ATTENTION_OPS),
    Rule("attention", "attention score GEMMs inside an attention module", module=r"Attention",
         ops=r"aten::(bmm|baddbmm|matmul)\b"),
    Rule("dense.gemm", "GEMM of a linear module", module=r"^(Linear|Conv1D|NonDynamicallyQuantizableLinear)$",
         ops=_GEMM_OPS),
    # --- aten op ancestry --------------------------------------------------------------------
    Rule("attention", "attention ops", ops=_ATTENTION_OPS),
    Rule("norm", "norm ops", ops=_NORM_OPS),
    Rule("embedding", "embedding lookup", ops=r"aten::(embedding|embedding_bag)\b"),
    Rule("dense.gemm", "dense matmul ops", ops=_GEMM_OPS),
    Rule("memcpy", "copies and memsets", kind=_COPY_KINDS),
    Rule("elementwise", "other aten ops of the model (pointwise, reductions, cat, casts)", ops=r"aten::"),
    # --- kernel names, when the trace has no op ancestry (e.g. a GPU-only trace) -------------
    Rule("int8.act_quant", "bitsandbytes quantization kernels", kernel=r"kInt8VectorQuant|kInt8RowStats|kDoubleRowCol"),
    Rule("int8.dequant", "bitsandbytes int32 dequant kernel", kernel=r"kdequant_mm"),
    Rule("int8.gemm", "int8 tensor-core GEMM kernels", kernel=r"gemm_s8|_s8_|i8816|i16832|imma|igemm|int8gemm"),
    Rule("nf4.fused_gemm", "bitsandbytes 4-bit GEMM kernels", kernel=r"gemm_4bit|gemv_4bit|kgemm_4bit"),
    Rule("nf4.dequant", "bitsandbytes blockwise dequant kernels", kernel=r"kDequantizeBlockwise|kDequantize"),
    Rule("attention", "attention kernels", kernel=r"flash|fmha|sdpa|attention|[Ss]oftmax"),
    Rule("norm", "norm kernels", kernel=r"layer_norm|rms_norm|LayerNorm|RMSNorm|layernorm"),
    Rule("embedding", "embedding kernels", kernel=r"embedding|indexSelect"),
    Rule("dense.gemm", "GEMM kernels", kernel=r"gemm|nvjet|cutlass|xmma|cublas|splitKreduce|sgemm|hgemm"),
    Rule("elementwise", "pointwise / reduction kernels",
         kernel=r"elementwise|reduce_kernel|CatArrayBatchedCopy|vectorized|unrolled|index|gather|scatter|copy|fill"),
]

_CONTEXT_FIELDS = ("kind", "bnb", "below_bnb", "module", "ops", "kernel")


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
    ctx = contexts.loc[:, list(_CONTEXT_FIELDS)].fillna("").astype(str)
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
