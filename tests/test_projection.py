"""`qtrace project`: kernels against hand computations, the identity, the timeline model, feature refusals, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _cli import run_cli
from _synthetic_trace import stepped_trace, write_trace

from qtrace.analyzers.attribution import gpu_phases
from qtrace.analyzers.host import covered_in, host_summary, merge_intervals, step_table
from qtrace.analyzers.projection import KERNEL_FLOOR_US, LATENCY_EFFICIENCY, project_kernels
from qtrace.analyzers.projection_run import project_target, project_trace
from qtrace.analyzers.projection_timeline import calibrate_host_speed, rebuild
from qtrace.analyzers.trace_analysis import load_target
from qtrace.gpu_peaks import KNOWN_DEVICES, features_of, spec_by_key_or_name
from qtrace.tracefile import load_trace

REPO = Path(__file__).resolve().parents[1]
FP16 = REPO / "traces" / "h100_qwen05-shape-outliers_fp16_bs1_seq128.json.gz"
INT8 = REPO / "traces" / "h100_qwen05-shape_int8_bs1_seq128.json.gz"
QWEN16 = REPO / "traces" / "seed" / "qwen_bs16"
MB1 = REPO / "traces" / "seed" / "mb_bs1"

# Datasheet figures, written out here so the test does not read them from the code under test.
H100 = {"bw": 3350e9, "fp16": 989.5e12, "int8": 1979e12}
T4 = {"bw": 320e9, "fp16": 65e12, "int8": 130e12}
H200 = {"bw": 4800e9, "fp16": 989.5e12, "int8": 1979e12}


@pytest.fixture(scope="module")
def qwen16_fp16():
    return load_trace(QWEN16 / "fp16" / "trace.json.gz")


@pytest.fixture(scope="module")
def int8_trace():
    return load_trace(INT8)


def _ideal_us(row, peaks: dict[str, float]) -> float:
    mem = row["bytes"] / peaks["bw"]
    ops = row["flops"] if row["flops"] == row["flops"] else row["int_ops"]
    comp = ops / peaks[row["dtype"]] if ops == ops and row["dtype"] in peaks else 0.0
    return max(mem, comp) * 1e6


def test_memory_and_compute_kernels_match_hand_computation(qwen16_fp16) -> None:
    u = project_kernels(qwen16_fp16, spec_by_key_or_name("t4")).units
    mem = u[u["cls"] == "memory"].sort_values("gpu_us").iloc[-1]
    comp = u[(u["cls"] == "compute") & (u["dtype"] == "fp16")].sort_values("gpu_us").iloc[-1]
    for row in (mem, comp):
        expected = row["gpu_us"] * _ideal_us(row, T4) / _ideal_us(row, H100)
        assert row["projected_us"] == pytest.approx(expected, rel=1e-9)
    # A memory-bound kernel that stays memory-bound scales with the bandwidth ratio, exactly.
    assert mem["projected_us"] == pytest.approx(mem["gpu_us"] * 3350 / 320, rel=1e-9)
    # The fp16 GEMM at batch 16 x 128 tokens is compute-bound on both: the fp16 peak ratio.
    assert comp["projected_us"] == pytest.approx(comp["gpu_us"] * 989.5 / 65, rel=1e-9)


def test_h200_memory_kernels_speed_up_by_bandwidth_compute_kernels_do_not(qwen16_fp16) -> None:
    u = project_kernels(qwen16_fp16, spec_by_key_or_name("h200")).units
    mem = u[(u["cls"] == "memory") & (u["gpu_us"] > 5)]
    assert len(mem) > 100
    ratio = np.array([_ideal_us(r, H200) / _ideal_us(r, H100) for r in mem.to_dict(orient="records")])
    floor = np.minimum(mem["gpu_us"], KERNEL_FLOOR_US * mem["events"])
    np.testing.assert_allclose(mem["projected_us"], np.maximum(mem["gpu_us"] * ratio, floor), rtol=1e-9)
    assert (ratio < 1).all() and (ratio >= 3350 / 4800 - 1e-12).all()  # faster, by the bandwidth ratio at most
    comp = u[u["cls"] == "compute"]
    np.testing.assert_allclose(comp["projected_us"], comp["gpu_us"], rtol=1e-12)  # same fp16 peak on H100 and H200


def test_latency_kernels_keep_their_time_unless_the_work_needs_longer(int8_trace) -> None:
    u = project_kernels(int8_trace, spec_by_key_or_name("t4")).units
    lat = u[u["cls"] == "latency"]
    ideal = np.array([_ideal_us(r, T4) for r in lat.to_dict(orient="records")])
    expected = np.maximum(lat["gpu_us"].to_numpy(), ideal / LATENCY_EFFICIENCY)
    np.testing.assert_allclose(lat["projected_us"].to_numpy(), expected, rtol=1e-9)
    assert (lat["projected_us"] > lat["gpu_us"]).any() and (lat["projected_us"] == lat["gpu_us"]).any()


def test_unknown_work_is_kept_or_scaled_by_bandwidth(int8_trace) -> None:
    u = project_kernels(int8_trace, spec_by_key_or_name("t4")).units
    kept = u[u["cls"] == "unknown_kept"]
    assert len(kept) and (kept["projected_us"] == kept["gpu_us"]).all()
    assert (kept["gpu_us"] / kept["events"] < 10).all()
    assert set(u["cls"]) <= {"memory", "compute", "latency", "transfer", "unknown_kept", "unknown_scaled"}


@pytest.mark.parametrize("path", [FP16, INT8, QWEN16 / "int8" / "trace.json.gz"])
def test_identity_on_the_measured_gpu(path: Path) -> None:
    trace = load_trace(path)
    kp = project_kernels(trace, spec_by_key_or_name("h100-sxm"))
    assert np.array_equal(kp.units["projected_us"].to_numpy(), kp.units["gpu_us"].to_numpy())  # exactly
    dur = gpu_phases(trace)["dur"].to_numpy(dtype=float)
    assert np.array_equal(kp.event_us, dur)
    tl = rebuild(trace, kp.event_us, 1.0)
    host = host_summary(trace)
    assert tl.span_us == pytest.approx(host["span_us"], rel=1e-9, abs=1e-3)
    assert tl.gpu_busy_us == pytest.approx(host["gpu_busy_us"], rel=1e-9)
    np.testing.assert_allclose(tl.start_us, trace.gpu["ts"].to_numpy(dtype=float), atol=1e-6)
    # The projection's step: from its ProfilerStep start to the later of the step's end and the end
    # of the GPU work it launched (what a caller waits for), computed here from the trace itself.
    steps = step_table(trace)
    if len(steps):
        ops = trace.ops
        marks = ops[(ops["cat"] == "user_annotation") & ops["name"].str.match(r"^ProfilerStep#\d+$")]
        gpu = gpu_phases(trace)
        spans, idles = [], []
        for name, ts, end in zip(marks["name"], marks["ts"], marks["end"], strict=True):
            g = gpu[gpu["step"] == int(name.split("#")[1])]
            hi = max(float(end), float(g["end"].max())) if len(g) else float(end)
            bs, be = merge_intervals(g["ts"].to_numpy(dtype=float), g["end"].to_numpy(dtype=float))
            spans.append(hi - float(ts))
            idles.append(max(hi - float(ts) - covered_in(bs, be, float(ts), hi), 0.0))
        np.testing.assert_allclose(tl.steps["span_us"], spans, rtol=1e-9)
        np.testing.assert_allclose(tl.steps["gpu_idle_us"], idles, rtol=1e-9, atol=1e-6)


def test_identity_of_a_run_folder_reproduces_latencies_and_ratios() -> None:
    proj = project_target(load_target(MB1), spec_by_key_or_name("h100-sxm"))
    run = json.loads((MB1 / "run.json").read_text())
    for p in proj["precisions"]:
        measured = run["precisions"][p["precision"]]["latency_ms"]["per_iter"]["median"] * 1000
        assert p["latency"]["basis"] == "unprofiled" and p["latency"]["calibration"] == "ok"
        assert p["latency"]["projected_us"] == pytest.approx(measured, rel=1e-4)
        assert p["rebuild_residual_us"] == pytest.approx(0.0, abs=1e-3)
        assert not p["partial"]
    int8 = next(p for p in proj["precisions"] if p["precision"] == "int8")
    assert int8["ratio"]["projected"] == pytest.approx(int8["ratio"]["measured"], rel=2e-4)


def test_calibrated_host_speed_reproduces_the_unprofiled_latency(qwen16_fp16) -> None:
    f0, status = calibrate_host_speed(qwen16_fp16, 20722.176)
    assert status == "ok" and f0 > 1.5  # the profiler made this host-bound pass ~3x slower
    dur = gpu_phases(qwen16_fp16)["dur"].to_numpy(dtype=float)
    assert rebuild(qwen16_fp16, dur, f0).step_mean_us == pytest.approx(20722.176, rel=1e-4)
    assert calibrate_host_speed(qwen16_fp16, 100.0)[1] == "at_upper_bound"  # below the GPU's own work


def _stepped(tmp_path: Path, name: str = "NVIDIA H100 80GB HBM3", kernel: str | None = None,
             dims: list | None = None, types: list | None = None) -> Path:
    obj = stepped_trace(2)
    obj["deviceProperties"] = [{"id": 0, "name": name, "computeMajor": 9, "computeMinor": 0}]
    for ev in obj["traceEvents"]:
        if ev.get("name") == "aten::mm" and dims is not None:
            ev["args"]["Input Dims"] = dims
            ev["args"]["Input type"] = types
        if ev.get("cat") == "kernel" and ev["name"].startswith("gemm_kernel") and kernel:
            ev["name"] = kernel
    return write_trace(obj, tmp_path / "trace.json.gz")


def test_timeline_by_hand_a_slower_gemm_delays_the_sync(tmp_path: Path) -> None:
    trace = load_trace(_stepped(tmp_path))
    g = gpu_phases(trace)
    dur = g["dur"].to_numpy(dtype=float).copy()
    dur[g["name"].str.startswith("gemm_kernel").to_numpy()] = 100.0
    tl = rebuild(trace, dur, 1.0)
    # Step 0 (µs from its start): the GEMM, launched at 5, starts at 12 (7 µs launch latency) and now ends at 112;
    # the add, launched at 37 and measured to start 4 µs later (at 41), starts at max(37, 112) + 4 = 116, ends 119;
    # the sync (47-55, measured drain at 44) returns at 119 + (55 - 47) = 127; the step's end (59) moves with it
    # to 131.
    first = g["step"].to_numpy() == 0
    rel = tl.start_us[first] - float(trace.ops["ts"].min())  # µs from step 0's start
    np.testing.assert_allclose(sorted(rel), [12.0, 116.0], atol=1e-6)
    assert tl.steps.iloc[0]["span_us"] == pytest.approx(131.0, abs=1e-6)
    # A host twice as fast halves the host gaps; here the GPU sets the pace, so only the host part shrinks.
    fast = rebuild(trace, dur, 2.0)
    assert fast.steps.iloc[0]["span_us"] < tl.steps.iloc[0]["span_us"]
    assert fast.steps.iloc[0]["span_us"] > 100.0


def test_bf16_gemm_refused_on_t4_not_on_a100(tmp_path: Path) -> None:
    path = _stepped(tmp_path, dims=[[512, 512], [512, 512]], types=["c10::BFloat16", "c10::BFloat16"])
    trace = load_trace(path)
    t4 = project_trace(trace, spec_by_key_or_name("t4"))
    assert t4["partial"] and t4["refused_kernels"][0]["lacking"] == "bf16_tensor_cores"
    gemm_us = float(gpu_phases(trace).query("name.str.startswith('gemm_kernel')")["dur"].sum())
    assert t4["refused_us"] == pytest.approx(gemm_us)
    a100 = project_trace(trace, spec_by_key_or_name("a100"))
    assert not a100["partial"] and a100["refused_us"] == 0


def test_fp8_kernel_refused_before_sm89(tmp_path: Path) -> None:
    trace = load_trace(_stepped(tmp_path, kernel="sm90_xmma_gemm_e4m3e4m3_f32_tn_kernel"))
    assert project_trace(trace, spec_by_key_or_name("a100-80gb-sxm"))["partial"]
    assert not project_trace(trace, spec_by_key_or_name("rtx-4090"))["partial"]


def test_flash_attention_substituted_on_t4(qwen16_fp16) -> None:
    kp = project_kernels(qwen16_fp16, spec_by_key_or_name("t4"))
    sub = kp.units[kp.units["substituted"]]
    assert len(sub) and sub["kernel"].str.contains("flash").all() and not kp.partial
    assert not project_kernels(qwen16_fp16, spec_by_key_or_name("a100")).units["substituted"].any()


def test_feature_flags_from_compute_capability() -> None:
    assert all(s.compute_capability for s in KNOWN_DEVICES)
    t4 = spec_by_key_or_name("t4").features()
    assert t4 == {"int8_tensor_cores": True, "bf16_tensor_cores": False, "fp8_tensor_cores": False,
                  "flash_attention": False}
    assert spec_by_key_or_name("a100").features()["fp8_tensor_cores"] is False
    assert spec_by_key_or_name("l4").features()["fp8_tensor_cores"] is True
    assert features_of("7.0")["int8_tensor_cores"] is False and features_of("bad")["bf16_tensor_cores"] is None


def test_unknown_measured_gpu_is_one_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _stepped(tmp_path, name="Test GPU")
    code, out, err = run_cli(capsys, "project", str(path), "--gpu", "t4")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and "no peak table entry" in err


@pytest.mark.parametrize("args, needle", [
    (["--gpu", "voodoo3"], "not in the peak table"),
    (["--gpu", "t4", "--host-speed", "0"], "host-speed"),
    (["--gpu", "t4", "--host-speed", "-1"], "host-speed"),
    (["--gpu", "t4", "--format", "xml"], "format"),
])
def test_cli_bad_input_one_line_exit_2(args: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "project", str(FP16), *args)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("qtrace: error:") and needle in err


def test_cli_missing_path_and_missing_gpu(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, "project", str(tmp_path / "nope.json.gz"), "--gpu", "t4")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "no such file" in err
    code, _, err = run_cli(capsys, "project", str(FP16))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--gpu" in err


def test_cli_formats_and_out(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run_cli(capsys, "project", str(FP16), "--gpu", "t4", "--format", "json")
    assert code == 0
    data = json.loads(out)
    assert data["kind"] == "projection" and data["target"]["key"] == "t4" and data["assumptions"]
    assert data["precisions"][0]["latency"]["basis"] == "window"  # no ProfilerStep markers, no run.json
    code, out, _ = run_cli(capsys, "project", str(FP16), "--gpu", "h100-sxm", "--format", "csv")
    assert code == 0 and out.splitlines()[0].startswith("precision,measured_latency_us,projected_latency_us")
    row = out.splitlines()[1].split(",")
    assert float(row[1]) == pytest.approx(float(row[2]), rel=1e-9)  # identity through the CLI
    code, out, _ = run_cli(capsys, "project", str(FP16), "--gpu", "t4", "--format", "md", "--out", str(tmp_path / "o"))
    assert code == 0 and out.startswith("## PROJECTION") and "\\_" in out  # phase names escaped
    assert {p.name for p in (tmp_path / "o").iterdir()} == {"projection.md", "projection.json",
                                                           "projection_summary.csv", "projection_phases.csv",
                                                           "projection_classes.csv"}
    code, out, _ = run_cli(capsys, "project", str(FP16), "--gpu", "t4")
    assert code == 0 and out.startswith("== PROJECTION") and "Assumptions:" in out
