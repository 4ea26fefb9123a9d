"""How qtrace loads a model at a GPTQ / AWQ precision: its checkpoint, the config and its warnings.

Imported only when a model is loaded (it needs torch, transformers and gptqmodel). A GPTQ or
AWQ model is a checkpoint made by calibration, so loading is two steps: `checkpoint` finds (or
builds, checkpoints.py) the quantized folder, and `precision_setup` gives transformers the
`GPTQConfig` / `AwqConfig` whose `backend` picks GPTQModel's kernel. transformers then loads it
through `from_pretrained` as any quantized checkpoint (GPTQ through optimum's GPTQQuantizer,
AWQ through its own AwqQuantizer; both build GPTQModel's quantized linear modules).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qtrace.backends.gptqmodel import checkpoints
from qtrace.backends.gptqmodel.support import MODES, PINNED, kernel_of, package_missing

# transformers' backend names of GPTQModel's kernels, per method and kernel.
KERNEL_BACKENDS = {("gptq", "torch"): "torch", ("gptq", "triton"): "triton", ("gptq", "marlin"): "marlin",
                   ("awq", "torch"): "torch_awq", ("awq", "marlin"): "marlin"}
_INTERNVL = "gptqmodel.models.definitions.internvl_chat"


def _torchvision_imports() -> bool:
    if importlib.util.find_spec("torchvision") is None:
        return False
    try:
        import torchvision.transforms  # noqa: F401
    except Exception:  # a CUDA build beside a CPU torch: "operator torchvision::nms does not exist"
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        return False
    return True


def import_gptqmodel() -> Any:
    """Import gptqmodel, working around what 7.3.6 imports without declaring it.

    Its model zoo imports every model definition at import time, and the InternVL one imports
    torchvision, which gptqmodel does not declare, and which has no CPU build of torch 2.13 on
    the package registry (PyPI's Linux wheel is a CUDA build and fails to load beside a CPU
    torch). qtrace never loads InternVL, so when torchvision does not import, that one
    definition is replaced by a placeholder that says why if it is ever used. `requests`, the
    other undeclared import, comes with qtrace's own dependencies (transformers' hub client).
    """
    if "gptqmodel" in sys.modules:
        return sys.modules["gptqmodel"]
    if not _torchvision_imports() and _INTERNVL not in sys.modules:
        placeholder = types.ModuleType(_INTERNVL)

        class InternVLChatQModel:  # noqa: N801 - the name gptqmodel's registry imports
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                raise RuntimeError("InternVL needs torchvision, which does not import here (qtrace skipped it)")

        placeholder.InternVLChatQModel = InternVLChatQModel  # type: ignore[attr-defined]
        sys.modules[_INTERNVL] = placeholder
    # GPTQModel's CPU thread pool asks for 2 loader workers under a parent of (cores + 1) // 2
    # and refuses to start on a 2-core machine; an explicit worker count lifts that.
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(max(2, ((os.cpu_count() or 1) + 1) // 2)))
    import gptqmodel

    return gptqmodel


def _device_of(device: Any) -> tuple[str, tuple[int, int] | None]:
    device_type = getattr(device, "type", None) or str(device).split(":")[0]
    capability = None
    if device_type == "cuda":
        import torch

        capability = tuple(torch.cuda.get_device_capability(device))
    return device_type, capability  # type: ignore[return-value]


def precision_setup(precision: str, base_dtype: str, threshold: float,
                    device: Any = None) -> tuple[str, Any, list[str]]:
    """(compute dtype name, GPTQConfig / AwqConfig, warnings); `threshold` is LLM.int8's."""
    del threshold  # LLM.int8 only
    mode = MODES[precision]
    missing = package_missing(mode.method)
    if missing:
        from qtrace.errors import QtraceError

        raise QtraceError(f"{precision}: {missing}")
    gptqmodel = import_gptqmodel()
    from transformers import AwqConfig, GPTQConfig

    device_type, capability = _device_of(device if device is not None else "cpu")
    kernel = kernel_of(precision, device_type, capability)
    backend = KERNEL_BACKENDS[(mode.method, kernel)]
    warnings: list[str] = []
    dtype = base_dtype
    if mode.method == "awq" and base_dtype not in ("float16", "bfloat16"):
        dtype = "float16"  # AwqTorchLinear takes fp16 / bf16 activations only (SUPPORTS_DTYPES)
        warnings.append(f"{precision}: computes in float16 (GPTQModel's AWQ kernels take no {base_dtype} "
                        f"activations); compare it with fp16 as well as with the {base_dtype} baseline")
    if gptqmodel.__version__.split("+")[0] != PINNED:
        warnings.append(f"{precision}: gptqmodel {gptqmodel.__version__}; qtrace's phase rules were read from {PINNED}")
    if kernel == "torch" and device_type != "cuda":
        _eager_torch_kernel()
    quant = GPTQConfig(bits=4, backend=backend) if mode.method == "gptq" else AwqConfig(bits=4, backend=backend)
    return dtype, quant, warnings


def _eager_torch_kernel() -> None:
    """GPTQModel wraps the torch kernel's dequant in torch.compile; on the CPU Inductor then
    compiles C++ per weight shape on first use (96 s for the first forward of tiny-llama on 2
    cores) and the trace shows opaque compiled regions instead of the unpack and scale ops. Off
    CUDA qtrace runs that kernel eagerly: the ops are the same, and runs stay short."""
    from gptqmodel.utils import torch as gptq_torch

    gptq_torch.TORCH_HAS_COMPILE = False


def checkpoint(path: Path, precision: str, device: Any, cache: Path,
               progress: Callable[[str], None] | None = None) -> tuple[Path, dict[str, Any]]:
    """(folder to load, facts for run.json) for `precision` of the model folder `path`.

    A folder that already holds a GPTQ / AWQ checkpoint of the precision's method is loaded as is
    (its own recipe); an unquantized one is quantized once into the cache.
    """
    from qtrace.errors import QtraceError

    method = MODES[precision].method
    have = checkpoints.is_quantized_folder(path)
    if have is not None:
        if have != method:
            raise QtraceError(f"{precision}: {path} is a {have} checkpoint, not {method}")
        return path, {"source": "given", "path": str(path)}
    import_gptqmodel()
    folder, seconds, built = checkpoints.ensure_checkpoint(path, method, cache, device, progress)
    return folder, {"source": "built" if built else "cache", "path": str(folder), "build_seconds": seconds,
                    "recipe": checkpoints.recipe(method, checkpoints._model_config(path))}


def keep_unquantized(quant: Any, module_names: list[str]) -> None:
    """Leave these modules (the output heads) in full precision."""
    quant.modules_to_not_convert = list(module_names)


def warm_import() -> None:
    """Import gptqmodel before any load is timed (its import takes seconds: a model zoo, kernels)."""
    import_gptqmodel()
