"""torchao on an H200 (traces/torchao/): phases held against raw-JSON sums of the same traces."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from qtrace.analyzers.phases import coverage, phase_table
from qtrace.tracefile import load_trace

RUN = Path(__file__).resolve().parents[1] / "traces" / "torchao" / "qwen_cls_bs32"
# qwen2.5-7b built on the device, classify batch 32: every bnb and torchao precision in one run folder.
RUN_7B = RUN.parent / "qwen7b_cls_bs32"
TORCHAO = ["torchao-int8wo", "torchao-int4", "torchao-fp8"]
ALL_7B = ["int8", "nf4", "torchao-int8wo", "torchao-w8a8", "torchao-int4", "torchao-fp8"]


def _kernels(precision: str, run: Path = RUN) -> list[dict]:
    with gzip.open(run / precision / "trace.json.gz", "rt") as f:
        return [e for e in json.load(f)["traceEvents"] if e.get("cat") == "kernel"]


@pytest.mark.parametrize("precision", TORCHAO)
def test_torchao_trace_is_attributed(precision: str):
    trace = load_trace(RUN / precision / "trace.json.gz")
    phases = phase_table(trace).set_index("phase")
    assert coverage(trace) >= 0.99
    quant = phases[phases.index.str.startswith("torchao.")]["gpu_time_us"].sum()
    assert quant > 0.5 * phases["gpu_time_us"].sum()  # the quantized linears dominate a bs32 forward
    # No torchao matmul is reported as a plain fp16 GEMM: dense.gemm is at most the fp16 head's.
    fp16 = phase_table(load_trace(RUN / "fp16" / "trace.json.gz")).set_index("phase")
    assert phases.loc["dense.gemm", "gpu_time_us"] < 0.2 * fp16.loc["dense.gemm", "gpu_time_us"]


def test_int4_gemm_is_every_tinygemm_kernel():
    phases = phase_table(load_trace(RUN / "torchao-int4" / "trace.json.gz")).set_index("phase")
    tiny = sum(e["dur"] for e in _kernels("torchao-int4") if "tinygemm" in e["name"])
    assert tiny > 0
    assert phases.loc["torchao.int4_gemm", "gpu_time_us"] == pytest.approx(tiny, rel=1e-9)


def test_fp8_gemm_holds_the_scaled_mm_kernels():
    phases = phase_table(load_trace(RUN / "torchao-fp8" / "trace.json.gz")).set_index("phase")
    assert phases.loc["torchao.fp8_gemm", "gpu_time_us"] > 0
    assert "fp8.gemm" not in phases.index or phases.loc["fp8.gemm", "gpu_time_us"] == 0


def test_run_json_has_quality_for_every_precision():
    run = json.loads((RUN / "run.json").read_text())
    for name, entry in run["precisions"].items():
        if name == "fp16":
            continue
        q = entry["quality"]
        assert 0.0 <= q["top1_agreement"] <= 1.0 and q["kl_mean"] >= 0.0


@pytest.mark.parametrize("precision", ALL_7B)
def test_7b_traces_are_attributed_and_the_quantized_weights_were_quantized(precision: str):
    trace = load_trace(RUN_7B / precision / "trace.json.gz")
    assert coverage(trace) >= 0.99
    phases = phase_table(trace).set_index("phase")
    backend = "torchao." if precision.startswith("torchao") else f"{precision}."
    quant = phases[phases.index.str.startswith(backend)]["gpu_time_us"].sum()
    fp16 = phase_table(load_trace(RUN_7B / "fp16" / "trace.json.gz")).set_index("phase")
    if precision == "nf4":
        # At batch 32 bitsandbytes dequantizes each NF4 weight (absmax, then the weight: two
        # kDequantizeBlockwise kernels) and runs the fp16 GEMM, which stays dense.gemm by design.
        deq = [e for e in _kernels(precision, RUN_7B) if "kDequantizeBlockwise" in e["name"]]
        assert len(deq) == 2 * 28 * 7  # one pass, 28 layers x 7 linears
        assert quant == pytest.approx(phases.loc["nf4.dequant", "gpu_time_us"]) and quant >= sum(e["dur"] for e in deq)
        return
    # A device-built model at a quantized precision is quantized: its linears' GEMMs left dense.gemm
    # (what stays is the fp16 score head and, for LLM.int8, its fp16 outlier path's own rows).
    assert quant > 0.3 * phases["gpu_time_us"].sum()
    assert phases.loc["dense.gemm", "gpu_time_us"] < 0.2 * fp16.loc["dense.gemm", "gpu_time_us"]


def test_7b_int4_time_is_tinygemm_at_batch_32():
    """tinygemm is built for a few rows: at 4096 rows (batch 32 x 128) it is nearly all of the pass."""
    kernels = _kernels("torchao-int4", RUN_7B)
    tiny = sum(e["dur"] for e in kernels if "tinygemm" in e["name"])
    phases = phase_table(load_trace(RUN_7B / "torchao-int4" / "trace.json.gz")).set_index("phase")
    assert phases.loc["torchao.int4_gemm", "gpu_time_us"] == pytest.approx(tiny, rel=1e-9)
    assert tiny > 0.9 * sum(e["dur"] for e in kernels)


def test_7b_w8a8_repr_probe_is_what_runs_between_the_quantization_and_the_int8_gemm():
    """safe_int_mm formats the activation (`"FakeTensor" in input.__repr__()`) before each `_int_mm`.

    Independent count from the raw JSON: the launches and stream syncs issued between each W8A8
    linear's `torchao::quantize_affine` and the `aten::contiguous` right before its `_int_mm`.
    """
    import bisect

    with gzip.open(RUN_7B / "torchao-w8a8" / "trace.json.gz", "rt") as f:
        events = json.load(f)["traceEvents"]
    linears = [e for e in events if e.get("cat") == "user_annotation" and e["name"].endswith(":Int8Tensor+act")]
    ops = sorted((e for e in events if e.get("cat") == "cpu_op"), key=lambda e: e["ts"])
    runtime = sorted((e for e in events if e.get("cat") == "cuda_runtime"), key=lambda e: e["ts"])
    op_ts, rt_ts = [e["ts"] for e in ops], [e["ts"] for e in runtime]
    launches = syncs = 0
    for lin in linears:
        inside = ops[bisect.bisect_left(op_ts, lin["ts"]):bisect.bisect_right(op_ts, lin["ts"] + lin["dur"])]
        lo = max(e["ts"] + e["dur"] for e in inside if e["name"] == "torchao::quantize_affine")
        hi = min(e["ts"] for e in inside if e["name"] == "aten::contiguous" and e["ts"] > lo)
        for r in runtime[bisect.bisect_left(rt_ts, lo):bisect.bisect_right(rt_ts, hi)]:
            launches += r["name"] in ("cudaLaunchKernel", "cudaMemcpyAsync")
            syncs += r["name"] == "cudaStreamSynchronize"
    assert len(linears) == 28 * 7 and syncs >= 28 * 7 * 10  # many element reads per linear
    phases = phase_table(load_trace(RUN_7B / "torchao-w8a8" / "trace.json.gz")).set_index("phase")
    assert phases.loc["torchao.repr_probe", "launches"] == launches
    # Every stream sync of the pass is the probe's; its pageable copies to the host block as well.
    assert phases.loc["torchao.repr_probe", "host_syncs"] >= syncs
    assert phases.loc["torchao.scale_apply", "host_syncs"] == 0
