"""The capture side of lean traces on a CPU: none is possible, run.json says why; Kineto's USDT lines
stay off the terminal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _qtrace_tiny import tiny_checkpoint

from qtrace.capture import protocol as capture
from qtrace.capture import runner as api

ROOT = Path(__file__).resolve().parent.parent


def test_native_output_filter_drops_only_the_usdt_lines(capfd: pytest.CaptureFixture[str]) -> None:
    with capture.native_output_filtered():
        os.write(2, b"USDT:2026-12-01 20:40:18 1:1 SyncActivityProfilerHandler.cpp:52] profiler_start\n")
        os.write(2, b"a real warning\n")
        os.write(1, b"USDT:2026-12-01 20:40:18 1:1 SyncActivityProfilerHandler.cpp:59] profiler_stop\n")
        os.write(1, b"stdout kept\n")
    out, err = capfd.readouterr()
    assert err == "a real warning\n" and out == "stdout kept\n"


def test_lean_pass_refuses_a_cpu(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="CUDA"):
        capture.lean_pass(None, None, 1, torch.device("cpu"), tmp_path / "lean.json.gz", {})


def test_command_names_lean_only_when_given() -> None:
    dev = torch.device("cpu")
    base = api.Settings()
    assert "--lean" not in api.equivalent_command(base, "m", ("fp32",), dev, Path("o"))
    assert api.equivalent_command(api.Settings(lean=False), "m", ("fp32",), dev, Path("o"))[-1] == "--no-lean"


def test_cpu_profile_records_why_there_is_no_lean_trace_and_prints_no_usdt(tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.pop(capture.CUPTI_TEARDOWN_VAR, None)
    res = subprocess.run([sys.executable, "-m", "qtrace", "profile", str(tiny_checkpoint("tiny-llama")),
                          "--precision", "fp32", "--seq-len", "16", "--warmup", "0", "--iters", "2",
                          "--profile-steps", "1", "--device", "cpu", "--out", str(out)],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr
    assert "USDT" not in res.stderr and "USDT" not in res.stdout
    assert "[fp32] median" in res.stderr  # progress still reaches the terminal
    run = json.loads((out / "run.json").read_text())
    entry = run["precisions"]["fp32"]
    assert entry["trace"] == "fp32/trace.json.gz" and (out / entry["trace"]).is_file()
    assert entry["lean_trace"] is None and "CPU" in entry["lean_note"]
    assert run["settings"]["lean"] is False
    assert run["environment"]["env"][capture.CUPTI_TEARDOWN_VAR] == "1"  # set by qtrace, recorded
    assert not (out / "fp32" / "lean_trace.json.gz").exists()
    assert api.ProfileResult.load(out).lean_trace_path("fp32") is None


def test_cupti_teardown_is_set_unless_the_user_chose(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(capture.CUPTI_TEARDOWN_VAR, raising=False)
    assert capture.ensure_cupti_teardown() == "1 (set by qtrace)"
    assert os.environ[capture.CUPTI_TEARDOWN_VAR] == "1"
    monkeypatch.setenv(capture.CUPTI_TEARDOWN_VAR, "0")
    assert capture.ensure_cupti_teardown() == "0"
    assert os.environ[capture.CUPTI_TEARDOWN_VAR] == "0"


def test_priming_is_skipped_on_a_cpu_and_under_teardown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(capture.CUPTI_TEARDOWN_VAR, "0")
    assert capture.prime_cupti(None, None, torch.device("cpu")) is False

    class FakeCuda:
        type = "cuda"

    monkeypatch.setenv(capture.CUPTI_TEARDOWN_VAR, "1")
    assert capture.prime_cupti(None, None, FakeCuda()) is False  # every session starts a fresh CUPTI anyway



def test_env_changes_name_what_an_import_set() -> None:
    before = {"TEARDOWN_CUPTI": "1"}
    after = {"TEARDOWN_CUPTI": "1", "PYTORCH_ALLOC_CONF": "expandable_segments:True"}
    assert api.env_changes(before, after) == {"PYTORCH_ALLOC_CONF": [None, "expandable_segments:True"]}
    assert api.env_changes(after, after) == {}
