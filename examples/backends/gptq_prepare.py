"""The GPU-visit steps shared by examples/backends/gptq_session.sh and gpu_session_v3.sh.

    python examples/backends/gptq_prepare.py versions            # what the host runs, after the wheels
    python examples/backends/gptq_prepare.py marlin              # Marlin's first-use nvcc compile, timed
    python examples/backends/gptq_prepare.py checkpoints MODEL   # GPTQ + AWQ checkpoints, cached
    python examples/backends/gptq_prepare.py folder MODEL        # a device-built preset's fp16 folder
    python examples/backends/gptq_prepare.py checkpoint MODEL PRECISION   # one checkpoint, GPTQModel's
                                                                 # own log streamed (progress)

Run with the carried wheels on PYTHONPATH (../shared/gpu/README.md); `marlin` and `checkpoints`
need CUDA.
"""

from __future__ import annotations

import sys
import time


def versions() -> None:
    import bitsandbytes
    import optimum  # noqa: F401  (carried for GPTQModel; fails here if the wheel is missing)
    import torch
    import torchao
    import transformers

    from qtrace.backends.gptqmodel.loading import import_gptqmodel

    g = import_gptqmodel()
    print("torch", torch.__version__, "transformers", transformers.__version__, "gptqmodel", g.__version__,
          "torchao", torchao.__version__, "bitsandbytes", bitsandbytes.__version__,
          "cc", torch.cuda.get_device_capability() if torch.cuda.is_available() else None, flush=True)


def marlin() -> None:
    import torch

    from qtrace.backends.gptqmodel.loading import import_gptqmodel

    import_gptqmodel()
    from gptqmodel.utils.marlin import prewarm_marlin_extension

    t0 = time.perf_counter()
    ok = prewarm_marlin_extension(torch.float16)
    print(f"MARLIN fp16 extension ready={ok} in {time.perf_counter() - t0:.1f} s (first use: nvcc compile)",
          flush=True)
    t0 = time.perf_counter()
    prewarm_marlin_extension(torch.float16)
    print(f"MARLIN second load in {time.perf_counter() - t0:.2f} s (cached build)", flush=True)


def checkpoints(model: str) -> None:
    import torch

    from qtrace.capture import models

    spec = models.resolve_model(model, progress=print)
    t0 = time.perf_counter()
    facts = models.prepare_checkpoints(spec, ["gptq-int4", "awq-int4"], torch.device("cuda"), progress=print)
    for p, f in facts.items():
        print(p, f.get("source"), f.get("build_seconds"), f.get("error", ""))
    print(f"checkpoints ready in {time.perf_counter() - t0:.1f} s", flush=True)


def folder(model: str) -> None:
    import torch

    from qtrace.capture import models
    from qtrace.capture.device_folder import ensure_folder

    t0 = time.perf_counter()
    path = ensure_folder(model, 0, torch.device("cuda", 0), models.cache_root(), progress=print)
    print(f"folder {path} ready in {time.perf_counter() - t0:.1f} s", flush=True)


def checkpoint(model: str, precision: str) -> None:
    import contextlib

    import torch

    from qtrace.backends.gptqmodel import checkpoints as ck
    from qtrace.capture import models

    ck._quiet = contextlib.nullcontext  # stream GPTQModel's per-layer log: a visit's only progress
    spec = models.resolve_model(model, progress=print)
    t0 = time.perf_counter()
    facts = models.prepare_checkpoints(spec, [precision], torch.device("cuda", 0), progress=print)
    for p, f in facts.items():
        print("CHECKPOINT", p, f.get("source"), f.get("build_seconds"), f.get("error", ""), flush=True)
    print(f"{precision} ready in {time.perf_counter() - t0:.1f} s", flush=True)


def main(argv: list[str]) -> int:
    steps = {"versions": versions, "marlin": marlin, "checkpoints": checkpoints, "folder": folder,
             "checkpoint": checkpoint}
    arity = {"checkpoints": 2, "folder": 2, "checkpoint": 3}
    if not argv or argv[0] not in steps or len(argv) != arity.get(argv[0], 1):
        print("usage: gptq_prepare.py versions | marlin | checkpoints MODEL | folder MODEL | "
              "checkpoint MODEL PRECISION", file=sys.stderr)
        return 2
    steps[argv[0]](*argv[1:])
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
