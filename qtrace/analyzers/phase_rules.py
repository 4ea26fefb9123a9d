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
- ``kernel``: the GPU event's name;
- ``quant_backend``: the quantization backend the whole trace shows (``""`` if none): its ops
  appear in the trace, or the trace has no ops and its qtrace metadata names one of the
  backend's precisions. A backend's kernel-name rows require it.

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
# fp8/fp4 GEMMs are the model's phases, not quantization phases: they are the native low-precision
# math of a model run in fp8/MXFP4, not a backend's quantize/dequantize work around a GEMM.
MODEL_PHASES: dict[str, tuple[str, str]] = {
    "fp8.gemm": ("fp8 GEMM", "GEMMs with fp8 (e4m3/e5m2) inputs: _scaled_mm, cuBLASLt/CUTLASS fp8 kernels"),
    "fp4.gemm": ("fp4 GEMM", "GEMMs with 4-bit float (MXFP4/NVFP4, e2m1) weights or inputs"),
    "dense.gemm": ("fp16 GEMM", "GEMMs of non-quantized layers and of NF4 layers after dequant (any float type)"),
    "conv": ("convolution", "convolutions, forward and backward (cuDNN, MIOpen, their implicit GEMMs)"),
    "attention": ("model", "attention: sdpa / flash / softmax"),
    "norm": ("model", "layer / RMS / batch / group norm, forward and backward"),
    "elementwise": ("model", "activations, residual adds, rotary, casts, reductions, concatenation, optimizer"),
    "embedding": ("model", "embedding lookups"),
    "compiled": ("compiled", "Triton / torch.compile kernels no op or name rule above places"),
    "device.copy": ("communication", "copies between two GPUs of one process (Memcpy PtoP, cudaMemcpyPeerAsync): "
                                     "the hand-off between pipeline stages of a model split over devices"),
    "comm": ("communication", "collectives and point-to-point: NCCL/RCCL, gloo, DeepEP, symmetric-memory"),
    "memcpy": ("transfers", "copies and memsets not claimed by a phase above"),
    "other": ("other", "not matched by any rule"),
}
PHASES: dict[str, tuple[str, str]] = {**{p: v for b in BACKENDS for p, v in b.phases.items()}, **MODEL_PHASES}

PHASE_ORDER = list(PHASES)
QUANT_PHASES = [p for b in BACKENDS for p in b.phases]

STEP_ANNOTATION = re.compile(r"^(ProfilerStep#\d+|qtrace\.step:.*)$")
MODULE_ANNOTATION_PREFIX = "qtrace.module:"

_ATTENTION_OPS = (r"aten::(_?scaled_dot_product\w*|_flash_attention\w*|_efficient_attention\w*|_cudnn_attention\w*"
                  r"|_?softmax\w*|_safe_softmax)\b")
_NORM_OPS = (r"aten::(layer_norm|native_layer_norm\w*|rms_norm|_fused_rms_norm\w*|group_norm|native_group_norm\w*"
             r"|batch_norm\w*|native_batch_norm\w*|_batch_norm\w*|cudnn_batch_norm\w*|miopen_batch_norm\w*|instance_norm)\b"
             r"|(Layer|Group|Batch)NormBackward")
_CONV_OPS = (r"aten::(convolution\w*|_convolution\w*|conv\dd|conv_transpose\dd|cudnn_convolution\w*"
             r"|miopen_convolution\w*|miopen_depthwise_convolution\w*|mkldnn_convolution\w*|_?slow_conv\w*"
             r"|thnn_conv\w*|_conv_depthwise2d\w*)\b|ConvolutionBackward")
# Communication: the c10d / functional-collective ops (record_param_comms wraps each collective),
# and the kernels of NCCL/RCCL, DeepEP and symmetric-memory all-reduce.
_COMM_OPS = r"(^|/)(record_param_comms|c10d::|_c10d_functional::|c10d_functional::|nccl:|gloo:|symm_mem::)"
_COMM_KERNELS = (r"nccl|rccl|deep_ep|DeepEP|deepep|multimem_all_reduce|one_shot_all_reduce|two_shot_all_reduce"
                 r"|cross_device_reduce|all_reduce_kernel|allgather_kernel")
# A low-precision GEMM is named by its kernel: a GEMM-like name that also names the type. fp4 first:
# an MXFP4 x fp8 kernel (bmm_MxE4m3_MxE2m1...) is a 4-bit weight GEMM.
_GEMM_NAME = r"(?=.*(gemm|matmul|bmm|cutlass|xmma|nvjet|cijk|_mm_|scaled_mm|dot_))"
_FP4_GEMM_KERNELS = r"(?i)^" + _GEMM_NAME + r".*(mxfp4|nvfp4|e2m1|fp4|mxf4|f4f4)"
_FP8_GEMM_KERNELS = r"(?i)^" + _GEMM_NAME + r".*(e4m3|e5m2|fp8|float8|f8f6f4)"
_COPY_KINDS = r"^gpu_mem(cpy|set)$"
# A copy from one GPU to another: CUPTI's peer-to-peer kind (Kineto: "Memcpy PtoP (Device -> Device)").
_PEER_COPY = r"PtoP|[Pp]eer"


RULES: list[Rule] = [
    # --- each backend's own ops (the bitsandbytes op and the aten op under it, ...) ----------
    *(rule for b in BACKENDS for rule in b.op_rules),
    # --- kernels whose name is decisive whatever op launched them -----------------------------
    # (a peer copy first: accelerate's hooks move activations inside the next stage's module range)
    Rule("device.copy", "copies between GPUs (peer-to-peer memcpy: pipeline-stage hand-offs)", kind=r"^gpu_memcpy$",
         kernel=_PEER_COPY),
    Rule("comm", "communication kernels (NCCL/RCCL, DeepEP, symmetric-memory all-reduce)", kernel=_COMM_KERNELS),
    Rule("fp4.gemm", "GEMM kernels naming a 4-bit float type (MXFP4, NVFP4, e2m1)", kernel=_FP4_GEMM_KERNELS),
    Rule("fp8.gemm", "GEMM kernels naming an fp8 type (e4m3, e5m2)", kernel=_FP8_GEMM_KERNELS),
    # --- qtrace module annotations -----------------------------------------------------------
    Rule("norm", "inside a norm module", module=r"Norm"),
    Rule("embedding", "inside an embedding module", module=r"Embedding"),
    Rule("attention", "attention math inside an attention module", module=r"Attention", ops=_ATTENTION_OPS),
    Rule("attention", "attention score GEMMs inside an attention module", module=r"Attention",
         ops=r"aten::(bmm|baddbmm|matmul)\b"),
    Rule("dense.gemm", "GEMM of a linear module", module=r"^(Linear|Conv1D|NonDynamicallyQuantizableLinear)$",
         ops=GEMM_OPS),
    # --- aten op ancestry --------------------------------------------------------------------
    Rule("comm", "collective ops (c10d, functional collectives) and their copies", ops=_COMM_OPS),
    Rule("attention", "attention ops", ops=_ATTENTION_OPS),
    Rule("norm", "norm ops, forward and backward", ops=_NORM_OPS),
    Rule("conv", "convolution ops, forward and backward (their transposes and implicit GEMMs too)", ops=_CONV_OPS),
    Rule("embedding", "embedding lookup", ops=r"aten::(embedding\w*|_embedding_bag\w*)\b"),
    Rule("fp8.gemm", "scaled matmul (fp8) whose kernel name does not name the type", ops=r"aten::_scaled_mm\b"),
    Rule("dense.gemm", "dense matmul ops", ops=GEMM_OPS),
    Rule("memcpy", "copies and memsets", kind=_COPY_KINDS),
    Rule("elementwise", "other aten ops of the model (pointwise, reductions, cat, casts)", ops=r"aten::"),
    # --- kernel names, when the trace has no op ancestry (e.g. a GPU-only trace) -------------
    *(rule for b in BACKENDS for rule in b.kernel_rules),
    Rule("compiled", "Triton kernels (torch.compile / Inductor, user Triton)", kernel=r"^triton_|triton"),
    Rule("attention", "attention kernels", kernel=r"flash|fmha|sdpa|attention|[Ss]oftmax|attn_fwd|attn_bwd"),
    Rule("norm", "norm kernels", kernel=r"layer_norm|rms_norm|LayerNorm|RMSNorm|layernorm|[Rr]msnorm|batch_norm|"
                                         r"BatchNorm|batchnorm|bn_fw|bn_bw|group_norm|GroupNorm"),
    Rule("conv", "convolution kernels (cuDNN, MIOpen)",
         kernel=r"[Cc]onv(?!ert)|cudnn::cnn|scudnn|hcudnn|dgrad|wgrad|fprop|igemm_(fwd|bwd|wrw)|miopen|MIOpen|winograd|Winograd"),
    Rule("embedding", "embedding kernels", kernel=r"embedding|indexSelect"),
    Rule("dense.gemm", "GEMM kernels",
         kernel=r"gemm|nvjet|cutlass|xmma|cublas|splitKreduce|sgemm|hgemm|Cijk_|matmul|_mm_"),
    Rule("elementwise", "pointwise / reduction / optimizer kernels",
         kernel=r"elementwise|reduce_kernel|CatArrayBatchedCopy|vectorized|unrolled|index|gather|scatter|copy|fill"
                r"|multi_tensor_apply|transpose"),
]

_CONTEXT_FIELDS = ("kind", "quant_op", "below_quant_op", "module", "weight", "ops", "kernel", "quant_backend")


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
    """Phase of each row of `contexts` (columns: the context fields; a missing one reads as "").

    Vectorized over unique contexts: a trace has many kernels but few distinct contexts.
    """
    if contexts.empty:
        return pd.Series([], dtype=object, index=contexts.index)
    # A missing field (`weight`, `quant_backend` from callers before they existed) reads as "".
    ctx = contexts.reindex(columns=list(_CONTEXT_FIELDS), fill_value="").fillna("").astype(str)
    unique = ctx.drop_duplicates().reset_index(drop=True)
    # First matching rule wins: each rule is tried on the rows no earlier rule took, as plain lists
    # (pandas' per-rule Series work cost more than the regexes on a few hundred contexts).
    texts = {f: unique[f].tolist() for f in _CONTEXT_FIELDS}
    phase = ["other"] * len(unique)
    open_rows = list(range(len(unique)))
    for rule in RULES:
        if not open_rows:
            break
        hit = open_rows
        for field_name, pattern in rule.fields().items():
            search, column = _compiled(pattern).search, texts[field_name]
            hit = [i for i in hit if search(column[i]) is not None]
        if hit:
            for i in hit:
                phase[i] = rule.phase
            taken = set(hit)
            open_rows = [i for i in open_rows if i not in taken]
    unique["phase"] = pd.Series(phase, index=unique.index, dtype=object)
    merged = ctx.merge(unique, on=list(_CONTEXT_FIELDS), how="left")
    return pd.Series(merged["phase"].to_numpy(), index=contexts.index, dtype=object)


def rules_table() -> pd.DataFrame:
    """The rules as a table, for `docs/` and for users who ask why an event landed where it did."""
    return pd.DataFrame([{"order": i, "phase": r.phase, "group": group_of(r.phase), "why": r.why, **r.fields()}
                         for i, r in enumerate(RULES)])


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


_DOC_FIELDS = ("quant_op", "below_quant_op", "module", "weight", "ops", "kernel", "kind", "quant_backend")


def vocabulary_markdown() -> str:
    """The vocabulary table of docs/phases.md (tests/test_multi_device.py holds the file to it)."""
    rows = ["| phase | group | what lands there |", "|---|---|---|"]
    rows += [f"| `{p}` | {g} | {_md_cell(w)} |" for p, (g, w) in PHASES.items()]
    return "\n".join(rows)


def rules_markdown() -> str:
    """The ordered rule table of docs/phases.md, one row per rule."""
    rows = ["| # | phase | quant op | under the quant op | module | weight | ops | kernel | kind | trace shows backend "
            "| why |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(RULES):
        f = r.fields()
        cells = [f"`{_md_cell(f[c])}`" if c in f else "" for c in _DOC_FIELDS]
        rows.append(f"| {i} | `{r.phase}` | " + " | ".join(cells) + f" | {_md_cell(r.why)} |")
    return "\n".join(rows)
