"""Lean timing on real H200 full + lean trace pairs (traces/lean/, examples/lean/README.md).

Every figure is held against a sum taken here straight from the raw JSON, not through qtrace.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from qtrace.analyzers.lean_timing import lean_timing_files
from qtrace.analyzers.phases import phase_table
from qtrace.tracefile import load_trace

ROOT = Path(__file__).resolve().parents[1] / "traces" / "lean"
GPU_CATS = ("kernel", "gpu_memcpy", "gpu_memset")
PAIRS = sorted(p.parent for p in ROOT.glob("*/*/lean_trace.json.gz"))


def _raw(path: Path) -> list[dict]:
    with gzip.open(path, "rt") as f:
        return json.load(f)["traceEvents"]


def test_pairs_are_committed():
    assert len(PAIRS) >= 12
    assert {p.name for p in PAIRS} >= {"fp16", "int8", "nf4"}


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: f"{p.parent.name}-{p.name}")
def test_lean_pair(pair: Path):
    t = lean_timing_files(pair / "trace.json.gz", pair / "lean_trace.json.gz", expected_steps=2)
    lean_raw, full_raw = _raw(pair / "lean_trace.json.gz"), _raw(pair / "trace.json.gz")
    lean_gpu = [e for e in lean_raw if e.get("cat") in GPU_CATS]
    full_gpu = [e for e in full_raw if e.get("cat") in GPU_CATS]
    # The same work: one GPU event in the lean trace for each in the full one, all matched.
    assert len(lean_gpu) == len(full_gpu)
    assert t.alignment.coverage == pytest.approx(1.0)
    assert t.n == 2
    # GPU time: the lean trace's own durations, every one inside a pass.
    assert t.passes["gpu_time_us"].sum() == pytest.approx(sum(e["dur"] for e in lean_gpu), rel=1e-9)
    # Each pass adds up exactly: GPU part + host part over the phases = the pass's span.
    parts = t.phases.groupby("pass")[["gpu_busy_us", "host_us"]].sum().sum(axis=1)
    spans = t.passes.set_index("pass")["span_us"]
    assert (parts - spans).abs().max() <= 1e-6 * spans.max()
    # Host syncs: at least every cudaStreamSynchronize the runtime recorded inside the passes.
    stream_syncs = sum(1 for e in lean_raw if e.get("cat") == "cuda_runtime" and e["name"] == "cudaStreamSynchronize")
    assert t.phases["syncs"].sum() >= stream_syncs - 2  # the profiler's own closing syncs lie outside
    # Phases carried over from the full trace: per phase, lean GPU time per pass is the full
    # trace's within 15% (the same kernels, timed in another pass) for phases above 0.2 ms.
    full = phase_table(load_trace(pair / "trace.json.gz")).set_index("phase")["gpu_time_us"] / 2
    lean = t.per_pass()["gpu_time_us"]
    for phase, us in full.items():
        if us > 200:
            assert lean.get(phase, 0.0) == pytest.approx(us, rel=0.15), phase
