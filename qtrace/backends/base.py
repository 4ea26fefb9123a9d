"""What a quantization backend contributes to qtrace: the shapes of its entries (pure, no torch).

A backend is one library's way of quantizing a model (bitsandbytes today). It lives in one
folder, `qtrace/backends/<name>/`, and gives the registry (`qtrace/backends/__init__.py`) one
`Backend` value: its precision names, how it loads (a module imported only when a model is
loaded, since it needs torch), its phases and its rows of the phase rule table, the tensor kinds
of what its ops allocate, the bytes and operations of the kernels its ops launch, and any
analysis of its own. docs/backends.md says how to add one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# The aten matmul ops: shared by the model's rules and a backend's (a GEMM after dequant).
GEMM_OPS = r"aten::(mm|addmm|bmm|baddbmm|matmul|linear|_int_mm|addmv|mv|_scaled_mm)\b"


@dataclass(frozen=True)
class Rule:
    """Match when every given pattern is found in its context field; then the event is `phase`.

    Context fields (read from the trace by `qtrace.analyzers.attribution`): ``quant_op``, the
    innermost op of a quantization backend enclosing the launch (a name with one of the
    registered op prefixes, e.g. ``bitsandbytes::``); ``below_quant_op``, the op names under it,
    outermost first, ``/``-joined; ``module``, the innermost ``qtrace.module:`` class; ``weight``,
    the tensor class of that module's weight when it is a tensor subclass (torchao's
    ``Int8Tensor``, ...; a 4th field of the annotation, ``""`` otherwise and in older traces); ``ops``,
    all enclosing host ops, innermost first; ``kernel``, the GPU event's name; ``kind``:
    ``kernel``, ``gpu_memcpy``, ``gpu_memset`` or ``cpu_op``; ``quant_backend``, the backend the
    whole trace shows (its ops appear in the trace, or an op-less trace's qtrace metadata names
    one of its precisions; ``""`` otherwise): kernel-name rules of a backend require it, so a
    kernel name alone never claims a quantization phase on a trace that shows no quantization.
    """

    phase: str
    why: str
    quant_op: str | None = None
    below_quant_op: str | None = None
    module: str | None = None
    weight: str | None = None
    ops: str | None = None
    kernel: str | None = None
    kind: str | None = None
    quant_backend: str | None = None

    def fields(self) -> dict[str, str]:
        return {k: v for k, v in (("quant_op", self.quant_op), ("below_quant_op", self.below_quant_op),
                                   ("module", self.module), ("weight", self.weight), ("ops", self.ops),
                                   ("kernel", self.kernel), ("kind", self.kind),
                                   ("quant_backend", self.quant_backend)) if v}


@dataclass(frozen=True)
class KindRule:
    """An allocation is `kind` when every given pattern is found in its context field.

    Context of an allocation: ``phase`` of the allocating op; ``ops``, the op chain innermost
    first, ``/``-joined (as in the phase rules); ``quant_op_phase``, the phase of the innermost
    enclosing backend op ("" if none). The last one tells NF4's fused path (the ``aten::empty``
    under gemm_4bit is the GEMM output) from the dequant path (it is the [N, K] fp16 weight
    buffer), which the allocating op alone cannot.
    """

    kind: str
    phase: str
    ops: str | None = None
    quant_op_phase: str | None = None


@dataclass(frozen=True)
class Backend:
    """One quantization library, as qtrace sees it."""

    name: str
    precisions: tuple[str, ...]  # the precision names users pass to --precision
    op_prefixes: tuple[str, ...]  # its custom ops' names in a trace start with one of these
    phases: dict[str, tuple[str, str]]  # phase id -> (group a reader knows, what lands there)
    op_rules: list[Rule]  # tried before module annotations and aten ops
    kernel_rules: list[Rule]  # tried first among kernel-name rules (traces without op ancestry)
    memory_kinds: list[KindRule]  # tried before the model's kinds
    loader: str  # module with `precision_setup(...)`; imported only to load a model (needs torch)
    # Functions below are named "module:function" and imported on first use, so that the
    # registry stays import-light and free of cycles with the analyzers they build on.
    # Roofline: work of a kernel launched directly by one of its ops, fn(op, kernel, args, context)
    # -> qtrace.analyzers.shapes.Work | None; `work_context`, fn(trace, op_rows, op_names, has_op)
    # -> per GPU event what `work` needs beyond the op's own inputs (object array, None if nothing).
    work: str | None = None
    work_context: str | None = None
    # Precision of a trace from the distinct op names it holds (a pandas Series), or None.
    detect_precision: Callable[[Any], str | None] | None = None
    # Report sections of its own: section name -> "module:function", fn(trace) -> dict | None.
    analyses: dict[str, str] = field(default_factory=dict)
    # Why a precision cannot run here, "module:function", fn(precision, device_type, capability) -> str | None
    # (capability: the CUDA compute capability (major, minor), None off CUDA). Pure: it may look for a
    # package (importlib.util.find_spec) but never imports torch. None: every precision runs everywhere.
    unavailable: str | None = None
    # Short description of each precision, for `qtrace presets` and --help.
    describe: dict[str, str] = field(default_factory=dict)
