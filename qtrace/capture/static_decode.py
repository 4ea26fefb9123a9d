"""`--decode static`: a static KV cache and CUDA graphs for the decode steps, where the backend allows.

Batch-1 decode of a small model is host-bound: every layer's kernels are launched one by one
from Python. A static cache (fixed shapes) lets `torch.compile(mode="reduce-overhead")` capture
the decode forward in a CUDA graph and replay it with one launch, which removes most of that
host cost; what remains is the GPU's own time, to be set against the bytes/bandwidth floor.

Per precision:

- fp16/bf16/fp32: transformers' own path, `cache_implementation="static"` plus its auto-compile
  of the decode forward (`CompileConfig(mode="reduce-overhead")`);
- nf4: transformers declines to auto-compile any bitsandbytes model (`HfQuantizer.is_compileable`
  is False), so qtrace compiles the model's forward itself with the same mode; bitsandbytes
  registers its 4-bit ops as torch custom ops, which dynamo can trace;
- int8: not possible. LLM.int8's matmul checks for outlier columns with a host `.item()` (and
  copies through pageable memory) in every layer; each is a graph break and a host sync, which
  a CUDA graph cannot contain, so the decode would stay eager. The point is recorded as
  ``unsupported`` with that reason;
- any precision on a CPU: CUDA graphs need a CUDA device.
"""

from __future__ import annotations

from typing import Any

DECODE_MODES = ("dynamic", "static")
INT8_REASON = ("LLM.int8 cannot use CUDA graphs: its matmul syncs the host (.item() on the outlier check, "
               "a pageable copy) in every layer, which breaks graph capture; decode stays eager")


class StaticDecodeUnsupported(Exception):
    """This precision/device cannot run the static-cache + CUDA-graph decode; the message says why."""


def generate_kwargs(model: Any, precision: str, device: Any) -> dict[str, Any]:
    """Extra `generate` arguments for the static regime (and compile the model where needed)."""
    if device.type != "cuda":
        raise StaticDecodeUnsupported("--decode static needs a CUDA device (CUDA graphs)")
    if precision == "int8":
        raise StaticDecodeUnsupported(INT8_REASON)
    import torch
    from transformers import CompileConfig

    compile_config = CompileConfig(fullgraph=False, dynamic=False, mode="reduce-overhead")
    if getattr(model, "hf_quantizer", None) is not None:
        # transformers would silently run the static cache eagerly for a bnb model; compile here.
        model.forward = torch.compile(model.forward, mode="reduce-overhead", fullgraph=False, dynamic=False)
        return {"cache_implementation": "static", "disable_compile": True}
    return {"cache_implementation": "static", "compile_config": compile_config}
