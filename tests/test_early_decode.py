"""`qtrace report FILE` starts the two-process decode before its imports (qtrace.cli.early_decode)."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from qtrace.cli import early_decode
from qtrace.tracefile import split
from tests._cli import run_cli

TRACE = Path(__file__).resolve().parent.parent / "traces" / "h100_qwen05-shape_int8_bs1_seq128.json.gz"


@pytest.mark.parametrize(("args", "path"), [
    (["report", "t.json"], "t.json"),
    (["report", "--format", "json", "t.json"], "t.json"),
    (["report", "--format=json", "--top", "3", "t.json", "--out", "o"], "t.json"),
    (["report", "--out", "o", "--force", "t.json"], "t.json"),
    (["report", "--", "-odd.json"], "-odd.json"),
    (["report", "--format", "json"], None),
    (["compare", "t.json"], None),
    ([], None),
])
def test_report_path(args: list[str], path: str | None) -> None:
    assert early_decode.report_path(args) == path


def test_early_helper_is_claimed_and_gives_the_same_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    plain = tmp_path / "trace.json"
    plain.write_bytes(gzip.decompress(TRACE.read_bytes()))
    code, before, _ = run_cli(capsys, "report", "--format", "json", str(plain))  # too small: no helper
    assert code == 0
    monkeypatch.setattr(split, "SPLIT_MIN_BYTES", 0)
    started, claimed = [], []
    real_start, real_claim = split.start, split.claim
    monkeypatch.setattr(split, "start", lambda *a, **k: started.append(real_start(*a, **k)) or started[-1])
    monkeypatch.setattr(split, "claim", lambda p: claimed.append(real_claim(p)) or claimed[-1])
    code, after, _ = run_cli(capsys, "report", "--format", "json", str(plain))
    assert code == 0 and after == before
    assert len(started) == 1 and started[0] is not None  # started early, once
    assert claimed[0] is started[0]  # and load_trace decoded with it
    assert not split._STARTED


def test_a_failing_command_leaves_no_helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    plain = tmp_path / "trace.json"
    plain.write_bytes(gzip.decompress(TRACE.read_bytes()))
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("earlier run")
    monkeypatch.setattr(split, "SPLIT_MIN_BYTES", 0)
    code, _, err = run_cli(capsys, "report", str(plain), "--out", str(out))  # exists, no --force
    assert code != 0 and "force" in err
    split._stop_all()  # what the exit does; the helper must be gone after it
    assert not split._STARTED
