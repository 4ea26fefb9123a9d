"""The trace-reading commands fix glibc's mmap threshold (qtrace/cli/allocator.py)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from qtrace.cli import allocator

# In a fresh interpreter: free a 30 MB array (glibc then raises its dynamic mmap threshold to 30 MB),
# allocate 8 MB, and print how many bytes glibc has mapped for large blocks while it is alive.
PROBE = """
import ctypes, sys
import numpy as np
from qtrace.cli.allocator import return_big_blocks

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                              "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "fixed":
    assert return_big_blocks()
big = np.ones(30 << 20, dtype=np.uint8)
del big
before = libc.mallinfo2().hblkhd
block = np.ones(8 << 20, dtype=np.uint8)
print(libc.mallinfo2().hblkhd - before)
"""

glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                           reason="glibc's mallopt and mallinfo2")


def _mapped_growth(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


@glibc
def test_fixed_threshold_maps_a_block_the_dynamic_one_puts_on_the_heap() -> None:
    assert _mapped_growth("fixed") >= 8 << 20
    assert _mapped_growth("default") < 8 << 20  # the control: glibc's own threshold had risen to 30 MB


@pytest.mark.parametrize("name", ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"])
def test_the_users_environment_setting_wins(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(name, "131072")
    assert allocator.return_big_blocks() is False


def test_trace_commands_set_it(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from click.testing import CliRunner

    from qtrace.cli import cli

    calls = []
    for module in ("report", "compare", "project"):
        monkeypatch.setattr(f"qtrace.cli.{module}.return_big_blocks", lambda: calls.append(1) or True)
    runner = CliRunner()
    missing = str(tmp_path / "missing.json")
    for args in (["report", missing], ["compare", missing, missing], ["project", missing, "--gpu", "t4"]):
        runner.invoke(cli, args)
    assert len(calls) == 3
