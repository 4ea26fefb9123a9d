"""Issue 19: models over several GPUs: traces with GPU events on two devices, per-device figures,
peer copies as their own phase, the per-GPU rows of report and compare, and --device-map.

The traces are built by tests/_multi_device_trace.py (no public Kineto trace with GPU events on
two devices of one process was found; traces/public/README.md says where we looked), so every
figure is known exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import reference_loader
from _cli import run_cli
from _multi_device_trace import COPY_BYTES, COPY_US, GEMM0_US, GEMM1_US, STEP_US, pipeline_trace, write

from qtrace.analyzers import devices
from qtrace.analyzers.attribution import gpu_phases, runtime_phases
from qtrace.analyzers.compare import compare_reports
from qtrace.analyzers.phase_rules import classify
from qtrace.analyzers.trace_analysis import analyze_trace
from qtrace.reports import trace_report
from qtrace.tracefile.kineto import load_trace

REPO = Path(__file__).resolve().parents[1]
PUBLIC = REPO / "traces" / "public"


@pytest.fixture(scope="module")
def pipe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write(tmp_path_factory.mktemp("pipe") / "fp16_2gpu.json.gz", pipeline_trace(3))


def test_loader_reads_the_peer_copy_devices(pipe: Path) -> None:
    t = load_trace(pipe)
    copy = t.gpu[t.gpu["cat"] == "gpu_memcpy"]
    assert len(copy) == 3
    assert (copy["device"] == 0).all()  # no "device" argument: inDevice stands in
    assert (copy["src_device"] == 0).all() and (copy["dst_device"] == 1).all()
    kernels = t.gpu[t.gpu["cat"] == "kernel"]
    assert sorted(kernels["device"].unique().tolist()) == [0, 1] and kernels["src_device"].isna().all()


@pytest.mark.parametrize("kwargs", [{}, {"stream": False}, {"chunk_bytes": 700}])
def test_loader_matches_the_reference_loader(pipe: Path, kwargs: dict) -> None:
    ref, new = reference_loader.load_trace(pipe), load_trace(pipe, **kwargs)
    pd.testing.assert_frame_equal(ref.gpu, new.gpu, check_exact=True)


def test_peer_copy_is_its_own_phase_with_its_launch(pipe: Path) -> None:
    t = load_trace(pipe)
    g = gpu_phases(t)
    assert set(g.loc[g["cat"] == "gpu_memcpy", "phase"]) == {"device.copy"}
    assert set(g.loc[g["cat"] == "kernel", "phase"]) == {"dense.gemm"}
    rt = runtime_phases(t)
    assert set(rt.loc[rt["name"] == "cudaMemcpyAsync", "phase"]) == {"device.copy"}


@pytest.mark.parametrize(("kind", "kernel", "module", "phase"), [
    # inside a norm module: accelerate's hook moves activations inside the next stage's module range
    ("gpu_memcpy", "Memcpy PtoP (Device -> Device)", "Qwen2RMSNorm", "device.copy"),
    ("gpu_memcpy", "Memcpy PtoP (Device -> Device)", "", "device.copy"),
    ("gpu_memcpy", "Memcpy DtoD (Device -> Device)", "", "memcpy"),
    ("gpu_memcpy", "Memcpy HtoD (Pageable -> Device)", "", "memcpy"),
    ("kernel", "ncclDevKernel_SendRecv", "", "comm"),
])
def test_copy_rules(kind: str, kernel: str, module: str, phase: str) -> None:
    ctx = pd.DataFrame([{"kind": kind, "kernel": kernel, "module": module, "ops": "aten::copy_/aten::to"}])
    assert classify(ctx).iloc[0] == phase


def test_device_figures_are_exact(pipe: Path) -> None:
    n = 3
    t = load_trace(pipe)
    table = devices.device_table(t).set_index("device")
    span = STEP_US * (n - 1) + STEP_US - 1.0
    busy0, busy1 = n * (GEMM0_US + COPY_US), n * GEMM1_US
    assert table.loc[0, "busy_us"] == pytest.approx(busy0)
    assert table.loc[1, "busy_us"] == pytest.approx(busy1)
    assert table.loc[0, "waiting_us"] == pytest.approx(busy1)  # idle exactly while GPU 1 works
    assert table.loc[1, "waiting_us"] == pytest.approx(busy0)
    assert table.loc[0, "copy_us"] == pytest.approx(n * COPY_US) and table.loc[1, "copy_us"] == 0
    assert table["gpu_time_us"].sum() == pytest.approx(float(t.gpu["dur"].sum()))
    sec = devices.device_section(t)
    assert sec is not None and sec["count"] == 2
    assert sec["span_us"] == pytest.approx(span)
    assert sec["any_busy_us"] == pytest.approx(busy0 + busy1)
    assert sec["overlap_us"] == pytest.approx(0.0)
    for d in sec["devices"]:  # busy + waiting + nobody busy = the window, for every device
        assert d["busy_us"] + d["waiting_us"] + sec["all_idle_us"] == pytest.approx(span)
    assert sec["copies"] == [{"src_device": 0, "dst_device": 1, "copies": n, "bytes": n * COPY_BYTES,
                              "gpu_time_us": pytest.approx(n * COPY_US),
                              "gb_per_s": pytest.approx(COPY_BYTES / (COPY_US * 1e3))}]
    per = pd.DataFrame(sec["phases"]).groupby("device")["gpu_time_us"].sum()
    assert per.to_dict() == pytest.approx(table["gpu_time_us"].to_dict())
    assert "one at a time" in sec["summary"]
    # the trace-wide figures stay the sum (GPU time) and the union (busy: at least one GPU working)
    r = analyze_trace(t)
    assert r.host["gpu_busy_us"] == pytest.approx(busy0 + busy1)
    assert r.gpu_time_us == pytest.approx(busy0 + busy1)


def test_overlap_when_both_devices_work(tmp_path: Path) -> None:
    t = load_trace(write(tmp_path / "o.json", pipeline_trace(2, overlap_us=10.0)))
    sec = devices.device_section(t)
    assert sec["overlap_us"] == pytest.approx(2 * 10.0)
    assert "one at a time" not in sec["summary"]
    d1 = next(d for d in sec["devices"] if d["device"] == 1)
    assert d1["waiting_us"] == pytest.approx(sec["any_busy_us"] - d1["busy_us"])


def test_one_device_idle_while_the_other_works(tmp_path: Path) -> None:
    doc = pipeline_trace(1)
    # GPU 1 gets nothing but one tiny kernel long after: it idles while GPU 0 works
    for e in doc["traceEvents"]:
        if e.get("cat") == "kernel" and e["args"].get("device") == 1:
            e["dur"] = 1.0
            e["ts"] += 50.0
    t = load_trace(write(tmp_path / "idle.json", doc))
    table = devices.device_table(t).set_index("device")
    assert table.loc[1, "busy_us"] == pytest.approx(1.0)
    assert table.loc[1, "waiting_us"] == pytest.approx(GEMM0_US + COPY_US)
    assert table.loc[0, "waiting_us"] == pytest.approx(1.0)


def test_legacy_peer_copy_without_device_args(tmp_path: Path) -> None:
    """An older trace: the copy carries "device" and no from/to: still device.copy, target unknown."""
    t = load_trace(write(tmp_path / "old.json", pipeline_trace(1, peer_args=False)))
    sec = devices.device_section(t)
    assert sec["copies"][0]["src_device"] == -1 and sec["copies"][0]["dst_device"] == -1
    assert trace_report.render_text([analyze_trace(t)]).count("?") >= 2


def test_single_device_traces_have_no_devices_section() -> None:
    for name in ("bf16/h100_bert-small.json.gz", "ranks/sampled_rank-1.json.gz"):
        r = analyze_trace(load_trace(PUBLIC / name))
        assert "devices" not in r.extra and "devices" not in r.to_dict()
        assert "Devices" not in trace_report.render_markdown([r])


def test_report_renders_devices(pipe: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "report", str(pipe))
    assert code == 0, err
    assert "Devices: 2 devices" in out and "waits for other GPU ms" in out and "device.copy" in out
    code, out, err = run_cli(capsys, "report", str(pipe), "--format", "json")
    d = json.loads(out)
    assert [x["device"] for x in d["devices"]["devices"]] == [0, 1]
    code, _, err = run_cli(capsys, "report", str(pipe), "--out", str(tmp_path / "rep"))
    assert code == 0, err
    assert (tmp_path / "rep" / "devices.csv").is_file() and (tmp_path / "rep" / "device_copies.csv").is_file()
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "<h3>Devices</h3>" in html and "waits for other GPU ms" in html
    assert "### Devices" in (tmp_path / "rep" / "report.md").read_text()


def test_compare_two_gpus_against_one_is_one_report(pipe: Path, capsys: pytest.CaptureFixture[str]) -> None:
    one = PUBLIC / "bf16" / "h100_bert-small.json.gz"
    code, out, err = run_cli(capsys, "compare", str(pipe), str(one))
    assert code == 0, err
    assert "different numbers of GPUs" in out and "GPUs (per pass)" in out
    code, out, err = run_cli(capsys, "compare", str(pipe), str(one), "--format", "json")
    d = json.loads(out)
    rows = d["devices"]
    assert [(r["run"], r["device"]) for r in rows] == [(d["runs"][0]["run"], 0), (d["runs"][0]["run"], 1),
                                                       (d["runs"][1]["run"], 0)]
    # per pass: the 3-step trace's figures divided by 3
    assert rows[1]["busy_us"] == pytest.approx(GEMM1_US)
    assert rows[0]["waiting_us"] == pytest.approx(GEMM1_US)



def test_compare_out_writes_the_gpu_table(pipe: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    one = PUBLIC / "bf16" / "h100_bert-small.json.gz"
    code, _, err = run_cli(capsys, "compare", str(pipe), str(one), "--out", str(tmp_path / "cmp"))
    assert code == 0, err
    rows = pd.read_csv(tmp_path / "cmp" / "devices.csv")
    assert list(rows["device"]) == [0, 1, 0]
    assert "<h2>GPUs</h2>" in (tmp_path / "cmp" / "report.html").read_text()
    assert "## GPUs" in (tmp_path / "cmp" / "report.md").read_text()


def test_compare_of_single_gpu_runs_has_no_gpu_rows() -> None:
    reports = [analyze_trace(load_trace(PUBLIC / "bf16" / "h100_bert-small.json.gz")),
               analyze_trace(load_trace(PUBLIC / "rocm" / "mi300_bert-small.json.gz"))]
    c = compare_reports(reports, lean=False)
    assert c.devices == [] and "devices" not in c.to_dict()
    assert not any("numbers of GPUs" in n for n in c.notes)


def test_compare_reads_measured_memory_per_gpu(pipe: Path) -> None:
    r2 = analyze_trace(load_trace(pipe), measured={"memory": {"per_device": [
        {"device": "cuda:0", "index": 0, "max_allocated_bytes": 70 << 30},
        {"device": "cuda:1", "index": 1, "max_allocated_bytes": 72 << 30}]}})
    r1 = analyze_trace(load_trace(PUBLIC / "bf16" / "h100_bert-small.json.gz"))
    c = compare_reports([r2, r1], lean=False)
    assert [d["max_allocated_bytes"] for d in c.devices] == [70 << 30, 72 << 30, None]


def test_rank_folders_still_read_per_rank(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Per-rank files (one GPU each) stay the ranks path; a rank file with two GPUs gets its devices too."""
    folder = tmp_path / "ranks"
    write(folder / "rank-0.json.gz", pipeline_trace(2))
    write(folder / "rank-1.json.gz", pipeline_trace(2, overlap_us=5.0))
    code, out, err = run_cli(capsys, "report", str(folder))
    assert code == 0, err
    assert "across ranks" in out and out.count("Devices: 2 devices") == 2


def test_docs_phases_tables_are_generated_from_the_code() -> None:
    from qtrace.analyzers.phase_rules import rules_markdown, vocabulary_markdown

    doc = (REPO / "docs" / "phases.md").read_text()
    assert vocabulary_markdown() in doc, "docs/phases.md vocabulary is stale: regenerate it (see its first lines)"
    assert rules_markdown() in doc, "docs/phases.md rule table is stale: regenerate it (see its first lines)"
