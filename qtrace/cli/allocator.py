"""The trace-reading commands' allocator setting: big arrays go back to the system when freed.

glibc serves an allocation below its mmap threshold from the heap, and raises that threshold (up
to 32 MB) each time it frees a mapped block. A big trace's per-event arrays (10-45 MB each at 2 GB
of trace) then come from the heap, and the holes they leave stay resident while later stages map
new ones: at 2 GB of trace, ~150 MB of the report's peak RSS. A fixed threshold of 4 MB maps every
array above it and unmaps it when freed. Fixing it also fixes glibc's trim threshold at 128 KB,
which gives the heap's top back to the system at nearly every free and faults it in again (~0.7 s
more system time on a 407 MB trace): the trim threshold is set to 128 MB, which costs nothing
measurable. Measured (docs/robustness.md, "Peak memory at 2 GB, second pass"): a 2 GB trace's
peak 1552 -> ~1390 MB; a 407 MB trace's 441 -> ~430 MB at the default's system time.

Only `qtrace report`, `compare` and `project` set it, in their own process: a library call leaves
its host program's allocator alone, and `qtrace run` runs the user's script as it would run. A
``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_TRIM_THRESHOLD_`` already in the environment is the user's
choice and wins: then nothing is changed.
"""

from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
THRESHOLD_BYTES = 4 << 20
TRIM_BYTES = 128 << 20


def return_big_blocks(threshold: int = THRESHOLD_BYTES, trim: int = TRIM_BYTES) -> bool:
    """Fix glibc's mmap threshold at `threshold` bytes and its trim threshold at `trim`; False where
    there is no glibc mallopt or the environment sets either already."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not a glibc-like C library (macOS, Windows)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, threshold) == 1 and mallopt(M_TRIM_THRESHOLD, trim) == 1
