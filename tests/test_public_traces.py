"""Issue 15: qtrace reads real public Kineto traces (traces/public/README.md) correctly.

Each defect's fix is checked against figures computed here straight from the raw JSON (json +
gzip, no qtrace code): kernel time sums by name, ProfilerStep starts, counts by category.
"""

from __future__ import annotations

import gzip
import json
import re
import statistics
from pathlib import Path
from typing import Any

import pytest

from qtrace.analyzers.attribution import gpu_phases
from qtrace.analyzers.phase_rules import QUANT_PHASES, classify
from qtrace.analyzers.roofline import units as roofline_units
from qtrace.analyzers.trace_analysis import analyze_trace, load_target
from qtrace.errors import TraceFormatError
from qtrace.tracefile import load_trace
from tests._cli import run_cli

PUBLIC = Path(__file__).resolve().parent.parent / "traces" / "public"
ALL = sorted(PUBLIC.rglob("*.json.gz"))
GPU_CATS = {"kernel", "gpu_memcpy", "gpu_memset", "Kernel", "Memcpy", "Memset"}


def raw_events(path: Path) -> list[dict[str, Any]]:
    data = json.loads(gzip.decompress(path.read_bytes()))
    return data if isinstance(data, list) else data["traceEvents"]


def raw_kernel_us(path: Path, pattern: str) -> float:
    rx = re.compile(pattern)
    return sum(float(e.get("dur", 0)) for e in raw_events(path)
               if e.get("ph") == "X" and e.get("cat") in GPU_CATS and rx.search(e.get("name", "")))


def phase_us_of(path: Path, pattern: str, phase: str) -> tuple[float, float]:
    """(GPU µs of kernels matching `pattern`, of those the part qtrace put in `phase`)."""
    g = gpu_phases(load_trace(path))
    hit = g[g["name"].str.contains(pattern, regex=True)]
    return float(hit["dur"].sum()), float(hit.loc[hit["phase"] == phase, "dur"].sum())


def test_corpus_is_committed() -> None:
    kinds = {p.parent.name for p in ALL}
    assert {"rocm", "legacy", "cnn", "ranks", "triton", "fp4", "cpu_only", "comm", "bf16"} <= kinds
    assert sum(p.stat().st_size for p in ALL) < 10 << 20


@pytest.mark.parametrize("path", ALL, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_loads_with_exact_gpu_time(path: Path) -> None:
    """Every committed trace loads (9 of these were refused) and its GPU time is the raw sum."""
    t = load_trace(path)
    raw = sum(float(e.get("dur", 0)) for e in raw_events(path) if e.get("ph") == "X" and e.get("cat") in GPU_CATS)
    assert float(t.gpu["dur"].sum()) == pytest.approx(raw, abs=1e-6)


def test_rocm_string_integers_are_numbers() -> None:
    """roctracer writes "bytes": "1" (this trace on its hip runtime calls): it loads, GPU bytes exact."""
    path = PUBLIC / "rocm" / "mi300_bert-small.json.gz"
    events = raw_events(path)
    assert any(isinstance(e.get("args", {}).get("bytes"), str) for e in events), "the trace writes bytes as text"
    t = load_trace(path)

    def num(v: Any) -> int:
        return int(v, 0) if isinstance(v, str) else int(v)

    raw = [num(e["args"]["bytes"]) for e in events
           if e.get("ph") == "X" and e.get("cat") in GPU_CATS and "bytes" in e.get("args", {})]
    assert sorted(int(b) for b in t.gpu["bytes"].dropna()) == sorted(raw)
    assert len(t.runtime) == sum(e.get("ph") == "X" and e.get("cat") == "cuda_runtime" for e in events)


def test_hip_syncs_count() -> None:
    """hip* blocking calls count as syncs (inside the window: the profiler's own closing sync is not the model's)."""
    path = PUBLIC / "rocm" / "mi250_minitoy_train_ROCm6_2_kineto.json.gz"
    events = raw_events(path)
    work = [e for e in events if e.get("ph") == "X" and e.get("cat") in GPU_CATS | {"cpu_op", "user_annotation"}]
    lo = min(float(e["ts"]) for e in work)
    hi = max(float(e["ts"]) + float(e.get("dur", 0)) for e in work)
    blocking = ("hipStreamSynchronize", "hipDeviceSynchronize", "hipMemcpy", "hipMemcpyWithStream",
                "hipEventSynchronize")
    calls = [e for e in events if e.get("cat") == "cuda_runtime" and e["name"] in blocking and lo <= e["ts"] <= hi]
    assert calls, "the trace has hip syncs"
    assert analyze_trace(load_trace(path)).host["syncs"] == len(calls)


def test_miopen_bf16_igemm_is_convolution_not_int8() -> None:
    path = PUBLIC / "rocm" / "mi210_gpu_only_trace.json.gz"
    igemm = raw_kernel_us(path, r"^igemm_")
    assert igemm > 0
    total, conv = phase_us_of(path, r"^igemm_", "conv")
    assert total == pytest.approx(igemm) and conv == pytest.approx(igemm)
    r = analyze_trace(load_trace(path))
    assert not r.phases["phase"].isin(QUANT_PHASES).any(), "no quantization phase on a bf16 trace"
    assert r.precision == "bf16"


def test_backend_kernel_rules_are_gated() -> None:
    import pandas as pd

    name = "igemm_fwd_gtcx_nhwc_int8"
    ctx = pd.DataFrame({"kind": ["kernel", "kernel"], "kernel": [name, name], "quant_backend": ["", "bitsandbytes"]})
    assert list(classify(ctx)) == ["conv", "int8.gemm"]


@pytest.mark.parametrize(("path", "pattern"), [
    (PUBLIC / "cnn" / "alexnet_trace.json.gz", r"(?i)cudnn|implicit_convolve|conv(?!ert)|wgrad|dgrad"),
    (PUBLIC / "legacy" / "resnet50_bare_array_step5.pt.trace.json.gz", r"implicit_convolve|wgrad|dgrad|scudnn"),
    (PUBLIC / "comm" / "nccl_data.json.gz", r"dgrad|wgrad|implicit_convolve|scudnn|fprop"),
])
def test_convolutions_are_conv(path: Path, pattern: str) -> None:
    raw = raw_kernel_us(path, pattern)
    assert raw > 0
    total, conv = phase_us_of(path, pattern, "conv")
    bn = re.compile(r"bn_|batch_norm")
    # Batch-norm kernels are norm, not conv (cudnn::bn_* match "cudnn").
    bn_us = sum(float(e["dur"]) for e in raw_events(path) if e.get("cat") in GPU_CATS
                and re.search(pattern, e["name"]) and bn.search(e["name"]))
    assert total == pytest.approx(raw)
    assert conv == pytest.approx(raw - bn_us)


@pytest.mark.parametrize("path", [PUBLIC / "comm" / "nccl_data.json.gz", PUBLIC / "ranks" / "sampled_rank-0.json.gz",
                                  PUBLIC / "rocm" / "mi210_gpu_only_trace.json.gz"])
def test_batch_norm_is_norm(path: Path) -> None:
    pattern = r"bn_fw|bn_bw|batch_norm"
    raw = raw_kernel_us(path, pattern)
    if raw == 0:
        pytest.skip("no batch norm in this trace")
    total, norm = phase_us_of(path, pattern, "norm")
    assert norm == pytest.approx(raw) and total == pytest.approx(raw)


@pytest.mark.parametrize("path", [PUBLIC / "comm" / "nccl_data.json.gz", PUBLIC / "ranks" / "sampled_rank-0.json.gz",
                                  PUBLIC / "fp4" / "b200_eager_trace.json.gz"])
def test_communication_is_comm(path: Path) -> None:
    pattern = r"nccl|multimem_all_reduce"
    raw = raw_kernel_us(path, pattern)
    assert raw > 0
    total, comm = phase_us_of(path, pattern, "comm")
    assert comm == pytest.approx(raw) and total == pytest.approx(raw)


@pytest.mark.parametrize("path", sorted((PUBLIC / "triton").glob("*.json.gz")), ids=lambda p: p.name)
def test_triton_kernels_are_not_other(path: Path) -> None:
    raw = raw_kernel_us(path, r"^triton_")
    assert raw > 0
    g = gpu_phases(load_trace(path))
    tri = g[g["name"].str.match(r"^triton_")]
    assert float(tri["dur"].sum()) == pytest.approx(raw)
    assert not (tri["phase"] == "other").any()
    assert float(tri.loc[tri["phase"] == "compiled", "dur"].sum()) > 0


@pytest.mark.parametrize(("path", "pattern"), [
    (PUBLIC / "fp4" / "b200_eager_trace.json.gz", r"E2m1"),
    (PUBLIC / "fp4" / "vllm_gptoss_decode_graph_execution.json.gz", r"mxfp4"),
])
def test_fp4_gemms(path: Path, pattern: str) -> None:
    raw = raw_kernel_us(path, pattern)
    assert raw > 0
    total, fp4 = phase_us_of(path, pattern, "fp4.gemm")
    assert fp4 == pytest.approx(raw) and total == pytest.approx(raw)
    r = analyze_trace(load_trace(path))
    assert not r.phases["phase"].isin(QUANT_PHASES).any()


def _raw_steps(path: Path) -> list[tuple[float, float]]:
    return sorted((float(e["ts"]), float(e["dur"])) for e in raw_events(path)
                  if e.get("ph") == "X" and re.match(r"^ProfilerStep#\d+$", e.get("name", "")))


@pytest.mark.parametrize("path", [PUBLIC / "ranks" / "sampled_rank-0.json.gz",
                                  PUBLIC / "ranks" / "sampled_rank-1.json.gz", PUBLIC / "comm" / "nccl_data.json.gz"])
def test_steps_partition_the_timeline(path: Path) -> None:
    steps = _raw_steps(path)
    assert len(steps) >= 2
    r = analyze_trace(load_trace(path))
    assert len(r.steps) == len(steps)
    window = steps[-1][0] + steps[-1][1] - steps[0][0]
    assert float(r.steps["span_us"].sum()) == pytest.approx(window, abs=1e-3)
    expected = [b[0] - a[0] for a, b in zip(steps, steps[1:], strict=False)] + [steps[-1][1]]
    assert list(r.steps["span_us"]) == pytest.approx(expected, abs=1e-3)
    # GPU spans partition the GPU time of the steps: they never add up to more than the GPU window.
    g = gpu_phases(r.trace)
    g = g[g["step"] >= 0]
    assert float(r.steps["gpu_span_us"].sum()) <= float(g["end"].max() - g["ts"].min()) + 1e-3
    assert (r.steps["gpu_busy_us"] <= r.steps["gpu_span_us"] + 1e-6).all()


def _raw_gemm_dtype(path: Path) -> str:
    """Majority first dtype among the GEMM ops' Input type, by count of ops."""
    names = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::linear", "aten::matmul"}
    label = {"c10::BFloat16": "bf16", "c10::Half": "fp16", "float": "fp32"}
    votes: dict[str, int] = {}
    for e in raw_events(path):
        if e.get("cat") == "cpu_op" and e.get("name") in names:
            for ty in e.get("args", {}).get("Input type", []):
                if ty in label:
                    votes[label[ty]] = votes.get(label[ty], 0) + 1
                    break
    return max(votes, key=votes.__getitem__)


@pytest.mark.parametrize("path", [PUBLIC / "bf16" / "h100_bert-small.json.gz",
                                  PUBLIC / "rocm" / "mi300_bert-small.json.gz"])
def test_precision_from_gemm_dtypes(path: Path) -> None:
    assert analyze_trace(load_trace(path)).precision == _raw_gemm_dtype(path)


def test_precision_from_kernel_names_without_ops() -> None:
    """An op-less fp16 trace: the cutlass f16 GEMM names it."""
    path = PUBLIC / "legacy" / "inference_rank_1.json.gz"
    assert raw_kernel_us(path, r"f16.*gemm|gemm.*f16") > 0
    assert analyze_trace(load_trace(path)).precision == "fp16"


@pytest.mark.parametrize("path", ALL, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_nan_in_rendered_report(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for fmt in ("table", "md", "json"):
        code, out, err = run_cli(capsys, "report", str(path), "--format", fmt)
        assert code == 0, err
        assert not re.search(r"\bnan\b|\bNaN\b|nan-bound", out), (fmt, re.search(r".{60}\bnan\b.{20}", out, re.I))
        if fmt == "table":
            assert "precision " in out


def test_no_shapes_recorded_is_said() -> None:
    path = PUBLIC / "legacy" / "resnet50_bare_array_step5.pt.trace.json.gz"
    assert not any("Input Dims" in e.get("args", {}) for e in raw_events(path))
    roof = analyze_trace(load_trace(path)).extra["roofline"]
    assert roof["headline"] is None or "no shapes recorded" in roof["headline"] or "nan" not in roof["headline"]


def test_tf32_gemm_has_no_fp32_roof() -> None:
    path = PUBLIC / "comm" / "nccl_data.json.gz"
    assert raw_kernel_us(path, r"s1688gemm") > 0
    t = load_trace(path)
    u = roofline_units(t)
    tf = u[u["kernel"].str.contains("s1688gemm")]
    assert len(tf) and not (tf["dtype"] == "fp32").any()
    roof = analyze_trace(t).extra["roofline"]
    for row in roof["phases"]:
        assert row.get("compute_util") is None or row["compute_util"] <= 1.0
    assert roof["device"]["table_entry"] == "a100-40gb" and roof["device"]["peaks"]["tf32_tflops"] == 156.0


def test_legacy_bare_array_categories() -> None:
    path = PUBLIC / "legacy" / "resnet50_bare_array_step5.pt.trace.json.gz"
    raw = raw_events(path)
    assert isinstance(json.loads(gzip.decompress(path.read_bytes())), list)
    t = load_trace(path)
    n_ops = sum(e.get("ph") == "X" and e.get("cat") == "Operator" for e in raw)
    assert len(t.ops) == n_ops
    assert len(t.runtime) == sum(e.get("ph") == "X" and e.get("cat") == "Runtime" for e in raw)
    steps = t.ops[t.ops["name"].str.match(r"^ProfilerStep#\d+$")]
    assert len(steps) and (steps["cat"] == "user_annotation").all()


def test_runtime_only_trace_loads_and_refusal_is_true(tmp_path: Path) -> None:
    events = [{"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": 1, "tid": 1, "ts": i, "dur": 1,
               "args": {"correlation": i}} for i in range(7)]
    p = tmp_path / "rt.json"
    p.write_text(json.dumps({"traceEvents": events}))
    assert len(load_trace(p).runtime) == 7
    only_mtia = [{"ph": "X", "cat": "mtia_ccp_events", "name": "k", "pid": 1, "tid": 1, "ts": 0, "dur": 1}] * 3
    q = tmp_path / "mtia.json"
    q.write_text(json.dumps({"traceEvents": only_mtia}))
    with pytest.raises(TraceFormatError, match="3 mtia_ccp_events"):
        load_trace(q)


def test_mtia_and_cupti_verdicts() -> None:
    path = PUBLIC / "cpu_only" / "mtia_inference_rank_0.json.gz"
    n = sum(e.get("ph") == "X" and e.get("cat") == "mtia_ccp_events" for e in raw_events(path))
    v = analyze_trace(load_trace(path)).host["verdict"]
    assert "MTIA" in v and f"{n} mtia_ccp_events" in v and "cpu-only" not in v
    path = PUBLIC / "cpu_only" / "cupti_profiler_trace.json.gz"
    n = sum(e.get("ph") == "X" and e.get("cat") == "cuda_profiler_range" for e in raw_events(path))
    assert f"{n} cuda_profiler_range" in analyze_trace(load_trace(path)).host["verdict"]


def test_cpu_only_distributed_host_time(capsys: pytest.CaptureFixture[str]) -> None:
    path = PUBLIC / "cpu_only" / "gloo_rank-34.pt.trace.json.gz"
    gloo = sum(float(e["dur"]) for e in raw_events(path) if e.get("name", "").startswith("gloo:"))
    r = analyze_trace(load_trace(path))
    assert r.host["comm_range_us"] == pytest.approx(gloo)
    code, out, _ = run_cli(capsys, "report", str(path))
    assert code == 0 and f"communication ranges {gloo / 1000:.2f} ms" in out


def test_rank_folder(capsys: pytest.CaptureFixture[str]) -> None:
    folder = PUBLIC / "ranks"
    target = load_target(folder)
    assert len(target.traces) == 2 and sorted(target.ranks) == [0, 1]
    code, out, err = run_cli(capsys, "report", str(folder), "--format", "json")
    assert code == 0, err
    ranks = json.loads(out)["ranks"]
    med = {}
    for p in sorted(folder.glob("*.json.gz")):
        steps = _raw_steps(p)
        spans = [b[0] - a[0] for a, b in zip(steps, steps[1:], strict=False)] + [steps[-1][1]]
        med[int(re.search(r"rank-(\d+)", p.name).group(1))] = statistics.median(spans)
    slowest = max(med, key=med.__getitem__)
    assert ranks["slowest_rank"] == slowest
    assert ranks["extra_us"] == pytest.approx(max(med.values()) - min(med.values()), abs=1e-3)
    deltas = {d["phase"]: d["delta_us"] for d in ranks["phase_deltas"]}
    assert sum(deltas.values()) == pytest.approx(sum(d["slowest_us"] - d["median_us"] for d in ranks["phase_deltas"]))
    code, out, _ = run_cli(capsys, "report", str(folder))
    assert "== across ranks" in out and f"slowest rank {slowest}" in out
