"""Lean traces (CUDA activity only): alignment with the full trace, per-phase timing, compare.

Synthetic pairs are built here on a 1/8 µs grid (exact in binary, so sums can be compared with
==); real pairs are made from a committed GPU trace by dropping its host ranges, which is what a
CUDA-only profiler leaves of the same work (a real lean + full pair test: `lean_timing_files`).
"""

from __future__ import annotations

import gzip
import json
import math
import shutil
from pathlib import Path
from typing import Any

import msgspec
import pytest

from qtrace.analyzers.attribution import gpu_phases
from qtrace.analyzers.compare import EXPLAIN_COST, EXPLAIN_CPU, EXPLAIN_LEAN, compare_reports
from qtrace.analyzers.lean_alignment import UNMATCHED, align
from qtrace.analyzers.lean_steps import sync_steps
from qtrace.analyzers.lean_timing import _split_pass, lean_timing, lean_timing_files
from qtrace.analyzers.trace_analysis import analyze_target, load_target
from qtrace.tracefile.kineto import load_trace

TRACES = Path(__file__).resolve().parent.parent / "traces"
SEED_RUN = TRACES / "seed" / "qwen_bs1"
BASE = 7_000_000_000.0
STEP = 100.0
PID, TID = 11, 11

# One step of the synthetic model: (host op, kernel, stream). Phases come from the real rules.
WORK = [("bitsandbytes::int8_vectorwise_quant", "kInt8VectorQuant", 7), ("aten::mm", "gemm_kernel", 7),
        ("aten::add", "add_kernel", 7)]


def _x(cat: str, name: str, ts: float, dur: float, pid: Any = PID, tid: Any = TID, **args: Any) -> dict:
    return {"ph": "X", "cat": cat, "name": name, "pid": pid, "tid": tid, "ts": ts, "dur": dur, "args": args}


def _kernel(name: str, ts: float, dur: float, corr: int, stream: int = 7) -> dict:
    return _x("kernel", name, ts, dur, pid=0, tid=stream, device=0, stream=stream, correlation=corr)


def lean_step_events(t: float, corr: int, extra: bool = False) -> tuple[list[dict], int]:
    """One lean step, figures worked out by hand in test_host_and_gpu_parts_by_hand (offsets from t).

    getDevice [0,1] -> launch A [1,3] -> kA [4,14]; launch B [5,7] -> kB [14,18]; a stream sync
    [8,19]; launch C [25,27] -> kC [29,31]; the step's closing device sync [28,32.5].
    """
    ev = [_x("cuda_runtime", "cudaGetDevice", t, 1.0, correlation=corr),
          _x("cuda_runtime", "cudaLaunchKernel", t + 1, 2.0, correlation=corr + 1),
          _kernel(WORK[0][1], t + 4, 10.0, corr + 1),
          _x("cuda_runtime", "cudaLaunchKernel", t + 5, 2.0, correlation=corr + 2),
          _kernel(WORK[1][1], t + 14, 4.0, corr + 2),
          _x("cuda_runtime", "cudaStreamSynchronize", t + 8, 11.0, correlation=corr + 3),
          _x("cuda_runtime", "cudaLaunchKernel", t + 25, 2.0, correlation=corr + 4),
          _kernel(WORK[2][1], t + 29, 2.0, corr + 4),
          _x("cuda_runtime", "cudaDeviceSynchronize", t + 28, 4.5, correlation=corr + 5)]
    if extra:  # a kernel the full trace does not have, between B and C (launched during the idle gap)
        ev += [_x("cuda_runtime", "cudaLaunchKernel", t + 20, 1.0, correlation=corr + 6),
               _kernel("extra_kernel", t + 21.5, 0.5, corr + 6)]
    return ev, corr + 7


def lean_trace(n: int, extra_in: int | None = None) -> dict:
    ev: list[dict] = []
    corr = 1
    for k in range(n):
        step, corr = lean_step_events(BASE + k * STEP, corr, extra=k == extra_in)
        ev += step
    # the profiler's own sync when it stops: no GPU work, so no step
    ev.append(_x("cuda_runtime", "cudaDeviceSynchronize", BASE + n * STEP, 1.0, correlation=corr))
    return {"schemaVersion": 1, "traceEvents": ev, "qtrace": {"precision": "int8", "profile_steps": n, "lean": True}}


def full_trace(n: int, drop: tuple[int, str] | None = None) -> dict:
    """The same work under the full profiler: host ops around each launch, 3x slower host, markers."""
    ev: list[dict] = []
    corr, ext = 1, 1
    for k in range(n):
        t = BASE + k * 3 * STEP
        ev.append(_x("user_annotation", f"ProfilerStep#{k + 1}", t, 3 * STEP - 1))
        for i, (op, kernel, stream) in enumerate(WORK):
            if drop == (k, kernel):
                continue
            o = t + 1 + i * 60
            ev.append(_x("cpu_op", op, o, 40.0, **{"External id": ext}))
            ev.append(_x("cuda_runtime", "cudaLaunchKernel", o + 10, 5.0, correlation=corr, **{"External id": ext}))
            ev.append(_kernel(kernel, o + 20, 10.0, corr, stream))
            corr, ext = corr + 1, ext + 1
        ev.append(_x("cuda_runtime", "cudaDeviceSynchronize", t + 200, 5.0, correlation=corr))
        corr += 1
    return {"schemaVersion": 1, "traceEvents": ev, "qtrace": {"precision": "int8", "profile_steps": n}}


def write(obj: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as fh:
        json.dump(obj, fh)
    return path


def pair(tmp_path: Path, n: int = 2, extra_in: int | None = None, drop: tuple[int, str] | None = None):
    full = load_trace(write(full_trace(n, drop), tmp_path / "int8" / "trace.json.gz"))
    lean = load_trace(write(lean_trace(n, extra_in), tmp_path / "int8" / "lean_trace.json.gz"))
    return full, lean


def _name_phase(full) -> dict[str, str]:
    gp = gpu_phases(full)
    return dict(zip(gp["name"].astype(str), gp["phase"], strict=True))


# --- steps and alignment ----------------------------------------------------------------------


def test_lean_steps_cut_at_device_syncs_and_drop_the_profilers_own(tmp_path):
    _, lean = pair(tmp_path, n=3)
    steps = sync_steps(lean, expected=3)
    assert steps.n == 3 and steps.source == "cudaDeviceSynchronize boundaries" and not steps.notes
    assert sorted(set(steps.gpu.tolist())) == [0, 1, 2]
    assert steps.runtime[-1] == -1  # the profiler's stop sync belongs to no step
    assert (steps.runtime[:-1] >= 0).all()


def test_alignment_carries_the_full_traces_phases(tmp_path):
    full, lean = pair(tmp_path)
    names = _name_phase(full)
    assert len(set(names.values())) >= 2  # the test would not see a wrong carry-over otherwise
    a = align(full, lean)
    assert a.coverage == 1.0 and a.unmatched_lean == 0 and a.unmatched_full == 0
    expect = lean.gpu["name"].astype(str).map(names)
    assert a.phases["phase"].tolist() == expect.tolist()
    # each lean event matched the full event of the same step (the full trace's k-th marker)
    full_step = gpu_phases(full)["step"]
    assert (full_step.loc[a.phases["full_row"]].to_numpy() - 1 == a.phases["step"].to_numpy()).all()


def test_extra_and_missing_kernels_are_reported_not_shifted(tmp_path):
    full, lean = pair(tmp_path, n=2, extra_in=1, drop=(0, "gemm_kernel"))
    names = _name_phase(full)
    a = align(full, lean)
    ph = a.phases
    extra = ph["name"] == "extra_kernel"
    missing = (ph["step"] == 0) & (ph["name"] == "gemm_kernel")
    assert (ph.loc[extra | missing, "phase"] == UNMATCHED).all()
    assert a.unmatched_lean == 2 and a.unmatched_full == 0
    ok = ~(extra | missing)
    assert (ph.loc[ok, "phase"] == ph.loc[ok, "name"].map(names)).all()  # the rest kept its twin
    total = float(ph["dur"].sum())
    assert a.coverage == pytest.approx((total - 0.5 - 4.0) / total)
    assert {n for n, _ in a.unmatched_names} == {"extra_kernel", "gemm_kernel"}
    assert any("no twin" in n for n in a.notes)


def test_step_count_mismatch_aligns_the_whole_window_and_says_so(tmp_path):
    full = load_trace(write(full_trace(2), tmp_path / "f.json.gz"))
    lean = load_trace(write(lean_trace(3), tmp_path / "l.json.gz"))
    a = align(full, lean, expected_steps=3)
    assert any("whole window" in n for n in a.notes)
    assert a.unmatched_lean == 3  # the third step's kernels have no twin
    assert a.coverage == pytest.approx(2 / 3)


def test_steps_not_found_time_the_window_as_the_expected_passes(tmp_path):
    obj = lean_trace(2)
    obj["traceEvents"] = [e for e in obj["traceEvents"] if e["name"] != "cudaDeviceSynchronize"]
    lean = load_trace(write(obj, tmp_path / "l.json.gz"))
    full = load_trace(write(full_trace(2), tmp_path / "f.json.gz"))
    t = lean_timing(lean, align(full, lean, expected_steps=2))
    assert t.alignment.lean_steps.source == "whole window" and t.n == 2
    assert any("not the 2 profiled steps" in n for n in t.notes)
    assert t.per_pass()["gpu_time_us"].sum() == 16.0  # the window's 32 µs of kernels over 2 passes
    span = t.passes["span_us"].iloc[0]
    assert t.span_ms() == pytest.approx(span / 2 / 1000.0)


# --- timing -----------------------------------------------------------------------------------


def test_host_and_gpu_parts_by_hand(tmp_path):
    full, lean = pair(tmp_path, n=2)
    names = _name_phase(full)
    a_ph, b_ph, c_ph = (names[k] for _, k, _ in WORK)
    t = lean_timing(lean, align(full, lean))
    assert t.n == 2
    assert t.passes["span_us"].tolist() == [32.5, 32.5]
    per = t.per_pass()
    # GPU: kA 10, kB 4, kC 2. Host (module doc rules): [0,1) getDevice -> next launch (A), [1,3) launch A,
    # [3,4) heading to launch B; [18,19) stream sync in progress (phase of the last launch: B);
    # [19,27) heading to launch C; [27,29) the device sync (last launch: C); [31,32.5) still in it.
    expect_gpu = {a_ph: 10.0, b_ph: 4.0, c_ph: 2.0}
    expect_host = {a_ph: 3.0, b_ph: 2.0, c_ph: 11.5}
    got_gpu = per["gpu_busy_us"].groupby(level=0).sum().to_dict()
    got_host = per["host_us"].groupby(level=0).sum().to_dict()
    assert len({a_ph, b_ph, c_ph}) == 3  # three phases, so a charge to the wrong one shows
    assert got_gpu == expect_gpu and got_host == expect_host
    assert sum(got_gpu.values()) == 16.0 and sum(got_host.values()) == 16.5
    assert per.loc[b_ph, "syncs"] >= 1 and per["launches"].sum() == 3
    assert per.loc[c_ph, "sync_us"] >= 4.5  # the closing device sync is charged to C


def test_parts_add_up_exactly_to_each_pass_span(tmp_path):
    full, lean = pair(tmp_path, n=3, extra_in=2)
    t = lean_timing(lean, align(full, lean))
    for k, row in t.passes.set_index("pass").iterrows():
        ph = t.phases[t.phases["pass"] == k]
        assert ph["gpu_busy_us"].sum() + ph["host_us"].sum() == row["span_us"]  # exact on the 1/8 µs grid
        assert ph["gpu_time_us"].sum() - row["overlap_us"] == row["gpu_busy_us"]


def test_concurrent_kernels_split_busy_time_and_still_add_up():
    import numpy as np

    # two streams: [0,8) and [4,12) overlap on [4,8); one host call ending at 2, one at 16
    gpu, host, busy = _split_pass(0.0, 16.0, np.array([0.0, 4.0]), np.array([8.0, 12.0]),
                                  np.array(["a", "b"], dtype=object), np.array([2.0, 16.0]),
                                  np.array(["h1", "h2"], dtype=object))
    assert gpu == {"a": 6.0, "b": 6.0} and busy == 12.0
    assert host == {"h2": 4.0}
    assert sum(gpu.values()) + sum(host.values()) == 16.0


def _strip_host(src: Path, dest: Path) -> Path:
    """What a CUDA-only profiler leaves of a full trace: runtime calls and GPU events, no host ranges."""
    with gzip.open(src, "rt") as fh:
        obj = json.load(fh)
    keep = {"cuda_runtime", "cuda_driver", "kernel", "gpu_memcpy", "gpu_memset"}
    obj["traceEvents"] = [e for e in obj["traceEvents"] if e.get("ph") == "M" or e.get("cat") in keep]
    return write(obj, dest)


@pytest.mark.parametrize("precision", ["int8"])
def test_real_trace_without_host_ranges_aligns_fully_and_adds_up(tmp_path, precision):
    full_path = SEED_RUN / precision / "trace.json.gz"
    lean_path = _strip_host(full_path, tmp_path / "lean.json.gz")
    t = lean_timing_files(full_path, lean_path, expected_steps=2)
    a = t.alignment
    assert a.lean_steps.source == "cudaDeviceSynchronize boundaries" and t.n == 2
    assert a.coverage == 1.0 and a.unmatched_lean == 0 and a.unmatched_full == 0
    full = load_trace(full_path)
    gp = gpu_phases(full)
    in_steps = gp[gp["step"] >= 0]
    # GPU time per phase, summed independently from the full trace, equals the lean one (same events)
    ref = in_steps.groupby("phase")["dur"].sum()
    got = t.phases.groupby("phase")["gpu_time_us"].sum()
    assert got.reindex(ref.index).to_numpy() == pytest.approx(ref.to_numpy())
    for k, row in t.passes.set_index("pass").iterrows():
        ph = t.phases[t.phases["pass"] == k]
        assert math.isclose(ph["gpu_busy_us"].sum() + ph["host_us"].sum(), row["span_us"], rel_tol=1e-12)
    assert t.phases.groupby("phase")["launches"].sum().get("int8.act_quant", 0) > 0


# --- compare ----------------------------------------------------------------------------------


def _seed_with_lean(root: Path, lean_span_scale: float | None = None) -> Path:
    """traces/seed/qwen_bs1 (fp16, int8) with a lean trace per precision (host ranges stripped)."""
    run = msgspec.json.decode((SEED_RUN / "run.json").read_bytes())
    run["precisions"] = {p: run["precisions"][p] for p in ("fp16", "int8")}
    for p in run["precisions"]:
        (root / p).mkdir(parents=True)
        shutil.copy(SEED_RUN / p / "trace.json.gz", root / p / "trace.json.gz")
        _strip_host(SEED_RUN / p / "trace.json.gz", root / p / "lean_trace.json.gz")
        run["precisions"][p]["lean_trace"] = f"{p}/lean_trace.json.gz"
        run["precisions"][p]["lean_trace_bytes"] = (root / p / "lean_trace.json.gz").stat().st_size
    (root / "run.json").write_bytes(msgspec.json.encode(run))
    return root


@pytest.fixture(scope="module")
def lean_comparison(tmp_path_factory):
    root = _seed_with_lean(tmp_path_factory.mktemp("lean_run"))
    return compare_reports(analyze_target(load_target(root))), root


def test_compare_uses_the_lean_traces_and_the_bars_end_at_the_measured_latency(lean_comparison):
    c, root = lean_comparison
    comp = c.comparisons[0]
    assert comp.explanation == EXPLAIN_LEAN
    mw = comp.measured_waterfall
    steps = sum(s["value_us"] for s in mw[1:-1])
    assert steps == pytest.approx(mw[-1]["value_us"] - mw[0]["value_us"], abs=1e-6)
    residual = next(s["value_us"] for s in mw if s["kind"] == "residual")
    explained = steps - residual
    # explained = the lean per-pass span delta, by the add-up property
    d_lean = comp.run.lean.passes["span_us"].mean() - comp.baseline.lean.passes["span_us"].mean()
    assert explained == pytest.approx(d_lean, rel=1e-9)
    d_meas = (comp.run.measured_ms - comp.baseline.measured_ms) * 1000.0
    assert comp.explained_share == pytest.approx(explained / d_meas)
    assert "lean traces" in comp.measured_note and "unexplained" in comp.measured_note


def test_compare_json_names_the_lean_trace_share_and_inflation(lean_comparison):
    c, root = lean_comparison
    out = json.loads(msgspec.json.encode(c.to_dict()))
    runs = {r["run"]: r for r in out["runs"]}
    for label in ("fp16", "int8"):
        r = runs[label]
        assert r["lean_trace"].endswith(f"{label}/lean_trace.json.gz")
        span_ms = r["lean"]["span_us"] / 1000.0
        assert r["lean_inflation"] == pytest.approx(span_ms / r["latency"]["measured_ms"])
        assert r["lean"]["alignment"]["coverage"] == 1.0
    assert runs["int8"]["explanation"] == EXPLAIN_LEAN
    assert isinstance(runs["int8"]["explained_share"], float)
    assert "explained_share" not in runs["fp16"]


def test_without_lean_traces_the_cost_model_is_the_stated_fallback():
    c = compare_reports(analyze_target(load_target(SEED_RUN)))
    for comp in c.comparisons:
        assert comp.explanation == EXPLAIN_COST
        assert comp.explained_share is not None
    out = c.to_dict()
    from qtrace.reports.compare_report import render_text

    assert "(profiler cost model (no lean trace)); fallback: no lean trace" in render_text(c, 6)
    assert all(r["lean_trace"] is None and r["lean_inflation"] is None for r in out["runs"])


def test_report_text_states_lean_inflation_and_explained_share(lean_comparison):
    from qtrace.reports.compare_report import render_text

    c, _ = lean_comparison
    text = render_text(c, 6)
    comp = c.comparisons[0]
    assert f"explained {comp.explained_share:.0%}" in text
    assert f"lean inflation {comp.baseline.label} x{comp.baseline.lean_inflation:.2f}" in text


# --- CPU runs -----------------------------------------------------------------------------------


def _cpu_run(root: Path) -> Path:
    """A CPU run folder: two traces without CUDA activity, measured latencies, lean_trace null."""
    from tests._synthetic_trace import stepped_trace

    run: dict[str, Any] = {"precisions": {}, "settings": {}, "environment": {"device_type": "cpu"}}
    for p, gemm, ms in (("fp32", 10.0, 0.05), ("int8", 30.0, 0.2)):
        obj = stepped_trace(2, gemm_us=gemm, precision=p)
        obj["traceEvents"] = [e for e in obj["traceEvents"] if e.get("cat") in ("cpu_op", "user_annotation", None)]
        write(obj, root / p / "trace.json.gz")
        run["precisions"][p] = {"status": "ok", "trace": f"{p}/trace.json.gz", "lean_trace": None,
                                "lean_note": "no lean trace: the device is a CPU",
                                "latency_ms": {"per_iter": {"median": ms, "p90": ms, "min": ms}}}
    (root / "run.json").write_bytes(msgspec.json.encode(run))
    return root


def test_cpu_runs_get_the_labelled_scaled_shares_and_no_negative_share(tmp_path):
    c = compare_reports(analyze_target(load_target(_cpu_run(tmp_path))))
    comp = c.comparisons[0]
    assert comp.explanation == EXPLAIN_CPU and comp.explained_share is None
    mw = comp.measured_waterfall
    assert all(s["kind"] in ("start", "scaled", "end") for s in mw)
    assert sum(s["value_us"] for s in mw[1:-1]) == pytest.approx(mw[-1]["value_us"] - mw[0]["value_us"])
    assert "traced share x measured" in mw[1]["label"]
    # independently: per run, each phase's self time / span x measured; the bar is the difference
    def shares(fig):
        ph = fig.report.phases.set_index("phase")["cpu_time_us"]
        span = fig.report.host["span_us"]
        out = (ph / span * fig.measured_ms * 1000.0).to_dict()
        out["no phase"] = (span - ph.sum()) / span * fig.measured_ms * 1000.0
        return out

    b, r = shares(comp.baseline), shares(comp.run)
    bars = {(s["phase"] or "no phase"): s["value_us"] for s in mw[1:-1]}
    assert {"dense.gemm", "no phase"} <= set(bars)
    for p in set(b) | set(r):
        assert bars.get(p, 0.0) == pytest.approx(r.get(p, 0.0) - b.get(p, 0.0), abs=1e-9)
    assert "no explained share" in comp.measured_note
    out = c.to_dict()
    int8 = next(r for r in out["runs"] if r["run"] == "int8")
    assert int8["explained_share"] is None and int8["lean_trace"] is None
    assert "no CUDA activity" in int8["lean_note"]
