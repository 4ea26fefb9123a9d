"""Atomic file writes and output-folder guards.

Every file qtrace writes goes to a temporary name beside its target and is renamed into
place, so a crash or Ctrl-C never leaves a half-written report or trace behind.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import msgspec

from qtrace.errors import QtraceError, RunFolderError

INCOMPLETE_MARKER = "INCOMPLETE"


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", gz: bool = False) -> Iterator[IO]:
    """Open a temp file beside `path`; rename it over `path` only if the block succeeds."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise QtraceError(f"cannot write {target}: {exc.strerror or exc}") from None
    os.close(fd)
    try:
        if gz:
            with gzip.open(tmp, mode if "b" in mode else mode + "t", compresslevel=6) as fh:
                yield fh
        else:
            with open(tmp, mode, encoding=None if "b" in mode else "utf-8") as fh:
                yield fh
        # mkstemp makes the file owner-only; give it the permissions a plain open() would.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except OSError as exc:  # disk full, folder removed meanwhile...: one line, and no temp file left
        Path(tmp).unlink(missing_ok=True)
        raise QtraceError(f"cannot write {target}: {exc.strerror or exc}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_folder(target: Path) -> Iterator[Path]:
    """A fresh temp folder beside `target`, renamed over it (replacing an older one) only if the
    block succeeds; removed in every case. OSError propagates: each caller words its own line."""
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        yield tmp
        if target.exists():  # stale (older fingerprint) or half-written by an old qtrace
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as fh:
        fh.write(text)


def write_bytes(path: str | os.PathLike, data: bytes, gz: bool = False) -> None:
    with atomic_open(path, "wb", gz=gz) as fh:
        fh.write(data)


def write_json(path: str | os.PathLike, obj: object) -> None:
    """Pretty JSON (2-space indent), atomically."""
    write_bytes(path, msgspec.json.format(msgspec.json.encode(obj), indent=2) + b"\n")


def check_out_dir(path: str | os.PathLike, force: bool) -> Path:
    """Refuse an `--out` that is a file, or a non-empty folder without `force`; create nothing.

    Commands call this before the slow work, and `prepare_out_dir` once there is something to
    write, so bad input never leaves an empty folder behind.
    """
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise RunFolderError(
            f"--out {out} already holds results; pass --force to overwrite, or pick another folder"
        )
    return out


def prepare_out_dir(path: str | os.PathLike, force: bool) -> Path:
    """Create `path` for a new result; refuse an existing non-empty folder unless `force`."""
    out = check_out_dir(path, force)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunFolderError(f"--out {out}: cannot create the folder ({exc.strerror or exc})") from None
    return out


def mark_incomplete(out: Path, why: str) -> None:
    write_text(out / INCOMPLETE_MARKER, why.rstrip() + "\n")


def clear_incomplete(out: Path) -> None:
    (out / INCOMPLETE_MARKER).unlink(missing_ok=True)
