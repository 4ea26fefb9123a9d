"""The console script leaves a finished report with os._exit (qtrace.cli.fast_exit): same output, same status."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from qtrace.cli import fast_exit
from tests._cli import run_cli

ROOT = Path(__file__).resolve().parent.parent
TRACE = ROOT / "traces" / "h100_qwen05-shape_int8_bs1_seq128.json.gz"


def _script(*args: str) -> subprocess.CompletedProcess[str]:
    code = ("import atexit, sys; atexit.register(lambda: print('handler ran', file=sys.stderr)); "
            "from qtrace.cli import main; sys.argv = ['qtrace', *sys.argv[1:]]; main()")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT, timeout=300)


@pytest.mark.parametrize("fmt", ["json", "table", "md"])
def test_console_script_output_and_status_are_kept(fmt: str, capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    done = _script("report", "--format", fmt, str(TRACE))
    monkeypatch.setattr(fast_exit, "_requested", False)
    code, out, _ = run_cli(capsys, "report", "--format", fmt, str(TRACE))  # in-process: never exits early
    assert fast_exit._requested  # the report asked for it; only the console script acts on it
    assert done.returncode == 0 == code
    assert done.stdout == out
    assert "handler ran" in done.stderr  # exit handlers still run (the decode helper's among them)


def test_a_failing_report_exits_as_before() -> None:
    done = _script("report", str(ROOT / "no-such-trace.json"))
    assert done.returncode == 2 and done.stderr.startswith("qtrace: error:")
    assert "handler ran" in done.stderr
