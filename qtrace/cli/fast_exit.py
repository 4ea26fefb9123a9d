"""Leave a finished `qtrace report` without tearing down its tables.

After a big trace's report is printed, the interpreter's own exit frees every table, column and
cached frame one object at a time (0.8-1.2 s on the 407 MB benchmark trace, 3 alternating runs with and
without; docs/robustness.md); the system frees
a process's memory at once. A command that asks for it (`request()`) therefore ends, once its
output is flushed and the exit handlers have run (the decode helper's, among them), with
`os._exit` and the exit status it would have had: 0. Only the console script does so (`main`
called without arguments): a Python caller of `qtrace.cli.main([...])`, a test for one, keeps
its interpreter.
"""

from __future__ import annotations

import atexit
import os
import sys

_requested = False


def request() -> None:
    global _requested
    _requested = True


def exit_if_requested() -> None:
    """os._exit(0) after flushing stdout and stderr and running the exit handlers, if requested."""
    if not _requested:
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BrokenPipeError:  # the reader left (`| head`): what is left of the output goes nowhere
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, stream.fileno())
            raise  # the caller's exit, as for a pipe closed while writing
    run_handlers = getattr(atexit, "_run_exitfuncs", None)  # CPython's; elsewhere: a normal exit instead
    if run_handlers is None:
        return
    run_handlers()
    os._exit(0)
