"""Roofline per phase and per kernel: bytes moved, operations done, achieved rates, and the bound.

The question: "is this phase limited by memory bandwidth, by math, or by neither (too small, so
launch and latency dominate)?" Quantization pays where a phase is memory-bound and does little
where it is compute- or latency-bound.

Work comes from the **recorded shapes and dtypes** (``record_shapes=True``) of the op that
launched each GPU event, and of its bitsandbytes op where the kernel is launched by one
(docs/roofline.md lists every formula):

- int8 GEMM (``bitsandbytes::int8_linear_matmul`` A [T,K] int8, B [N,K] int8):
  ``2*T*K*N`` int8 ops; bytes ``T*K + N*K + 4*T*N`` (int32 out);
- int32 -> fp16 dequant (``int8_mm_dequant``): ``4*T*N + 4*T + 4*N (+ bias) + 2*T*N``;
- row-wise quantization (``kInt8VectorQuant``): ``2*T*K`` in, ``T*K + 4*T`` out;
- NF4 weight dequant (``kDequantizeBlockwise<half,...,NF4>`` under ``gemm_4bit``): packed
  weights ``N*K/2`` + absmax ``4*N*K/blocksize`` in, ``N*K*2`` out;
- absmax dequant (double quant, ``kDequantizeBlockwise<float,...,0>``): ``n`` uint8 + level-2
  absmax + code in, ``4*n`` out;
- fused 4-bit GEMM (``gemm_4bit_*`` kernels): ``2*T*K*N`` flops, bytes = A + packed weights +
  absmax + out;
- dense GEMMs (``aten::mm/addmm/bmm/baddbmm/_int_mm/linear/addmv/mv``): ``2*M*K*N`` at the
  operands' dtype, bytes = operands + output;
- attention (sdpa / cuDNN / flash ops): ``2*B*H*L*S*(D+Dv)`` flops (no causal discount),
  bytes = Q + K + V + O;
- pointwise, norms, softmax, copies, cat, gather/embedding: bytes in + out from dims x dtype;
- GPU memcpy / memset: the event's own byte count (device-to-device counts read + write).

A **unit** is one launching op occurrence and one kind of work: its work is counted once and
its time is the sum of its GPU events (so a cuBLAS split-K GEMM and its reduce kernel share the
op's flops). Kernels whose shapes are unknown get null fields, never invented values; each
phase says how much of its GPU time the figures cover (``modeled_share``).

Bound labels, with peaks from `qtrace.gpu_peaks` (calibration first, then the datasheet):

- ``latency``: too small to reach either roof, so launch/latency cost decides: achieved < 10%
  of both roofs with a mean unit duration < 10 µs, or so little work per unit that it would take
  < 2 µs even at the roof (about the fixed cost of a kernel) while achieving < 50% of it;
- otherwise ``compute`` when the ideal compute time (ops / math peak) exceeds the ideal memory
  time (bytes / bandwidth) -- arithmetic intensity above the ridge point -- else ``memory``;
- ``transfer``: host<->device copies (PCIe, no roof in the table) of 10 µs or more.

Pure pandas, no torch.
"""

from __future__ import annotations

import copy
import math
import re
from typing import Any

import numpy as np
import pandas as pd

from qtrace.analyzers.attribution import gpu_phases
from qtrace.analyzers.distinct import mask_distinct, python_strings, shared_objects, string_codes
from qtrace.analyzers.phase_rules import PHASE_ORDER
from qtrace.analyzers.shapes import (
    DTYPE_KIND,
    Tensor,
    Work,
    arg_tensor,
    broadcast,
    parse_args,
    sum_bytes,
    tensors,
)
from qtrace.backends import BACKENDS, OP_PREFIXES, backend_of_op, resolve
from qtrace.gpu_peaks import DTYPE_PEAK, Peaks, peaks_for
from qtrace.tracefile.kineto import Trace

LATENCY_UTIL = 0.10  # below this share of both roofs...
LATENCY_US = 10.0  # ...and shorter than this on average: "latency"
# ...or so little work per unit that even at the roof it would take under LATENCY_IDEAL_US (about
# the fixed cost of launching and ramping up a kernel), while achieving under LATENCY_SMALL_UTIL.
LATENCY_IDEAL_US = 2.0
LATENCY_SMALL_UTIL = 0.50

UNIT_COLUMNS = ["op", "model", "kernel", "phase", "kind", "events", "gpu_us", "bytes", "flops", "int_ops",
                "dtype", "link", "step"]
RATE_COLUMNS = ["units", "gpu_time_us", "modeled_us", "modeled_share", "bytes", "flops", "int_ops",
                "achieved_gbps", "achieved_tflops", "achieved_tops", "intensity", "compute_dtype",
                "peak_gbps", "peak_compute", "peak_compute_unit", "mem_util", "compute_util", "mean_unit_us",
                "bound", "bound_shares", "peak_source"]
# The roofline fields that join each phase record in `qtrace report --format json`.
PHASE_FIELDS = ["modeled_share", "bytes", "flops", "int_ops", "achieved_gbps", "achieved_tflops", "achieved_tops",
                "intensity", "compute_dtype", "mem_util", "compute_util", "bound", "bound_shares", "peak_source"]


# ---------------------------------------------------------------------------------------
# Work models


_GEMM_MM = {"aten::mm", "aten::_int_mm"}
_GEMM_ADDMM = {"aten::addmm"}
_GEMM_BMM = {"aten::bmm"}
_GEMM_BADDBMM = {"aten::baddbmm"}
_ATTENTION = {"aten::_cudnn_attention_forward", "aten::_scaled_dot_product_flash_attention",
              "aten::_scaled_dot_product_efficient_attention", "aten::_scaled_dot_product_cudnn_attention",
              "aten::_scaled_dot_product_flash_attention_for_cpu"}
_NORMS = {"aten::native_layer_norm", "aten::layer_norm", "aten::rms_norm", "aten::_fused_rms_norm",
          "aten::native_group_norm"}
_SOFTMAX = {"aten::_softmax", "aten::softmax", "aten::_safe_softmax", "aten::_log_softmax", "aten::log_softmax"}
_REDUCTIONS = {"aten::sum", "aten::mean", "aten::any", "aten::all", "aten::amax", "aten::amin", "aten::max",
               "aten::min", "aten::argmax", "aten::argmin", "aten::prod", "aten::var", "aten::std", "aten::norm",
               "aten::linalg_vector_norm", "aten::logsumexp", "aten::count_nonzero", "aten::var_mean",
               "aten::std_mean"}
_COMPARE = {"aten::eq", "aten::ne", "aten::ge", "aten::gt", "aten::le", "aten::lt", "aten::logical_and",
            "aten::logical_or", "aten::logical_not", "aten::isnan", "aten::isinf", "aten::isfinite"}
_POINTWISE = {
    "add", "sub", "mul", "div", "neg", "abs", "pow", "exp", "exp2", "expm1", "log", "log1p", "log2", "sqrt",
    "rsqrt", "reciprocal", "sin", "cos", "tan", "tanh", "sigmoid", "silu", "gelu", "relu", "gelu_tanh", "erf",
    "clamp", "clamp_min", "clamp_max", "clip", "maximum", "minimum", "masked_fill", "where", "sign", "floor",
    "ceil", "round", "trunc", "remainder", "fmod", "bitwise_and", "bitwise_or", "bitwise_xor", "bitwise_not",
    "lerp", "addcmul", "addcdiv", "hardtanh", "leaky_relu", "elu", "softplus", "mish", "hardswish", "hardsigmoid",
    "square", "rsub", "true_divide", "threshold", "nan_to_num", "sgn", "logit",
}


def _gemm(m: int, k: int, n: int, a: Tensor, b: Tensor, extra: list[Tensor], out_size: int | None,
          batch: int = 1) -> Work | None:
    kind = DTYPE_KIND.get(a.dtype)
    ins = sum_bytes([a, b, *extra])
    if ins is None or out_size is None:
        return None
    ops = 2.0 * batch * m * k * n
    nbytes = float(ins + batch * m * n * out_size)
    if kind == "int8":
        return Work("dense_gemm", nbytes, int_ops=ops, dtype="int8")
    return Work("dense_gemm", nbytes, flops=ops, dtype=kind)


def aten_work(op: str, args: list[Any], kernel: str = "") -> Work | None:
    """Work of a kernel launched directly by aten op `op` with inputs `args`, or None."""
    if op in _GEMM_MM:
        a, b = arg_tensor(args, 0), arg_tensor(args, 1)
        if a is None or b is None or len(a.shape) != 2 or len(b.shape) != 2:
            return None
        out_size = 4 if op == "aten::_int_mm" else a.size
        return _gemm(a.shape[0], a.shape[1], b.shape[1], a, b, [], out_size)
    if op in _GEMM_ADDMM:
        c, a, b = arg_tensor(args, 0), arg_tensor(args, 1), arg_tensor(args, 2)
        if a is None or b is None or len(a.shape) != 2 or len(b.shape) != 2:
            return None
        return _gemm(a.shape[0], a.shape[1], b.shape[1], a, b, [c] if c else [], a.size)
    if op in _GEMM_BMM or op in _GEMM_BADDBMM:
        off = 1 if op in _GEMM_BADDBMM else 0
        a, b = arg_tensor(args, off), arg_tensor(args, off + 1)
        if a is None or b is None or len(a.shape) != 3 or len(b.shape) != 3:
            return None
        extra = [args[0]] if off and isinstance(args[0], Tensor) else []
        return _gemm(a.shape[1], a.shape[2], b.shape[2], a, b, extra, a.size, batch=a.shape[0])
    if op == "aten::linear":
        x, w, bias = arg_tensor(args, 0), arg_tensor(args, 1), arg_tensor(args, 2)
        if x is None or w is None or len(w.shape) != 2 or not x.shape:
            return None
        rows = math.prod(x.shape[:-1])
        return _gemm(rows, x.shape[-1], w.shape[0], x, w, [bias] if bias else [], x.size)
    if op in ("aten::mv", "aten::addmv"):
        off = 1 if op == "aten::addmv" else 0
        a, v = arg_tensor(args, off), arg_tensor(args, off + 1)
        if a is None or v is None or len(a.shape) != 2:
            return None
        extra = [args[0]] if off and isinstance(args[0], Tensor) else []
        return _gemm(a.shape[0], a.shape[1], 1, a, v, extra, a.size)
    if op in _ATTENTION:
        q, k, v = arg_tensor(args, 0), arg_tensor(args, 1), arg_tensor(args, 2)
        if q is None or k is None or v is None or len(q.shape) != 4 or len(k.shape) != 4 or len(v.shape) != 4:
            return None
        b, h, lq, d = q.shape
        s, dv = k.shape[2], v.shape[3]
        ins = sum_bytes([q, k, v])
        if ins is None or q.size is None:
            return None
        out = b * h * lq * dv * q.size
        return Work("attention", float(ins + out), flops=2.0 * b * h * lq * s * (d + dv), dtype=DTYPE_KIND.get(q.dtype))
    if op in _NORMS:
        x = arg_tensor(args, 0)
        params = [t for t in tensors(args[1:]) if t.numel > 1]
        if x is None or x.nbytes is None:
            return None
        pb = sum_bytes(params)
        return None if pb is None else Work("norm", float(2 * x.nbytes + pb))
    if op in _SOFTMAX:
        x = arg_tensor(args, 0)
        return None if x is None or x.nbytes is None else Work("softmax", float(2 * x.nbytes))
    if op in _REDUCTIONS:
        ins = sum_bytes(tensors(args))
        return None if not ins else Work("reduction", float(ins))  # outputs are small next to the input
    if op == "aten::copy_":
        dst, src = arg_tensor(args, 0), arg_tensor(args, 1)
        if dst is None or src is None or dst.nbytes is None or src.nbytes is None:
            return None
        return Work("copy", float(dst.nbytes + src.nbytes))
    if op in ("aten::fill_", "aten::zero_"):
        dst = arg_tensor(args, 0)
        return None if dst is None or dst.nbytes is None else Work("fill", float(dst.nbytes))
    if op == "aten::cat":
        return _cat_work(args, kernel)
    if op in ("aten::gather", "aten::index_select", "aten::embedding"):
        return _gather_work(op, args)
    if op in _COMPARE:
        tens = [t for t in tensors(args) if t.numel > 0]
        shape = broadcast([t.shape for t in tens])
        ins = sum_bytes(tens)
        if shape is None or ins is None or not tens:
            return None
        return Work("pointwise", float(ins + math.prod(shape)))  # bool output
    base = op.removeprefix("aten::")
    inplace = base.endswith("_") and not base.endswith("__")
    if base.rstrip("_") in _POINTWISE:
        tens = [t for t in tensors(args) if t.numel > 0 or not t.shape]
        if not tens:
            return None
        ins = sum_bytes(tens)
        if ins is None:
            return None
        if inplace:
            out_bytes = tens[0].nbytes or 0
        else:
            shape = broadcast([t.shape for t in tens])
            sizes = [t.size for t in tens if t.size]
            if shape is None or not sizes:
                return None
            out_bytes = math.prod(shape) * max(sizes)
        return Work("pointwise", float(ins + out_bytes))
    return None


_OPAQUE = re.compile(r"CatArrayBatchedCopy\w*<[^<>]*OpaqueType<(\d+)u?>")


def _cat_work(args: list[Any], kernel: str) -> Work | None:
    """TensorList element dtypes are not recorded; CUDA's cat kernel names the element size
    (``CatArrayBatchedCopy<OpaqueType<2u>, ...>``). Without it the bytes stay unknown."""
    lst = args[0] if args and isinstance(args[0], list) else None
    m = _OPAQUE.search(kernel)
    if lst is None or m is None:
        return None
    return Work("copy", float(2 * sum(t.numel for t in lst) * int(m.group(1))))


def _gather_work(op: str, args: list[Any]) -> Work | None:
    if op == "aten::embedding":
        weight, idx = arg_tensor(args, 0), arg_tensor(args, 1)
        if weight is None or idx is None or len(weight.shape) != 2 or weight.size is None or idx.nbytes is None:
            return None
        rows = idx.numel * weight.shape[1] * weight.size
        return Work("gather", float(idx.nbytes + 2 * rows))
    if op == "aten::index_select":
        src, idx = arg_tensor(args, 0), arg_tensor(args, 2)
        if src is None or idx is None or src.size is None or idx.nbytes is None or not src.shape:
            return None
        rows = idx.numel * (src.numel // max(src.shape[0], 1)) * src.size
        return Work("gather", float(idx.nbytes + 2 * rows))
    src, idx = arg_tensor(args, 0), arg_tensor(args, 2)  # aten::gather(self, dim, index, ...): output has index's shape
    if src is None or idx is None or src.size is None or idx.stored_nbytes is None:
        return None
    # The index is read as stored: embedding -> index_select -> gather passes a [tokens, hidden]
    # index expanded from one id per token (strides [1, 0]), 8 bytes per token, not per element.
    return Work("gather", float(idx.stored_nbytes + 2 * idx.numel * src.size))


def event_work(kind: str, name: str, nbytes: Any) -> Work | None:
    """Copies and memsets carry their own byte count."""
    if nbytes is None or pd.isna(nbytes):
        return None
    b = float(nbytes)
    if kind == "gpu_memset":
        return Work("memset", b, per_event=True)
    if "DtoD" in name or "PtoP" in name:
        return Work("memcpy_dtod", 2 * b, per_event=True)
    return Work("memcpy_host", b, link="pcie", per_event=True)


# ---------------------------------------------------------------------------------------
# Units


def _backend_context(trace: Trace, op_rows: np.ndarray, op_name: np.ndarray, has_op: np.ndarray) -> np.ndarray:
    """Per GPU event, what a backend's work model needs beyond the op's own inputs (None if nothing)."""
    out = np.full(len(op_rows), None, dtype=object)
    for backend in BACKENDS:
        if backend.work_context:
            ctx = resolve(backend.work_context)(trace, op_rows, op_name, has_op)
            out = np.where(pd.isna(out) & ~pd.isna(ctx), ctx, out) if len(out) else out
    return out


def units(trace: Trace) -> pd.DataFrame:
    """One row per unit (launching op occurrence x work model), with its work and GPU time."""
    cache = trace.__dict__.setdefault("_qtrace_cache", {})
    if "roofline_units" in cache:
        return cache["roofline_units"]
    gpu = gpu_phases(trace)
    if gpu.empty:
        out = pd.DataFrame(columns=UNIT_COLUMNS)
        cache["roofline_units"] = out
        return out
    ops = trace.ops
    op_rows = gpu["op"].to_numpy()
    has_op = op_rows >= 0
    safe = np.clip(op_rows, 0, None)
    op_name = np.where(has_op, shared_objects(ops["name"])[safe] if len(ops) else "", "")
    dims = np.where(has_op, ops["input_dims"].to_numpy(dtype=object)[safe] if len(ops) else None, None)
    types = np.where(has_op, ops["input_type"].to_numpy(dtype=object)[safe] if len(ops) else None, None)
    # Traces from loaders without the column (older qtrace frames) read as "no strides recorded".
    stride_col = ops["input_strides"] if "input_strides" in ops else pd.Series(None, index=ops.index, dtype=object)
    strides = np.where(has_op, stride_col.to_numpy(dtype=object)[safe] if len(ops) else None, None)
    # Names, kinds and phases as integer codes: a per-event frame of kernel names held ~30 MB per
    # 100k events (Arrow strings, copied again by each sort and group-by).
    kind_code, kinds = string_codes(gpu["cat"])
    kernel_code, kernels = string_codes(gpu["name"])
    phase_code, phases = string_codes(gpu["phase"])
    kind, kname = kinds[kind_code], kernels[kernel_code]
    is_copy = np.isin(kind, ["gpu_memcpy", "gpu_memset"])
    # Per distinct op name, then spread over the events (no per-event factorize).
    quant_name = mask_distinct(ops["name"], lambda n: isinstance(n, str) and n.startswith(OP_PREFIXES))
    is_quant_op = has_op & quant_name[safe] if len(ops) else np.zeros(len(gpu), dtype=bool)
    context_col = _backend_context(trace, op_rows, op_name, has_op)
    raw_bytes = gpu["bytes"].to_numpy(dtype=object) if "bytes" in gpu else np.full(len(gpu), None, dtype=object)
    keys = {
        "kind": kind,
        "op_name": op_name,
        "kernel": np.where(is_quant_op | is_copy | (op_name == "aten::cat"), kname, ""),
        "dims": dims,
        "types": types,
        "strides": strides,
        "bytes": np.where(is_copy, raw_bytes, None),
        "context": context_col,
    }
    gid = _key_groups(list(keys.values()))
    first = np.unique(gid, return_index=True)[1]
    # One row per distinct key, as a DataFrame of all events would give it (same value types).
    first_keys = pd.DataFrame({c: v[first] for c, v in keys.items()})
    del keys
    works: dict[int, Work | None] = {g: _estimate(first_keys.iloc[g]) for g in range(len(first))}
    n_groups = len(works)
    model_of = np.empty(n_groups, dtype=object)
    model_of[:] = [(works[g].model if works[g] else None) for g in range(n_groups)]
    model_key_of = pd.factorize(np.array(["" if m is None else m for m in model_of], dtype=object))[0]
    ev = pd.DataFrame({
        "op": op_rows, "kernel": kernel_code, "phase": phase_code, "kind": kind_code,
        "dur": gpu["dur"].to_numpy(dtype=float), "gid": gid, "step": gpu["step"].to_numpy(),
    })
    # Events without a launching op or a model each stand alone (unknown work).
    alone = (op_rows < 0) | pd.isna(model_of[gid])
    ev["ukey"] = np.where(alone, -1 - np.arange(len(ev)), op_rows)
    ev["model_key"] = model_key_of[gid]
    ev = ev.sort_values("dur", ascending=False, kind="stable")
    grouped = ev.groupby(["ukey", "model_key"], sort=False)
    agg = grouped.agg(op=("op", "first"), kernel=("kernel", "first"), phase=("phase", "first"),
                      kind=("kind", "first"), events=("dur", "size"), gpu_us=("dur", "sum"), gid=("gid", "first"),
                      step=("step", "first"))
    gid_first = agg["gid"].to_numpy()
    # Back to values; a unit's events share one model, so its first event's is the unit's.
    # Kernel names point at one string per distinct name (cached for the report's life: ~300 bytes
    # a row in Arrow).
    unit_kernel, unit_phase = agg["kernel"].to_numpy(dtype=np.int32), agg["phase"].to_numpy(dtype=np.int32)
    agg["kernel"] = python_strings(kernels[unit_kernel])
    agg["phase"] = python_strings(phases[unit_phase])
    agg["kind"] = python_strings(kinds[agg["kind"].to_numpy()])
    agg["model"] = model_of[gid_first]
    # Per-event work (copies) sums over the unit's events; op-level work counts once.
    ev_bytes_of = np.empty(n_groups, dtype=object)
    ev_bytes_of[:] = [works[g].bytes if works[g] is not None and works[g].per_event else np.nan
                      for g in range(n_groups)]
    ev["ev_bytes"] = ev_bytes_of[ev["gid"].to_numpy()].tolist()  # a list: pandas infers the dtype as before
    agg["ev_bytes"] = grouped["ev_bytes"].sum(min_count=1)
    # Per distinct key, then spread over the units (a unit's values are its first event's key's):
    # object arrays, so that each column holds the very values (and pandas infers the same dtypes)
    # that a loop over the units appended.
    known = np.array([works[g] is not None for g in range(n_groups)], dtype=bool)
    per_event = np.array([bool(works[g] is not None and works[g].per_event) for g in range(n_groups)], dtype=bool)

    def field(get: Any) -> np.ndarray:
        values = np.empty(n_groups, dtype=object)
        values[:] = [get(works[g]) if works[g] is not None else None for g in range(n_groups)]
        return values

    def or_nan(v: Any) -> Any:
        return np.nan if v is None else v

    g_units = gid_first.astype(np.int64)
    unit_known, unit_per_event = known[g_units], per_event[g_units]
    nan_units = np.full(len(g_units), np.nan, dtype=object)
    rows_b = np.where(unit_per_event, agg["ev_bytes"].to_numpy().astype(object),
                      field(lambda w: or_nan(w.bytes))[g_units])
    rows_b = np.where(unit_known, rows_b, nan_units).tolist()
    rows_f = np.where(unit_known, field(lambda w: or_nan(w.flops))[g_units], nan_units).tolist()
    rows_i = np.where(unit_known, field(lambda w: or_nan(w.int_ops))[g_units], nan_units).tolist()
    rows_d = field(lambda w: w.dtype)[g_units].tolist()
    rows_l = field(lambda w: w.link)[g_units].tolist()
    agg["bytes"] = rows_b
    agg["flops"] = rows_f
    agg["int_ops"] = rows_i
    # A fp32 GEMM run by a TF32 tensor-core kernel is held against a TF32 peak (none in the peak
    # table: then it has no roof), never the fp32 CUDA-core peak it can beat ("128% of roof").
    tf32 = re.compile(TF32_KERNELS)
    is_tf32 = np.array([tf32.search(str(k)) is not None for k in kernels.tolist()], dtype=bool)[unit_kernel]
    agg["dtype"] = ["tf32" if d == "fp32" and t else d for d, t in zip(rows_d, is_tf32, strict=True)]
    agg["link"] = rows_l
    out = agg.reset_index(drop=True)[UNIT_COLUMNS]
    unit_of_event = np.empty(len(ev), dtype=np.int64)
    unit_of_event[ev.index.to_numpy()] = grouped.ngroup().to_numpy()  # groups number in agg's row order
    cache["roofline_unit_of_event"] = unit_of_event
    # Each unit's kernel and phase as codes into the distinct names: the per-kernel rows select
    # units by them (comparing a Python string per unit took as long as building the units).
    cache["roofline_unit_codes"] = (unit_kernel, kernels, unit_phase, phases)
    cache["roofline_units"] = out
    return out


def _unit_codes(trace: Trace, u: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(kernel code, kernel names, phase code, phase names) of each row of `units(trace)`."""
    cached = trace.__dict__.get("_qtrace_cache", {}).get("roofline_unit_codes")
    if cached is not None and len(cached[0]) == len(u):
        return cached
    kernel_code, kernels = pd.factorize(shared_objects(u["kernel"]), use_na_sentinel=False)
    phase_code, phases = pd.factorize(shared_objects(u["phase"]), use_na_sentinel=False)
    return kernel_code, np.asarray(kernels, dtype=object), phase_code, np.asarray(phases, dtype=object)


def _bounded_units(trace: Trace, peaks: Peaks) -> pd.DataFrame:
    """`unit_bounds(units(trace), peaks)`, worked out once per trace and peaks."""
    cache = trace.__dict__.setdefault("_qtrace_cache", {})
    hit = cache.get("roofline_bounded_units")
    if hit is not None and hit[0] == peaks and hit[1] is units(trace):
        return hit[2]
    u = unit_bounds(units(trace), peaks)
    cache["roofline_bounded_units"] = (copy.deepcopy(peaks), units(trace), u)  # a copy: a caller may change its own
    return u


def _key_groups(columns: list[np.ndarray]) -> np.ndarray:
    """Group number of each row's combination of values, NaN-like values one value ("\x00", as
    fillna gives), numbered in order of first appearance as groupby(sort=False).ngroup() does."""
    gid = np.zeros(len(columns[0]), dtype=np.int64)
    for col in columns:
        codes, uniq = pd.factorize(np.where(pd.isna(col), "\x00", col), use_na_sentinel=False)
        gid = pd.factorize(gid * max(len(uniq), 1) + codes)[0]
    return gid


def release(trace: Trace) -> None:
    """Drop the units cached on `trace` (the next call builds them again); the report calls it once
    its roofline section is built."""
    cache = trace.__dict__.get("_qtrace_cache", {})
    for key in ("roofline_units", "roofline_unit_of_event", "roofline_unit_codes", "roofline_bounded_units"):
        cache.pop(key, None)


def unit_of_event(trace: Trace) -> np.ndarray:
    """For each row of `gpu_phases(trace)`, the row of `units(trace)` it belongs to."""
    units(trace)
    cache = trace.__dict__["_qtrace_cache"]
    return cache.get("roofline_unit_of_event", np.zeros(0, dtype=np.int64))


def _estimate(key: pd.Series) -> Work | None:
    kind = key["kind"]
    if kind in ("gpu_memcpy", "gpu_memset"):
        return event_work(kind, key["kernel"], key["bytes"])
    op = key["op_name"]
    if not op:
        return None
    args = parse_args(key["dims"], key["types"], key.get("strides"))
    if args is None:
        return None
    try:
        backend = backend_of_op(op)
        if backend is not None:
            return resolve(backend.work)(op, key["kernel"], args, key["context"]) if backend.work else None
        if op.startswith("aten::"):
            return aten_work(op, args, key["kernel"])
    except (TypeError, ValueError, IndexError, AttributeError):
        return None
    return None


# ---------------------------------------------------------------------------------------
# Rates and bounds


def _nan_to_none(x: Any) -> Any:
    if x is None:
        return None
    if isinstance(x, float | np.floating) and not math.isfinite(float(x)):
        return None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        return float(x)
    return x


TF32_KERNELS = r"(?i)tf32|s1688gemm|s16816gemm|sm80_xmma_gemm_f32f32_tf32|cutlass_80_tensorop_s1688"


def unit_bounds(u: pd.DataFrame, peaks: Peaks) -> pd.DataFrame:
    """Per unit: ideal memory / compute time at the roofs (µs), utilisation, and bound label."""
    u = u.copy(deep=False)  # new columns only (copy-on-write)
    n = len(u)
    bw = peaks.bandwidth_bps()
    hbm = (u["link"] == "hbm").to_numpy() & u["bytes"].notna().to_numpy()
    pcie = (u["link"] == "pcie").to_numpy() & u["bytes"].notna().to_numpy()
    gpu_us = u["gpu_us"].to_numpy(dtype=float)
    nbytes = u["bytes"].to_numpy(dtype=float)
    ops = u["flops"].fillna(0).to_numpy(dtype=float) + u["int_ops"].fillna(0).to_numpy(dtype=float)
    has_math = (u["flops"].notna() | u["int_ops"].notna()).to_numpy()
    dtypes = u["dtype"].to_numpy(dtype=object)
    by_dtype = {d: (peaks.ops_per_s(d) or np.nan) for d in set(dtypes)}
    peak = np.array([by_dtype[d] for d in dtypes], dtype=float) if n else np.zeros(0)
    t_mem = np.where(hbm, nbytes / bw * 1e6, np.nan) if bw else np.full(n, np.nan)
    t_comp = np.where(has_math & hbm, ops / peak * 1e6, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        mem_util = t_mem / gpu_us
        comp_util = t_comp / gpu_us
    max_util = np.fmax(mem_util, np.where(has_math, comp_util, np.nan))
    ideal = np.fmax(t_mem, np.where(has_math, t_comp, np.nan))
    latency = ((max_util < LATENCY_UTIL) & (gpu_us < LATENCY_US)) | \
        ((ideal < LATENCY_IDEAL_US) & (max_util < LATENCY_SMALL_UTIL))
    math_unknown = has_math & np.isnan(peak)
    bound = np.full(n, None, dtype=object)
    known = hbm & ~np.isnan(t_mem) & ~math_unknown
    bound[known] = "memory"
    bound[known & has_math & (np.nan_to_num(t_comp) > t_mem)] = "compute"
    bound[known & latency] = "latency"
    bound[pcie] = np.where(gpu_us[pcie] < LATENCY_US, "latency", "transfer")
    u["t_mem_us"] = t_mem
    u["t_comp_us"] = t_comp
    u["bound"] = bound
    return u


def rate_row(u: pd.DataFrame, peaks: Peaks, total_us: float | None = None) -> dict[str, Any]:
    """Achieved rates, utilisation and bound for a set of units (a phase, a kernel).

    `u` comes from `unit_bounds`. Rates are sums of work over sums of time. The bound is the
    label holding the largest share of the units' GPU time (``bound_shares`` has them all), so
    a phase mixing big memory-bound GEMMs with many tiny ones is called by where its time goes.
    """
    gpu_total = float(u["gpu_us"].sum()) if total_us is None else float(total_us)
    known = u[u["bytes"].notna()]
    hbm = known[known["link"] == "hbm"]
    pcie = known[known["link"] == "pcie"]
    row: dict[str, Any] = dict.fromkeys(RATE_COLUMNS)
    row["units"] = int(len(u))
    row["gpu_time_us"] = gpu_total
    base = hbm if len(hbm) else pcie
    modeled_us = float(base["gpu_us"].sum())
    row["modeled_us"] = modeled_us
    row["modeled_share"] = modeled_us / gpu_total if gpu_total > 0 else None
    labelled = known[known["bound"].notna()]
    if len(labelled) and labelled["gpu_us"].sum() > 0:  # zero-length copies only: no share to rank by
        shares = labelled.groupby("bound")["gpu_us"].sum()
        shares = shares / shares.sum()
        row["bound_shares"] = {str(k): float(v) for k, v in shares.sort_values(ascending=False).items()}
        row["bound"] = str(shares.idxmax())
    if not len(base) or modeled_us <= 0:
        return row
    nbytes = float(base["bytes"].sum())
    row["bytes"] = nbytes
    row["achieved_gbps"] = nbytes / modeled_us / 1e3
    row["mean_unit_us"] = modeled_us / len(base)
    if not len(hbm):  # host<->device copies only: no roof in the table
        return row
    fl = hbm[hbm["flops"].notna()]
    io = hbm[hbm["int_ops"].notna()]
    if len(fl):
        row["flops"] = float(fl["flops"].sum())
        row["achieved_tflops"] = row["flops"] / float(fl["gpu_us"].sum()) / 1e6
    if len(io):
        row["int_ops"] = float(io["int_ops"].sum())
        row["achieved_tops"] = row["int_ops"] / float(io["gpu_us"].sum()) / 1e6
    math_units = hbm[hbm["flops"].notna() | hbm["int_ops"].notna()]
    dtype = None
    if len(math_units):
        ops_total = float(math_units["flops"].fillna(0).sum() + math_units["int_ops"].fillna(0).sum())
        mb = float(math_units["bytes"].sum())
        row["intensity"] = ops_total / mb if mb > 0 else None
        by_dtype = math_units.groupby(math_units["dtype"].fillna("?"))["gpu_us"].sum()
        dtype = str(by_dtype.idxmax())
        row["compute_dtype"] = dtype
        if not math_units["t_comp_us"].isna().any():
            row["compute_util"] = float(math_units["t_comp_us"].sum()) / float(math_units["gpu_us"].sum())
    row["peak_gbps"] = peaks.values.get("hbm_gbps")
    peak_ops = peaks.ops_per_s(dtype) if dtype else None
    if peak_ops:
        row["peak_compute"] = peak_ops / 1e12
        row["peak_compute_unit"] = "TOPS" if dtype == "int8" else "TFLOPS"
    sources = {peaks.source_of("hbm_gbps"), peaks.source_of(DTYPE_PEAK.get(dtype or ""))}
    sources.discard(None)
    row["peak_source"] = "+".join(sorted(sources)) if sources else None
    if not hbm["t_mem_us"].isna().any():
        row["mem_util"] = float(hbm["t_mem_us"].sum()) / modeled_us
    return row


# The unit columns rate_row reads.
_RATE_INPUTS = ["gpu_us", "bytes", "link", "bound", "flops", "int_ops", "dtype", "t_mem_us", "t_comp_us"]


def phase_roofline(trace: Trace, peaks: Peaks | None = None) -> pd.DataFrame:
    """One row per phase with GPU time: its work, achieved rates against the peaks, and bound."""
    peaks = peaks or peaks_for(trace.device_name)
    u = units(trace)
    if u.empty:
        return pd.DataFrame(columns=["phase", *RATE_COLUMNS])
    gpu = gpu_phases(trace)
    totals = gpu.groupby("phase")["dur"].sum()
    _, _, phase_code, phases = _unit_codes(trace, u)
    u = _bounded_units(trace, peaks)[_RATE_INPUTS]  # each phase's selection copies only what rate_row reads
    rows = []
    for phase in [p for p in PHASE_ORDER if p in totals.index]:
        rows.append({"phase": phase, **rate_row(u[(phases == phase)[phase_code]], peaks, float(totals[phase]))})
    return pd.DataFrame(rows, columns=["phase", *RATE_COLUMNS])


def kernel_roofline(trace: Trace, peaks: Peaks | None = None, top: int | None = 15) -> pd.DataFrame:
    """Per principal kernel name and phase (a unit's longest kernel names it), largest first."""
    peaks = peaks or peaks_for(trace.device_name)
    u = units(trace)
    cols = ["kernel", "phase", "model", *RATE_COLUMNS]
    if u.empty:
        return pd.DataFrame(columns=cols)
    totals = u.groupby(["kernel", "phase"], sort=False)["gpu_us"].sum().sort_values(ascending=False, kind="stable")
    if top:
        totals = totals.head(top)
    kernel_code, kernels, phase_code, phases = _unit_codes(trace, u)
    u = _bounded_units(trace, peaks)[[*_RATE_INPUTS, "model"]]  # each kernel's selection copies only what is read
    rows = []
    for (kernel, phase), _ in totals.items():
        sel = u[(kernels == kernel)[kernel_code] & (phases == phase)[phase_code]]
        models = sel["model"].dropna().unique()
        rows.append({"kernel": kernel, "phase": phase, "model": ",".join(sorted(models)) or None,
                     **rate_row(sel, peaks)})
    return pd.DataFrame(rows, columns=cols)


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    return [{k: _nan_to_none(v) for k, v in r.items()} for r in df.to_dict(orient="records")]


def _bound(r: dict[str, Any]) -> str | None:
    """The bound label of a row, None when there is none (a missing label may read back as NaN)."""
    b = r.get("bound")
    return b if isinstance(b, str) else None


def shapes_recorded(trace: Trace) -> bool:
    """Whether any op carries its input shapes (profiled with record_shapes=True)."""
    return bool(len(trace.ops)) and bool(trace.ops["input_dims"].notna().any())


def roofline_section(trace: Trace, top: int = 15, peaks: Peaks | None = None) -> dict[str, Any]:
    """The `roofline` block of a report: device peaks, per-phase and per-kernel rows, text."""
    peaks = peaks or peaks_for(trace.device_name)
    if not trace.has_gpu:
        return {"device": peaks.to_dict(), "summary": "no GPU events in this trace: no roofline",
                "phases": [], "kernels": [], "phase_fields": {p: dict.fromkeys(PHASE_FIELDS) for p in PHASE_ORDER}}
    phases = phase_roofline(trace, peaks)
    kernels = kernel_roofline(trace, peaks, top)
    phase_records = _records(phases)
    section: dict[str, Any] = {
        "device": peaks.to_dict(),
        "summary": peaks.summary(),
        "thresholds": {"latency_util": LATENCY_UTIL, "latency_mean_us": LATENCY_US,
                       "latency_ideal_us": LATENCY_IDEAL_US, "latency_small_util": LATENCY_SMALL_UTIL},
        "phases": phase_records,
        "kernels": _records(kernels),
        # Every phase gets the fields (null where it has no GPU time), so each phase record has the same keys.
        "phase_fields": {p: dict.fromkeys(PHASE_FIELDS) for p in PHASE_ORDER}
        | {r["phase"]: {k: r.get(k) for k in PHASE_FIELDS} for r in phase_records},
    }
    section["headline"] = headline(phases, peaks)
    if section["headline"] is None and not shapes_recorded(trace):
        section["headline"] = ("Roofline: no shapes recorded (profile with record_shapes=True for bytes and FLOPs "
                               "per phase)")
    section["markdown"] = render_markdown(phases, kernels, peaks)
    section["text"] = render_text(phases, peaks)
    return section


# ---------------------------------------------------------------------------------------
# Rendering (used by qtrace.reports.trace_report)


def _fmt(x: Any, digits: int = 1) -> str:
    x = _nan_to_none(x)
    return "-" if x is None else f"{x:.{digits}f}"


def _pct(x: Any) -> str:
    x = _nan_to_none(x)
    return "-" if x is None else f"{x * 100:.1f}%"


def _rate(row: Any) -> str:
    tops = _nan_to_none(row.get("achieved_tops"))
    tflops = _nan_to_none(row.get("achieved_tflops"))
    if tops is not None and (tflops is None or row.get("compute_dtype") == "int8"):
        return f"{tops:.1f} TOPS"
    if tflops is not None:
        return f"{tflops:.1f} TFLOPS"
    return "-"


def headline(phases: pd.DataFrame, peaks: Peaks) -> str | None:
    """'Roofline: int8.gemm latency (33.3 TOPS, 1.7% of peak); ...' for the top phases by GPU time."""
    if phases.empty:
        return None
    p = phases.sort_values("gpu_time_us", ascending=False).head(4)
    bits = []
    for r in p.to_dict(orient="records"):
        if _bound(r) is None and _nan_to_none(r.get("achieved_gbps")) is None:
            continue
        util = max([x for x in (_nan_to_none(r.get("mem_util")), _nan_to_none(r.get("compute_util")))
                    if x is not None], default=None)
        rate = _rate(r)
        parts = [f"{_fmt(r.get('achieved_gbps'), 0)} GB/s"] + ([rate] if rate != "-" else [])
        roof = f", {util * 100:.1f}% of roof" if util is not None else ""
        label = f"{_bound(r)}-bound" if _bound(r) else "bound unknown"
        bits.append(f"{r['phase']} {label} ({', '.join(parts)}{roof})")
    if not bits:
        return None
    return "Roofline: " + "; ".join(bits)


ROOF_HEADERS = ["phase", "GPU ms", "modeled", "GB/s", "TFLOPS/TOPS", "% BW", "% math", "bound"]


def _phase_cells(phases: pd.DataFrame) -> list[list[str]]:
    rows = []
    for r in phases.to_dict(orient="records"):
        rows.append([r["phase"], _fmt((_nan_to_none(r["gpu_time_us"]) or 0) / 1000, 3), _pct(r["modeled_share"]),
                     _fmt(r["achieved_gbps"], 0), _rate(r), _pct(r["mem_util"]), _pct(r["compute_util"]),
                     _bound(r) or "-"])
    return rows


def render_text(phases: pd.DataFrame, peaks: Peaks) -> str:
    from qtrace.markup import text_table

    return peaks.summary() + "\n" + text_table(ROOF_HEADERS, _phase_cells(phases), "lrrrrrrl")


def render_markdown(phases: pd.DataFrame, kernels: pd.DataFrame, peaks: Peaks) -> str:
    from qtrace.markup import md_escape, md_table, shorten

    lines = [md_escape(peaks.summary()), "",
             f"Bytes and operations from the recorded shapes of each kernel's launching op; `modeled` is the share "
             f"of the phase's GPU time whose work is known (host<->device copies excluded). `latency`: under "
             f"{LATENCY_UTIL:.0%} of both roofs with units shorter than {LATENCY_US:g} µs on average, or under "
             f"{LATENCY_IDEAL_US:g} µs of work per unit at the roof. See docs/roofline.md.", ""]
    lines.append(md_table(ROOF_HEADERS, [[md_escape(c) for c in row] for row in _phase_cells(phases)], "lrrrrrrl"))
    if len(kernels):
        head = ["kernel", "phase", "units", "GPU ms", "mean µs", "GB/s", "TFLOPS/TOPS", "% BW", "% math", "bound"]
        rows = []
        for r in kernels.to_dict(orient="records"):
            rows.append([md_escape(shorten(str(r["kernel"]), 70)), r["phase"], str(r["units"]),
                         _fmt(r["gpu_time_us"] / 1000, 3), _fmt(r["mean_unit_us"], 1), _fmt(r["achieved_gbps"], 0),
                         _rate(r), _pct(r["mem_util"]), _pct(r["compute_util"]), _bound(r) or "-"])
        lines += ["", md_table(head, rows, "llrrrrrrrl")]
    return "\n".join(lines)
