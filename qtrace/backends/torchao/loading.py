"""How qtrace loads a model at a torchao precision: the `TorchAoConfig` it builds and its warnings.

Imported only when a model is loaded (it needs torch, transformers and torchao). transformers
quantizes in `from_pretrained` (data-free: each Linear's weight becomes a torchao tensor
subclass), so every torchao precision goes through the same loading path as bitsandbytes.
"""

from __future__ import annotations

from typing import Any

from qtrace.backends.torchao.support import MODES, PINNED, package_missing


def quant_type(precision: str) -> Any:
    """The torchao config object of `precision`."""
    import torch
    from torchao.quantization import (
        Float8DynamicActivationFloat8WeightConfig,
        Float8WeightOnlyConfig,
        Int4WeightOnlyConfig,
        Int8DynamicActivationInt8WeightConfig,
        Int8WeightOnlyConfig,
        IntxWeightOnlyConfig,
        PerRow,
    )
    from torchao.quantization.granularity import PerGroup

    if precision == "torchao-int8wo":
        return Int8WeightOnlyConfig()
    if precision == "torchao-w8a8":
        return Int8DynamicActivationInt8WeightConfig()
    if precision == "torchao-int4":
        return Int4WeightOnlyConfig(group_size=128, int4_packing_format="tile_packed_to_4d")
    if precision == "torchao-intx4":
        return IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(32))
    if precision == "torchao-fp8":
        return Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())
    if precision == "torchao-fp8wo":
        return Float8WeightOnlyConfig()
    raise ValueError(f"torchao has no precision {precision!r}")


def precision_setup(precision: str, base_dtype: str, threshold: float) -> tuple[str, Any, list[str]]:
    """(compute dtype name, TorchAoConfig, warnings) for a torchao precision; `threshold` is LLM.int8's."""
    del threshold  # LLM.int8 only
    missing = package_missing()
    if missing:
        from qtrace.errors import QtraceError

        raise QtraceError(f"{precision}: {missing}")
    from transformers import TorchAoConfig

    warnings: list[str] = []
    mode = MODES[precision]
    dtype = base_dtype
    if mode.compute_dtype and mode.compute_dtype != base_dtype:
        dtype = mode.compute_dtype
        warnings.append(f"{precision}: computes in {dtype} (its kernel takes no {base_dtype} activations); "
                        f"compare it with bf16 as well as with the {base_dtype} baseline")
    import torchao

    if torchao.__version__.split("+")[0] != PINNED:
        warnings.append(f"{precision}: torchao {torchao.__version__}; qtrace's phase rules were read from {PINNED}")
    return dtype, TorchAoConfig(quant_type=quant_type(precision)), warnings


def keep_unquantized(quant: Any, module_names: list[str]) -> None:
    """Leave these modules (the output heads) in full precision."""
    quant.modules_to_not_convert = list(module_names)


def warm_import() -> None:
    """Import torchao before any load is timed (it loads its C extensions on import)."""
    import torchao  # noqa: F401


def quantize_built(model: Any, quantizer: Any) -> int:
    """Quantize a model built on the device (qtrace.capture.device_init) as `from_pretrained` would
    have: every parameter transformers' torchao quantizer would convert (its
    `param_needs_quantization`, which honours the heads kept in full precision) is converted by
    torchao's `quantize_` on its module, with the config transformers applies. Returns how many.

    Without this a device-built model at a torchao precision would stay dense: transformers
    quantizes torchao weights while it loads them, and a built model loads nothing.
    """
    from torchao.quantization import quantize_
    from transformers.quantizers.quantizers_utils import get_module_from_name

    config = quantizer.quantization_config.get_apply_tensor_subclass()
    names = [n for n, _ in model.named_parameters() if quantizer.param_needs_quantization(model, n)]
    for name in names:
        module, _ = get_module_from_name(model, name)
        quantize_(module, config)
    return len(names)
