"""The annotated trace: valid JSON, phase args on every GPU event, nested phase slices, counters,
re-loadable by qtrace and by HTA; `qtrace view`."""

from __future__ import annotations

import gzip
import logging
from collections import Counter
from pathlib import Path

import msgspec
import pytest
from _cli import run_cli
from _synthetic_trace import stepped_trace, write_trace

from qtrace.analyzers.attribution import gpu_phases
from qtrace.analyzers.phase_rules import PHASES, group_of
from qtrace.analyzers.phases import gpu_time_us, phase_table
from qtrace.reports.perfetto import PHASE_CAT, PROCESS_NAME, write_annotated_trace
from qtrace.tracefile.kineto import load_trace

TRACES = Path(__file__).resolve().parent.parent / "traces"
INT8 = TRACES / "h100_qwen05-shape_int8_bs1_seq128.json.gz"
NF4 = TRACES / "h100_modernbert-shape-outliers_nf4_bs1_seq128.json.gz"


def _load_json(path: Path) -> dict:
    # Any strict JSON parser must accept the file; msgspec is the fast one.
    with gzip.open(path, "rb") as fh:
        return msgspec.json.decode(fh.read())


@pytest.fixture(scope="module", params=[INT8, NF4], ids=["int8", "nf4"])
def annotated(request, tmp_path_factory):
    src = request.param
    trace = load_trace(src)
    out = write_annotated_trace(trace, tmp_path_factory.mktemp("ann") / "annotated_trace.json.gz")
    return {"src": src, "trace": trace, "path": out, "json": _load_json(out), "orig": _load_json(src)}


def _ours(doc: dict) -> list[dict]:
    return [e for e in doc["traceEvents"] if e.get("cat") == PHASE_CAT]


def test_keeps_every_original_event_and_key(annotated):
    orig, new = annotated["orig"], annotated["json"]
    assert set(orig) <= set(new) and new["distributedInfo"] == {"rank": 0}
    n_orig = len(orig["traceEvents"])
    # The original events come first, in order, unchanged except for the added phase args.
    for a, b in zip(orig["traceEvents"], new["traceEvents"][:n_orig], strict=True):
        b_args = {k: v for k, v in (b.get("args") or {}).items() if not k.startswith("qtrace_")}
        assert {k: v for k, v in a.items() if k != "args"} == {k: v for k, v in b.items() if k != "args"}
        assert (a.get("args") or {}) == b_args
    profiler_steps = [e for e in orig["traceEvents"] if str(e.get("name", "")).startswith("ProfilerStep#")]
    assert len([e for e in new["traceEvents"] if str(e.get("name", "")).startswith("ProfilerStep#")]) == len(
        profiler_steps)


def test_every_gpu_event_carries_its_phase(annotated):
    gpu_events = [e for e in annotated["json"]["traceEvents"]
                  if e.get("ph") == "X" and e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
    expected = gpu_phases(annotated["trace"])
    assert len(gpu_events) == len(expected)
    assert [e["args"]["qtrace_phase"] for e in gpu_events] == expected["phase"].tolist()
    for e in gpu_events:
        assert e["args"]["qtrace_phase"] in PHASES
        assert e["args"]["qtrace_group"] == group_of(e["args"]["qtrace_phase"])


def test_phase_track_is_named_and_slices_nest(annotated):
    doc = annotated["json"]
    meta = [e for e in doc["traceEvents"] if e.get("ph") == "M"]
    ours = [e for e in meta if e["name"] == "process_name" and e["args"]["name"] == PROCESS_NAME]
    assert len(ours) == 1
    pid = ours[0]["pid"]
    assert not any(e.get("pid") == pid for e in annotated["orig"]["traceEvents"])  # a pid of its own
    thread_names = {e["tid"]: e["args"]["name"] for e in meta if e["pid"] == pid and e["name"] == "thread_name"}
    slices = _ours(doc)
    assert slices and {e["tid"] for e in slices} <= set(thread_names)
    assert {e["pid"] for e in slices} == {pid}
    for tid in {e["tid"] for e in slices}:
        # Bounds on the 1/8 us grid convert to integer ns exactly, as Perfetto does (ts * 1000).
        spans = []
        for e in (s for s in slices if s["tid"] == tid):
            start, end = e["ts"] * 1000, (e["ts"] + e["dur"]) * 1000
            assert start == int(start) and end == int(end) and end > start
            spans.append((int(start), int(end), e["args"].get("level") == "group"))
        spans.sort(key=lambda s: (s[0], -s[1]))
        stack: list[int] = []
        for start, end, _ in spans:
            while stack and stack[-1] <= start:
                stack.pop()
            assert not stack or end <= stack[-1], "slice overlaps its neighbour without nesting"
            stack.append(end)
            assert len(stack) <= 2  # group > phase
    for e in slices:
        assert e["name"] in PHASES or e["args"].get("level") == "group"


def test_allocator_counters(annotated):
    counters = [e for e in annotated["json"]["traceEvents"] if e.get("ph") == "C"]
    mem = [e for e in annotated["orig"]["traceEvents"] if e.get("name") == "[memory]"]
    assert len(counters) == len([e for e in mem if "Total Allocated" in e["args"]])
    cuda = [e for e in counters if e["name"].startswith("CUDA allocator")]
    assert max(e["args"]["allocated_bytes"] for e in cuda) == max(
        e["args"]["Total Allocated"] for e in mem if e["args"].get("Device Type") == 1)
    assert all(isinstance(e["args"]["reserved_bytes"], int) for e in counters)


def test_reloads_through_qtrace_with_the_same_figures(annotated):
    again = load_trace(annotated["path"])
    assert gpu_time_us(again) == pytest.approx(gpu_time_us(annotated["trace"]), rel=1e-12)
    a, b = phase_table(annotated["trace"]), phase_table(again)
    assert a["phase"].tolist() == b["phase"].tolist()
    for col in ("gpu_time_us", "launches", "host_syncs", "cpu_time_us"):
        assert a[col].tolist() == pytest.approx(b[col].tolist(), rel=1e-9), col


def test_reloads_through_hta(annotated):
    # HTA's own temporal breakdown asserts on the fp16/nf4 traces (its µs rounding; see
    # tests/test_hta_crosscheck.py), so the int8 one carries this check.
    hta = pytest.importorskip("hta.trace_analysis")
    logging.getLogger("hta").setLevel(logging.ERROR)
    analysis = hta.TraceAnalysis(trace_dir=str(annotated["path"].parent), trace_files={0: annotated["path"].name})
    if annotated["src"] != INT8:
        # HTA's temporal breakdown asserts on the fp16/nf4 traces by itself (its µs rounding; see
        # tests/test_hta_crosscheck.py): here HTA must still parse the file and break its kernels down.
        kernels = analysis.get_gpu_kernel_breakdown(visualize=False)[1]
        assert len(kernels) > 0
        return
    row = analysis.get_temporal_breakdown(visualize=False).iloc[0]
    assert row["compute_time(us)"] > 0
    # Our slices and counters must not change what HTA sees on the GPU.
    crosscheck = pytest.importorskip("qtrace.analyzers.crosscheck")
    ours = crosscheck.hta_convention(annotated["trace"])
    assert row["compute_time(us)"] + row["non_compute_time(us)"] == pytest.approx(ours["busy_us"], abs=0.5)
    assert row["idle_time(us)"] == pytest.approx(ours["idle_us"], abs=0.5)


def test_step_markers_kept_and_distributed_info_added(tmp_path):
    src = write_trace(stepped_trace(3), tmp_path / "steps_trace.json.gz")
    trace = load_trace(src)
    out = write_annotated_trace(trace, tmp_path / "out" / "annotated_trace.json.gz")
    doc = _load_json(out)
    assert doc["distributedInfo"] == {"rank": 0}
    names = Counter(e.get("name") for e in doc["traceEvents"])
    assert all(names[f"ProfilerStep#{i}"] == 1 for i in range(3))
    again = load_trace(out)
    assert len(again.ops[again.ops["name"].str.startswith("ProfilerStep#")]) == 3
    host_slices = [e for e in _ours(doc) if e["tid"] == 2 and "level" not in e["args"]]
    assert {e["name"] for e in host_slices} >= {"dense.gemm", "elementwise"}



def test_view_prints_where_and_how(capsys, annotated):
    for target in (annotated["path"], annotated["path"].parent):
        code, out, _ = run_cli(capsys, "view", str(target))
        assert code == 0
        assert str(annotated["path"].resolve()) in out
        assert "ui.perfetto.dev" in out and "chrome://tracing" in out


@pytest.mark.parametrize("what", ["missing", "empty_folder"])
def test_view_nothing_there_is_one_line(capsys, tmp_path, what):
    target = tmp_path / "nope" if what == "missing" else tmp_path
    code, out, err = run_cli(capsys, "view", str(target))
    assert code == 2 and out == ""
    assert err.startswith("qtrace: error: ") and err.count("\n") == 1
