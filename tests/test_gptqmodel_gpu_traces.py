"""GPTQ and AWQ on an H200 (traces/gptqmodel/, GPTQModel 7.3.6): phases against raw-JSON sums.

The Marlin, Triton and torch kernels are GPU-only paths (Marlin is compiled with nvcc on first
use); these committed traces are how the CPU test set-up holds their phase rules.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from qtrace.analyzers.lean_timing import lean_timing_files
from qtrace.analyzers.phases import coverage, phase_table
from qtrace.tracefile import load_trace

RUN = Path(__file__).resolve().parents[1] / "traces" / "gptqmodel" / "qwen_cls_bs32"
QUANTIZED = ["gptq-int4-marlin", "awq-int4-marlin", "gptq-int4-triton", "gptq-int4-torch", "awq-int4-torch"]


def _kernels(precision: str) -> list[dict]:
    with gzip.open(RUN / precision / "trace.json.gz", "rt") as f:
        return [e for e in json.load(f)["traceEvents"] if e.get("cat") == "kernel"]


def _phases(precision: str):
    return phase_table(load_trace(RUN / precision / "trace.json.gz")).set_index("phase")["gpu_time_us"]


@pytest.mark.parametrize("precision", QUANTIZED)
def test_gptqmodel_trace_is_attributed(precision: str):
    trace = load_trace(RUN / precision / "trace.json.gz")
    assert coverage(trace) >= 0.99
    phases = phase_table(trace).set_index("phase")["gpu_time_us"]
    assert phases[phases.index.str.startswith("gptqmodel.")].sum() > 0
    # The quantized linears' GEMMs are not reported as plain fp16 GEMMs: dense.gemm keeps only
    # the un-quantized head's (a small fraction of fp16's dense.gemm).
    assert phases.get("dense.gemm", 0.0) < 0.05 * _phases("fp16")["dense.gemm"]


@pytest.mark.parametrize("precision", ["gptq-int4-marlin", "awq-int4-marlin"])
def test_int4_gemm_is_every_marlin_kernel(precision: str):
    marlin = sum(e["dur"] for e in _kernels(precision) if e["name"].startswith("void marlin::Marlin<"))
    assert marlin > 0
    phases = _phases(precision)
    assert phases["gptqmodel.int4_gemm"] == pytest.approx(marlin, rel=1e-9)
    assert phases.get("gptqmodel.dequant", 0.0) == 0.0  # Marlin reads the int4 weight: no float weight


@pytest.mark.parametrize("precision", ["gptq-int4-triton", "gptq-int4-torch"])
def test_triton_dequant_kernel_is_dequant(precision: str):
    """Both GPTQ paths on CUDA launch GPTQModel's Triton `dequant_kernel`, then a float GEMM."""
    dequant = sum(e["dur"] for e in _kernels(precision) if e["name"] == "dequant_kernel")
    assert dequant > 0
    phases = _phases(precision)
    assert phases["gptqmodel.dequant"] == pytest.approx(dequant, rel=1e-9)
    assert phases["gptqmodel.dequant_gemm"] > 0


def test_awq_torch_kernel_unpacks_every_call():
    phases = _phases("awq-int4-torch")
    assert phases["gptqmodel.unpack"] > 0 and phases["gptqmodel.dequant"] > 0


@pytest.mark.parametrize("precision", ["fp16", *QUANTIZED])
def test_lean_pair_aligns(precision: str):
    t = lean_timing_files(RUN / precision / "trace.json.gz", RUN / precision / "lean_trace.json.gz",
                          expected_steps=2)
    assert t.alignment.coverage == pytest.approx(1.0)
    parts = t.phases.groupby("pass")[["gpu_busy_us", "host_us"]].sum().sum(axis=1)
    spans = t.passes.set_index("pass")["span_us"]
    assert (parts - spans).abs().max() <= 1e-6 * spans.max()


def test_run_json_records_kernels_and_quality():
    run = json.loads((RUN / "run.json").read_text())
    assert set(run["precisions"]) == {"fp16", *QUANTIZED}
    for name, entry in run["precisions"].items():
        assert entry["status"] == "ok"
        if name != "fp16":
            q = entry["quality"]
            assert 0.0 <= q["top1_agreement"] <= 1.0 and q["kl_mean"] >= 0.0


# --- 7B (qwen2.5-7b drawn on the H200, calibrated from its fp16 folder; examples/backends/, visit 7)

RUN_7B = RUN.parent / "qwen7b_cls_bs32"
ALL_7B = ["fp16", "nf4", "gptq-int4-marlin", "awq-int4-marlin", "gptq-int4-triton"]


@pytest.mark.parametrize("precision", ALL_7B[2:])
def test_7b_gptq_awq_traces_are_attributed(precision: str):
    trace = load_trace(RUN_7B / precision / "trace.json.gz")
    assert coverage(trace) >= 0.99
    phases = phase_table(trace).set_index("phase")["gpu_time_us"]
    fp16 = phase_table(load_trace(RUN_7B / "fp16" / "trace.json.gz")).set_index("phase")["gpu_time_us"]
    assert phases.get("dense.gemm", 0.0) < 0.05 * fp16["dense.gemm"]
    with gzip.open(RUN_7B / precision / "trace.json.gz", "rt") as f:
        kernels = [e for e in json.load(f)["traceEvents"] if e.get("cat") == "kernel"]
    if "marlin" in precision:
        marlin = sum(e["dur"] for e in kernels if e["name"].startswith("void marlin::Marlin<"))
        assert phases["gptqmodel.int4_gemm"] == pytest.approx(marlin, rel=1e-9)
        # At 4096 rows Marlin's int4 GEMMs take longer than fp16's cuBLAS GEMMs of the same layers.
        assert marlin > fp16["dense.gemm"]
    else:
        dequant = sum(e["dur"] for e in kernels if e["name"] == "dequant_kernel")
        assert dequant > 0 and phases["gptqmodel.dequant"] == pytest.approx(dequant, rel=1e-9)


def test_7b_run_json_records_the_calibrated_checkpoints():
    run = json.loads((RUN_7B / "run.json").read_text())
    assert list(run["precisions"]) == ALL_7B
    for name in ("gptq-int4-marlin", "awq-int4-marlin", "gptq-int4-triton"):
        entry = run["precisions"][name]
        assert entry["status"] == "ok"
        ck = entry["checkpoint"]
        assert "qwen2.5-7b-seed0-cuda" in ck["path"] and ck["recipe"]["samples"] == 16
        assert ck["build_seconds"] > 0
        q = entry["quality"]
        assert q["baseline"] == "fp16" and 0.0 <= q["top1_agreement"] <= 1.0 and q["kl_mean"] > 0.0
