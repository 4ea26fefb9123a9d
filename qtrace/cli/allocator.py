"""The trace-reading commands' allocator setting: big arrays go back to the system when freed.

glibc serves an allocation below its mmap threshold from the heap, and raises that threshold (up
to 32 MB) each time it frees a mapped block. A big trace's per-event arrays (10-45 MB each at 2 GB
of trace) then come from the heap, and the holes they leave stay resident while later stages map
new ones: at 2 GB of trace, ~150 MB of the report's peak RSS. A fixed threshold of 4 MB maps every
array above it and unmaps it when freed. Measured (docs/robustness.md, "Peak memory at 2 GB"): a
2 GB trace's peak 1552 -> 1393 MB; a 407 MB trace's 441 -> 424 MB, at ~0.9 s more system time
(fresh pages for each big array: ~7% of its wall time).

Only `qtrace report`, `compare` and `project` set it, in their own process: a library call leaves
its host program's allocator alone, and `qtrace run` runs the user's script as it would run. A
``MALLOC_MMAP_THRESHOLD_`` already in the environment is the user's choice and wins.
"""

from __future__ import annotations

import ctypes
import os

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)
THRESHOLD_BYTES = 4 << 20


def return_big_blocks(threshold: int = THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold at `threshold` bytes; False where there is no glibc mallopt or the
    environment sets the threshold already."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not a glibc-like C library (macOS, Windows)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, threshold) == 1
