"""The registry of quantization backends: one entry per library, each in its own folder.

Adding a backend is adding a folder beside `bitsandbytes/` and one line to `BACKENDS`
(docs/backends.md). Everything here is pure: a backend's loader module, which needs torch, is
imported only when a model is loaded at one of its precisions.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any

from qtrace.backends.base import Backend, KindRule, Rule
from qtrace.backends.bitsandbytes import BACKEND as BITSANDBYTES
from qtrace.backends.gptqmodel import BACKEND as GPTQMODEL
from qtrace.backends.torchao import BACKEND as TORCHAO

BACKENDS: tuple[Backend, ...] = (BITSANDBYTES, TORCHAO, GPTQMODEL)

OP_PREFIXES: tuple[str, ...] = tuple(p for b in BACKENDS for p in b.op_prefixes)


def backend_for(precision: str) -> Backend | None:
    """The backend that owns `precision`, or None for the plain float precisions."""
    for backend in BACKENDS:
        if precision in backend.precisions:
            return backend
    return None


def backend_of_op(name: str) -> Backend | None:
    """The backend whose custom op `name` is, or None."""
    for backend in BACKENDS:
        if name.startswith(backend.op_prefixes):
            return backend
    return None


def quantized_precisions() -> tuple[str, ...]:
    return tuple(p for b in BACKENDS for p in b.precisions)


def unavailable(precision: str, device_type: str, capability: tuple[int, int] | None = None) -> str | None:
    """Why `precision` cannot run on this device (one line: missing package, GPU needed, compute
    capability), or None. Plain float precisions and backends without the hook run everywhere."""
    backend = backend_for(precision)
    if backend is None or backend.unavailable is None:
        return None
    return resolve(backend.unavailable)(precision, device_type, capability)


def loader(backend: Backend) -> ModuleType:
    return importlib.import_module(backend.loader)


@functools.cache
def resolve(ref: str) -> Callable[..., Any]:
    """The function a backend names as "module:function"."""
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


__all__ = ["BACKENDS", "OP_PREFIXES", "Backend", "KindRule", "Rule", "backend_for", "backend_of_op", "loader",
           "quantized_precisions", "resolve", "unavailable"]
