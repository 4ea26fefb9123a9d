"""Start the two-process decode of `qtrace report PATH` before the report's imports.

Importing pandas and the analyzers takes most of a second; a helper started first decodes its
part of a big trace meanwhile (qtrace.tracefile.split), and `load_trace` claims it. Only a plain
trace file named on the command line is started early; anything else (a run folder, a gzip
file, a small file, an argument this scan does not understand) is left to `load_trace`, which
then starts an even cut itself. A wrong guess costs nothing but the helper: the claim checks
the path, size and modification time.
"""

from __future__ import annotations

import os

# report's options that take a value: the path is the first argument that is neither one of
# these nor an option (click accepts --opt=value too, which needs no skipping).
_REPORT_VALUE_OPTIONS = frozenset({"--format", "--out", "--top"})


def report_path(args: list[str]) -> str | None:
    """The PATH argument of `qtrace report ...`, or None when `args` is another command."""
    if not args or args[0] != "report":
        return None
    rest = iter(args[1:])
    for arg in rest:
        if arg == "--":
            return next(rest, None)
        if arg in _REPORT_VALUE_OPTIONS:
            next(rest, None)
        elif not arg.startswith("-"):
            return arg
    return None


def start_early(args: list[str]) -> None:
    path = report_path(args)
    if path is None or not path.endswith(".json") or not os.path.isfile(path):
        return
    from qtrace.tracefile import split  # msgspec and numpy only

    split.start(path, split.FRACTION, min_bytes=split.SPLIT_MIN_BYTES)
