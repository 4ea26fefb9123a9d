"""torchao's phases, its rows of the phase rule table, and the kinds of what its ops allocate.

What a torchao 0.18 trace shows (read off CPU traces on this project's machine and torchao's
source; docs/backends.md has the table per mode). A quantized `nn.Linear` keeps its class; its
weight becomes a tensor subclass whose linear runs, with no op of its own around it:

- int8 weight-only (`Int8Tensor`): `_to_copy` of the int8 weight to the activation dtype, `mm`,
  `mul` by the per-row scales, `add_` of the bias;
- int8 dynamic W8A8 (`Int8Tensor` with activation quantization, tagged `Int8Tensor+act`): the
  custom ops `torchao::choose_qparams_affine` and `torchao::quantize_affine` on the activation,
  `aten::_int_mm`, then casts and `mul`s of the int32 result by both scales. On CUDA, between the
  quantization and `_int_mm`, `torchao.kernel.intmm.safe_int_mm` tests `"FakeTensor" in
  input.__repr__()`, which formats the activation: `select`/`slice`/`cat`/`stack`/`unbind` of
  its summarized corners, then an `item` or a `to` per printed element, each a device-to-host copy
  and a sync (48 per linear on the H200 traces; pytorch/ao#4872). Those ops and copies are
  `torchao.repr_probe`; only the few microseconds of its `to`/`_to_copy` wrappers' own host time
  stay in `scale_apply`, since nothing in their context tells them from the result's cast;
- int4 weight-only via IntxWeightOnlyConfig (`IntxUnpackedToInt8Tensor`): the custom op
  `torchao::dequantize_affine` on the weight, then an ordinary `linear` / `addmm`;
- fp8 weight-only (`Float8Tensor`): `_to_copy` + `mul` (the dequant), `matmul` / `mm`;
- fp8 dynamic W8A8 (`Float8Tensor+act`, CUDA >= 8.9): `torchao::_choose_scale_float8` and
  plain aten ops quantizing the activation, then `aten::_scaled_mm` (scales and bias inside);
- int4 tinygemm (`Int4TilePackedTo4dTensor`, CUDA): bf16 cast and pad of the activation,
  `aten::_weight_int4pack_mm`; `aten::_convert_weight_to_int4pack` packs at load.

So the rows key on the `torchao::` op where there is one, else on the weight's tensor class that
qtrace records on its module annotation (`weight` context), then on the aten GEMM op. Kernel
names come last and only for the GEMMs, whose kernels are not torchao's own.
"""

from __future__ import annotations

from qtrace.backends.base import GEMM_OPS, KindRule, Rule

PHASES: dict[str, tuple[str, str]] = {
    "torchao.act_quant": ("quantize", "dynamic activation quantization: scale choice, round, clamp, cast"),
    "torchao.act_prep": ("quantize", "bf16 cast and padding of the activation that the int4 tinygemm kernel needs"),
    "torchao.weight_dequant": ("dequant", "weight back to the activation dtype (weight-only modes), per call"),
    "torchao.int8_gemm": ("int8 GEMM", "int8 x int8 -> int32 matmul (aten::_int_mm)"),
    "torchao.int4_gemm": ("int4 GEMM", "tinygemm int4 weight x bf16 matmul (aten::_weight_int4pack_mm)"),
    "torchao.fp8_gemm": ("fp8 GEMM", "fp8 x fp8 matmul with scales and bias fused (aten::_scaled_mm)"),
    "torchao.wo_gemm": ("dequant GEMM", "float GEMM on the weight a weight-only mode just dequantized"),
    "torchao.scale_apply": ("dequant-sum", "int32 or float GEMM output times the scales, bias add, casts"),
    "torchao.repr_probe": ("repr probe", "safe_int_mm's FakeTensor test formats the int8 activation on the host "
                           "before every eager int8 GEMM: element copies to the host, a sync each"),
    "torchao.pack": ("pack", "weight repacking into a kernel's layout (int4 tinygemm)"),
    "torchao.glue": ("torchao dispatch", "views, transposes and reshapes of the tensor subclass's linear"),
}

# The weight classes torchao 0.18 puts in a Linear (the `weight` context; "+act": activation too).
_ANY_WEIGHT = r"Tensor"
_DYN_INT8 = r"^Int8Tensor\+act$"
_DYN_FP8 = r"^Float8Tensor\+act$"
_TINYGEMM = r"^Int4TilePackedTo4dTensor$"
_WEIGHT_ONLY = r"Tensor$"  # no "+act": the activation stays float
_CASTS = r"^aten::(_to_copy|to|copy_|clone|contiguous)\b"
_VIEWS = (r"^aten::(t|transpose|view|reshape|_reshape_alias|flatten|unflatten|as_strided|expand|slice|select"
          r"|resolve_conj|resolve_neg|alias|detach|squeeze|unsqueeze|permute|empty|empty_strided|narrow)\b")
# What Tensor.__repr__ runs on an int8 tensor (anywhere in the op chain): no W8A8 linear op uses them.
_REPR_OPS = r"(^|/)aten::(item|_local_scalar_dense|select|slice|cat|stack|unbind|resolve_conj|resolve_neg|detach)\b"
_POINTWISE = r"^aten::(mul|mul_|add|add_|sub|sub_|div|div_)\b"

OP_RULES: list[Rule] = [
    # --- its own ops (torchao::, registered custom ops) ---------------------------------------
    Rule("torchao.weight_dequant", "weight dequant op (IntxWeightOnly int4, fp8 non-decomposed)",
         quant_op=r"^torchao::\w*dequantize"),
    Rule("torchao.act_quant", "activation scale choice and quantization ops",
         quant_op=r"^torchao::\w*(choose|quantize)"),
    Rule("torchao.pack", "weight packing ops", quant_op=r"^torchao::\w*pack"),
    # --- aten GEMMs torchao calls (any trace: these ops mean a quantized matmul) ---------------
    Rule("torchao.int8_gemm", "int8 x int8 -> int32 matmul", ops=r"aten::_int_mm\b", weight=_ANY_WEIGHT),
    Rule("torchao.int4_gemm", "tinygemm int4 matmul", ops=r"aten::_weight_int4pack_mm\w*"),
    Rule("torchao.fp8_gemm", "fp8 scaled matmul", ops=r"aten::_scaled_mm\b", weight=_ANY_WEIGHT),
    Rule("torchao.pack", "int4 weight packing for tinygemm", ops=r"aten::_convert_weight_to_int4pack\w*"),
    # --- the rest of a tensor subclass's linear, by its weight class --------------------------
    Rule("torchao.repr_probe", "int8 W8A8: the activation's repr copies elements to the host (scale apply never does)",
         weight=_DYN_INT8, kind=r"^gpu_memcpy$"),
    Rule("torchao.repr_probe", "int8 W8A8: the repr's element reads and the views of its summarized corners",
         weight=_DYN_INT8, ops=_REPR_OPS),
    Rule("torchao.wo_gemm", "weight-only: the float GEMM on the just-dequantized weight",
         weight=_WEIGHT_ONLY, ops=GEMM_OPS),
    Rule("torchao.glue", "views around the subclass's GEMM", weight=_ANY_WEIGHT, ops=_VIEWS),
    Rule("torchao.act_quant", "fp8 W8A8: amax, scale, clamp and the cast to fp8 of the activation",
         weight=_DYN_FP8),
    Rule("torchao.scale_apply", "int8 W8A8: int32 result to float, times activation and weight scales, bias",
         weight=_DYN_INT8),
    Rule("torchao.act_prep", "tinygemm: activation cast to bf16 and padded to 1024 columns",
         weight=_TINYGEMM, ops=r"^aten::(_to_copy|to|copy_|pad|constant_pad_nd)\b"),
    Rule("torchao.scale_apply", "tinygemm: bias add and cast back", weight=_TINYGEMM),
    Rule("torchao.weight_dequant", "fp8 weight-only: qdata.to(dtype) * scale is the weight's dequant",
         weight=r"^Float8Tensor$", ops=r"^aten::(mul|_to_copy|to|copy_)\b"),
    Rule("torchao.weight_dequant", "weight-only: the weight's cast to the activation dtype", weight=_WEIGHT_ONLY,
         ops=_CASTS),
    Rule("torchao.scale_apply", "weight-only: per-row scales times the GEMM output, bias add",
         weight=_WEIGHT_ONLY, ops=_POINTWISE),
    Rule("torchao.glue", "other ops of the subclass's linear", weight=_ANY_WEIGHT),
]

# By kernel name alone (no op ancestry): only what is unambiguous.
KERNEL_RULES: list[Rule] = [
    Rule("torchao.int4_gemm", "tinygemm kernels", kernel=r"tinygemm|_weight_int4pack_mm|tinygemm_m16n8k16"),
]

MEMORY_KINDS: list[KindRule] = [
    KindRule("quantized activations", r"^torchao\.(act_quant|act_prep)$"),
    KindRule("dequantized weight", r"^torchao\.weight_dequant$"),
    KindRule("int32 accumulator", r"^torchao\.int8_gemm$"),
    KindRule("GEMM output", r"^torchao\.(int4_gemm|fp8_gemm|wo_gemm)$"),
    KindRule("scaled output", r"^torchao\.scale_apply$"),
    KindRule("packed weight", r"^torchao\.pack$"),
    KindRule("views", r"^torchao\.glue$"),
    KindRule("repr copies", r"^torchao\.repr_probe$"),
]


def detect_precision(op_names: object) -> str | None:
    """The torchao precision of a trace from its distinct op names (pandas Series of str), else None.

    The weight-only int8 and fp8 modes have no op of their own: only qtrace's metadata (or the
    module annotations' weight class) names them.
    """
    names = op_names
    if names.str.contains(r"aten::_weight_int4pack_mm", regex=True).any():  # type: ignore[attr-defined]
        return "torchao-int4"
    if names.str.contains(r"torchao::_choose_scale_float8", regex=False).any():  # type: ignore[attr-defined]
        return "torchao-fp8"
    if names.str.contains(r"torchao::quantize_affine", regex=False).any():  # type: ignore[attr-defined]
        return "torchao-w8a8"
    if names.str.contains(r"torchao::dequantize_affine", regex=False).any():  # type: ignore[attr-defined]
        return "torchao-intx4"
    return None
