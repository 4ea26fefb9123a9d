"""GPU energy of a timed pass from NVML's total energy counter.

``nvmlDeviceGetTotalEnergyConsumption`` returns the energy the board has used since the driver
loaded, in millijoules (Volta and newer). Reading it before and after the un-profiled timed
pass gives the pass's energy; divided by iterations, examples or generated tokens it answers
"does int8/NF4 save energy per example?". The counter covers the whole board (all processes on
that GPU) and updates every few milliseconds, so a pass should last at least about a second
for a figure to mean much: `EnergyMeter.seconds` says how long the window was.

Everything degrades to None: no pynvml, no driver, a CPU device, a GPU without the counter
(pre-Volta, some vGPU/MIG setups) or a counter that went backwards.

    with EnergyMeter(device) as meter:
        ...timed loop...
    entry["energy"] = energy_block(meter, iters=20, batch_size=4, new_tokens=None)
"""

from __future__ import annotations

import time
from typing import Any

SOURCE = "nvml_total_energy"


def _nvml() -> Any:
    """The initialised pynvml module, or None."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml
    except Exception:  # no library, no driver, no permission: no energy
        return None


def _handle_for(nv: Any, device: Any = None, index: int | None = None) -> Any:
    """NVML handle for a torch device (by UUID, as qtrace.capture.environment does) or a plain NVML index."""
    if device is not None:
        if getattr(device, "type", None) != "cuda":
            return None
        try:
            from qtrace.capture import environment as qdevice

            handle = qdevice._handle(device)
            if handle is not None:
                return handle
        except Exception:
            pass
        index = device.index if device.index is not None else 0
    if index is None:
        index = 0
    try:
        return nv.nvmlDeviceGetHandleByIndex(index)
    except Exception:
        return None


class EnergyMeter:
    """Context manager: reads the board's total-energy counter on enter and on exit.

    `joules` is None when NVML or the counter is unavailable (never raises). Pass a torch device
    (``cuda:N``; a CPU device gives None) or an NVML device ``index``.
    """

    def __init__(self, device: Any = None, index: int | None = None) -> None:
        self._device = device
        self._index = index
        self._nv: Any = None
        self._handle: Any = None
        self.start_mj: int | None = None
        self.stop_mj: int | None = None
        self._t0: float | None = None
        self.seconds: float | None = None
        self.error: str | None = None

    def _read(self) -> int | None:
        if self._nv is None or self._handle is None:
            return None
        try:
            return int(self._nv.nvmlDeviceGetTotalEnergyConsumption(self._handle))
        except Exception as exc:  # NVMLError_NotSupported and friends
            self.error = f"{type(exc).__name__}: {exc}".strip()
            return None

    def start(self) -> EnergyMeter:
        if self._device is not None and getattr(self._device, "type", "cuda") != "cuda":
            self.error = "not a CUDA device"
            return self
        self._nv = _nvml()
        if self._nv is None:
            self.error = "NVML unavailable"
            return self
        self._handle = _handle_for(self._nv, self._device, self._index)
        if self._handle is None:
            self.error = "no NVML handle for this device"
            return self
        self.start_mj = self._read()
        self._t0 = time.perf_counter()
        return self

    def stop(self) -> float | None:
        if self._t0 is not None:
            self.seconds = time.perf_counter() - self._t0
        if self.start_mj is not None:
            self.stop_mj = self._read()
        return self.joules

    def __enter__(self) -> EnergyMeter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def joules(self) -> float | None:
        if self.start_mj is None or self.stop_mj is None:
            return None
        delta = self.stop_mj - self.start_mj
        if delta < 0:  # counter reset (driver reload) or wrap: no figure rather than a wrong one
            self.error = "energy counter went backwards"
            return None
        return delta / 1000.0

    @property
    def watts(self) -> float | None:
        j = self.joules
        return j / self.seconds if j is not None and self.seconds else None


def energy_block(meter: EnergyMeter, iters: int, batch_size: int,
                 new_tokens: int | None = None) -> dict[str, Any] | None:
    """run.json's ``energy`` entry for one precision, or None when the meter has no reading.

    joules_per_token: per generated token of the whole batch (``--task generate``), else None.
    """
    joules = meter.joules
    if joules is None or iters < 1 or batch_size < 1:
        return None
    per_iter = joules / iters
    return {
        "joules": round(joules, 6),
        "joules_per_iter": round(per_iter, 6),
        "joules_per_example": round(per_iter / batch_size, 6),
        "joules_per_token": round(per_iter / (batch_size * new_tokens), 6) if new_tokens else None,
        "seconds": round(meter.seconds, 6) if meter.seconds is not None else None,
        "mean_watts": round(meter.watts, 3) if meter.watts is not None else None,
        "source": SOURCE,
    }


def energy_line(entry: dict[str, Any] | None) -> str | None:
    """One line for a report or a compare: 'x J/iter, y J/example[, z J/token] (NVML)'."""
    if not isinstance(entry, dict) or entry.get("joules_per_iter") is None:
        return None
    bits = [f"{entry['joules_per_iter']:.3f} J/iter"]
    if entry.get("joules_per_example") is not None:
        bits.append(f"{entry['joules_per_example']:.4f} J/example")
    if entry.get("joules_per_token") is not None:
        bits.append(f"{entry['joules_per_token']:.4f} J/token")
    if entry.get("mean_watts") is not None:
        bits.append(f"{entry['mean_watts']:.0f} W mean")
    return ", ".join(bits) + " (NVML total energy)"
