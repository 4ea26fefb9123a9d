"""Compute some of a report's sections in a forked copy of this process, while this one does the rest.

A big trace's report spends seconds in sections that read the same tables and nothing of each
other (the roofline and a backend's own analyses here; memory and the phase table there). A
forked child sees the loaded trace without copying or serializing it (copy-on-write pages),
computes its sections and sends them back as msgpack (no pickle); this process decodes them.

Only `qtrace report` and `compare` ask for it (`analyze_trace(..., fork_sections=True)`): a library call never
forks the caller's process, which may hold a GPU context or threads of its own. Any failure in
the child (a value msgpack cannot carry, an exception, a signal, no answer within the time limit)
makes this process compute the sections itself, so the result is the same either way; a test
holds the two paths to the same report on 32 committed traces (one per folder and precision).
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import time
from collections.abc import Callable
from typing import Any

import msgspec

from qtrace.tracefile.split import usable_cores

# Time the parent waits for the child's answer once its own work is done, at least this many
# seconds or this many times its own work: a child stuck (a lock held by a thread at fork time)
# costs a bounded wait, then the in-process computation.
MIN_WAIT_S = 30.0
WAIT_FACTOR = 4.0


class Pending:
    """The answer of `fn()`, computed in a child when one could be forked."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.pid: int | None = None
        self.fd: int | None = None
        self._status: int | None = None  # the child's exit status, once reaped
        self.started = time.monotonic()
        # Linux only: elsewhere (macOS) system libraries are not safe to use in a forked child.
        if not sys.platform.startswith("linux") or usable_cores() < 2:
            return
        r, w = os.pipe()
        try:
            pid = os.fork()
        except OSError:
            os.close(r)
            os.close(w)
            return
        if pid == 0:  # the child: compute, send, and leave without running the parent's exit handlers
            code = 1
            try:
                os.close(r)
                data = memoryview(msgspec.msgpack.encode(fn()))
                while data:
                    data = data[os.write(w, data):]
                code = 0
            except BaseException:  # noqa: BLE001 (the parent computes it instead)
                pass
            finally:
                os._exit(code)
        os.close(w)
        self.pid, self.fd = pid, r

    @property
    def forked(self) -> bool:
        return self.pid is not None

    def result(self) -> Any:
        """The child's answer, else `fn()` computed here."""
        if self.pid is None or self.fd is None:
            return self.fn()
        own_s = time.monotonic() - self.started
        deadline = time.monotonic() + max(MIN_WAIT_S, WAIT_FACTOR * own_s)
        chunks: list[bytes] = []
        ok = False
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                    break  # no answer in time
                chunk = os.read(self.fd, 1 << 20)
                if not chunk:
                    ok = True
                    break
                chunks.append(chunk)
        finally:
            self._end(kill=not ok)
        if ok and self._status == 0:
            try:
                return msgspec.msgpack.decode(b"".join(chunks))
            except msgspec.DecodeError:
                pass
        return self.fn()

    def _end(self, kill: bool) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.pid is None:
            return
        if kill:
            with contextlib.suppress(OSError):
                os.kill(self.pid, 9)
        with contextlib.suppress(ChildProcessError, OSError):
            _, status = os.waitpid(self.pid, 0)
            self._status = os.waitstatus_to_exitcode(status)
        self.pid = None

    def cancel(self) -> None:
        """Stop the child (this process failed before it needed the answer)."""
        self._end(kill=True)
