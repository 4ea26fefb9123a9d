"""Roofline on the shared H100 traces: work from recorded shapes, rates against the H100 table,
bound labels; each checked against figures recomputed here from the raw dims and durations."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qtrace.analyzers import roofline, shapes
from qtrace.analyzers.attribution import gpu_phases
from qtrace.analyzers.trace_analysis import analyze_trace
from qtrace.backends.bitsandbytes import work as bnb_work
from qtrace.gpu_peaks import calibration_path, peaks_for
from qtrace.tracefile.kineto import load_trace

REPO = Path(__file__).resolve().parent.parent
TRACES = REPO / "traces"
INT8 = TRACES / "h100_qwen05-shape_int8_bs1_seq128.json.gz"
FP16 = TRACES / "h100_qwen05-shape-outliers_fp16_bs1_seq128.json.gz"
NF4 = TRACES / "h100_modernbert-shape-outliers_nf4_bs1_seq128.json.gz"
H100_BW = 3350e9  # the H100 SXM datasheet, as in qtrace.gpu_peaks
H100_FP16 = 989.5e12
H100_INT8 = 1979e12


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("QTRACE_CACHE", str(tmp_path / "cache"))  # no user calibration leaks in


@pytest.fixture(scope="module")
def traces():
    return {p.name: load_trace(p) for p in (INT8, FP16, NF4)}


def _launched_by(trace, op_name: str, dims: list | None = None):
    """GPU events launched by `op_name` (with these input dims), with the dims decoded here."""
    gpu = trace.gpu[trace.gpu["op"] >= 0]
    ops = trace.ops.loc[gpu["op"].to_numpy()]
    sel = (ops["name"] == op_name).to_numpy()
    out = gpu[sel].copy()
    out["dims"] = [json.loads(d) for d in ops["input_dims"].to_numpy()[sel]]
    if dims is not None:
        out = out[[d[:len(dims)] == dims for d in out["dims"]]]
    return out


def test_peaks_come_from_the_h100_sxm_datasheet(traces):
    p = peaks_for(traces[INT8.name].device_name)
    assert p.spec.key == "h100-sxm"
    assert p.bandwidth_bps() == H100_BW and p.ops_per_s("fp16") == H100_FP16 and p.ops_per_s("int8") == H100_INT8


def test_int8_gemm_phase_rate_recomputed_from_dims(traces):
    tr = traces[INT8.name]
    ev = _launched_by(tr, "bitsandbytes::int8_linear_matmul")
    assert len(ev) == 504
    ops_total = sum(2 * a[0] * a[1] * b[0] for a, b in ((d[0], d[1]) for d in ev["dims"]))
    bytes_total = sum(a[0] * a[1] + b[0] * b[1] + 4 * a[0] * b[0] for a, b in ((d[0], d[1]) for d in ev["dims"]))
    dur_us = ev["dur"].sum()
    row = roofline.phase_roofline(tr).set_index("phase").loc["int8.gemm"]
    assert row["int_ops"] == pytest.approx(ops_total)
    assert row["bytes"] == pytest.approx(bytes_total)
    assert row["achieved_tops"] == pytest.approx(ops_total / (dur_us * 1e-6) / 1e12)
    assert row["achieved_gbps"] == pytest.approx(bytes_total / (dur_us * 1e-6) / 1e9)
    assert row["compute_util"] == pytest.approx(ops_total / H100_INT8 / (dur_us * 1e-6))
    assert row["mem_util"] == pytest.approx(bytes_total / H100_BW / (dur_us * 1e-6))
    assert row["compute_dtype"] == "int8" and row["peak_compute_unit"] == "TOPS" and row["peak_compute"] == 1979.0
    assert row["modeled_share"] == pytest.approx(1.0)
    assert row["achieved_tflops"] is None or math.isnan(row["achieved_tflops"])
    # At batch 1 x 128 tokens the int8 GEMMs reach ~16% of HBM bandwidth and ~5% of int8 math.
    assert 0.10 < row["mem_util"] < 0.25 and row["compute_util"] < 0.10


def test_fp16_mlp_gemm_unit_memory_bound_recomputed(traces):
    """aten::mm [128,896]x[896,4864] fp16 (gate/up projections): one kernel per launch."""
    tr = traces[FP16.name]
    ev = _launched_by(tr, "aten::mm", [[128, 896], [896, 4864]])
    assert len(ev) == 144 and ev["name"].nunique() == 1
    flops = 2 * 128 * 896 * 4864
    nbytes = 2 * (128 * 896 + 896 * 4864 + 128 * 4864)
    units = roofline.units(tr)
    mine = units[units["op"].isin(ev["op"])]
    assert len(mine) == 144 and (mine["flops"] == flops).all() and (mine["bytes"] == nbytes).all()
    assert (mine["dtype"] == "fp16").all() and (mine["model"] == "dense_gemm").all()
    k = roofline.kernel_roofline(tr, top=None).set_index(["kernel", "phase"]).loc[(ev["name"].iloc[0], "dense.gemm")]
    dur_s = ev["dur"].sum() * 1e-6
    assert k["achieved_tflops"] == pytest.approx(144 * flops / dur_s / 1e12)
    assert k["achieved_gbps"] == pytest.approx(144 * nbytes / dur_s / 1e9)
    # Intensity 109.5 flop/B is below the H100 ridge (989.5e12 / 3.35e12 = 295 flop/B); ~50% of HBM reached.
    assert k["intensity"] == pytest.approx(flops / nbytes)
    assert flops / nbytes < H100_FP16 / H100_BW
    assert nbytes / H100_BW / (ev["dur"].mean() * 1e-6) > 0.4
    assert k["bound"] == "memory"


def test_small_int8_gemm_is_latency_bound(traces):
    """k/v projections: [128,896] x [128,896] int8, ~0.1 µs of work at the roof, ~4 µs measured."""
    tr = traces[INT8.name]
    ev = _launched_by(tr, "bitsandbytes::int8_linear_matmul", [[128, 896], [128, 896]])
    assert len(ev) == 144
    u = roofline.unit_bounds(roofline.units(tr), peaks_for(tr.device_name))
    mine = u[u["op"].isin(ev["op"])]
    nbytes = 128 * 896 + 128 * 896 + 4 * 128 * 128
    assert (mine["bytes"] == nbytes).all() and (mine["int_ops"] == 2 * 128 * 896 * 128).all()
    assert (nbytes / H100_BW / (ev["dur"] * 1e-6) < 0.10).all() and (ev["dur"] < 10).all()
    assert (mine["bound"] == "latency").all()


def test_nf4_units_recomputed_from_gemm_4bit_dims(traces):
    tr = traces[NF4.name]
    units = roofline.units(tr).set_index("op")
    ev = _launched_by(tr, "bitsandbytes::gemm_4bit")
    checked = set()
    for row in ev.itertuples():
        d = row.dims
        a, packed, absmax2, absmax8, code = d[0], d[1], d[3], d[7], d[8]
        t, k = math.prod(a[:-1]), a[-1]
        n = 2 * packed[0] * packed[1] // k  # uint8 storage: 2 weights a byte
        u = units[(units.index == row.op)]
        if "gemm_4bit_sm80" in row.name:
            fused = u[u["model"] == "nf4_fused_gemm"].iloc[0]
            assert fused["flops"] == 2 * t * k * n
            scale_bytes = 4 * absmax2[0] + absmax8[0] + 4 * code[0]
            assert fused["bytes"] == 2 * t * k + packed[0] + scale_bytes + 2 * t * n
            checked.add("fused")
        elif "kDequantizeBlockwise<__half" in row.name:
            deq = u[u["model"] == "nf4_weight_dequant"].iloc[0]
            assert deq["bytes"] == packed[0] + 4 * absmax8[0] + 2 * n * k  # packed in, fp32 absmax in, fp16 out
            assert deq["flops"] is None or math.isnan(deq["flops"])
            checked.add("dequant")
        elif "kDequantizeBlockwise<float" in row.name:
            ab = u[u["model"] == "nf4_absmax_dequant"].iloc[0]
            assert ab["bytes"] == absmax8[0] + 4 * absmax2[0] + 4 * code[0] + 4 * absmax8[0]
            checked.add("absmax")
    assert checked == {"fused", "dequant", "absmax"}
    ph = roofline.phase_roofline(tr).set_index("phase")
    assert ph.loc["nf4.dequant", "modeled_share"] == pytest.approx(1.0)
    assert ph.loc["nf4.fused_gemm", "compute_dtype"] == "fp16"
    assert ph.loc["nf4.fused_gemm", "bound"] == "latency"  # 14 µs kernels at ~3% of both roofs


def test_phase_labels_on_the_shared_traces(traces):
    labels = {name: roofline.phase_roofline(tr).set_index("phase")["bound"].to_dict() for name, tr in traces.items()}
    assert labels[INT8.name]["int8.outlier_detect"] == "latency"
    assert labels[INT8.name]["int8.act_quant"] == "latency"
    assert labels[FP16.name]["dense.gemm"] == "memory"  # the big MLP GEMMs hold most of its time
    shares = roofline.phase_roofline(traces[FP16.name]).set_index("phase").loc["dense.gemm", "bound_shares"]
    assert shares["memory"] > 0.5 and sum(shares.values()) == pytest.approx(1.0)
    for phases in labels.values():
        assert set(phases.values()) <= {"latency", "memory", "compute", "transfer", None}


def test_work_is_counted_once_per_launching_op(traces):
    """A split-K GEMM launches a GEMM and a reduce kernel: one unit, both durations, flops once."""
    tr = traces[FP16.name]
    ev = _launched_by(tr, "aten::mm", [[128, 4864], [4864, 896]])
    assert ev["name"].nunique() == 2  # nvjet splitK GEMM + cublasLt splitKreduce
    u = roofline.units(tr)
    mine = u[u["op"].isin(ev["op"])]
    assert len(mine) == 72 and (mine["events"] == 2).all()
    assert mine["gpu_us"].sum() == pytest.approx(ev["dur"].sum())
    assert (mine["flops"] == 2 * 128 * 4864 * 896).all()
    assert mine["kernel"].str.contains("splitK_").all()  # named by its longest kernel


def test_unit_time_adds_up_to_gpu_time(traces):
    for tr in traces.values():
        assert roofline.units(tr)["gpu_us"].sum() == pytest.approx(gpu_phases(tr)["dur"].sum())


def test_unknown_shapes_give_null_fields_never_values(traces):
    tr = traces[INT8.name]
    ev = _launched_by(tr, "aten::index")  # index lists are recorded without dims
    assert len(ev)
    u = roofline.units(tr)
    mine = u[u["op"].isin(ev["op"])]
    assert mine["bytes"].isna().all() and mine["flops"].isna().all() and mine["model"].isna().all()
    section = roofline.roofline_section(tr)
    json.dumps(section, allow_nan=False)  # nulls, no NaN


def test_memcpy_units_use_event_bytes(traces):
    tr = traces[INT8.name]
    u = roofline.units(tr)
    gpu = tr.gpu
    dtoh = gpu[gpu["name"].str.startswith("Memcpy DtoH")]
    mine = u[u["model"] == "memcpy_host"]
    assert mine["bytes"].sum() == pytest.approx(float(gpu[gpu["cat"] == "gpu_memcpy"]["bytes"].sum()))
    assert len(dtoh) and (mine["link"] == "pcie").all()
    ph = roofline.phase_roofline(tr).set_index("phase")
    # The outlier check's 1-byte DtoH copies are host transfers: kept out of the HBM figures.
    assert ph.loc["int8.outlier_detect", "modeled_share"] < 1.0


def test_unknown_device_keeps_rates_drops_labels(traces):
    tr = traces[FP16.name]
    p = peaks_for("NVIDIA Mystery X1")
    ph = roofline.phase_roofline(tr, p).set_index("phase")
    assert ph.loc["dense.gemm", "achieved_tflops"] > 0
    assert ph["bound"].isna().all() and ph["mem_util"].isna().all()


def test_calibration_changes_peaks_and_source(traces, tmp_path, monkeypatch):
    name = traces[FP16.name].device_name
    path = calibration_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"device_name": name, "measured_at": "now", "results": {"hbm_gbps": {"value": 1675}}}))
    p = peaks_for(name)
    ph = roofline.phase_roofline(traces[FP16.name], p).set_index("phase")
    base = roofline.phase_roofline(traces[FP16.name], peaks_for(name, use_calibration=False)).set_index("phase")
    assert ph.loc["dense.gemm", "mem_util"] == pytest.approx(2 * base.loc["dense.gemm", "mem_util"])
    assert ph.loc["dense.gemm", "peak_source"] == "calibrated+datasheet"
    assert base.loc["dense.gemm", "peak_source"] == "datasheet"


def test_report_json_joins_roofline_fields_into_phases(traces):
    d = analyze_trace(traces[INT8.name]).to_dict()
    phases = {p["phase"]: p for p in d["phases"]}
    for key in roofline.PHASE_FIELDS:
        assert key in phases["int8.gemm"]
    assert phases["int8.gemm"]["achieved_tops"] > 0 and phases["int8.gemm"]["bound"] in ("latency", "memory")
    assert phases["int8.gemm"]["peak_source"] == "datasheet"
    assert "phase_fields" not in d["roofline"]
    assert d["roofline"]["device"]["table_entry"] == "h100-sxm"
    assert "h100" in d["roofline"]["device"]["datasheet"].lower()
    assert d["roofline"]["kernels"] and d["roofline"]["phases"]


def test_cli_report_json_and_markdown(tmp_path):
    env = {**os.environ, "QTRACE_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "qtrace", "report", str(NF4), "--format", "json"], env=env,
                         capture_output=True, text=True, check=True).stdout
    d = json.loads(out)
    assert all("bound" in p and "achieved_gbps" in p for p in d["phases"])
    assert "markdown" not in d["roofline"] and "text" not in d["roofline"]
    md = subprocess.run([sys.executable, "-m", "qtrace", "report", str(NF4), "--format", "md"], env=env,
                        capture_output=True, text=True, check=True).stdout
    assert "### Roofline" in md and "nf4.fused_gemm" in md
    text = subprocess.run([sys.executable, "-m", "qtrace", "report", str(NF4)], env=env,
                          capture_output=True, text=True, check=True).stdout
    assert "Roofline:" in text and "peaks (datasheet)" in text


# --- the shape parser and op models on hand-made inputs ---------------------------------


def _args(dims, types):
    return shapes.parse_args(json.dumps(dims).encode(), json.dumps(types).encode())


def test_parse_args_kinds():
    a = _args([[2, 3], [], [[1, 2], [3, 4]], [5]], ["c10::Half", "Scalar", "TensorList", "weird_type"])
    assert a[0].shape == [2, 3] and a[0].nbytes == 12
    assert a[1] is None and isinstance(a[2], list) and a[3].nbytes is None
    assert shapes.parse_args(None, b"[]") is None
    assert shapes.parse_args(b"[[1]]", b'["float", "float"]') is None  # lengths disagree


def test_pointwise_broadcast_and_inplace():
    w = roofline.aten_work("aten::mul", _args([[896], [1, 128, 896]], ["c10::Half", "c10::Half"]))
    assert w.bytes == 2 * 896 + 2 * 128 * 896 + 2 * 128 * 896
    w = roofline.aten_work("aten::add_", _args([[4, 8], [4, 8], []], ["float", "float", "Scalar"]))
    assert w.bytes == 4 * 32 * 3
    w = roofline.aten_work("aten::ge", _args([[128, 896], []], ["c10::Half", "Scalar"]))
    assert w.bytes == 2 * 128 * 896 + 128 * 896  # bool out
    assert roofline.aten_work("aten::mul", _args([[3, 4], [5, 4]], ["float", "float"])) is None  # no broadcast


def test_cat_size_from_kernel_name():
    args = _args([[[1, 14, 128, 32], [1, 14, 128, 32]], []], ["TensorList", "Scalar"])
    assert roofline.aten_work("aten::cat", args, "") is None
    k = "void at::native::CatArrayBatchedCopy<at::native::OpaqueType<2u>, unsigned int, 4, 64, 64>(...)"
    assert roofline.aten_work("aten::cat", args, k).bytes == 2 * 2 * 14 * 128 * 32 * 2


def test_gemm_models():
    w = roofline.aten_work("aten::addmm", _args([[896], [128, 896], [896, 896], [], []],
                                                ["c10::Half", "c10::Half", "c10::Half", "Scalar", "Scalar"]))
    assert w.flops == 2 * 128 * 896 * 896 and w.bytes == 2 * (896 + 128 * 896 + 896 * 896 + 128 * 896)
    w = roofline.aten_work("aten::bmm", _args([[2, 3, 4], [2, 4, 5]], ["float", "float"]))
    assert w.flops == 2 * 2 * 3 * 4 * 5 and w.dtype == "fp32"
    w = roofline.aten_work("aten::_int_mm", _args([[32, 64], [64, 16]], ["signed char", "signed char"]))
    assert w.int_ops == 2 * 32 * 64 * 16 and w.flops is None and w.bytes == 32 * 64 + 64 * 16 + 4 * 32 * 16
    args = _args([[128, 896], [128], [896], [], [896]], ["int", "float", "float", "Scalar", "c10::Half"])
    w = bnb_work.kernel_work("bitsandbytes::int8_mm_dequant", "kdequant_mm_int32_fp16<4, 512>", args, "c10::Half")
    assert w.bytes == 4 * 128 * 896 + 4 * 128 + 4 * 896 + 2 * 896 + 2 * 128 * 896


def test_cpu_trace_has_no_roofline(tmp_path):
    path = tmp_path / "cpu.json"
    events = [{"ph": "X", "cat": "cpu_op", "name": "aten::mm", "pid": 1, "tid": 1, "ts": 0, "dur": 10,
               "args": {"Input Dims": [[2, 2], [2, 2]], "Input type": ["float", "float"]}}]
    path.write_text(json.dumps({"traceEvents": events}))
    s = roofline.roofline_section(load_trace(path))
    assert s["phases"] == [] and "no GPU" in s["summary"]


def test_gather_reads_an_expanded_index_once_per_stored_value():
    """A stride-0 dim (an expanded view) stores one value along it; without strides, every element."""
    dims, types = [[1000, 64], [], [32, 64], [], [32, 64]], ["c10::Half", "Scalar", "long int", "Scalar", "c10::Half"]
    full = roofline.aten_work("aten::gather", _args(dims, types))
    expanded = roofline.aten_work("aten::gather", shapes.parse_args(
        json.dumps(dims).encode(), json.dumps(types).encode(), json.dumps([[64, 1], [], [1, 0], [], [64, 1]]).encode()))
    assert full.bytes == 8 * 32 * 64 + 2 * 32 * 64 * 2
    assert expanded.bytes == 8 * 32 + 2 * 32 * 64 * 2
    bad = shapes.parse_args(json.dumps(dims).encode(), json.dumps(types).encode(), b"[[1]]")  # length disagrees
    assert roofline.aten_work("aten::gather", bad).bytes == full.bytes


def test_embedding_gather_on_the_7b_trace_is_below_its_roof():
    """torch's embedding -> index_select -> gather expands the ids to [tokens, hidden] (strides
    [1, 0]); counting that index as 8 bytes per element put this kernel at 222% of the H200's
    bandwidth. The bytes are recomputed here from the raw event."""
    import gzip

    path = TRACES / "torchao/qwen7b_cls_bs32/torchao-w8a8/trace.json.gz"
    with gzip.open(path) as f:
        raw = json.load(f)["traceEvents"]
    gather = next(e for e in raw if e.get("name") == "aten::gather")
    tokens, hidden = gather["args"]["Input Dims"][2]
    assert gather["args"]["Input Strides"][2] == [1, 0]
    expected = 8 * tokens + 2 * tokens * hidden * 2
    trace = load_trace(path)
    u = roofline.units(trace)
    unit = u[u["phase"] == "embedding"]
    assert len(unit) == 1 and unit["bytes"].iloc[0] == expected
    row = roofline.phase_roofline(trace).set_index("phase").loc["embedding"]
    assert row["mem_util"] < 1.0
    assert row["achieved_gbps"] * 1e9 == pytest.approx(expected / (unit["gpu_us"].iloc[0] * 1e-6))
