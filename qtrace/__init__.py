"""qtrace: why is my quantized model slower and hungrier than fp16?"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

# Public names resolved on first use, so `import qtrace` stays light (no torch, no
# transformers) for the trace-analysis side on machines without them.
_LAZY = {
    "profile": ("qtrace.capture.runner", "profile"),
    "ProfileResult": ("qtrace.capture.runner", "ProfileResult"),
    "record": ("qtrace.capture.record", "record"),
    "QtraceError": ("qtrace.errors", "QtraceError"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'qtrace' has no attribute {name!r}")
    import importlib

    module_name, attr = _LAZY[name]
    value = getattr(importlib.import_module(module_name), attr)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
