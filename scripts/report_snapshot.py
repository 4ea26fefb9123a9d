"""Print a digest of `qtrace report --format json` (and `compare --format json`) over every committed trace.

A restructure must not change any figure: run this before and after and diff the two outputs
(`python scripts/report_snapshot.py > before.txt`, change, `... > after.txt`, `diff before.txt after.txt`).
tests/test_layout.py holds the committed digest file against a fresh run.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

from click.testing import CliRunner

from qtrace.cli import cli

ROOT = Path(__file__).resolve().parents[1]


def targets() -> list[Path]:
    traces = sorted((ROOT / "traces").glob("*.json.gz"))
    runs = sorted(p.parent for p in (ROOT / "traces").rglob("run.json") if any(p.parent.rglob("*.json.gz")))
    return traces + runs


def digest(args: list[str]) -> str:
    result = CliRunner().invoke(cli, args)
    return f"{result.exit_code} {hashlib.sha256(result.output.encode()).hexdigest()[:16]}"


def main() -> int:
    os.chdir(ROOT)  # paths inside the output are relative, so any clone gives the same digest
    for path in targets():
        rel = path.relative_to(ROOT)
        print(f"report {rel}: {digest(['report', str(rel), '--format', 'json'])}")
    runs = [p for p in targets() if p.is_dir()]
    for run in runs:
        rel = run.relative_to(ROOT)
        print(f"compare {rel}: {digest(['compare', str(rel), '--format', 'json'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
