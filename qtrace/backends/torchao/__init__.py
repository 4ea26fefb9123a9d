"""torchao: int8 weight-only, int8 dynamic W8A8, int4 (tinygemm / IntxWeightOnly), fp8 (W8A8 / weight-only).

Its home: which precisions run where (support.py, pure), how it loads through transformers'
`TorchAoConfig` (loading.py) and its phases and rules (phase_rules.py).
"""

from qtrace.backends.base import Backend
from qtrace.backends.torchao import phase_rules, support

BACKEND = Backend(
    name="torchao",
    precisions=tuple(support.MODES),
    op_prefixes=("torchao::",),
    phases=phase_rules.PHASES,
    op_rules=phase_rules.OP_RULES,
    kernel_rules=phase_rules.KERNEL_RULES,
    memory_kinds=phase_rules.MEMORY_KINDS,
    loader="qtrace.backends.torchao.loading",
    detect_precision=phase_rules.detect_precision,
    unavailable="qtrace.backends.torchao.support:unavailable",
    describe={p: m.describe for p, m in support.MODES.items()},
)
