"""Run the `qtrace` entry point in-process: the console script's error handling, no interpreter start."""

from __future__ import annotations

import pytest

from qtrace.cli import main


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `qtrace ARGS`."""
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err
