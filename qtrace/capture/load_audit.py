"""Facts about one `from_pretrained` call, read from its arguments and the loaded model.

Everything returned is a plain dict of numbers and strings (run.json material); weights are
never copied or stored. The pure audit (qtrace/analyzers/audit.py) turns these facts into
findings.
"""

from __future__ import annotations

import contextlib
import enum
import time
from typing import Any

# Module kinds the byte table is split by (docs/run.md).
KINDS = ("quantized_linear", "linear", "embedding", "norm", "head", "other")
HEAD_NAMES = ("classifier", "score", "lm_head", "qa_outputs")
_DTYPE_NAMES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float64": "fp64"}


def dtype_name(dtype: Any) -> str:
    text = str(dtype).replace("torch.", "")
    return _DTYPE_NAMES.get(text, text)


def call_arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The load call's arguments as JSON: values for the few that matter, names for the rest."""
    out: dict[str, Any] = {"model": str(args[0]) if args else str(kwargs.get("pretrained_model_name_or_path"))}
    out["positional_args"] = max(len(args) - 1, 0)
    for key in ("dtype", "torch_dtype"):
        if key in kwargs:
            out[key] = None if kwargs[key] is None else (kwargs[key] if isinstance(kwargs[key], str)
                                                         else dtype_name(kwargs[key]))
    if "device_map" in kwargs:
        out["device_map"] = _jsonable(kwargs["device_map"])
    qc = kwargs.get("quantization_config")
    if qc is not None:
        out["quantization_config"] = quant_config_dict(qc)
    for key in ("trust_remote_code", "attn_implementation", "low_cpu_mem_usage", "num_labels"):
        if key in kwargs:
            out[key] = _jsonable(kwargs[key])
    out["kwargs"] = sorted(kwargs)
    return out


def _jsonable(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return str(v)


def quant_config_dict(qc: Any) -> dict[str, Any]:
    raw = qc.to_dict() if hasattr(qc, "to_dict") else dict(qc) if isinstance(qc, dict) else {"repr": str(qc)}
    return {str(k): _jsonable(v.value if isinstance(v, enum.Enum) else v) for k, v in raw.items()}


def applied_quantization(model: Any) -> dict[str, Any] | None:
    """The quantization config as the loaded model carries it: method, threshold, skip list, 4-bit knobs."""
    qc = getattr(getattr(model, "config", None), "quantization_config", None)
    if qc is None:
        return None
    d = quant_config_dict(qc)
    eight = bool(d.get("load_in_8bit") or d.get("_load_in_8bit"))
    four = bool(d.get("load_in_4bit") or d.get("_load_in_4bit"))
    out: dict[str, Any] = {"quant_method": str(d.get("quant_method")), "load_in_8bit": eight, "load_in_4bit": four}
    if eight:
        out["llm_int8_threshold"] = d.get("llm_int8_threshold")
        out["llm_int8_has_fp16_weight"] = d.get("llm_int8_has_fp16_weight")
    if four:
        out["bnb_4bit_quant_type"] = d.get("bnb_4bit_quant_type")
        out["bnb_4bit_compute_dtype"] = dtype_name(d.get("bnb_4bit_compute_dtype"))
        out["bnb_4bit_use_double_quant"] = d.get("bnb_4bit_use_double_quant")
        out["bnb_4bit_quant_storage"] = dtype_name(d.get("bnb_4bit_quant_storage"))
    out["llm_int8_skip_modules"] = d.get("llm_int8_skip_modules")
    # transformers adds the heads it kept in high precision to the quantizer's own skip list
    quantizer = getattr(model, "hf_quantizer", None)
    kept = getattr(quantizer, "modules_to_not_convert", None)
    out["modules_not_converted"] = sorted(str(x) for x in kept) if kept else []
    return out


def _is_quantized_linear(module: Any) -> bool:
    # By class name, so this works with any bitsandbytes release without importing it.
    return type(module).__name__ in ("Linear8bitLt", "Linear4bit", "LinearNF4", "LinearFP4")


def module_kinds(model: Any) -> dict[str, str]:
    """Qualified module name -> kind; children of a head count as head."""
    import torch

    from qtrace.capture.models import is_norm

    out_emb = None
    with contextlib.suppress(AttributeError, NotImplementedError):
        out_emb = model.get_output_embeddings()
    heads = [n for n, m in model.named_modules() if n and (m is out_emb or n.split(".")[-1] in HEAD_NAMES)]
    kinds: dict[str, str] = {}
    for name, module in model.named_modules():
        if any(name == h or name.startswith(h + ".") for h in heads):
            kinds[name] = "head"
        elif _is_quantized_linear(module):
            kinds[name] = "quantized_linear"
        elif isinstance(module, torch.nn.Linear):
            kinds[name] = "linear"
        elif isinstance(module, torch.nn.Embedding):
            kinds[name] = "embedding"
        elif is_norm(module):
            kinds[name] = "norm"
        else:
            kinds[name] = "other"
    return kinds


def tensor_table(model: Any) -> list[dict[str, Any]]:
    """One row per (kind, dtype, tensor class): parameter and buffer bytes and element counts.

    Tied tensors count once (by storage pointer), as they occupy memory once. bitsandbytes'
    per-row scales (SCB) and 4-bit quant states are reported as `quant_state` rows of the
    quantized linears: they are memory the quantized weights need beside the weights.
    """
    kinds = module_kinds(model)
    seen: set[int] = set()
    rows: dict[tuple[str, str, str, str], dict[str, Any]] = {}

    def add(kind: str, role: str, t: Any, name: str) -> None:
        key_ptr = t.data_ptr() if t.numel() else id(t)
        if key_ptr in seen:
            return
        seen.add(key_ptr)
        k = (kind, role, dtype_name(t.dtype), type(t).__name__)
        row = rows.setdefault(k, {"kind": kind, "role": role, "dtype": k[2], "class": k[3], "tensors": 0,
                                  "numel": 0, "bytes": 0, "example": name})
        row["tensors"] += 1
        row["numel"] += int(t.numel())
        row["bytes"] += int(t.numel() * t.element_size())

    for mname, module in model.named_modules():
        kind = kinds.get(mname, "other")
        for pname, p in module.named_parameters(recurse=False):
            full = f"{mname}.{pname}" if mname else pname
            add(kind, "parameter", p, full)
            for extra in _quant_state_tensors(p):
                add(kind, "quant_state", extra, full)
        for bname, b in module.named_buffers(recurse=False):
            add(kind, "buffer", b, f"{mname}.{bname}" if mname else bname)
    return sorted(rows.values(), key=lambda r: (KINDS.index(r["kind"]), r["role"], -r["bytes"]))


def _quant_state_tensors(p: Any) -> list[Any]:
    import torch

    out = []
    scb = getattr(p, "SCB", None)
    if isinstance(scb, torch.Tensor):
        out.append(scb)
    qs = getattr(p, "quant_state", None)
    while qs is not None:  # double quant nests a second state for the absmax
        for attr in ("absmax", "code"):
            t = getattr(qs, attr, None)
            if isinstance(t, torch.Tensor):
                out.append(t)
        qs = getattr(qs, "state2", None)
    return out


def linear_weight_dtype(model: Any) -> str | None:
    """The most common float dtype among plain linears' weights (by elements)."""
    import torch

    counts: dict[str, int] = {}
    for m in model.modules():
        if isinstance(m, torch.nn.Linear) and not _is_quantized_linear(m) and m.weight.is_floating_point():
            d = dtype_name(m.weight.dtype)
            counts[d] = counts.get(d, 0) + m.weight.numel()
    return max(counts, key=lambda k: counts[k]) if counts else None


def precision_label(quant: dict[str, Any] | None, model: Any) -> tuple[str, str | None]:
    """(precision, backend): int8 / nf4 / fp4 for bitsandbytes, else the linears' float dtype."""
    if quant and "bitsandbytes" in str(quant.get("quant_method", "")).lower():
        if quant.get("load_in_8bit"):
            return "int8", "bitsandbytes"
        if quant.get("load_in_4bit"):
            return ("nf4" if quant.get("bnb_4bit_quant_type") == "nf4" else "fp4"), "bitsandbytes"
    if quant:
        return str(quant.get("quant_method", "quantized")), str(quant.get("quant_method"))
    return linear_weight_dtype(model) or dtype_name(getattr(model, "dtype", "unknown")), None


def matmul_dtype(precision: str, quant: dict[str, Any] | None, model: Any) -> str | None:
    """The dtype the linears compute in without autocast: bnb int8 casts its input to fp16;
    4-bit uses bnb_4bit_compute_dtype; plain linears their weight dtype."""
    if precision == "int8":
        return "fp16"
    if precision in ("nf4", "fp4") and quant:
        return quant.get("bnb_4bit_compute_dtype") or "fp32"
    return linear_weight_dtype(model)


def model_device(model: Any) -> Any:
    import torch

    for p in model.parameters():
        return p.device
    return torch.device("cpu")


class LoadMemory:
    """Device memory around a load without disturbing the script's own peak readings.

    Resetting the peak counter would change what a script that reads max_memory_allocated
    later reports (the seed notebook does). So the peak is reset only when that is invisible
    (the current peak equals what is allocated now, e.g. right after the script's own reset);
    otherwise the load's peak is known only if it rose above the earlier peak.
    """

    def __init__(self) -> None:
        self.cuda = False
        self.before = self.peak_before = 0
        self.reset = False

    def start(self) -> LoadMemory:
        import torch

        self.cuda = torch.cuda.is_available()
        if self.cuda:
            torch.cuda.synchronize()
            self.before = int(torch.cuda.memory_allocated())
            self.peak_before = int(torch.cuda.max_memory_allocated())
            if self.peak_before <= self.before:
                torch.cuda.reset_peak_memory_stats()
                self.reset = True
        self.t0 = time.perf_counter()
        return self

    def finish(self) -> dict[str, Any]:
        import torch

        seconds = time.perf_counter() - self.t0
        out: dict[str, Any] = {"seconds": round(seconds, 4)}
        if not self.cuda:
            out.update(peak_bytes=None, resident_bytes=None, allocated_before_bytes=None, peak_excess_bytes=None,
                       memory_note="no CUDA device: device memory during the load is not measured")
            return out
        torch.cuda.synchronize()
        after = int(torch.cuda.memory_allocated())
        peak = int(torch.cuda.max_memory_allocated())
        known = self.reset or peak > self.peak_before
        out.update(allocated_before_bytes=self.before, resident_bytes=after - self.before,
                   peak_bytes=(peak - self.before) if known else None,
                   peak_excess_bytes=(peak - after) if known else None,
                   memory_note=None if known else "the script's earlier peak hides the load's (qtrace does not reset "
                                                  "a peak the script may read)")
        return out


def placement_facts(model: Any, kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """Where accelerate put the model (its hf_device_map, as layer ranges per device), None without a map.

    A model spread over two or more GPUs also gets the bytes allocated on each GPU right after the load.
    """
    from qtrace.capture.placement import gpu_indices, placement_summary

    hf_map = getattr(model, "hf_device_map", None)
    if not isinstance(hf_map, dict) or not hf_map:
        return None
    asked = kwargs.get("device_map")
    out = placement_summary(hf_map, asked if isinstance(asked, str) else None)
    gpus = gpu_indices(hf_map)
    if out is not None and len(gpus) >= 2:
        import torch

        if torch.cuda.is_available():
            out["allocated_bytes"] = {f"cuda:{i}": int(torch.cuda.memory_allocated(i)) for i in gpus}
    return out


def load_facts(model: Any, args: tuple[Any, ...], kwargs: dict[str, Any], memory: dict[str, Any]) -> dict[str, Any]:
    quant = applied_quantization(model)
    precision, backend = precision_label(quant, model)
    table = tensor_table(model)
    by_dtype: dict[str, int] = {}
    by_kind: dict[str, int] = {}
    for r in table:
        by_dtype[r["dtype"]] = by_dtype.get(r["dtype"], 0) + r["bytes"]
        by_kind[r["kind"]] = by_kind.get(r["kind"], 0) + r["bytes"]
    kinds = module_kinds(model)
    unquantized = []
    if quant:  # linears the quantizer left in float (skip list, heads)
        for name, kind in kinds.items():
            if kind in ("linear", "head") and type(model.get_submodule(name)).__name__ == "Linear":
                w = model.get_submodule(name).weight
                unquantized.append({"module": name, "kind": kind, "dtype": dtype_name(w.dtype),
                                    "bytes": int(w.numel() * w.element_size())})
    return {
        "class": type(model).__name__,
        "arguments": call_arguments(args, kwargs),
        "precision": precision, "backend": backend,
        "model_dtype": dtype_name(getattr(model, "dtype", None)),
        "matmul_dtype": matmul_dtype(precision, quant, model),
        "device": str(model_device(model)),
        "load": memory,
        "quantization": quant,
        "tensors": table,
        "bytes_by_dtype": by_dtype,
        "bytes_by_kind": by_kind,
        "total_bytes": sum(r["bytes"] for r in table),
        "unquantized_linears": unquantized,
        "placement": placement_facts(model, kwargs),
    }
