"""Peak rates of known GPUs (datasheets) and of this machine's GPU (`qtrace calibrate`).

The roofline analyzer compares each kernel's achieved rate with two roofs: memory bandwidth and
the math peak of the kernel's data type. Peaks come from, in order of precedence:

1. a calibration file written by `qtrace calibrate` on that GPU
   (``<cache>/calibration/<device-name-slug>.json``; ``<cache>`` is ``$QTRACE_CACHE`` or
   ``~/.cache/qtrace``), field by field: a measured value replaces the datasheet value;
2. the datasheet table below, matched on the name the CUDA driver reports
   (``torch.cuda.get_device_name``, also in every Kineto trace's ``deviceProperties``).

All math peaks are **dense** (no 2:4 structured sparsity): NVIDIA datasheets print the sparse
figure with an asterisk, and the dense one is half of it. fp16/bf16 peaks are the tensor-core
rates with fp32 accumulation (what cuBLAS uses for torch's fp16/bf16 matmuls); on datacenter
parts this equals the fp16-accumulate rate, on GeForce cards it is half of it. fp32 is the
non-tensor (CUDA core) rate: torch does not use TF32 for fp32 matmuls unless asked; tf32 is the
TF32 tensor-core rate, which a kernel named as TF32 (cuBLAS/CUTLASS ``tf32``, ``s1688gemm``...) is
held against.

No torch import here: reports run on laptops.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

# Fields of a peak set, with units: GB/s = 1e9 B/s, TFLOPS/TOPS = 1e12 op/s.
PEAK_FIELDS = ("hbm_gbps", "fp16_tflops", "bf16_tflops", "int8_tops", "fp32_tflops", "tf32_tflops")
# Which peak field a compute dtype is measured against.
DTYPE_PEAK = {"fp16": "fp16_tflops", "bf16": "bf16_tflops", "fp32": "fp32_tflops", "int8": "int8_tops",
              "tf32": "tf32_tflops"}  # a GPU without a TF32 peak (T4: Turing has none) gives TF32 GEMMs no roof


@dataclass(frozen=True)
class DeviceSpec:
    """Datasheet peaks of one GPU model (dense math, memory bandwidth)."""

    key: str
    name: str
    patterns: tuple[str, ...]  # regexes searched in the lower-cased driver name
    hbm_gbps: float
    fp16_tflops: float
    bf16_tflops: float | None
    int8_tops: float | None
    fp32_tflops: float
    memory: str
    source: str  # the vendor document the figures come from (name and URL)
    note: str = ""
    compute_capability: str = ""  # "major.minor", from NVIDIA's CUDA GPUs list (CC_SOURCE)
    tf32_tflops: float | None = None  # dense TF32 tensor-core rate (fp32 GEMMs with TF32 on), same source

    def peaks(self) -> dict[str, float | None]:
        return {f: getattr(self, f) for f in PEAK_FIELDS}

    def features(self) -> dict[str, bool | None]:
        """Which kernels this GPU can run (FEATURES), from its compute capability; None if unknown."""
        return features_of(self.compute_capability)


_H100_DS = ("NVIDIA H100 Tensor Core GPU datasheet, "
            "https://resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet "
            "(dense = half the with-sparsity figure)")
_H200_DS = ("NVIDIA H200 Tensor Core GPU product page / datasheet, https://www.nvidia.com/en-us/data-center/h200/ "
            "(dense = half the with-sparsity figure)")
_A100_DS = ("NVIDIA A100 Tensor Core GPU datasheet, "
            "https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/"
            "nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf")
_L4_DS = ("NVIDIA L4 Tensor Core GPU datasheet, https://www.nvidia.com/en-us/data-center/l4/ "
          "(dense = half the with-sparsity figure)")
_L40S_DS = ("NVIDIA L40S GPU datasheet, https://www.nvidia.com/en-us/data-center/l40s/ "
            "(dense = half the with-sparsity figure)")
_A10_DS = "NVIDIA A10 Tensor Core GPU datasheet, https://www.nvidia.com/en-us/data-center/products/a10-gpu/"
_T4_DS = ("NVIDIA T4 Tensor Core GPU datasheet, https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/"
          "tesla-t4/t4-tensor-core-datasheet-951643.pdf")
_ADA_WP = ("NVIDIA Ada Lovelace GPU architecture whitepaper v2.1, appendix table (GeForce RTX 4090), "
           "https://images.nvidia.com/aem-dam/Solutions/geforce/ada/nvidia-ada-gpu-architecture.pdf")
_AMPERE_WP = ("NVIDIA Ampere GA102 GPU architecture whitepaper, appendix table (GeForce RTX 3090), "
              "https://www.nvidia.com/content/PDF/nvidia-ampere-ga-102-gpu-architecture-whitepaper-v2.pdf")

# Where each entry's compute_capability comes from.
CC_SOURCE = "NVIDIA CUDA GPUs compute capability list, https://developer.nvidia.com/cuda-gpus"
# Hardware features that decide which kernel can run, with the lowest compute capability that has
# them. Sources: CUDA C++ Programming Guide, "Warp Matrix Functions" (wmma/mma element types per
# architecture: int8 from sm_72/Turing sm_75, bf16 from sm_80, fp8 e4m3/e5m2 from sm_89),
# https://docs.nvidia.com/cuda/cuda-c-programming-guide/ ; PyTorch's flash-attention SDPA backend
# needs sm_80+ (torch.backends.cuda.flash_sdp_enabled docs; on older GPUs SDPA falls back to the
# memory-efficient kernel).
FEATURES: dict[str, tuple[tuple[int, int], str]] = {
    "int8_tensor_cores": ((7, 2), "int8 tensor-core GEMMs (IMMA)"),
    "bf16_tensor_cores": ((8, 0), "bf16 tensor-core math"),
    "fp8_tensor_cores": ((8, 9), "fp8 (e4m3/e5m2) tensor-core math"),
    "flash_attention": ((8, 0), "PyTorch's flash-attention kernels"),
}


def parse_cc(cc: str | None) -> tuple[int, int] | None:
    """'8.9' -> (8, 9); None for an empty or malformed string."""
    m = re.fullmatch(r"\s*(\d+)\.(\d+)\s*", cc or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def features_of(cc: str | None) -> dict[str, bool | None]:
    """Feature flags (FEATURES) for a compute capability; every flag None when it is unknown."""
    v = parse_cc(cc)
    return {k: (None if v is None else v >= need) for k, (need, _) in FEATURES.items()}


# Order matters: the first spec whose pattern matches wins, so specific names come first
# (H100 NVL and PCIe before the plain H100 = SXM5; H200 NVL before H200).
KNOWN_DEVICES: tuple[DeviceSpec, ...] = (
    DeviceSpec("h100-nvl", "NVIDIA H100 NVL (94 GB)", (r"h100.*nvl",), 3900, 835.5, 835.5, 1670.5, 60.0,
               "HBM3", _H100_DS, compute_capability="9.0", tf32_tflops=417.5),
    DeviceSpec("h100-pcie", "NVIDIA H100 PCIe (80 GB)", (r"h100.*pcie",), 2000, 756.5, 756.5, 1513.0, 51.0,
               "HBM2e", _H100_DS, compute_capability="9.0", tf32_tflops=378.0),
    DeviceSpec("h100-sxm", "NVIDIA H100 SXM5 (80 GB)", (r"h100",), 3350, 989.5, 989.5, 1979.0, 67.0, "HBM3",
               _H100_DS, "the driver names it 'NVIDIA H100 80GB HBM3'", compute_capability="9.0", tf32_tflops=494.5),
    DeviceSpec("h200-nvl", "NVIDIA H200 NVL (141 GB)", (r"h200.*nvl",), 4800, 835.5, 835.5, 1670.5, 60.0,
               "HBM3e", _H200_DS, compute_capability="9.0", tf32_tflops=417.5),
    DeviceSpec("h200-sxm", "NVIDIA H200 SXM (141 GB)", (r"h200",), 4800, 989.5, 989.5, 1979.0, 67.0, "HBM3e",
               _H200_DS, compute_capability="9.0", tf32_tflops=494.5),
    DeviceSpec("a100-80gb-pcie", "NVIDIA A100 80GB PCIe", (r"a100.*80gb.*pcie", r"a100.*pcie.*80gb"),
               1935, 312.0, 312.0, 624.0, 19.5, "HBM2e", _A100_DS, compute_capability="8.0", tf32_tflops=156.0),
    DeviceSpec("a100-80gb-sxm", "NVIDIA A100 80GB SXM4", (r"a100.*80gb",), 2039, 312.0, 312.0, 624.0, 19.5,
               "HBM2e", _A100_DS, compute_capability="8.0", tf32_tflops=156.0),
    DeviceSpec("a100-40gb", "NVIDIA A100 40GB (SXM4 or PCIe)", (r"a100",), 1555, 312.0, 312.0, 624.0, 19.5,
               "HBM2", _A100_DS, "40 GB SXM4 and PCIe share these peaks", compute_capability="8.0", tf32_tflops=156.0),
    DeviceSpec("l40s", "NVIDIA L40S", (r"\bl40s\b",), 864, 362.05, 362.05, 733.0, 91.6, "GDDR6", _L40S_DS,
               compute_capability="8.9", tf32_tflops=183.0),
    DeviceSpec("l4", "NVIDIA L4", (r"\bl4\b",), 300, 121.0, 121.0, 242.5, 30.3, "GDDR6", _L4_DS,
               compute_capability="8.9", tf32_tflops=60.0),
    DeviceSpec("a10", "NVIDIA A10", (r"\ba10\b",), 600, 125.0, 125.0, 250.0, 31.2, "GDDR6", _A10_DS,
               compute_capability="8.6", tf32_tflops=62.5),
    DeviceSpec("t4", "NVIDIA T4", (r"\bt4\b",), 320, 65.0, None, 130.0, 8.1, "GDDR6", _T4_DS,
               "Turing: no bf16 tensor cores", compute_capability="7.5"),
    DeviceSpec("rtx-4090", "NVIDIA GeForce RTX 4090", (r"rtx 4090",), 1008, 165.2, 165.2, 660.6, 82.6,
               "GDDR6X", _ADA_WP, "fp16/bf16 with fp32 accumulate (fp16 accumulate is 330.3)",
               compute_capability="8.9", tf32_tflops=82.6),
    DeviceSpec("rtx-3090", "NVIDIA GeForce RTX 3090", (r"rtx 3090(?! ti)",), 936, 71.0, 71.0, 284.0, 35.6,
               "GDDR6X", _AMPERE_WP, "fp16/bf16 with fp32 accumulate (fp16 accumulate is 142)",
               compute_capability="8.6", tf32_tflops=35.6),
)


def spec_by_key_or_name(text: str) -> DeviceSpec | None:
    """A table entry by its key ('t4', 'a100-80gb-sxm') or by a device name ('NVIDIA H200'), else None."""
    key = text.strip().lower()
    for spec in KNOWN_DEVICES:
        if spec.key == key:
            return spec
    return match_device(text)


def datasheet_peaks(spec: DeviceSpec) -> Peaks:
    """The datasheet peaks of a table entry (no calibration), e.g. for a GPU we have not measured."""
    values = spec.peaks()
    sources = {k: ("datasheet" if v is not None else None) for k, v in values.items()}
    return Peaks(device_name=spec.name, spec=spec, values=values, sources=sources)


def match_device(name: str | None) -> DeviceSpec | None:
    """The datasheet entry for a driver-reported device name, or None for an unknown device."""
    if not name:
        return None
    text = name.lower().replace("-", " ").replace("_", " ")
    for spec in KNOWN_DEVICES:
        if any(re.search(p, text) for p in spec.patterns):
            return spec
    return None


def slug(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3' (the calibration file name)."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "device"


# ---------------------------------------------------------------------------------------
# Calibration cache


def cache_root() -> Path:
    env = os.environ.get("QTRACE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "qtrace"


def calibration_dir() -> Path:
    return cache_root() / "calibration"


def calibration_path(name: str) -> Path:
    return calibration_dir() / f"{slug(name)}.json"


def load_calibration(name: str | None) -> dict[str, Any] | None:
    """The cached `qtrace calibrate` result for this device, or None (absent or unreadable)."""
    if not name:
        return None
    path = calibration_path(name)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("results"), dict) else None


def save_calibration(name: str, data: dict[str, Any]) -> Path:
    from qtrace.fileio import write_json

    path = calibration_path(name)
    write_json(path, data)
    return path


# ---------------------------------------------------------------------------------------
# The peaks a report uses


@dataclass
class Peaks:
    """The peaks for one device, each field with where it came from."""

    device_name: str | None
    spec: DeviceSpec | None
    values: dict[str, float | None] = field(default_factory=dict)
    sources: dict[str, str | None] = field(default_factory=dict)  # field -> "datasheet" | "calibrated"
    calibration_file: str | None = None
    calibrated_at: str | None = None
    notes: list[str] = field(default_factory=list)  # calibrated values that were not used, and why

    @property
    def known(self) -> bool:
        return self.values.get("hbm_gbps") is not None

    def bandwidth_bps(self) -> float | None:
        v = self.values.get("hbm_gbps")
        return v * 1e9 if v else None

    def ops_per_s(self, dtype: str | None) -> float | None:
        """Math peak in op/s for a compute dtype (fp16, bf16, fp32, int8), or None."""
        key = DTYPE_PEAK.get(dtype or "")
        v = self.values.get(key) if key else None
        return v * 1e12 if v else None

    def source_of(self, key: str | None) -> str | None:
        return self.sources.get(key) if key else None

    def summary(self) -> str:
        """One line: which device and where the peaks came from."""
        if not self.known:
            return f"no peak table entry for {self.device_name or 'this device'} (run `qtrace calibrate` on it)"
        cal = any(s == "calibrated" for s in self.sources.values())
        label = self.spec.name if self.spec else self.device_name
        where = f"calibrated {self.calibrated_at or ''}".strip() if cal else "datasheet"
        parts = [f"{self.values['hbm_gbps']:.0f} GB/s"]
        for k, unit in (("fp16_tflops", "fp16 TFLOPS"), ("int8_tops", "int8 TOPS"), ("fp32_tflops", "fp32 TFLOPS")):
            if self.values.get(k):
                parts.append(f"{self.values[k]:g} {unit}")
        return f"{label} peaks ({where}): " + ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "device_name": self.device_name,
            "table_entry": self.spec.key if self.spec else None,
            "table_name": self.spec.name if self.spec else None,
            "peaks": dict(self.values),
            "peak_sources": dict(self.sources),
            "datasheet": self.spec.source if self.spec else None,
            "datasheet_note": (self.spec.note or None) if self.spec else None,
            "calibration_file": self.calibration_file,
            "calibrated_at": self.calibrated_at,
            "notes": list(self.notes),
        }


MIN_CALIBRATED_SHARE = 0.25  # a calibrated peak below this share of the datasheet is not used as a roof


def peaks_for(name: str | None, use_calibration: bool = True) -> Peaks:
    """Peaks for a device name: calibration values first (field by field), then the datasheet."""
    spec = match_device(name)
    values: dict[str, float | None] = spec.peaks() if spec else dict.fromkeys(PEAK_FIELDS)
    sources: dict[str, str | None] = {k: ("datasheet" if v is not None else None) for k, v in values.items()}
    peaks = Peaks(device_name=name, spec=spec, values=values, sources=sources)
    cal = load_calibration(name) if use_calibration else None
    if cal:
        for key in PEAK_FIELDS:
            entry = cal["results"].get(key)
            value = entry.get("value") if isinstance(entry, dict) else entry
            with contextlib.suppress(TypeError, ValueError):
                if value is None or float(value) <= 0:
                    continue
                sheet = spec.peaks().get(key) if spec else None
                if sheet and float(value) < MIN_CALIBRATED_SHARE * sheet:
                    # A roof far below the datasheet measures a library path, not the chip: on an H100
                    # torch._int_mm reached 130 of 1979 int8 TOPS while bitsandbytes' cuBLASLt kernels go
                    # faster. Kernels would then run "above the roof"; keep the datasheet and say why.
                    peaks.notes.append(f"calibrated {key} {float(value):g} is below {MIN_CALIBRATED_SHARE:.0%} of the "
                                       f"datasheet's {sheet:g}: a library-limited measurement, datasheet kept")
                    continue
                values[key] = float(value)
                sources[key] = "calibrated"
        peaks.calibration_file = str(calibration_path(name or ""))
        peaks.calibrated_at = cal.get("measured_at")
    return peaks


def peak_table() -> list[dict[str, Any]]:
    """The datasheet table as rows (docs, `qtrace calibrate --show`)."""
    return [{"key": s.key, "name": s.name, **s.peaks(), "memory": s.memory, "source": s.source, "note": s.note}
            for s in KNOWN_DEVICES]


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
