"""`qtrace calibrate` without a GPU: one clear line and exit 2; the table and --show on a CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from qtrace.capture.calibrate import format_table, show_cached
from qtrace.gpu_peaks import calibration_path, match_device, save_calibration

REPO = Path(__file__).resolve().parent.parent


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


@pytest.mark.skipif(_has_cuda(), reason="this machine has a GPU")
def test_cpu_calibrate_is_one_line_exit_2(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "QTRACE_CACHE": str(tmp_path)}
    p = subprocess.run([sys.executable, "-m", "qtrace", "calibrate"], env=env, capture_output=True, text=True)
    assert p.returncode == 2
    assert p.stderr.strip() == "qtrace: error: calibrate needs a CUDA GPU"
    assert p.stdout == ""


def _fake_result(name: str) -> dict:
    spec = match_device(name)
    return {"device_name": name, "measured_at": "2026-11-23T12:00:00+00:00",
            "results": {"hbm_gbps": {"value": 2900.0, "median_ms": 0.74}, "fp16_tflops": {"value": 700.0,
                                                                                         "median_ms": 1.57},
                        "int8_tops": {"value": None, "error": "cuBLAS error"}},
            "datasheet": {"table_entry": spec.key, "peaks": spec.peaks(), "source": spec.source}}


def test_table_compares_with_datasheet():
    text = format_table(_fake_result("NVIDIA H100 80GB HBM3"))
    line = next(x for x in text.splitlines() if x.startswith("hbm_gbps"))
    assert "2,900.0" in line and "3,350.0" in line and "87%" in line
    assert "error: cuBLAS error" in text


def test_show_lists_table_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("QTRACE_CACHE", str(tmp_path))
    assert "No calibration cached" in show_cached()
    save_calibration("NVIDIA H100 80GB HBM3", _fake_result("NVIDIA H100 80GB HBM3"))
    assert calibration_path("NVIDIA H100 80GB HBM3").is_file()
    text = show_cached()
    assert "h100-sxm" in text and "rtx-4090" in text and "2,900.0" in text
