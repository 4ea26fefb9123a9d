"""Loading and timing a model spread over several GPUs by accelerate (`--device-map auto`).

`plan` decides what a `--device-map` strategy means on this machine: with two or more visible
GPUs the strategy goes to accelerate; with fewer the model goes whole onto `--device` and the
run says so (qtrace.capture.placement). `infer_map` is transformers' own device-map step for a
model built on the meta device (device-init presets): the quantizer sizes quantized layers,
`get_balanced_memory` spreads them (except for ``sequential``), `infer_auto_device_map` keeps
each decoder layer whole; only the visible GPUs are offered, never CPU RAM or disk. `model_devices` lists the devices a
loaded model occupies, the first one (where the embeddings and the inputs live) first.

Timing with several devices (qtrace.capture.protocol.CudaClock): CUDA events must be recorded
and compared on one device. A pass over a layer split ends on the last device (the head), so an
end event on the first device's stream alone would stop the clock before the second device has
finished. Each mark therefore first makes the first device's current stream wait (on the GPU,
`cudaStreamWaitEvent`, no host sync) for an event recorded on every other device's current
stream, then records the timing event on the first device. The clock still times the GPU
timeline of back-to-back passes without a host sync per iteration (the single-GPU protocol's
property), and a pass counts as finished only when every device has finished it; the cost is one
event record and wait per extra device per mark (microseconds). The alternative, the host's
perf_counter after synchronizing every device each iteration, would add a host round trip to
every pass and stop the host from queueing ahead, which the single-GPU figures do not pay.
"""

from __future__ import annotations

import inspect
from typing import Any

from qtrace.capture.placement import gpu_indices, single_device_note


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def plan(strategy: str | None, device: Any) -> tuple[str | None, str | None]:
    """(strategy to hand to accelerate, or None: everything on `device`; note for run.json, or None)."""
    if strategy is None:
        return None, None
    gpus = visible_gpus() if device.type == "cuda" else 0
    if device.type != "cuda" or gpus < 2:
        return None, single_device_note(strategy, str(device), gpus)
    return strategy, None


def infer_map(model: Any, strategy: str, dtype: Any, quantizer: Any = None) -> dict[str, int]:
    """accelerate's device map for a meta-device `model` over the visible GPUs (never CPU or disk).

    transformers' own device-map step where it has one (5.x: `_get_device_map`, which sizes
    quantized layers through the quantizer), else the same steps with accelerate's functions.
    """
    from accelerate.utils import get_max_memory

    gpus = {k: v for k, v in get_max_memory(None).items() if isinstance(k, int)}
    try:
        from transformers.integrations.accelerate import _get_device_map
    except ImportError:
        _get_device_map = None
    if _get_device_map is not None and "hf_quantizer" in inspect.signature(_get_device_map).parameters:
        dmap = _get_device_map(model, strategy, gpus, quantizer)
    else:
        dmap = _accelerate_map(model, strategy, dtype, quantizer, gpus)
    off = sorted({str(v) for v in dmap.values() if not isinstance(v, int)})
    if off:
        from qtrace.errors import QtraceError

        raise QtraceError(f"the model does not fit on the visible GPUs: accelerate would put part of it on "
                          f"{', '.join(off)} (qtrace measures models on GPUs only)")
    return dict(dmap)


def _accelerate_map(model: Any, strategy: str, dtype: Any, quantizer: Any, gpus: dict[int, int]) -> dict[str, Any]:
    """transformers 4.x's device-map step: the quantizer's target dtype sizes the layers."""
    from accelerate import infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    adjust = getattr(quantizer, "adjust_target_dtype", None)
    target = adjust(dtype) if adjust is not None else dtype
    no_split = list(getattr(model, "_no_split_modules", None) or [])
    max_memory = gpus
    if strategy != "sequential":
        max_memory = get_balanced_memory(model, max_memory=max_memory, no_split_module_classes=no_split,
                                         dtype=target, low_zero=strategy == "balanced_low_0")
    if quantizer is not None:
        max_memory = quantizer.adjust_max_memory(max_memory)
    return infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=no_split, dtype=target)


def device_of(dmap: dict[str, Any], name: str) -> Any:
    """The device of module or parameter `name` under `dmap` (longest matching prefix)."""
    import torch

    best, found = -1, None
    for prefix, dev in dmap.items():
        if (prefix == "" or name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
            best, found = len(prefix), dev
    return torch.device("cuda", found) if isinstance(found, int) else torch.device(str(found))


def model_devices(model: Any, fallback: Any) -> list[Any]:
    """The CUDA devices a loaded model occupies (its hf_device_map's GPUs), else [fallback]."""
    import torch

    idx = gpu_indices(getattr(model, "hf_device_map", None))
    if len(idx) < 2 or fallback.type != "cuda":
        return [fallback]
    return [torch.device("cuda", i) for i in idx]


def allocated(devices: list[Any]) -> int | None:
    """Bytes the caching allocator has handed out over `devices` (None off CUDA)."""
    import torch

    if not devices or devices[0].type != "cuda":
        return None
    total = 0
    for d in devices:
        torch.cuda.synchronize(d)
        total += int(torch.cuda.memory_allocated(d))
    return total
