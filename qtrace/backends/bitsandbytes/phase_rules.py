"""bitsandbytes' phases, its rows of the phase rule table, and the kinds of what its ops allocate.

The call nesting these rules read is in docs/phases.md (bitsandbytes 0.50.x): LLM.int8's
``Linear8bitLt`` runs ``int8_vectorwise_quant`` (the outlier check and row-wise quantization),
then ``int8_mixed_scaled_mm`` (outlier gather, the int8 GEMM and dequant, the fp16 outlier GEMM);
NF4's ``Linear4bit`` runs everything under ``gemm_4bit``.
"""

from __future__ import annotations

from qtrace.backends.base import GEMM_OPS, KindRule, Rule

PHASES: dict[str, tuple[str, str]] = {
    "int8.outlier_detect": ("outlier extraction", "abs/compare/any/nonzero of the outlier check, with its copies"),
    "int8.outlier_gather": ("outlier extraction", "index of activation and weight outlier columns, weight dequant"),
    "int8.act_quant": ("quantize", "row-wise int8 quantization of activations, zeroing outlier columns"),
    "int8.gemm": ("int8 GEMM", "the int8 x int8 -> int32 matmul"),
    "int8.dequant": ("dequant-sum", "int32 -> fp16 dequant, bias add, casts"),
    "int8.outlier_gemm": ("fp16 outlier GEMM", "the fp16 matmul of outlier columns and its sum into the output"),
    "nf4.dequant": ("dequant", "NF4 -> fp16 weight dequant (kDequantizeBlockwise) and scale offsets"),
    "nf4.fused_gemm": ("4-bit GEMM (fused)", "fused dequant+GEMM kernels; dequant cannot be separated"),
}

_NF4_OPS = r"bitsandbytes::(gemm_4bit|gemv_4bit|dequantize_4bit|dequantize_blockwise|dequantize_nf4)"

# By the bitsandbytes op and the aten op under it; tried before anything else.
OP_RULES: list[Rule] = [
    # --- LLM.int8 ----------------------------------------------------------------------------
    Rule("int8.act_quant", "the row-wise quantization kernel", quant_op="int8_vectorwise_quant",
         kernel="kInt8VectorQuant"),
    Rule("int8.outlier_detect", "outlier check: |A| >= threshold, any(), .item() sync, nonzero",
         quant_op="int8_vectorwise_quant",
         below_quant_op=r"^aten::(abs|ge|gt|any|is_nonzero|item|_local_scalar_dense|argwhere|nonzero|unique|amax|max)\b"),
    Rule("int8.act_quant", "zeroing outlier columns (index_put_) and the rest of the quantization op",
         quant_op="int8_vectorwise_quant"),
    Rule("int8.act_quant", "older bitsandbytes quantization ops",
         quant_op=r"int8_double_quant|int8_row_stats|int8_quant"),
    Rule("int8.outlier_gather", "weight outlier columns back to float", quant_op="int8_vectorwise_dequant"),
    Rule("int8.gemm", "int8 x int8 -> int32 matmul", quant_op="int8_linear_matmul"),
    Rule("int8.dequant", "int32 accumulator -> fp16 with row/col scales", quant_op="int8_mm_dequant"),
    Rule("int8.dequant", "bias add and casts around the scaled matmul", quant_op="int8_scaled_mm"),
    Rule("int8.outlier_gather", "A[:, cols] and CB[:, cols]", quant_op="int8_mixed_scaled_mm",
         below_quant_op=r"^aten::index\b"),
    Rule("int8.outlier_gemm", "the fp16 outlier matmul, its copy and the sum",
         quant_op="int8_mixed_scaled_mm", below_quant_op=r"."),
    Rule("int8.dequant", "the mixed matmul op's own dispatch: it wraps the scaled matmul and the sum",
         quant_op="int8_mixed_scaled_mm"),
    # --- NF4 ---------------------------------------------------------------------------------
    Rule("nf4.fused_gemm", "fused 4-bit dequant+GEMM kernel", quant_op=_NF4_OPS,
         kernel=r"gemm_4bit|gemv_4bit|kgemm_4bit"),
    Rule("nf4.fused_gemm", "one-token 4-bit GEMV op (older bitsandbytes)", quant_op="gemv_4bit"),
    Rule("nf4.dequant", "blockwise dequant kernels", quant_op=_NF4_OPS, kernel=r"[Dd]equantize"),
    Rule("dense.gemm", "the GEMM after dequantizing NF4 weights", quant_op=_NF4_OPS, below_quant_op=GEMM_OPS),
    Rule("nf4.dequant", "scale offset add and buffers of the 4-bit path", quant_op=_NF4_OPS),
]

# By kernel name alone, for traces without op ancestry (e.g. a GPU-only trace), and only on a trace
# that shows bitsandbytes (quant_backend): generic names such as MIOpen's bf16 `igemm_*` convolutions
# or cuBLAS `imma` kernels must not turn a float trace into "quantization phases".
_BNB = r"^bitsandbytes$"
KERNEL_RULES: list[Rule] = [
    Rule("int8.act_quant", "bitsandbytes quantization kernels", kernel=r"kInt8VectorQuant|kInt8RowStats|kDoubleRowCol",
         quant_backend=_BNB),
    Rule("int8.dequant", "bitsandbytes int32 dequant kernel", kernel=r"kdequant_mm", quant_backend=_BNB),
    Rule("int8.gemm", "int8 tensor-core GEMM kernels", kernel=r"gemm_s8|_s8_|i8816|i16832|imma|igemm|int8gemm",
         quant_backend=_BNB),
    Rule("nf4.fused_gemm", "bitsandbytes 4-bit GEMM kernels", kernel=r"gemm_4bit|gemv_4bit|kgemm_4bit",
         quant_backend=_BNB),
    Rule("nf4.dequant", "bitsandbytes blockwise dequant kernels", kernel=r"kDequantizeBlockwise|kDequantize",
         quant_backend=_BNB),
]

# What each op allocates, read from bitsandbytes 0.50.x (docs/memory.md). First match wins.
MEMORY_KINDS: list[KindRule] = [
    # LLM.int8
    KindRule("outlier column indices", r"^int8\.outlier_detect$", ops=r"^aten::(nonzero|argwhere)\b"),
    KindRule("outlier check temporaries", r"^int8\.outlier_detect$"),  # |A|, the >= mask, any() flags
    KindRule("outlier column indices", r"^int8\.act_quant$", ops=r"index_put_|^aten::nonzero\b"),
    KindRule("int8 activations", r"^int8\.act_quant$"),  # int8 [T, K] + fp32 row scales [T]
    KindRule("outlier columns", r"^int8\.outlier_gather$"),  # A[:, cols] fp16, CB[:, cols] and its dequant
    KindRule("int32 accumulator", r"^int8\.gemm$"),
    KindRule("dequantized output", r"^int8\.dequant$"),
    KindRule("outlier GEMM output", r"^int8\.outlier_gemm$"),
    # NF4
    KindRule("4-bit GEMM output", r"^nf4\.", ops=r"^aten::empty(/|$)", quant_op_phase=r"^nf4\.fused_gemm$"),
    KindRule("dequantized weight", r"^nf4\.dequant$", ops=r"^aten::empty(/|$)"),  # the [N, K] buffer
    KindRule("dequantized scales", r"^nf4\.dequant$", ops=r"^aten::(empty_like|empty_strided|add)\b"),
    KindRule("dequant buffers", r"^nf4\.dequant$"),
    KindRule("4-bit GEMM output", r"^nf4\.fused_gemm$"),
]


def detect_precision(op_names: object) -> str | None:
    """int8 or nf4 from the distinct op names of a trace (a pandas Series of str), else None."""
    names = op_names  # pandas Series
    if names.str.startswith("bitsandbytes::int8").any():  # type: ignore[attr-defined]
        return "int8"
    if names.str.contains(r"bitsandbytes::(?:gemm_4bit|gemv_4bit|dequantize_4bit)", regex=True).any():  # type: ignore[attr-defined]
        return "nf4"
    return None
