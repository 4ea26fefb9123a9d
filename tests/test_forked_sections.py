"""`qtrace report`'s sections computed in a forked child (qtrace.analyzers.forked) give the one-process report."""

from __future__ import annotations

import gzip
import os
import time
from pathlib import Path

import msgspec
import numpy as np
import pytest

from qtrace.analyzers import forked
from qtrace.analyzers import trace_analysis as ta
from qtrace.tracefile.kineto import load_trace

ROOT = Path(__file__).resolve().parent.parent
TRACES = sorted(p for p in (ROOT / "traces").rglob("*.json*") if p.name.endswith((".json", ".json.gz")))


def _report_json(trace_path: Path, fork: bool) -> bytes:
    trace = load_trace(trace_path)
    return msgspec.json.encode(ta.analyze_trace(trace, fork_sections=fork).to_dict())


def _gpu_traces() -> list[Path]:
    """One GPU trace per top folder and precision (H100 runs of each precision, torchao, GPTQ/AWQ,
    lean runs, and each kind of public trace: ROCm, CNN, NCCL ranks, FP8, ...)."""
    out: list[Path] = []
    seen: set[tuple[str, str]] = set()
    for p in TRACES:
        parts = p.relative_to(ROOT / "traces").parts
        key = (parts[0], parts[-2] if len(parts) > 2 else p.name)
        if key in seen:
            continue
        try:
            gpu = load_trace(p).has_gpu
        except Exception:  # noqa: BLE001 (a committed bad-input sample: not a report)
            continue
        if gpu:
            out.append(p)
            seen.add(key)
    return out


def test_forked_report_equals_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ta, "FORK_MIN_EVENTS", 0)
    forks: list[bool] = []
    real_init = forked.Pending.__init__

    def spy(self: forked.Pending, fn):  # type: ignore[no-untyped-def]
        real_init(self, fn)
        forks.append(self.forked)

    monkeypatch.setattr(forked.Pending, "__init__", spy)
    paths = _gpu_traces()
    assert len(paths) >= 15
    for p in paths:
        forks.clear()
        assert _report_json(p, fork=True) == _report_json(p, fork=False), p
        assert forks == [True], p  # the child computed it: the test compares the two paths


def test_small_traces_and_library_calls_do_not_fork(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[int] = []
    real_init = forked.Pending.__init__
    monkeypatch.setattr(forked.Pending, "__init__", lambda self, fn: started.append(1) or real_init(self, fn))
    trace = load_trace(ROOT / "traces" / "h100_qwen05-shape_int8_bs1_seq128.json.gz")
    ta.analyze_trace(trace)  # a library call: never forks
    ta.analyze_trace(trace, fork_sections=True)  # 60k events: below FORK_MIN_EVENTS
    assert started == []


def test_big_plain_trace_forks_in_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from tests._cli import run_cli

    plain = tmp_path / "trace.json"
    plain.write_bytes(gzip.decompress((ROOT / "traces" / "h100_qwen05-shape_int8_bs1_seq128.json.gz").read_bytes()))
    monkeypatch.setattr(ta, "FORK_MIN_EVENTS", 0)
    forks: list[bool] = []
    real_result = forked.Pending.result
    monkeypatch.setattr(forked.Pending, "result", lambda self: forks.append(self.forked) or real_result(self))
    code, out, _ = run_cli(capsys, "report", "--format", "json", str(plain))
    assert code == 0 and forks == [True]
    monkeypatch.setattr(ta, "FORK_MIN_EVENTS", 1 << 40)
    code2, out2, _ = run_cli(capsys, "report", "--format", "json", str(plain))
    assert code2 == 0 and out2 == out


def test_a_value_msgpack_cannot_carry_is_computed_here() -> None:
    pending = forked.Pending(lambda: np.float64(1.5))
    assert pending.forked
    value = pending.result()
    assert type(value) is np.float64 and value == 1.5  # the child failed to encode it; this process computed it


def test_a_child_that_dies_is_computed_here() -> None:
    parent = os.getpid()

    def fn() -> dict[str, int]:
        if os.getpid() != parent:
            os.kill(os.getpid(), 9)
        return {"here": parent}

    assert forked.Pending(fn).result() == {"here": parent}


def test_a_child_that_hangs_is_killed_after_the_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    parent = os.getpid()
    monkeypatch.setattr(forked, "MIN_WAIT_S", 0.5)
    monkeypatch.setattr(forked, "WAIT_FACTOR", 0.0)

    def fn() -> str:
        if os.getpid() != parent:
            time.sleep(60)
        return "here"

    pending = forked.Pending(fn)
    pid = pending.pid
    t = time.monotonic()
    assert pending.result() == "here"
    assert time.monotonic() - t < 10
    assert pid is not None
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reaped: no zombie left


def test_the_child_answer_is_used() -> None:
    parent = os.getpid()
    got = forked.Pending(lambda: {"pid": os.getpid(), "values": [1.25, None, "x"]}).result()
    assert got["pid"] != parent and got["values"] == [1.25, None, "x"]


def test_an_error_here_stops_the_child(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ta, "FORK_MIN_EVENTS", 0)
    pids: list[int | None] = []
    real_init = forked.Pending.__init__

    def spy(self: forked.Pending, fn):  # type: ignore[no-untyped-def]
        real_init(self, fn)
        pids.append(self.pid)

    monkeypatch.setattr(forked.Pending, "__init__", spy)

    def boom(*_a, **_k):  # type: ignore[no-untyped-def]
        raise RuntimeError("boom")

    monkeypatch.setattr(ta, "phase_table", boom)
    trace = load_trace(ROOT / "traces" / "h100_qwen05-shape_int8_bs1_seq128.json.gz")
    with pytest.raises(RuntimeError, match="boom"):
        ta.analyze_trace(trace, fork_sections=True)
    assert pids and pids[0] is not None
    with pytest.raises(ChildProcessError):
        os.waitpid(pids[0], os.WNOHANG)
