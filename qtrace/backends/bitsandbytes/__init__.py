"""bitsandbytes: LLM.int8 (`Linear8bitLt`) and NF4 (`Linear4bit`).

Its home: how it loads (loading.py), its phases and rules (phase_rules.py), the work of its
kernels for the roofline (work.py) and LLM.int8's outlier statistics (outliers.py).
"""

from qtrace.backends.base import Backend
from qtrace.backends.bitsandbytes import phase_rules

BACKEND = Backend(
    name="bitsandbytes",
    precisions=("int8", "nf4"),
    op_prefixes=("bitsandbytes::",),
    phases=phase_rules.PHASES,
    op_rules=phase_rules.OP_RULES,
    kernel_rules=phase_rules.KERNEL_RULES,
    memory_kinds=phase_rules.MEMORY_KINDS,
    loader="qtrace.backends.bitsandbytes.loading",
    work="qtrace.backends.bitsandbytes.work:kernel_work",
    work_context="qtrace.backends.bitsandbytes.work:work_context",
    detect_precision=phase_rules.detect_precision,
    analyses={"outliers": "qtrace.backends.bitsandbytes.outliers:outlier_section"},
)
