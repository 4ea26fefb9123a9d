"""Device facts: which device to run on, what it is (NVML), library versions, process memory.

Everything NVML-related degrades quietly to None: on a CPU machine, in a container without
the driver library, or where NVML cannot see our PID, the run goes on with those fields null.
"""

from __future__ import annotations

import functools
import os
import platform
import re
import sys
from collections.abc import Iterable
from importlib import metadata
from typing import Any

from qtrace.errors import QtraceError

_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def resolve_device(spec: str | None) -> Any:
    """`auto|cpu|cuda[:N]` -> torch.device, or one clear error line."""
    import torch

    text = (spec or "auto").strip().lower()
    if not _DEVICE.match(text):
        raise QtraceError(f"--device {spec!r}: use auto, cpu, cuda or cuda:N")
    if text == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        build = f"torch {torch.__version__}" + ("" if torch.version.cuda else " is a CPU-only build")
        raise QtraceError(f"--device {text}: CUDA is not available here ({build})")
    index = int(text.split(":")[1]) if ":" in text else torch.cuda.current_device()
    count = torch.cuda.device_count()
    if index >= count:
        raise QtraceError(f"--device {text}: only {count} CUDA device(s) visible (cuda:0..cuda:{count - 1})")
    return torch.device("cuda", index)


def device_name(device: Any) -> str:
    if device.type == "cuda":
        import torch

        return torch.cuda.get_device_name(device)
    return cpu_name()


@functools.lru_cache(maxsize=1)
def cpu_name() -> str:
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    model = model or platform.processor() or platform.machine()
    return f"{model} ({os.cpu_count()} logical CPUs)"


def cpu_ranges(cpus: Iterable[int]) -> str:
    """{0, 1, 2, 3, 8} -> "0-3,8"."""
    ranges: list[list[int]] = []
    for c in sorted(set(cpus)):
        if ranges and c == ranges[-1][1] + 1:
            ranges[-1][1] = c
        else:
            ranges.append([c, c])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


def cpu_affinity() -> str | None:
    """The CPUs this process may run on ("0-3,8"); None where the OS does not say.

    Recorded because a host-bound forward (LLM.int8 at batch 1) runs at the launching CPU's speed,
    so a pinned (taskset/numactl) run and an unpinned one are not the same measurement.
    """
    try:
        return cpu_ranges(os.sched_getaffinity(0)) or None
    except (AttributeError, OSError):
        return None


def versions() -> dict[str, str | None]:
    """Versions of everything that changes the numbers."""
    import torch

    def dist(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    from qtrace import __version__

    return {
        "qtrace": __version__,
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "cuda": torch.version.cuda,
        "cudnn": str(torch.backends.cudnn.version()) if torch.cuda.is_available() else None,
        "transformers": dist("transformers"),
        "bitsandbytes": dist("bitsandbytes"),
        "accelerate": dist("accelerate"),
        "nvidia_ml_py": dist("nvidia-ml-py"),
        "platform": f"{platform.system()} {platform.release()} {platform.machine()}",
    }


def environment(device: Any) -> dict[str, Any]:
    """The run.json `environment` block."""
    return {
        "device_name": device_name(device),
        "device_type": device.type,
        "nvml": nvml_facts(device),
        "versions": versions(),
        "cpu": cpu_name(),
        "cpu_affinity": cpu_affinity(),
        "torch_threads": _torch_threads(),
        "env": timing_env(),
    }


# Variables that change what the timings mean (a blocking launch mode, hidden devices, thread
# counts, allocator settings); recorded so a surprising figure can be explained afterwards.
TIMING_ENV = ("CUDA_LAUNCH_BLOCKING", "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_MAX_CONNECTIONS", "CUDA_MODULE_LOADING",
              "CUDA_DEVICE_ORDER", "PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_NO_CUDA_MEMORY_CACHING",
              "TORCH_SHOW_CPP_STACKTRACES", "TORCH_LOGS", "TEARDOWN_CUPTI", "DISABLE_CUPTI_LAZY_REINIT",
              "OMP_NUM_THREADS", "MKL_NUM_THREADS", "BNB_CUDA_VERSION", "HF_HUB_OFFLINE")


def gpu_inventory() -> list[dict[str, Any]]:
    """Every visible GPU (a --device-map run may use all of them): index, name, memory and NVML facts."""
    import torch

    if not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        dev = torch.device("cuda", i)
        props = torch.cuda.get_device_properties(dev)
        out.append({"index": i, "name": props.name, "total_memory_bytes": int(props.total_memory),
                    "nvml": nvml_facts(dev)})
    return out


def timing_env() -> dict[str, str]:
    return {k: os.environ[k] for k in TIMING_ENV if k in os.environ}


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


# ---------------------------------------------------------------------------------------
# NVML


@functools.lru_cache(maxsize=1)
def _nvml() -> Any:
    """The initialised pynvml module, or None where NVML does not work."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml
    except Exception:  # no driver library, no GPU, permission: all mean "no NVML facts"
        return None


def _handle(device: Any) -> Any:
    """NVML handle of the torch device; by UUID because CUDA_VISIBLE_DEVICES renumbers devices."""
    nv = _nvml()
    if nv is None or device.type != "cuda":
        return None
    import torch

    props = torch.cuda.get_device_properties(device)
    uuid = getattr(props, "uuid", None)
    if uuid is not None:
        text = str(uuid)
        for candidate in (text if text.startswith(("GPU-", "MIG-")) else f"GPU-{text}", text):
            try:
                return nv.nvmlDeviceGetHandleByUUID(candidate)
            except Exception:
                continue
    try:
        return nv.nvmlDeviceGetHandleByIndex(device.index or 0)
    except Exception:
        return None


def _try(fn: Any, *args: Any) -> Any:
    try:
        value = fn(*args)
    except Exception:
        return None
    return value.decode() if isinstance(value, bytes) else value


def nvml_facts(device: Any) -> dict[str, Any] | None:
    handle = _handle(device)
    nv = _nvml()
    if handle is None or nv is None:
        return None
    import torch

    mem = _try(nv.nvmlDeviceGetMemoryInfo, handle)
    power = _try(nv.nvmlDeviceGetEnforcedPowerLimit, handle)
    cuda_driver = _try(nv.nvmlSystemGetCudaDriverVersion)
    major, minor = torch.cuda.get_device_capability(device)
    return {
        "name": _try(nv.nvmlDeviceGetName, handle),
        "uuid": _try(nv.nvmlDeviceGetUUID, handle),
        "driver_version": _try(nv.nvmlSystemGetDriverVersion),
        "cuda_driver_version": f"{cuda_driver // 1000}.{cuda_driver % 1000 // 10}" if cuda_driver else None,
        "compute_capability": f"{major}.{minor}",
        "memory_total_bytes": int(mem.total) if mem is not None else None,
        "memory_used_bytes_at_start": int(mem.used) if mem is not None else None,
        "power_limit_w": power / 1000 if power is not None else None,
        "sm_clock_max_mhz": _try(nv.nvmlDeviceGetMaxClockInfo, handle, nv.NVML_CLOCK_SM),
        "mem_clock_max_mhz": _try(nv.nvmlDeviceGetMaxClockInfo, handle, nv.NVML_CLOCK_MEM),
        "pcie_gen_max": _try(nv.nvmlDeviceGetMaxPcieLinkGeneration, handle),
        "pcie_width_max": _try(nv.nvmlDeviceGetMaxPcieLinkWidth, handle),
        "persistence_mode": _try(nv.nvmlDeviceGetPersistenceMode, handle),
        "mig_mode": _first(_try(nv.nvmlDeviceGetMigMode, handle)),
    }


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, list | tuple) and value else value


def nvml_process_bytes(device: Any) -> int | None:
    """GPU memory NVML attributes to this process (driver view: includes the CUDA context and
    everything the caching allocator holds). None where NVML cannot see our PID (containers)."""
    handle = _handle(device)
    nv = _nvml()
    if handle is None or nv is None:
        return None
    pid = os.getpid()
    for getter in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
        for proc in _try(getattr(nv, getter, lambda _h: []), handle) or []:
            used = getattr(proc, "usedGpuMemory", None)
            if proc.pid == pid and used is not None:
                return int(used)
    return None


def nvml_device_used_bytes(device: Any) -> int | None:
    """Memory used on the whole device (all processes): a fallback where per-process fails."""
    handle = _handle(device)
    nv = _nvml()
    if handle is None or nv is None:
        return None
    mem = _try(nv.nvmlDeviceGetMemoryInfo, handle)
    return int(mem.used) if mem is not None else None


# ---------------------------------------------------------------------------------------
# CPU memory


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0) so the next reading covers one pass only."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int | None:
    """Peak resident set size since the last reset_peak_rss (or since start where that failed)."""
    try:
        with open("/proc/self/status", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource

        scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB on Linux
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale
    except (ImportError, OSError):
        return None
