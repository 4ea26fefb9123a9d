"""Reads Kineto (torch.profiler) traces into DataFrames; no torch import.

Names are resolved on first use, so a process that only decodes (the helper of
qtrace.tracefile.split) never imports pandas.
"""

from __future__ import annotations

from typing import Any

_LAZY = {"Trace": "qtrace.tracefile.kineto", "load_trace": "qtrace.tracefile.kineto",
         "TraceFormatError": "qtrace.errors"}

__all__ = ["Trace", "TraceFormatError", "load_trace"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'qtrace.tracefile' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
