"""Bytes and operations of the kernels bitsandbytes' ops launch (CUDA backend), for the roofline.

Formulas: docs/roofline.md. Shapes come from the launching op's recorded inputs.
"""

from __future__ import annotations

import math
import re
from typing import Any

import msgspec
import numpy as np

from qtrace.analyzers.distinct import shared_objects
from qtrace.analyzers.shapes import DTYPE_BYTES, DTYPE_KIND, TEMPLATE_BYTES, Work, arg_tensor, sum_bytes
from qtrace.tracefile.kineto import Trace

_KDEQ = re.compile(r"kDequantizeBlockwise<\s*([\w:]+)\s*,\s*\d+\s*,\s*\d+\s*,\s*\d+\s*,\s*(\d+)\s*>")
_FUSED_4BIT = re.compile(r"gemm_4bit|gemv_4bit|kgemm_4bit")


def kernel_work(op: str, kernel: str, args: list[Any], mixed_dtype: str | None) -> Work | None:
    """Work of a kernel launched directly by bitsandbytes op `op` (CUDA backend), or None."""
    name = op.removeprefix("bitsandbytes::")
    if name in ("int8_linear_matmul", "int8_linear_matmul.out"):
        a, b = arg_tensor(args, 0), arg_tensor(args, 1)
        if a is None or b is None or len(b.shape) != 2 or not a.shape or a.size is None or b.size is None:
            return None
        t, k, n = math.prod(a.shape[:-1]), a.shape[-1], b.shape[0]
        nbytes = t * k * a.size + n * k * b.size + 4 * t * n
        return Work("int8_gemm", float(nbytes), int_ops=2.0 * t * k * n, dtype="int8")
    if name == "int8_mm_dequant":
        acc, row, col, bias = arg_tensor(args, 0), arg_tensor(args, 1), arg_tensor(args, 2), arg_tensor(args, 4)
        if acc is None or row is None or col is None:
            return None
        # Output dtype: the fp16/bf16 input of the enclosing int8_mixed_scaled_mm (bitsandbytes
        # passes dtype=A.dtype), else the bias dtype, else the op's default float16.
        out_size = DTYPE_BYTES.get(mixed_dtype or "") or (bias.size if bias is not None else None) or 2
        ins = sum_bytes([acc, row, col] + ([bias] if bias is not None else []))
        return None if ins is None else Work("int8_dequant", float(ins + acc.numel * out_size))
    if name == "int8_vectorwise_quant":
        a = arg_tensor(args, 0)
        if "kInt8VectorQuant" not in kernel or a is None or a.nbytes is None or not a.shape:
            return None
        rows = math.prod(a.shape[:-1])
        return Work("int8_act_quant", float(a.nbytes + a.numel + 4 * rows))
    if name in ("gemm_4bit", "gemv_4bit"):
        return _gemm_4bit_work(name, kernel, args)
    if name in ("dequantize_4bit", "dequantize_blockwise", "dequantize_nf4"):
        m = _KDEQ.search(kernel)
        packed, absmax = arg_tensor(args, 0), arg_tensor(args, 1)
        if m is None or packed is None or absmax is None or packed.nbytes is None or absmax.nbytes is None:
            return None
        out_size = TEMPLATE_BYTES.get(m.group(1).split("::")[-1])
        if out_size is None:
            return None
        if m.group(2) == "0":  # 8-bit blockwise: one code per byte
            code = arg_tensor(args, 2)
            code_b = code.nbytes if code is not None and code.nbytes is not None else 0
            return Work("blockwise_dequant", float(packed.nbytes + absmax.nbytes + code_b + packed.numel * out_size))
        return Work("nf4_weight_dequant", float(packed.nbytes + absmax.nbytes + 2 * packed.nbytes * out_size))
    return None


def _gemm_4bit_work(name: str, kernel: str, args: list[Any]) -> Work | None:
    # gemm_4bit(A, B, shapeB, absmax, blocksize, quant_type, bias, absmax_8bit, absmax_code, absmax_offset)
    # gemv_4bit(A, B, shapeB, absmax, code, blocksize)   (bitsandbytes <= 0.49)
    a, packed, absmax = arg_tensor(args, 0), arg_tensor(args, 1), arg_tensor(args, 3)
    if a is None or packed is None or absmax is None or not a.shape or a.size is None or packed.nbytes is None:
        return None
    t, k = math.prod(a.shape[:-1]), a.shape[-1]
    if k <= 0 or (2 * packed.nbytes) % k:
        return None
    n = 2 * packed.nbytes // k  # shapeB is a ScalarList (no dims recorded): N from the packed size
    absmax8 = arg_tensor(args, 7) if name == "gemm_4bit" else None
    code = arg_tensor(args, 8) if name == "gemm_4bit" else arg_tensor(args, 4)
    bias = arg_tensor(args, 6) if name == "gemm_4bit" else None
    scale_bytes = sum_bytes([x for x in (absmax, absmax8, code) if x is not None])
    if scale_bytes is None:
        return None
    if _FUSED_4BIT.search(kernel):
        nbytes = a.nbytes + packed.nbytes + scale_bytes + t * n * a.size + (bias.nbytes or 0 if bias else 0)
        return Work("nf4_fused_gemm", float(nbytes), flops=2.0 * t * k * n, dtype=DTYPE_KIND.get(a.dtype))
    m = _KDEQ.search(kernel)
    if m is None:
        return None
    out_size = TEMPLATE_BYTES.get(m.group(1).split("::")[-1])
    if out_size is None:
        return None
    if m.group(2) == "0":
        # Double quant: the per-block absmax (uint8, one per block) back to float32.
        if absmax8 is None or absmax8.nbytes is None:
            return None
        code_b = code.nbytes if code is not None and code.nbytes is not None else 0
        ins = absmax8.nbytes + (absmax.nbytes or 0) + code_b
        return Work("nf4_absmax_dequant", float(ins + absmax8.numel * out_size))
    # 4-bit weights -> [N, K] in the compute dtype; per-block absmax as float32.
    blocks = absmax8.numel if absmax8 is not None else absmax.numel
    return Work("nf4_weight_dequant", float(packed.nbytes + 4 * blocks + n * k * out_size))


def _mixed_dtypes(trace: Trace, op_rows: np.ndarray) -> dict[int, str | None]:
    """For int8_mm_dequant rows: the A dtype of the enclosing int8_mixed_scaled_mm, if any."""
    ops = trace.ops
    names = shared_objects(ops["name"])
    parent = ops["parent"].to_numpy()
    types = ops["input_type"].to_numpy(dtype=object)
    out: dict[int, str | None] = {}
    for r in op_rows:
        p = parent[r]
        found = None
        while p >= 0:
            if names[p] == "bitsandbytes::int8_mixed_scaled_mm":
                if types[p]:
                    try:
                        found = msgspec.json.decode(types[p])[0]
                    except (msgspec.DecodeError, IndexError, TypeError):
                        found = None
                break
            p = parent[p]
        out[int(r)] = found
    return out


def work_context(trace: Trace, op_rows: np.ndarray, op_names: np.ndarray, has_op: np.ndarray) -> np.ndarray:
    """Per GPU event: the A dtype of the enclosing int8_mixed_scaled_mm for int8_mm_dequant launches.

    int8_mm_dequant writes its output in that dtype (bitsandbytes passes dtype=A.dtype), which
    its own recorded inputs do not show.
    """
    dequant = "bitsandbytes::int8_mm_dequant"
    rows = np.unique(op_rows[has_op & (op_names == dequant)])
    mixed = _mixed_dtypes(trace, rows) if len(rows) else {}
    return np.array([mixed.get(int(r)) if n == dequant else None for r, n in zip(op_rows, op_names, strict=True)],
                    dtype=object)
