"""Tensor shapes and dtypes as the profiler records them (``record_shapes=True``), and `Work`.

Shared by the roofline and by each backend's work model of its own ops. Pure, no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import msgspec

DTYPE_BYTES: dict[str, int] = {
    "c10::Half": 2, "c10::BFloat16": 2, "float": 4, "double": 8, "signed char": 1, "unsigned char": 1,
    "bool": 1, "int": 4, "long int": 8, "short int": 2, "short": 2, "long": 8, "char": 1,
    "c10::Float8_e4m3fn": 1, "c10::Float8_e5m2": 1, "c10::Float8_e4m3fnuz": 1, "c10::Float8_e5m2fnuz": 1,
    "c10::complex<float>": 8, "c10::complex<double>": 16, "c10::complex<c10::Half>": 4,
}
DTYPE_KIND: dict[str, str] = {"c10::Half": "fp16", "c10::BFloat16": "bf16", "float": "fp32", "double": "fp64",
                              "signed char": "int8", "unsigned char": "uint8"}
TEMPLATE_BYTES = {"__half": 2, "half": 2, "__nv_bfloat16": 2, "bfloat16": 2, "float": 4}
NON_TENSOR = ("Scalar", "ScalarList", "", "TensorList", "GenericList", "None", "int[]", "ScalarType")


@dataclass(frozen=True)
class Work:
    """What one unit did. bytes None = unknown; flops/int_ops None = no math counted."""

    model: str
    bytes: float | None
    flops: float | None = None
    int_ops: float | None = None
    dtype: str | None = None  # compute dtype of the math: fp16, bf16, fp32, int8
    link: str = "hbm"  # "hbm" (device memory) or "pcie" (host<->device copy)
    per_event: bool = False  # memcpy/memset: work is per GPU event, summed over the unit


class Tensor:
    __slots__ = ("shape", "dtype", "strides")

    def __init__(self, shape: list[int], dtype: str, strides: list[int] | None = None) -> None:
        self.shape = shape
        self.dtype = dtype
        self.strides = strides  # None: not recorded

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def stored_numel(self) -> int:
        """Elements in memory: an expanded view (stride 0 along a dim) reads one value along it.
        Without recorded strides, every element."""
        st = self.strides
        if st is None or len(st) != len(self.shape):
            return self.numel
        return math.prod(n for n, s in zip(self.shape, st, strict=True) if s != 0)

    @property
    def stored_nbytes(self) -> int | None:
        s = self.size
        return None if s is None else self.stored_numel * s

    @property
    def size(self) -> int | None:
        return DTYPE_BYTES.get(self.dtype)

    @property
    def nbytes(self) -> int | None:
        s = self.size
        return None if s is None else self.numel * s


def parse_args(dims_raw: bytes | None, types_raw: bytes | None,
               strides_raw: bytes | None = None) -> list[Tensor | list[Tensor] | None] | None:
    """The op's inputs: a Tensor per tensor argument, a list for TensorList, None for the rest.

    None when the trace has no shapes for this op (record_shapes off) or they do not decode.
    Strides (``Input Strides``, recorded by newer torch) are attached where they decode.
    """
    if not dims_raw or not types_raw:
        return None
    try:
        dims = msgspec.json.decode(dims_raw)
        types = msgspec.json.decode(types_raw)
    except msgspec.DecodeError:
        return None
    if not isinstance(dims, list) or not isinstance(types, list) or len(dims) != len(types):
        return None
    strides = _strides(strides_raw, len(dims))
    out: list[Tensor | list[Tensor] | None] = []
    for i, (d, t) in enumerate(zip(dims, types, strict=True)):
        if t == "TensorList" and isinstance(d, list) and all(isinstance(x, list) for x in d):
            if all(all(isinstance(v, int) for v in x) for x in d):
                out.append([Tensor(list(x), "") for x in d])  # element dtypes are not recorded
            else:
                out.append(None)
        elif (isinstance(t, str) and t not in NON_TENSOR and isinstance(d, list)
              and all(isinstance(v, int) for v in d)):
            st = strides[i]
            ok = isinstance(st, list) and len(st) == len(d) and all(isinstance(v, int) for v in st)
            out.append(Tensor(list(d), t, list(st) if ok else None))
        else:
            out.append(None)
    return out


def _strides(raw: bytes | None, n: int) -> list[Any]:
    """One entry per argument: its recorded strides, or None."""
    if not raw:
        return [None] * n
    try:
        st = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return [None] * n
    return st if isinstance(st, list) and len(st) == n else [None] * n


def arg_tensor(args: list[Any], i: int) -> Tensor | None:
    return args[i] if i < len(args) and isinstance(args[i], Tensor) else None


def tensors(args: list[Any]) -> list[Tensor]:
    return [a for a in args if isinstance(a, Tensor)]


def broadcast(shapes: list[list[int]]) -> list[int] | None:
    shapes = [s for s in shapes if math.prod(s) > 0 or not s]
    if not shapes:
        return None
    n = max(len(s) for s in shapes)
    out = []
    for i in range(1, n + 1):
        sizes = {s[-i] for s in shapes if len(s) >= i} - {1}
        if len(sizes) > 1:
            return None
        out.append(sizes.pop() if sizes else 1)
    return out[::-1]


def sum_bytes(tensors: list[Tensor]) -> int | None:
    total = 0
    for t in tensors:
        b = t.nbytes
        if b is None:
            return None
        total += b
    return total
