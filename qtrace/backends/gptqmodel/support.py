"""Which GPTQ / AWQ precisions this machine can run, and why not the others (pure: never imports torch).

Facts read from GPTQModel 7.3.6's source (`gptqmodel/nn_modules/qlinear/`, `utils/importer.py`)
and checked on torch 2.13 CPU: its torch kernels (`TorchLinear` for GPTQ, `AwqTorchLinear` for
AWQ: unpack by bit shifts, scale, then a float matmul) run on the CPU; Triton needs a CUDA GPU;
Marlin (and ExLlama, AWQ GEMM) are C++/CUDA sources GPTQModel compiles with nvcc on first use,
CUDA compute capability >= 8.0 for Marlin.

Each precision names its kernel (`gptq-int4-torch`, ...); the bare `gptq-int4` / `awq-int4` is
Marlin on a CUDA GPU of compute capability >= 8.0 and the torch kernel elsewhere, what
GPTQModel itself would pick for a user there, but fixed by qtrace so a run says which one ran.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

PACKAGE = "gptqmodel"
PINNED = "7.3.6"  # the version these rules were read from (pyproject's `gptq` extra)
OPTIMUM_PINNED = "2.3.0"  # transformers loads GPTQ checkpoints through optimum's GPTQQuantizer
MARLIN_CAPABILITY = (8, 0)


@dataclass(frozen=True)
class Mode:
    method: str  # "gptq" | "awq"
    kernel: str  # "torch" | "triton" | "marlin" | "auto" (marlin on CUDA >= 8.0, torch elsewhere)
    describe: str
    needs_cuda: bool = False
    min_capability: tuple[int, int] | None = None


MODES: dict[str, Mode] = {
    "gptq-int4": Mode("gptq", "auto", "GPTQ int4, group 128 (GPTQModel): Marlin kernel on CUDA >= 8.0, "
                                      "torch kernel (unpack + scale + float matmul) elsewhere"),
    "gptq-int4-torch": Mode("gptq", "torch", "GPTQ int4, GPTQModel's torch kernel: bit-shift unpack, scale, float "
                                             "matmul per call; runs on the CPU"),
    "gptq-int4-triton": Mode("gptq", "triton", "GPTQ int4, GPTQModel's Triton dequant kernel + float matmul",
                             needs_cuda=True),
    "gptq-int4-marlin": Mode("gptq", "marlin", "GPTQ int4, Marlin fused int4 x fp16 GEMM (compiled with nvcc on "
                                               "first use)", needs_cuda=True, min_capability=MARLIN_CAPABILITY),
    "awq-int4": Mode("awq", "auto", "AWQ int4, group 128 (GPTQModel): AWQ Marlin on CUDA >= 8.0, torch kernel "
                                    "elsewhere; fp16 compute"),
    "awq-int4-torch": Mode("awq", "torch", "AWQ int4, GPTQModel's torch kernel: unpack, scale, float matmul; "
                                           "fp16 compute, runs on the CPU"),
    "awq-int4-marlin": Mode("awq", "marlin", "AWQ int4, AWQ Marlin fused GEMM (compiled with nvcc on first use)",
                            needs_cuda=True, min_capability=MARLIN_CAPABILITY),
}


def kernel_of(precision: str, device_type: str, capability: tuple[int, int] | None) -> str:
    """The kernel a precision runs here: "auto" resolved as the module docstring says."""
    kernel = MODES[precision].kernel
    if kernel != "auto":
        return kernel
    if device_type == "cuda" and capability is not None and tuple(capability) >= MARLIN_CAPABILITY:
        return "marlin"
    return "torch"


def package_missing(method: str = "gptq") -> str | None:
    if importlib.util.find_spec(PACKAGE) is None:
        return f"the gptqmodel package is not installed (pip install 'qtrace[gptq]', i.e. gptqmodel=={PINNED})"
    if method == "gptq" and importlib.util.find_spec("optimum") is None:
        return (f"transformers loads GPTQ checkpoints through optimum, which is not installed "
                f"(pip install 'qtrace[gptq]', i.e. optimum=={OPTIMUM_PINNED})")
    return None


def unavailable(precision: str, device_type: str, capability: tuple[int, int] | None) -> str | None:
    """Why `precision` cannot run on this device, in one line; None if it can."""
    mode = MODES[precision]
    if mode.needs_cuda and device_type != "cuda":
        return f"{precision} needs a CUDA GPU (GPTQModel's {mode.kernel} kernel); this device is {device_type}"
    if mode.min_capability and capability is not None and tuple(capability) < mode.min_capability:
        return (f"{precision} needs compute capability >= {mode.min_capability[0]}.{mode.min_capability[1]} "
                f"(Marlin); this GPU is {capability[0]}.{capability[1]}")
    return package_missing(mode.method)
