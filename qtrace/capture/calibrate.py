"""`qtrace calibrate`: measure this GPU's attainable peaks, cache them for the roofline.

Three (plus two) microbenchmarks, each timed with CUDA events after a warm-up, reported as the
median of several repeats:

- ``hbm_gbps``: a large device-to-device copy (``dst.copy_(src)``, 1 GiB by default); bytes moved
  = read + write = 2 x size, the way datasheets count bandwidth;
- ``fp16_tflops`` / ``bf16_tflops``: an ``n x n x n`` matmul (8192 by default), 2*n^3 flops;
- ``int8_tops``: ``torch._int_mm`` on int8 ``n x n`` operands (int32 out), 2*n^3 ops;
- ``fp32_tflops``: fp32 matmul with TF32 off (CUDA cores, as torch runs fp32 matmuls by default).

Results go to ``<cache>/calibration/<device-name-slug>.json`` (see qtrace.gpu_peaks), where the
roofline analyzer prefers them to the datasheet table, field by field.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from typing import Any

from qtrace.errors import QtraceError
from qtrace.gpu_peaks import calibration_path, match_device, now_iso, save_calibration, slug

METRICS = ("hbm_gbps", "fp16_tflops", "bf16_tflops", "int8_tops", "fp32_tflops")
UNITS = {"hbm_gbps": "GB/s", "fp16_tflops": "TFLOPS", "bf16_tflops": "TFLOPS", "int8_tops": "TOPS",
         "fp32_tflops": "TFLOPS"}


def _cuda_device(spec: str | None) -> Any:
    import torch

    if not torch.cuda.is_available():
        raise QtraceError("calibrate needs a CUDA GPU")
    from qtrace.capture.environment import resolve_device

    dev = resolve_device(spec or "cuda")
    if dev.type != "cuda":
        raise QtraceError("calibrate needs a CUDA GPU")
    return dev


def time_ms(fn: Callable[[], Any], warmup: int, repeats: int, inner: int) -> list[float]:
    """Per-call milliseconds of `fn`, `repeats` samples of `inner` back-to-back calls each."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(repeats):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / inner)
    return samples


def _result(work: float, samples: list[float], scale: float, **extra: Any) -> dict[str, Any]:
    med = statistics.median(samples)
    return {"value": round(work / (med / 1e3) / scale, 3), "median_ms": round(med, 6), "min_ms": round(min(samples), 6),
            "max_ms": round(max(samples), 6), "repeats": len(samples), **extra}


def measure_copy(dev: Any, size_mb: int, warmup: int, repeats: int) -> dict[str, Any]:
    import torch

    n = size_mb * 2**20
    src = torch.empty(n, dtype=torch.uint8, device=dev).fill_(1)
    dst = torch.empty_like(src)
    samples = time_ms(lambda: dst.copy_(src), warmup, repeats, inner=5)
    return _result(2.0 * n, samples, 1e9, bytes_per_copy=n, method="device-to-device copy_, read + write bytes")


def measure_gemm(dev: Any, dtype_name: str, n: int, warmup: int, repeats: int) -> dict[str, Any]:
    import torch

    if dtype_name == "int8":
        a = torch.randint(-127, 127, (n, n), dtype=torch.int8, device=dev)
        b = torch.randint(-127, 127, (n, n), dtype=torch.int8, device=dev)
        fn = lambda: torch._int_mm(a, b)  # noqa: E731
        method = "torch._int_mm int8 x int8 -> int32"
    else:
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
        a = torch.randn(n, n, dtype=dtype, device=dev)
        b = torch.randn(n, n, dtype=dtype, device=dev)
        fn = lambda: torch.mm(a, b)  # noqa: E731
        method = f"torch.mm {dtype_name}" + (" (TF32 off)" if dtype_name == "fp32" else "")
    samples = time_ms(fn, warmup, repeats, inner=3)
    return _result(2.0 * n**3, samples, 1e12, n=n, method=method)


def calibrate(device: str | None = None, size_mb: int = 1024, gemm_n: int = 8192, warmup: int = 5, repeats: int = 10,
              metrics: tuple[str, ...] = METRICS, save: bool = True,
              progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the microbenchmarks on a CUDA device; returns (and by default caches) the result dict."""
    import torch

    dev = _cuda_device(device)
    torch.cuda.set_device(dev)
    name = torch.cuda.get_device_name(dev)
    spec = match_device(name)
    results: dict[str, Any] = {}
    tf32 = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        for m in metrics:
            if progress:
                progress(f"measuring {m} ...")
            try:
                if m == "hbm_gbps":
                    results[m] = measure_copy(dev, size_mb, warmup, repeats)
                else:
                    results[m] = measure_gemm(dev, m.split("_")[0], gemm_n, warmup, repeats)
            except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:  # e.g. _int_mm unsupported on this GPU
                results[m] = {"value": None, "error": str(exc).strip().splitlines()[0][:300]}
            torch.cuda.empty_cache()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    props = torch.cuda.get_device_properties(dev)
    data = {
        "device_name": name,
        "slug": slug(name),
        "measured_at": now_iso(),
        "compute_capability": f"{props.major}.{props.minor}",
        "torch": str(torch.__version__),  # TorchVersion is a str subclass msgspec will not encode
        "cuda": str(torch.version.cuda) if torch.version.cuda else None,
        "settings": {"size_mb": size_mb, "gemm_n": gemm_n, "warmup": warmup, "repeats": repeats},
        "results": results,
        "datasheet": {"table_entry": spec.key, "peaks": spec.peaks(), "source": spec.source} if spec else None,
    }
    if save:
        data["file"] = str(save_calibration(name, data))
    return data


def format_table(data: dict[str, Any]) -> str:
    """measured vs datasheet, one metric a line."""
    from qtrace.markup import text_table

    sheet = (data.get("datasheet") or {}).get("peaks") or {}
    rows = []
    for m in METRICS:
        r = data["results"].get(m)
        if r is None:
            continue
        value = r.get("value")
        ds = sheet.get(m)
        rows.append([m, f"{value:,.1f}" if value is not None else f"error: {r.get('error')}", UNITS[m],
                     f"{ds:,.1f}" if ds else "-",
                     f"{value / ds * 100:.0f}%" if value is not None and ds else "-",
                     f"{r['median_ms']:.3f}" if r.get("median_ms") is not None else "-"])
    head = [f"{data['device_name']} (measured {data['measured_at']})"]
    table = text_table(["metric", "measured", "unit", "datasheet", "of datasheet", "median ms"], rows, "lrlrrr")
    tail = [f"cached in {data['file']} (the roofline uses it before the datasheet)"] if data.get("file") else []
    return "\n".join(head + [table] + tail)


def show_cached(name: str | None = None) -> str:
    """The datasheet table and any cached calibration files (works without a GPU)."""
    from qtrace.gpu_peaks import KNOWN_DEVICES, calibration_dir
    from qtrace.markup import text_table

    rows = [[s.key, f"{s.hbm_gbps:g}", f"{s.fp16_tflops:g}", f"{s.bf16_tflops:g}" if s.bf16_tflops else "-",
             f"{s.int8_tops:g}" if s.int8_tops else "-", f"{s.fp32_tflops:g}", s.source.split(",")[0]]
            for s in KNOWN_DEVICES]
    out = ["Datasheet peaks (dense):",
           text_table(["entry", "GB/s", "fp16 TFLOPS", "bf16 TFLOPS", "int8 TOPS", "fp32 TFLOPS", "source"], rows,
                      "lrrrrrl")]
    folder = calibration_dir()
    files = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if name:
        files = [calibration_path(name)] if calibration_path(name).exists() else []
    out.append("")
    if not files:
        out.append(f"No calibration cached in {folder} (run `qtrace calibrate` on a GPU).")
    for f in files:
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
            data["file"] = str(f)
            out.append(format_table(data))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            out.append(f"{f}: not a readable calibration file")
    return "\n".join(out)
