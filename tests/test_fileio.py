"""Atomic writes and the output-folder guard."""

from __future__ import annotations

import os
import stat

import pytest

from qtrace.errors import RunFolderError
from qtrace.fileio import atomic_open, prepare_out_dir, write_text


def test_failed_write_leaves_no_file_and_keeps_the_old_one(tmp_path):
    target = tmp_path / "report.md"
    write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_open(target) as fh:
        fh.write("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]  # no temp file left behind


def test_written_files_get_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644


def test_prepare_out_dir_refuses_existing_results_unless_forced(tmp_path):
    out = tmp_path / "run"
    prepare_out_dir(out, force=False)
    (out / "run.json").write_text("{}")
    with pytest.raises(RunFolderError, match="--force"):
        prepare_out_dir(out, force=False)
    assert prepare_out_dir(out, force=True) == out
    (tmp_path / "file").write_text("")
    with pytest.raises(RunFolderError, match="not a folder"):
        prepare_out_dir(tmp_path / "file", force=True)


def test_atomic_folder_replaces_only_on_success(tmp_path):
    from qtrace.fileio import atomic_folder

    target = tmp_path / "cache" / "model"
    with atomic_folder(target) as tmp:
        (tmp / "a.txt").write_text("first")
    assert (target / "a.txt").read_text() == "first"
    with pytest.raises(RuntimeError), atomic_folder(target) as tmp:
        (tmp / "a.txt").write_text("second")
        raise RuntimeError("build failed")
    assert (target / "a.txt").read_text() == "first"  # the earlier folder is kept
    with atomic_folder(target) as tmp:
        (tmp / "b.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]  # replaced whole, not merged
    assert sorted(p.name for p in target.parent.iterdir()) == ["model"]  # no temp folder left
