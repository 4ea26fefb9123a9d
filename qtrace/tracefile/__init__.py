"""Reads Kineto (torch.profiler) traces into DataFrames; no torch import."""

from qtrace.tracefile.kineto import Trace, TraceFormatError, load_trace

__all__ = ["Trace", "TraceFormatError", "load_trace"]
