"""`qtrace profile` / `qtrace presets` as a user meets them: exit codes, one-line errors, output."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _cli import run_cli
from _qtrace_tiny import tiny_checkpoint

from qtrace.capture.models import PRESETS

REPO = Path(__file__).resolve().parents[1]


def _assert_one_line_error(code: int, err: str, needle: str) -> None:
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("qtrace: error: ") and needle in lines[0], lines[0]
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--precision", "fp32,int4"], "unknown precision 'int4'"),
        (["--precision", ","], "no precision"),
        (["/definitely/not/here"], "does not exist"),
        (["someorg/not-cached-model"], "not in the local Hugging Face cache"),
        (["--device", "tpu"], "--device"),
        (["--device", "cuda:0"], "CUDA is not available"),
        (["--iters", "0"], "--iters"),
        (["tiny-modernbert", "--task", "generate"], "encoder"),
    ],
)
def test_user_errors_are_one_line_exit_2(args: list[str], needle: str, capsys: pytest.CaptureFixture[str],
                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QTRACE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, *["profile", *args, "--out", str(tmp_path / "run")])
    _assert_one_line_error(code, err, needle)
    assert out == ""
    assert not (tmp_path / "run" / "run.json").exists()


def test_out_refuses_non_empty_folder_without_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    model = str(tiny_checkpoint("tiny-llama"))
    code, _, err = run_cli(capsys, *["profile", model, "--precision", "fp32", "--out", str(out)])
    _assert_one_line_error(code, err, "--force")
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    code, stdout, err = run_cli(capsys, *["profile", model, "--precision", "fp32", "--seq-len", "8", "--warmup", "0",
                                   "--iters", "2", "--profile-steps", "1", "--out", str(out), "--force"])
    assert code == 0, err
    assert (out / "run.json").is_file() and (out / "fp32" / "trace.json.gz").is_file()
    assert stdout.splitlines()[0].split()[:2] == ["precision", "median"]


def test_presets_lists_every_preset(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QTRACE_CACHE", str(tmp_path))
    code, out, err = run_cli(capsys, *["presets"])
    assert code == 0, err
    table, _, precisions = out.partition("cache:")
    rows = {line.split()[0]: line for line in table.splitlines()[1:] if line}
    assert set(rows) == set(PRESETS)
    # Then every precision, with whether it runs here and why not (GPU needed, package missing).
    support = {line.split()[0]: line for line in precisions.splitlines()[2:] if line.startswith("  ")}
    assert {"fp32", "int8", "nf4", "torchao-int8wo", "torchao-fp8"} <= set(support)
    assert "runs here" in support["fp32"]
    assert "494.0M" in rows["qwen2.5-0.5b"] and "149.7M" in rows["modernbert-base"]
    assert "generate" not in rows["modernbert-base"].split()[3]
    assert not (tmp_path / "presets").exists(), "listing presets builds nothing"


def test_help_lists_options(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, *["profile", "--help"])
    assert code == 0
    for option in ("--precision", "--task", "--batch-size", "--seq-len", "--new-tokens", "--warmup", "--iters",
                   "--profile-steps", "--device", "--out", "--force", "--seed", "--int8-threshold",
                   "--outlier-dims", "--trust-remote-code"):
        assert option in out, option


@pytest.mark.slow
def test_python_m_qtrace_profile_end_to_end(tmp_path: Path) -> None:
    """The real console path: a separate interpreter, progress on stderr, the table on stdout."""
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "QTRACE_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "qtrace", "profile", str(tiny_checkpoint("modernbert-base")), "--task", "classify",
           "--precision", "fp32,int8", "--batch-size", "2", "--seq-len", "16", "--warmup", "1", "--iters", "3",
           "--profile-steps", "1", "--outlier-dims", "2", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, check=False, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "[int8] loading" in proc.stderr and "[int8] median" in proc.stderr
    table = proc.stdout.splitlines()
    assert table[0].split()[0] == "precision" and table[1].split()[0] == "fp32" and table[2].split()[0] == "int8"
    assert "int8/trace.json.gz" in table[2]
    run = json.loads((out / "run.json").read_text())
    assert run["settings"]["task"] == "classify" and run["settings"]["batch_size"] == 2
    assert all(e["status"] == "ok" for e in run["precisions"].values())
    with gzip.open(out / "int8" / "trace.json.gz", "rt") as fh:
        trace = json.load(fh)
    assert trace["qtrace"]["task"] == "classify" and trace["qtrace"]["precision"] == "int8"
    names = {e.get("name") for e in trace["traceEvents"]}
    assert "bitsandbytes::int8_vectorwise_dequant" in names  # outlier columns reached LLM.int8
    assert "qtrace.module:Linear8bitLt:model.layers.0.attn.Wqkv" in names
