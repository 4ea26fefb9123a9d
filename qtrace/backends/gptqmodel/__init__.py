"""GPTQModel: GPTQ and AWQ int4 checkpoints, with its torch, Triton and Marlin kernels.

Its home: which precisions run where (support.py, pure), the checkpoints qtrace makes by
calibration on random token ids (checkpoints.py), how they load through transformers'
`GPTQConfig` / `AwqConfig` (loading.py) and its phases and rules (phase_rules.py).
"""

from qtrace.backends.base import Backend
from qtrace.backends.gptqmodel import phase_rules, support

BACKEND = Backend(
    name="gptqmodel",
    precisions=tuple(support.MODES),
    op_prefixes=("gptqmodel",),  # gptqmodel_marlin_fp16::, gptqmodel_exllamav2::, gptqmodel_awq::, ...
    phases=phase_rules.PHASES,
    op_rules=phase_rules.OP_RULES,
    kernel_rules=phase_rules.KERNEL_RULES,
    memory_kinds=phase_rules.MEMORY_KINDS,
    loader="qtrace.backends.gptqmodel.loading",
    detect_precision=phase_rules.detect_precision,
    unavailable="qtrace.backends.gptqmodel.support:unavailable",
    describe={p: m.describe for p, m in support.MODES.items()},
)
