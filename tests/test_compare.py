"""`qtrace compare`: the explanation balances on the real H100 traces, units, latency sources, CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _cli import run_cli
from _synthetic_trace import stepped_trace, write_trace

from qtrace.analyzers.compare import compare_reports, pass_count, run_labels
from qtrace.analyzers.phase_rules import PHASES
from qtrace.analyzers.trace_analysis import analyze_target, analyze_trace, load_target
from qtrace.errors import QtraceError
from qtrace.tracefile.kineto import load_trace

TRACES = Path(__file__).resolve().parent.parent / "traces"
INT8 = TRACES / "h100_qwen05-shape_int8_bs1_seq128.json.gz"
FP16 = TRACES / "h100_qwen05-shape-outliers_fp16_bs1_seq128.json.gz"
NF4 = TRACES / "h100_modernbert-shape-outliers_nf4_bs1_seq128.json.gz"
DELTA_KEYS = ("gpu_time_us_delta", "cpu_time_us_delta", "launches_delta", "host_syncs_delta", "host_sync_us_delta",
              "exposed_us_delta")
# Un-profiled medians from ../shared/traces/README.md (batch 1, CUDA events, median of 30).
MEASURED = {"fp16": 15.6, "int8": 57.2}


@pytest.fixture(scope="module")
def reports():
    return {name: analyze_trace(load_trace(p)) for name, p in (("fp16", FP16), ("int8", INT8), ("nf4", NF4))}


@pytest.fixture(scope="module")
def comparison(reports):
    return compare_reports([reports["fp16"], reports["int8"], reports["nf4"]])


@pytest.fixture(scope="module")
def as_json(comparison):
    return json.loads(json.dumps(comparison.to_dict()))


def _make_run_folder(root, per_iter: dict[str, dict]):
    """A `qtrace profile`-style run folder around the shared fp16 and int8 traces, with measured latencies."""
    precisions = {}
    for prec, src in (("fp16", FP16), ("int8", INT8)):
        (root / prec).mkdir()
        shutil.copy(src, root / prec / "trace.json.gz")
        precisions[prec] = {"status": "ok", "trace": f"{prec}/trace.json.gz",
                            "latency_ms": {"per_iter": per_iter[prec]}}
    (root / "run.json").write_text(json.dumps({"settings": {}, "precisions": precisions}))
    return root


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    return _make_run_folder(tmp_path_factory.mktemp("run"),
                            {p: {"median": m, "p90": m * 1.02} for p, m in MEASURED.items()})


def _by_run(as_json: dict) -> dict[str, dict]:
    return {r["run"]: r for r in as_json["runs"]}


@pytest.mark.parametrize("other", ["int8", "nf4"])
def test_gpu_time_deltas_add_up_to_the_gpu_time_delta(reports, as_json, other):
    runs = _by_run(as_json)
    entries = [d for d in as_json["deltas"] if d["run"] == other]
    assert entries and {d["phase"] for d in entries} <= set(PHASES)  # phases only: no total row
    total = sum(d["gpu_time_us_delta"] for d in entries)
    assert total == pytest.approx(runs[other]["gpu_time_us"] - runs["fp16"]["gpu_time_us"], rel=1e-12, abs=1e-6)
    # The same windows hold 3 passes each: figures stay the report's window totals.
    assert as_json["unit"] == "window"
    assert total == pytest.approx(reports[other].gpu_time_us - reports["fp16"].gpu_time_us, rel=1e-12, abs=1e-6)


@pytest.mark.parametrize("other", ["int8", "nf4"])
def test_idle_busy_and_span_deltas_balance(reports, comparison, other):
    comp = comparison.comparison_for(other)
    d = comparison.deltas[comparison.deltas["run"] == other]
    hd = comp.host_delta
    assert d["exposed_us_delta"].sum() + hd["idle_unattributed_us_delta"] == pytest.approx(hd["gpu_idle_us_delta"],
                                                                                           abs=1e-6)
    assert abs(hd["idle_unattributed_us_delta"]) < 1e-6  # host.py splits all idle time over phases
    assert hd["gpu_busy_us_delta"] + hd["gpu_idle_us_delta"] == pytest.approx(hd["span_us_delta"], abs=1e-6)
    assert hd["gpu_busy_us_delta"] == pytest.approx(d["gpu_time_us_delta"].sum() - hd["overlap_us_delta"], abs=1e-6)
    base, run = reports["fp16"].host, reports[other].host
    assert hd["span_us_delta"] == pytest.approx(run["span_us"] - base["span_us"], abs=1e-6)
    assert hd["syncs_delta"] == run["syncs"] - base["syncs"]
    assert hd["launches_delta"] == run["launches"] - base["launches"]


@pytest.mark.parametrize("other", ["int8", "nf4"])
def test_trace_waterfall_ends_exactly_at_the_run_span(comparison, other):
    comp = comparison.comparison_for(other)
    steps = comp.trace_waterfall
    assert steps[0]["kind"] == "start" and steps[-1]["kind"] == "end"
    assert steps[0]["value_us"] + sum(s["value_us"] for s in steps[1:-1]) == pytest.approx(steps[-1]["value_us"],
                                                                                           abs=1e-6)
    # Per pass: 3 passes each, so the waterfall runs from the per-pass spans.
    assert comp.waterfall_unit == "pass"
    assert steps[0]["value_us"] == pytest.approx(comparison.baseline.host["span_us"] / 3)


def test_int8_slowdown_is_mostly_host_side(comparison):
    comp = comparison.comparison_for("int8")
    gpu = sum(s["value_us"] for s in comp.trace_waterfall if s["kind"] in ("gpu", "overlap"))
    host = sum(s["value_us"] for s in comp.trace_waterfall if s["kind"] in ("host", "unattributed"))
    assert host > 10 * gpu > 0
    assert comp.host_delta["syncs_delta"] == 1512  # per pass 336 cudaStreamSynchronize + 168 blocking copies, x3
    assert comp.latency_ratio == pytest.approx(494.74 / 150.96, rel=1e-3)
    assert comp.latency_source.startswith("trace:")


def test_json_schema(as_json):
    assert as_json["baseline"] == str(FP16)
    assert [r["run"] for r in as_json["runs"]] == ["fp16", "int8", "nf4"]
    for r in as_json["runs"]:
        for key in ("source", "precision", "gpu_time_us", "latency", "phases", "host", "latency_ratio", "passes"):
            assert key in r, key
        assert r["passes"] == 3 and r["passes_source"].startswith("inferred")
        assert sum(p["gpu_time_us"] for p in r["phases"]) == pytest.approx(r["gpu_time_us"], rel=1e-12)
    runs = _by_run(as_json)
    assert runs["fp16"]["latency_ratio"] == 1.0 and runs["fp16"]["is_baseline"]
    for other in ("int8", "nf4"):
        r = runs[other]
        assert set(r["host_delta"]) >= {"span_us_delta", "gpu_busy_us_delta", "gpu_idle_us_delta", "syncs_delta",
                                        "launches_delta"}
        assert r["latency_source"] and r["latency_ratio"] > 0
        assert r["waterfall"]["trace"] and r["waterfall"]["measured"] is None
    for d in as_json["deltas"]:
        assert set(DELTA_KEYS) <= set(d) and d["run"] in ("int8", "nf4") and d["phase"] in PHASES


def test_memory_deltas_add_up_to_the_peak_delta(comparison, as_json):
    if "memory_deltas" not in as_json:
        pytest.skip("memory analyzer (issue 4) not present")
    for other in ("int8", "nf4"):
        rows = [m for m in as_json["memory_deltas"]["at_peak"] if m["run"] == other]
        peak = _by_run(as_json)[other]["memory_delta"]["peak_allocated_bytes_delta"]
        assert sum(m["bytes_delta"] for m in rows) == pytest.approx(peak, abs=0.5)


def test_memory_deltas_absent_without_memory_section(reports):
    a, b = reports["fp16"], reports["int8"]
    saved = (a.extra.pop("memory", None), b.extra.pop("memory", None))
    try:
        c = compare_reports([a, b])
        assert c.memory_deltas == {} and "memory_deltas" not in c.to_dict()
    finally:
        for r, m in zip((a, b), saved, strict=True):
            if m is not None:
                r.extra["memory"] = m


def test_measured_latency_from_a_run_folder(run_folder):
    reports = analyze_target(load_target(run_folder))
    c = compare_reports(reports)
    comp = c.comparison_for("int8")
    assert comp.latency_ratio == pytest.approx(57.2 / 15.6)
    assert comp.latency_source.startswith("measured")
    mw = comp.measured_waterfall
    assert mw[0]["value_us"] == pytest.approx(15600) and mw[-1]["value_us"] == pytest.approx(57200)
    assert mw[0]["value_us"] + sum(s["value_us"] for s in mw[1:-1]) == pytest.approx(mw[-1]["value_us"], abs=1e-6)
    # GPU bars as traced; host bars scaled down by the profiler's inflation of host time.
    gpu_trace = [s["value_us"] for s in comp.trace_waterfall if s["kind"] == "gpu"]
    assert [s["value_us"] for s in mw if s["kind"] == "gpu"] == gpu_trace
    for fig in (comp.baseline, comp.run):
        assert fig.inflation == pytest.approx(fig.host["span_us"] / 3 / 1000 / fig.measured_ms)
        assert 2 < fig.inflation < 4


def test_baseline_by_name_and_index(reports):
    rs = [reports["fp16"], reports["int8"]]
    assert compare_reports(rs, baseline="int8").baseline.label == "int8"
    assert compare_reports(rs, baseline=1).baseline.label == "int8"
    assert compare_reports(rs, baseline=INT8.name).baseline.label == "int8"
    with pytest.raises(QtraceError, match="no such run"):
        compare_reports(rs, baseline="bf16")
    with pytest.raises(QtraceError, match="out of range"):
        compare_reports(rs, baseline="5")


def test_labels_are_unique(reports):
    assert run_labels([reports["int8"], reports["int8"]]) == ["int8#1", "int8#2"]


def test_different_step_counts_compare_per_pass(tmp_path):
    a = analyze_trace(load_trace(write_trace(stepped_trace(2), tmp_path / "a_trace.json.gz")))
    b = analyze_trace(load_trace(write_trace(stepped_trace(4, gemm_us=20.0), tmp_path / "b_trace.json.gz")))
    assert pass_count(a) == (2, "ProfilerStep markers") and pass_count(b)[0] == 4
    c = compare_reports([a, b])
    assert c.unit == "pass"
    d = c.deltas
    # Per pass the GEMM got 10 us slower; nothing else changed.
    gemm = d[d["phase"] == "dense.gemm"]["gpu_time_us_delta"].sum()
    assert gemm == pytest.approx(10.0)
    assert d["gpu_time_us_delta"].sum() == pytest.approx(b.gpu_time_us / 4 - a.gpu_time_us / 2)
    comp = c.comparisons[0]
    assert comp.latency_source.startswith("trace: median ProfilerStep")
    assert comp.host_delta["syncs_delta"] == 0


def test_equal_step_counts_keep_window_totals(tmp_path):
    a = analyze_trace(load_trace(write_trace(stepped_trace(3), tmp_path / "a_trace.json.gz")))
    b = analyze_trace(load_trace(write_trace(stepped_trace(3, gemm_us=20.0), tmp_path / "b_trace.json.gz")))
    c = compare_reports([a, b])
    assert c.unit == "window"
    assert c.deltas["gpu_time_us_delta"].sum() == pytest.approx(30.0)


# --- CLI -------------------------------------------------------------------------------------------



def test_cli_json_and_csv(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "compare", str(FP16), str(NF4), "--format", "json")
    assert code == 0
    obj = json.loads(out)
    assert obj["baseline"] == str(FP16)
    runs = {r["run"]: r for r in obj["runs"]}
    total = sum(d["gpu_time_us_delta"] for d in obj["deltas"] if d["run"] == "nf4")
    assert total == pytest.approx(runs["nf4"]["gpu_time_us"] - runs["fp16"]["gpu_time_us"], abs=1e-6)


def test_cli_run_folder_table_and_out(capsys, run_folder, tmp_path):
    out_dir = tmp_path / "cmp"
    code, out, err = run_cli(capsys, "compare", str(run_folder), "--out", str(out_dir))
    assert code == 0, err
    assert "int8 vs fp16: x3.67 the latency (measured" in out
    for name in ("report.md", "report.html", "compare.json", "deltas.csv", "runs.csv",
                 "fp16.annotated_trace.json.gz", "int8.annotated_trace.json.gz", "charts/waterfall_int8.png"):
        assert (out_dir / name).is_file(), name
    # --out refuses a folder that holds results, unless --force.
    code, _, err = run_cli(capsys, "compare", str(run_folder), "--out", str(out_dir))
    assert code == 2 and err.count("\n") == 1 and "--force" in err


@pytest.mark.parametrize("bad", ["missing", "not_json", "one_run"])
def test_cli_bad_input_is_one_line_exit_2(capsys, tmp_path, bad):
    if bad == "missing":
        args = [str(FP16), str(tmp_path / "nope.json.gz")]
    elif bad == "not_json":
        junk = tmp_path / "junk_trace.json"
        junk.write_text("this is not json")
        args = [str(NF4), str(junk)]
    else:
        args = [str(NF4)]
    code, out, err = run_cli(capsys, "compare", *args)
    assert code == 2
    assert err.startswith("qtrace: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and out == ""


def test_measured_waterfall_removes_profiler_cost_per_recorded_event(run_folder):
    from qtrace.analyzers.compare import host_events, profiler_cost_per_event_us

    reports = analyze_target(load_target(run_folder))
    comp = compare_reports(reports).comparison_for("int8")
    base, run = comp.baseline, comp.run
    # The baseline's profiler cost per recorded host event, recomputed from its parts.
    events_per_pass = host_events(base.report.trace).sum() / 3
    cost = (base.trace_ms - base.measured_ms) * 1000 / events_per_pass
    assert profiler_cost_per_event_us(base) == pytest.approx(cost)
    assert cost > 0
    mw = comp.measured_waterfall
    d_events = (host_events(run.report.trace).subtract(host_events(base.report.trace), fill_value=0)) / 3
    for step in mw:
        if step["kind"] == "host":
            assert step["value_us"] == pytest.approx(step["traced_us"] - cost * d_events.get(step["phase"], 0.0))
    residual = [s for s in mw if s["kind"] == "residual"]
    assert len(residual) == 1
    assert mw[0]["value_us"] + sum(s["value_us"] for s in mw[1:-1]) == pytest.approx(mw[-1]["value_us"])
    assert "unexplained" in comp.measured_note


def test_residual_is_read_against_the_timed_passes_spread(run_folder, tmp_path):
    # Without a min, the spread is unknown and the note makes no claim about it.
    comp = compare_reports(analyze_target(load_target(run_folder))).comparison_for("int8")
    assert comp.run.measured_spread_ms is None and "spread" not in comp.measured_note
    residual_ms = next(s["value_us"] for s in comp.measured_waterfall if s["kind"] == "residual") / 1000
    assert abs(residual_ms) > 0.5

    def reading(spread_each_ms: float, name: str) -> tuple[str, dict]:
        per_iter = {p: {"median": m, "p90": m + spread_each_ms / 2, "min": m - spread_each_ms / 2}
                    for p, m in MEASURED.items()}
        (tmp_path / name).mkdir()
        c = compare_reports(analyze_target(load_target(_make_run_folder(tmp_path / name, per_iter))))
        return c.comparison_for("int8").measured_note, _by_run(json.loads(json.dumps(c.to_dict())))

    # The residual itself does not depend on p90/min (medians are unchanged).
    wide, runs = reading(abs(residual_ms), "wide")  # both runs together spread 2x the residual
    assert "within the timed passes' own spread" in wide and f"{2 * abs(residual_ms):.2f} ms" in wide
    assert runs["int8"]["latency"]["measured_spread_ms"] == pytest.approx(abs(residual_ms))
    narrow, _ = reading(abs(residual_ms) / 4, "narrow")
    assert "exceeds the timed passes' own spread" in narrow


def test_energy_per_example_from_run_json_in_runs_and_table(tmp_path):
    root = tmp_path / "run"
    precisions = {}
    joules = {"fp16": 3.0, "int8": 12.0}
    for prec, src in (("fp16", FP16), ("int8", INT8)):
        (root / prec).mkdir(parents=True)
        shutil.copy(src, root / prec / "trace.json.gz")
        precisions[prec] = {"status": "ok", "trace": f"{prec}/trace.json.gz",
                            "latency_ms": {"per_iter": {"median": MEASURED[prec]}},
                            "energy": {"joules_per_example": joules[prec], "source": "nvml_total_energy"}}
    (root / "run.json").write_text(json.dumps({"settings": {}, "precisions": precisions}))
    out = subprocess.run([sys.executable, "-m", "qtrace", "compare", str(root), "--format", "json"],
                         capture_output=True, text=True, check=True)
    runs = _by_run(json.loads(out.stdout))
    assert runs["int8"]["energy"]["joules_per_example"] == 12.0
    table = subprocess.run([sys.executable, "-m", "qtrace", "compare", str(root)], capture_output=True, text=True,
                           check=True).stdout
    assert "J/example" in table and "12.000 (x4.00)" in table
