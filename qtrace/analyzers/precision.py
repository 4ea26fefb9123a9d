"""Which precision did this trace run at? From what its GEMMs show, weighted by their GPU time.

A trace from `qtrace profile` says so in its metadata; a quantization backend's ops name theirs.
Otherwise each GPU event of a GEMM-like phase (dense/fp8/fp4 GEMM, convolution) votes with its
GPU time: fp8/fp4 GEMM phases for fp8/fp4, else the first float dtype in the launching op's
``Input type`` (recorded with ``record_shapes``), else what the kernel name says (``bf16``,
``h1688``, ``sgemm``...). The label with most GPU time wins; no vote at all is None ("unknown").
One GEMM in fp32 ahead of an autocast fp16 model (the old rule: the first GEMM's input) no longer
decides it.
"""

from __future__ import annotations

import re

import pandas as pd

from qtrace.analyzers.attribution import gpu_phases
from qtrace.tracefile.kineto import Trace

VOTING_PHASES = ("dense.gemm", "fp8.gemm", "fp4.gemm", "conv")
_PHASE_LABEL = {"fp8.gemm": "fp8", "fp4.gemm": "fp4"}
# Op input dtypes (as Kineto writes them) -> precision label; the first float one found counts.
_DTYPES = ((b"Float8_e4m3", "fp8"), (b"Float8_e5m2", "fp8"), (b"Float4_e2m1", "fp4"), (b"c10::BFloat16", "bf16"),
           (b"c10::Half", "fp16"), (b'"float"', "fp32"), (b'"double"', "fp64"))
# Kernel names: bf16 before fp16 ("bf16" contains "f16"); TF32 kernels compute on fp32 data.
_KERNEL_DTYPES = ((re.compile(r"(?i)bf16|bfloat16|_BBS_|BBH|bf16x"), "bf16"),
                  (re.compile(r"(?i)f16|fp16|__half|half|h1688|h16816|h884|hgemm|_HHS_|wmma_tensorop_h"), "fp16"),
                  (re.compile(r"(?i)tf32|s1688gemm|s16816gemm|sgemm|scudnn|<float|_SSS_|f32f32"), "fp32"))


def _dtype_label(raw: object) -> str | None:
    if not isinstance(raw, bytes | bytearray):
        return None
    best = None
    for token, label in _DTYPES:
        i = raw.find(token)
        if i >= 0 and (best is None or i < best[0]):
            best = (i, label)
    return best[1] if best else None


def _kernel_label(name: str) -> str | None:
    for rx, label in _KERNEL_DTYPES:
        if rx.search(name):
            return label
    return None


def precision_votes(trace: Trace) -> pd.Series:
    """GPU µs per precision label among the GEMM-like events (empty when none can tell)."""
    gpu = gpu_phases(trace)
    g = gpu[gpu["phase"].isin(VOTING_PHASES)]
    if not len(g):
        return pd.Series(dtype=float)
    input_type = trace.ops["input_type"].to_numpy() if len(trace.ops) else None
    labels: list[str | None] = []
    op_label: dict[int, str | None] = {}
    kernel_label: dict[str, str | None] = {}
    for phase, op, name in zip(g["phase"], g["op"], g["name"], strict=True):
        label = _PHASE_LABEL.get(phase)
        if label is None and op >= 0 and input_type is not None:
            if op not in op_label:
                op_label[op] = _dtype_label(input_type[op])
            label = op_label[op]
        if label is None:
            if name not in kernel_label:
                kernel_label[name] = _kernel_label(str(name))
            label = kernel_label[name]
        labels.append(label)
    votes = pd.Series(g["dur"].to_numpy(), index=labels, dtype=float)
    votes = votes[votes.index.notna()]
    return votes.groupby(level=0).sum().sort_values(ascending=False)


def infer_precision(trace: Trace) -> str | None:
    """The label with most GEMM GPU time, or None when no GEMM shows its type."""
    votes = precision_votes(trace)
    return str(votes.index[0]) if len(votes) else None
