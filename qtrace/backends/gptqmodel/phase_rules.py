"""GPTQModel's phases (GPTQ and AWQ), its rows of the phase rule table, and what its ops allocate.

What a GPTQModel 7.3.6 trace shows (read off CPU traces on this project's machine and its
source, `gptqmodel/nn_modules/qlinear/`). A quantized linear is one of its own modules, not an
`nn.Linear`: qtrace's module annotation names its class, which says the kernel:

- torch kernels (`TorchLinear` for GPTQ, `AwqTorchLinear` for AWQ): no op of their own. Per call
  the packed int32 weight is unpacked with `bitwise_right_shift` + `bitwise_and` (8 nibbles per
  int32, `expand`ed views), the zero points likewise; then `index` gathers each group's scale
  and zero, `sub` + `mul` dequantize, and an ordinary `matmul` / `mm` runs on the float weight;
  a bias `add`. The whole weight is rebuilt on every forward, which is what these kernels cost;
- Triton (`TritonV2Linear`, CUDA): the same unpack + dequant as one Triton kernel, then `matmul`;
  on CUDA the GPTQ torch kernel launches that Triton `dequant_kernel` too (H200 traces);
- fused kernels (`MarlinLinear`, `AwqMarlinLinear`, ExLlama, AWQ GEMM; CUDA, compiled with nvcc
  on first use): one custom op, namespace `gptqmodel_marlin_fp16::` (`gptq_marlin_gemm_fp16`)
  and kin, whose kernel reads the int4 weight directly: an int4 x fp16 GEMM, no float weight.
  `gptq_marlin_repack` / `awq_marlin_repack` turn the checkpoint's layout into Marlin's at load.

So the rows key on the `gptqmodel*::` op where there is one, else on the module class with the
aten op. Kernel names come last, for traces without op ancestry.
"""

from __future__ import annotations

from qtrace.backends.base import GEMM_OPS, KindRule, Rule

PHASES: dict[str, tuple[str, str]] = {
    "gptqmodel.unpack": ("pack/unpack", "int4 nibbles out of the packed int32 weight and zero points: bit shifts, "
                                        "masks, their views and casts (torch kernels, per call)"),
    "gptqmodel.dequant": ("dequant", "per-group scale and zero gathered and applied to the unpacked weight: "
                                     "index, sub, mul (torch and Triton kernels, per call)"),
    "gptqmodel.dequant_gemm": ("fp16 GEMM after dequant", "float GEMM on the weight the torch / Triton kernel "
                                                          "just dequantized"),
    "gptqmodel.int4_gemm": ("int4 GEMM", "fused int4 weight x fp16 GEMM reading packed weights (Marlin, "
                                         "ExLlama, AWQ GEMM kernels)"),
    "gptqmodel.repack": ("pack", "checkpoint layout repacked into a fused kernel's (Marlin repack), at load"),
    "gptqmodel.glue": ("gptqmodel dispatch", "activation and output casts, bias add, reshapes and workspace "
                                             "of a GPTQ / AWQ linear"),
}

# Module classes of GPTQModel 7.3.6's quantized linears (the `module` context).
_TORCH_KERNELS = r"^(Awq)?Torch(Fused|Aten|Int8)?(Awq)?Linear$|^TritonV2Linear$"
_FUSED_KERNELS = r"^(Marlin|AwqMarlin|ExllamaV2|ExllamaV2Awq|AwqGEMM|AwqGEMMTriton|AwqGEMV|AwqGEMVFast|Machete|" \
                 r"MachetePacked|AwqMachete|Bitblas|AwqBitblas|QQQ)\w*Linear$"
_ANY_QLINEAR = _TORCH_KERNELS + "|" + _FUSED_KERNELS
# Casts and aranges inside a torch kernel belong to the unpack: the unpacked nibbles' cast to the
# dequant dtype, the shift tables, and (GPTQ in fp32) the dequantized weight's cast to fp32.
_UNPACK_OPS = r"^aten::(bitwise_right_shift|bitwise_and|__rshift__|__and__|bitwise_left_shift|__lshift__|" \
              r"bitwise_or|__or__|expand|unsqueeze|arange|_to_copy|to|copy_)\b"
_DEQUANT_OPS = r"^aten::(index|sub|sub_|mul|mul_|rsub|index_select|gather|repeat_interleave)\b"
_CASTS_AND_VIEWS = (r"^aten::(_to_copy|to|copy_|clone|contiguous|t|transpose|view|reshape|_reshape_alias|flatten"
                    r"|unflatten|as_strided|slice|select|alias|detach|squeeze|permute|empty|empty_strided"
                    r"|narrow|add|add_|zeros|zero_|fill_|empty_like)\b")

OP_RULES: list[Rule] = [
    # --- its own ops (gptqmodel_*:: custom ops of the nvcc-compiled kernels) -------------------
    Rule("gptqmodel.repack", "Marlin / AWQ repack of the checkpoint's weight layout",
         quant_op=r"^gptqmodel\w*::\w*repack"),
    Rule("gptqmodel.int4_gemm", "fused int4 GEMM op (Marlin, ExLlama, AWQ GEMM, Machete)",
         quant_op=r"^gptqmodel\w*::\w*(gemm|gemv|matmul|mm)\w*"),
    Rule("gptqmodel.glue", "other ops of its compiled kernels (workspace, permutes)", quant_op=r"^gptqmodel\w*::"),
    # --- torch / Triton kernels: the module class, then the aten op ---------------------------
    Rule("gptqmodel.dequant_gemm", "torch / Triton kernel: float GEMM on the just-dequantized weight",
         module=_TORCH_KERNELS, ops=GEMM_OPS),
    Rule("gptqmodel.unpack", "torch kernel: shifts, masks, shift tables and casts of the int4 nibbles",
         module=_TORCH_KERNELS, ops=_UNPACK_OPS),
    Rule("gptqmodel.dequant", "torch kernel: group scales and zeros gathered by g_idx, (w - z) * s",
         module=_TORCH_KERNELS, ops=_DEQUANT_OPS),
    # TritonV2Linear always; on CUDA the torch kernel (TorchLinear) launches the same Triton
    # `dequant_kernel` for its weight (seen on the H200, traces/gptqmodel/).
    Rule("gptqmodel.dequant", "Triton kernel: the fused unpack + dequant kernel", module=_TORCH_KERNELS,
         kind=r"^kernel$", kernel=r"triton|dequant"),
    Rule("gptqmodel.glue", "casts, views, bias add and buffers around the quantized linear's GEMM",
         module=_ANY_QLINEAR, ops=_CASTS_AND_VIEWS),
    Rule("gptqmodel.int4_gemm", "fused kernels: their GEMM when the op is not annotated (a plain aten launch)",
         module=_FUSED_KERNELS, kind=r"^kernel$", kernel=r"(?i)marlin|exllama|gemm|gemv|machete|q4|awq"),
    Rule("gptqmodel.glue", "other ops inside a GPTQ / AWQ linear", module=_ANY_QLINEAR),
]

# By kernel name alone (no op ancestry): only what is unambiguous.
KERNEL_RULES: list[Rule] = [
    Rule("gptqmodel.repack", "Marlin repack kernels", kernel=r"(?i)marlin\w*repack|awq_marlin_repack",
         quant_backend=r"^gptqmodel$"),
    Rule("gptqmodel.int4_gemm", "Marlin / ExLlama / AWQ int4 GEMM kernels",
         kernel=r"(?i)marlin|exllama|q4_matmul|gemm_forward_4bit|gemv_kernel|awq_gemm|machete",
         quant_backend=r"^gptqmodel$"),
]

MEMORY_KINDS: list[KindRule] = [
    KindRule("unpacked weight", r"^gptqmodel\.unpack$"),
    KindRule("dequantized weight", r"^gptqmodel\.dequant$"),
    KindRule("GEMM output", r"^gptqmodel\.(dequant_gemm|int4_gemm)$"),
    KindRule("packed weight", r"^gptqmodel\.repack$"),
    KindRule("views", r"^gptqmodel\.glue$"),
]


def detect_precision(op_names: object) -> str | None:
    """The GPTQ / AWQ precision of a trace from its distinct op names (pandas Series of str), else None.

    Only the fused kernels have ops of their own, and their op names do not say GPTQ from AWQ
    except Marlin's repack at load: the torch kernels are named by qtrace's metadata.
    """
    names = op_names
    if names.str.contains(r"::awq_marlin_repack", regex=False).any():  # type: ignore[attr-defined]
        return "awq-int4-marlin"
    if names.str.contains(r"^gptqmodel\w*::gptq_marlin_gemm", regex=True).any():  # type: ignore[attr-defined]
        return "gptq-int4-marlin"
    return None
