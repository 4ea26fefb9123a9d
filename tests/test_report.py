"""`qtrace report` on the real H100 traces: totals, phase landing, coverage, host syncs."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from qtrace.analyzers.attribution import gpu_phases
from qtrace.analyzers.phase_rules import PHASES, QUANT_PHASES
from qtrace.analyzers.trace_analysis import analyze_trace
from qtrace.tracefile.kineto import load_trace

TRACES = Path(__file__).resolve().parent.parent / "traces"
INT8 = TRACES / "h100_qwen05-shape_int8_bs1_seq128.json.gz"
FP16 = TRACES / "h100_qwen05-shape-outliers_fp16_bs1_seq128.json.gz"
NF4 = TRACES / "h100_modernbert-shape-outliers_nf4_bs1_seq128.json.gz"
SHARED = [INT8, FP16, NF4]


@pytest.fixture(scope="module")
def reports():
    return {p.name: analyze_trace(load_trace(p)) for p in SHARED}


def _raw_events(path: Path) -> list[dict]:
    with gzip.open(path, "rt") as fh:
        return json.load(fh)["traceEvents"]


@pytest.mark.parametrize("path", SHARED, ids=lambda p: p.name)
def test_gpu_total_equals_independent_sum(reports, path):
    expected = sum(e["dur"] for e in _raw_events(path) if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset"))
    r = reports[path.name]
    assert r.gpu_time_us == pytest.approx(expected, rel=1e-9)
    assert r.phases["gpu_time_us"].sum() == pytest.approx(expected, rel=1e-9)
    assert sum(k["gpu_time_us"] for k in r.to_dict()["phases"]) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("path", SHARED, ids=lambda p: p.name)
def test_coverage_at_least_99_percent_without_qtrace_annotations(reports, path):
    r = reports[path.name]
    assert not r.trace.ops["name"].str.startswith("qtrace.").any()  # these traces carry no qtrace annotations
    assert r.coverage >= 0.99
    assert set(r.phases["phase"]) <= set(PHASES)


@pytest.mark.parametrize(("path", "kernel", "phase"), [
    (INT8, "kInt8VectorQuant", "int8.act_quant"),
    (INT8, "gemm_s8", "int8.gemm"),
    (INT8, "kdequant_mm", "int8.dequant"),
    (NF4, "kDequantizeBlockwise", "nf4.dequant"),
    (NF4, "gemm_4bit", "nf4.fused_gemm"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bitsandbytes_kernel_families_land_in_their_phase(reports, path, kernel, phase):
    gpu = gpu_phases(reports[path.name].trace)
    family = gpu[gpu["name"].str.contains(kernel, regex=False)]
    assert len(family) > 0
    assert set(family["phase"]) == {phase}


def test_outlier_check_lands_in_outlier_detect(reports):
    gpu = gpu_phases(reports[INT8.name].trace)
    dtoh = gpu[gpu["name"].str.startswith("Memcpy DtoH")]
    assert len(dtoh) > 0 and set(dtoh["phase"]) == {"int8.outlier_detect"}
    anys = gpu[gpu["name"].str.contains("ReduceOp<bool", regex=False)]
    assert len(anys) > 0 and set(anys["phase"]) == {"int8.outlier_detect"}


def test_fp16_trace_has_no_quantization_phase(reports):
    phases = set(reports[FP16.name].phases["phase"])
    assert not phases & set(QUANT_PHASES)
    assert "dense.gemm" in phases


def test_nf4_reports_fused_kernels_as_fused_not_zero_dequant(reports):
    p = reports[NF4.name].phases.set_index("phase")
    assert p.loc["nf4.fused_gemm", "gpu_time_us"] > 0
    assert p.loc["nf4.dequant", "gpu_time_us"] > 0  # the larger layers dequantize, then run a dense GEMM


def test_int8_shows_host_syncs_fp16_none(reports):
    int8 = reports[INT8.name]
    fp16 = reports[FP16.name]
    raw = _raw_events(INT8)
    stream_syncs = sum(1 for e in raw if e.get("name") == "cudaStreamSynchronize")
    assert int8.host["syncs"] >= stream_syncs > 0
    assert int8.host["syncs_by_call"]["cudaStreamSynchronize"]["count"] == stream_syncs
    quant_syncs = int8.phases[int8.phases["phase"].isin(QUANT_PHASES)]["host_syncs"].sum()
    assert quant_syncs == int8.host["syncs"]  # every sync is made inside a bitsandbytes phase
    assert fp16.host["syncs"] == 0
    assert int8.host["verdict"].startswith("host-bound")


@pytest.mark.parametrize("path", SHARED, ids=lambda p: p.name)
def test_host_window_adds_up(reports, path):
    r = reports[path.name]
    h = r.host
    assert h["gpu_busy_us"] + h["gpu_idle_us"] == pytest.approx(h["span_us"])
    # One stream, no overlap: busy time equals the summed durations.
    assert h["gpu_busy_us"] == pytest.approx(r.gpu_time_us, rel=1e-6)
    # GPU idle split by host phase adds up to the idle time.
    assert r.phases["exposed_us"].sum() == pytest.approx(h["gpu_idle_us"], rel=1e-9)
    assert h["launches"] == len(r.trace.gpu)


def test_json_cli_schema():
    out = subprocess.run([sys.executable, "-m", "qtrace", "report", str(INT8), "--format", "json", "--top", "5"],
                         capture_output=True, text=True, check=True)
    obj = json.loads(out.stdout)
    for key in ("source", "gpu_time_us", "coverage", "phases", "host", "kernels"):
        assert key in obj
    for key in ("phase", "group", "gpu_time_us", "kernels", "cpu_time_us", "launches", "host_syncs", "host_sync_us"):
        assert key in obj["phases"][0]
    for key in ("span_us", "gpu_busy_us", "gpu_idle_us", "launches", "syncs", "sync_us", "verdict"):
        assert key in obj["host"]
    assert len(obj["kernels"]) == 5
    assert {"name", "phase", "count", "gpu_time_us"} <= set(obj["kernels"][0])


def test_table_leads_with_the_answer():
    out = subprocess.run([sys.executable, "-m", "qtrace", "report", str(INT8)], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out[1].startswith("Verdict: host-bound")
    assert "syncs" in out[1]
    assert out[2].startswith("Top phases by GPU time: int8.outlier_detect")


def test_out_writes_md_csv_json(tmp_path):
    out = tmp_path / "rep"
    subprocess.run([sys.executable, "-m", "qtrace", "report", str(NF4), "--out", str(out), "--format", "md"],
                   capture_output=True, text=True, check=True)
    for name in ("report.md", "report.json", "phases.csv", "kernels.csv"):
        assert (out / name).is_file(), name
    assert json.loads((out / "report.json").read_text())["coverage"] >= 0.99
    again = subprocess.run([sys.executable, "-m", "qtrace", "report", str(NF4), "--out", str(out)],
                           capture_output=True, text=True)
    assert again.returncode == 2 and "--force" in again.stderr


QTRACE_GPU_TRACES = sorted((TRACES / "seed").rglob("trace.json.gz")) + sorted(TRACES.glob("h100_qtrace_*.json.gz"))


@pytest.mark.parametrize("path", QTRACE_GPU_TRACES, ids=lambda p: str(p.relative_to(TRACES)))
def test_traces_qtrace_captured_on_the_gpu(path):
    """The traces `qtrace profile` recorded on the H100: annotated, stamped, fully covered."""
    trace = load_trace(path)
    r = analyze_trace(trace)
    meta = trace.qtrace_meta
    assert "H100" in (meta.get("device_name") or "")  # the metadata names the GPU
    assert meta["precision"] == r.precision
    assert trace.metadata.get("distributedInfo") == {"rank": 0}
    assert trace.ops["name"].str.startswith("qtrace.module:").any()
    assert len(r.steps) == meta["profile_steps"]
    assert r.coverage >= 0.99
    if r.precision in ("int8", "nf4"):
        assert trace.ops["name"].str.startswith("bitsandbytes::").any()
        assert set(r.phases["phase"]) & set(QUANT_PHASES)


def test_there_are_at_least_six_qtrace_gpu_traces():
    assert len(QTRACE_GPU_TRACES) >= 6
    assert {load_trace(p).qtrace_meta["precision"] for p in QTRACE_GPU_TRACES} >= {"fp16", "int8", "nf4"}


def test_analysis_and_reports_never_import_torch():
    """Every module of the trace side (reading, analyzers, backends' rules and analyses, renderers,
    the report/compare commands) imports without torch; only a backend's loader may need it."""
    import pkgutil

    import qtrace

    pure = ["qtrace.cli.report", "qtrace.cli.compare", "qtrace.gpu_peaks", "qtrace.markup"]
    for info in pkgutil.walk_packages(qtrace.__path__, "qtrace."):
        if info.name.startswith(("qtrace.tracefile", "qtrace.analyzers", "qtrace.reports", "qtrace.backends")) \
                and not info.name.endswith(".loading"):
            pure.append(info.name)
    assert "qtrace.backends.bitsandbytes.outliers" in pure and "qtrace.analyzers.roofline" in pure
    code = f"import sys, importlib; [importlib.import_module(m) for m in {pure!r}]; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
