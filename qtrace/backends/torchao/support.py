"""Which torchao precisions this machine can run, and why not the others (pure: never imports torch).

Facts checked with torchao 0.18.0 on torch 2.13 CPU and read from its source: int8 weight-only,
int8 dynamic W8A8, IntxWeightOnly int4 and fp8 weight-only run on the CPU; tinygemm int4
(`Int4TilePackedTo4dTensor`, `aten::_weight_int4pack_mm`) asserts CUDA; fp8 dynamic W8A8
(`aten::_scaled_mm`) asserts compute capability >= 8.9 (or MI300 / XPU, which qtrace does not
drive).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

PACKAGE = "torchao"
PINNED = "0.18.0"  # the version these rules were read from (pyproject's `torchao` extra)


@dataclass(frozen=True)
class Mode:
    describe: str
    needs_cuda: bool = False
    min_capability: tuple[int, int] | None = None
    compute_dtype: str | None = None  # forced compute dtype, None: the run's base dtype


MODES: dict[str, Mode] = {
    "torchao-int8wo": Mode("torchao int8 weight-only (Int8WeightOnlyConfig): int8 weight cast per call, float GEMM"),
    "torchao-w8a8": Mode("torchao int8 dynamic activation + int8 weight (Int8DynamicActivationInt8WeightConfig), "
                         "aten::_int_mm"),
    "torchao-int4": Mode("torchao int4 weight-only, tinygemm (Int4WeightOnlyConfig tile_packed_to_4d, group 128), "
                         "aten::_weight_int4pack_mm; bf16 compute", needs_cuda=True, compute_dtype="bfloat16"),
    "torchao-intx4": Mode("torchao int4 weight-only, unpacked (IntxWeightOnlyConfig int4, group 32): "
                          "dequantize_affine + float GEMM; runs on the CPU"),
    "torchao-fp8": Mode("torchao fp8 dynamic activation + fp8 weight, per row "
                        "(Float8DynamicActivationFloat8WeightConfig), aten::_scaled_mm; bf16 compute",
                        needs_cuda=True, min_capability=(8, 9), compute_dtype="bfloat16"),
    "torchao-fp8wo": Mode("torchao fp8 weight-only (Float8WeightOnlyConfig): fp8 weight dequant per call, "
                          "float GEMM"),
}


def package_missing() -> str | None:
    if importlib.util.find_spec(PACKAGE) is None:
        return f"the torchao package is not installed (pip install 'qtrace[torchao]', i.e. torchao=={PINNED})"
    return None


def unavailable(precision: str, device_type: str, capability: tuple[int, int] | None) -> str | None:
    """Why `precision` cannot run on this device, in one line; None if it can."""
    mode = MODES[precision]
    if mode.needs_cuda and device_type != "cuda":
        need = f" of compute capability >= {mode.min_capability[0]}.{mode.min_capability[1]}" \
            if mode.min_capability else ""
        return f"{precision} needs a CUDA GPU{need} (torchao has no CPU kernel for it); this device is {device_type}"
    if mode.min_capability and capability is not None and tuple(capability) < mode.min_capability:
        return (f"{precision} needs compute capability >= {mode.min_capability[0]}.{mode.min_capability[1]} "
                f"(fp8 tensor cores); this GPU is {capability[0]}.{capability[1]}")
    return package_missing()
