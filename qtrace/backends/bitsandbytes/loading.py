"""How qtrace loads a model at LLM.int8 or NF4: the `BitsAndBytesConfig` it builds and its warnings.

Imported only when a model is loaded (it needs torch and transformers).
"""

from __future__ import annotations

from typing import Any


def precision_setup(precision: str, base_dtype: str, threshold: float) -> tuple[str, Any, list[str]]:
    """(compute dtype name, quantization_config, warnings) for `precision` ("int8" or "nf4").

    base_dtype: the float dtype the non-quantized parts stay in ("float16" on a GPU, "float32"
    on the CPU); NF4 computes in it too.
    """
    import torch
    from transformers import BitsAndBytesConfig

    warnings: list[str] = []
    if precision == "int8":
        if base_dtype != "float16":
            warnings.append(f"int8: activations are {base_dtype}; bitsandbytes casts them to float16 in every "
                            f"Linear8bitLt call before quantizing (an extra cast per layer)")
        return base_dtype, BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=threshold), warnings
    if precision != "nf4":
        raise ValueError(f"bitsandbytes has no precision {precision!r}")
    if base_dtype == "float32":
        warnings.append("nf4: compute dtype is float32, so after dequantizing the weights every matmul is an "
                        "fp32 SGEMM (on a GPU use float16/bfloat16 compute)")
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=getattr(torch, base_dtype))
    return base_dtype, quant, warnings


def keep_unquantized(quant: Any, module_names: list[str]) -> None:
    """Leave these modules (the output heads) in full precision.

    The 4-bit quantizer reads the same `llm_int8_skip_modules` field as the 8-bit one.
    """
    quant.llm_int8_skip_modules = module_names


def warm_import() -> None:
    """Import bitsandbytes before any load is timed (its import costs seconds on a GPU host)."""
    import bitsandbytes  # noqa: F401
