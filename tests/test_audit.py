"""The pure audit (qtrace/analyzers/audit.py) on hand-written facts."""

from __future__ import annotations

from qtrace.analyzers import audit


def _entry(**kw: object) -> dict:
    base = {
        "precision": "int8", "matmul_dtype": "fp16", "autocast_dtype": None, "total_bytes": 1000,
        "tensors": [
            {"kind": "quantized_linear", "role": "parameter", "dtype": "int8", "numel": 400, "bytes": 400,
             "tensors": 4},
            {"kind": "quantized_linear", "role": "quant_state", "dtype": "fp32", "numel": 10, "bytes": 40,
             "tensors": 4},
            {"kind": "embedding", "role": "parameter", "dtype": "fp32", "numel": 100, "bytes": 400, "tensors": 1},
            {"kind": "norm", "role": "parameter", "dtype": "fp32", "numel": 10, "bytes": 40, "tensors": 2},
            {"kind": "other", "role": "buffer", "dtype": "fp32", "numel": 30, "bytes": 120, "tensors": 1},
        ],
        "calls": {"count": 2}, "load": {"peak_excess_bytes": 600, "resident_bytes": 1000, "peak_bytes": 1600},
        "quantization": {"llm_int8_threshold": 6.0},
    }
    base.update(kw)
    return base


def test_wide_dtype_counts_float_parameters_outside_quantized_linears() -> None:
    w = audit.wide_dtype_bytes(_entry(), "fp16")
    assert w["bytes"] == 440 and w["saved_bytes"] == 220 and w["by_kind"] == {"embedding": 400, "norm": 40}
    assert audit.wide_dtype_bytes(_entry(), "fp32")["bytes"] == 0


def test_findings_ordered_by_cost_with_fix_and_evidence() -> None:
    found = audit.findings(_entry())
    assert [f["id"] for f in found] == ["load-peak-excess", "wide-dtype-params"]
    assert all(f["fix"] and f["evidence"] and f["severity"] for f in found)
    assert found[0]["cost"] == 0.6 and found[1]["cost"] == 0.22


def test_autocast_sets_the_compute_dtype_and_nf4_fp32() -> None:
    e = _entry(precision="nf4", matmul_dtype="fp32", quantization={"bnb_4bit_compute_dtype": "fp32"})
    assert "nf4-fp32-compute" in {f["id"] for f in audit.findings(e)}
    e["autocast_dtype"] = "fp16"
    assert "nf4-fp32-compute" not in {f["id"] for f in audit.findings(e)}


def test_trace_findings() -> None:
    tf = {"steps": 2, "window_us": 1000.0, "gpu_idle_share": 0.9, "has_gpu": True, "syncs": 40,
          "verdict": "host-bound: the GPU idles 90% of the window", "casts_quant": {"count": 8, "us": 100.0},
          "casts_other": {"count": 3, "us": 5.0}, "quant_modules": 2,
          "outliers": {"calls": 4, "calls_with_outliers": 0, "outlier_cpu_us": 50.0, "outlier_gpu_us": 10.0}}
    found = {f["id"]: f for f in audit.findings(_entry(trace_facts=tf, calls={"count": 3}))}
    assert found["quant-matmul-casts"]["evidence"]["per_layer_per_step"] == 2.0
    assert found["host-bound"]["cost"] == 0.9
    assert found["outlier-threshold"]["cost"] == 0.06
    e = _entry(trace_facts={**tf, "casts_quant": {"count": 0, "us": 0.0}}, autocast_dtype="fp16")
    assert "autocast-casts" in {f["id"] for f in audit.findings(e)}


def test_never_called() -> None:
    assert "never-called" in {f["id"] for f in audit.findings(_entry(calls={"count": 0}))}
