"""EnergyMeter: NVML's total energy counter around a pass. Fakes stand in only where NVML is
absent; on a machine with a working NVML GPU the real counter is read instead."""

from __future__ import annotations

import sys
import types

import pytest

from qtrace.capture import energy
from qtrace.capture.energy import EnergyMeter, energy_block, energy_line


def _real_nvml_gpu() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml.nvmlDeviceGetCount() > 0
    except Exception:
        return False


REAL = _real_nvml_gpu()
fake_only = pytest.mark.skipif(REAL, reason="a real NVML GPU is present: tested against the real counter")


class _NVMLError(Exception):
    pass


def _fake_pynvml(readings: list[int] | None, supported: bool = True, init_fails: bool = False):
    mod = types.ModuleType("pynvml")
    mod.NVMLError = _NVMLError
    calls = {"init": 0, "handle": []}
    it = iter(readings or [])

    def nvmlInit():  # noqa: N802 (NVML's names)
        calls["init"] += 1
        if init_fails:
            raise _NVMLError("Driver Not Loaded")

    def nvmlDeviceGetHandleByIndex(i):  # noqa: N802
        calls["handle"].append(i)
        return f"handle-{i}"

    def nvmlDeviceGetTotalEnergyConsumption(handle):  # noqa: N802
        if not supported:
            raise _NVMLError("Not Supported")
        return next(it)

    mod.nvmlInit = nvmlInit
    mod.nvmlDeviceGetHandleByIndex = nvmlDeviceGetHandleByIndex
    mod.nvmlDeviceGetTotalEnergyConsumption = nvmlDeviceGetTotalEnergyConsumption
    mod.calls = calls
    return mod


@fake_only
def test_joules_from_counter_delta(monkeypatch):
    fake = _fake_pynvml([1_000_000, 1_012_500])  # mJ
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    with EnergyMeter(index=1) as m:
        pass
    assert m.joules == pytest.approx(12.5)
    assert fake.calls["handle"] == [1] and m.seconds is not None and m.seconds >= 0
    block = energy_block(m, iters=5, batch_size=4)
    assert block["joules_per_iter"] == pytest.approx(2.5)
    assert block["joules_per_example"] == pytest.approx(0.625)
    assert block["joules_per_token"] is None and block["source"] == "nvml_total_energy"
    gen = energy_block(m, iters=5, batch_size=4, new_tokens=10)
    assert gen["joules_per_token"] == pytest.approx(2.5 / 40)
    assert "J/token" in energy_line(gen) and "J/example" in energy_line(block)


@fake_only
def test_unsupported_counter_gives_none(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml(None, supported=False))
    with EnergyMeter(index=0) as m:
        pass
    assert m.joules is None and "Not Supported" in (m.error or "")
    assert energy_block(m, iters=3, batch_size=1) is None


@fake_only
def test_nvml_init_failure_gives_none(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml([1, 2], init_fails=True))
    with EnergyMeter(index=0) as m:
        pass
    assert m.joules is None and m.error == "NVML unavailable"


@fake_only
def test_counter_going_backwards_gives_none(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml([5000, 10]))
    with EnergyMeter(index=0) as m:
        pass
    assert m.joules is None and "backwards" in m.error


@fake_only
def test_no_pynvml_module_gives_none(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import raises ImportError
    with EnergyMeter(index=0) as m:
        pass
    assert m.joules is None


def test_cpu_device_gives_none():
    torch = pytest.importorskip("torch")
    with EnergyMeter(torch.device("cpu")) as m:
        pass
    assert m.joules is None and m.error == "not a CUDA device"


def test_energy_line_without_energy():
    assert energy_line(None) is None and energy_line({"joules_per_iter": None}) is None


@pytest.mark.skipif(not REAL, reason="needs a GPU with NVML")
def test_real_counter_reads():  # pragma: no cover - GPU machines only
    import time

    with EnergyMeter(index=0) as m:
        time.sleep(0.5)
    assert m.error is None or "Not Supported" in m.error
    if m.joules is not None:
        assert m.joules >= 0 and energy.SOURCE == "nvml_total_energy"


def test_report_headline_shows_energy_from_run_json():
    from pathlib import Path

    from qtrace.analyzers.trace_analysis import analyze_trace
    from qtrace.reports.trace_report import headline
    from qtrace.tracefile.kineto import load_trace

    tr = load_trace(Path(__file__).resolve().parent.parent / "traces" / "h100_qwen05-shape_int8_bs1_seq128.json.gz")
    measured = {"energy": {"joules_per_iter": 3.2, "joules_per_example": 3.2, "joules_per_token": None,
                           "source": "nvml_total_energy"}}
    lines = headline(analyze_trace(tr, measured=measured))
    assert any(line.startswith("Energy (nvml_total_energy") and "3.200 J per iteration" in line for line in lines)
