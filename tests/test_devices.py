"""The GPU peak table (datasheet names, sources) and the calibration cache's precedence."""

from __future__ import annotations

import json

import pytest

from qtrace.gpu_peaks import (
    KNOWN_DEVICES,
    PEAK_FIELDS,
    calibration_path,
    load_calibration,
    match_device,
    peak_table,
    peaks_for,
    slug,
)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("QTRACE_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize(("driver_name", "key"), [
    ("NVIDIA H100 80GB HBM3", "h100-sxm"),  # what the shared traces' deviceProperties say
    ("NVIDIA H100 PCIe", "h100-pcie"),
    ("NVIDIA H100 NVL", "h100-nvl"),
    ("NVIDIA H200", "h200-sxm"),
    ("NVIDIA H200 NVL", "h200-nvl"),
    ("NVIDIA A100-SXM4-40GB", "a100-40gb"),
    ("NVIDIA A100-PCIE-40GB", "a100-40gb"),
    ("NVIDIA A100-SXM4-80GB", "a100-80gb-sxm"),
    ("NVIDIA A100 80GB PCIe", "a100-80gb-pcie"),
    ("NVIDIA L4", "l4"),
    ("NVIDIA L40S", "l40s"),
    ("NVIDIA A10", "a10"),
    ("Tesla T4", "t4"),
    ("NVIDIA GeForce RTX 4090", "rtx-4090"),
    ("NVIDIA GeForce RTX 3090", "rtx-3090"),
])
def test_driver_names_match_their_datasheet_entry(driver_name, key):
    spec = match_device(driver_name)
    assert spec is not None and spec.key == key


@pytest.mark.parametrize("name", [None, "", "NVIDIA A10G", "NVIDIA GeForce RTX 3090 Ti", "Intel Xeon (2 logical CPUs)",
                                  "NVIDIA L40"])
def test_unknown_devices_have_no_entry(name):
    assert match_device(name) is None
    peaks = peaks_for(name)
    assert not peaks.known
    assert all(v is None for v in peaks.values.values())
    assert peaks.ops_per_s("fp16") is None and peaks.bandwidth_bps() is None


def test_every_entry_has_positive_peaks_and_a_vendor_source():
    for spec in KNOWN_DEVICES:
        assert spec.hbm_gbps > 0 and spec.fp16_tflops > 0 and spec.fp32_tflops > 0
        assert spec.int8_tops is None or spec.int8_tops >= spec.fp16_tflops  # int8 tensor rate >= fp16 everywhere
        assert "nvidia" in spec.source.lower() and "https://" in spec.source
    rows = peak_table()
    assert {r["key"] for r in rows} == {s.key for s in KNOWN_DEVICES}
    required = {"h100-sxm", "h100-pcie", "h200-sxm", "a100-40gb", "a100-80gb-sxm", "l4", "t4", "rtx-4090"}
    assert required <= {r["key"] for r in rows}


def test_h100_sxm_dense_figures():
    p = peaks_for("NVIDIA H100 80GB HBM3")
    assert p.values == {"hbm_gbps": 3350, "fp16_tflops": 989.5, "bf16_tflops": 989.5, "int8_tops": 1979.0,
                        "fp32_tflops": 67.0, "tf32_tflops": 494.5}
    assert p.ops_per_s("tf32") == pytest.approx(4.945e14)  # half the datasheet's with-sparsity 989
    assert set(p.sources.values()) == {"datasheet"}
    assert p.bandwidth_bps() == pytest.approx(3.35e12)
    assert p.ops_per_s("int8") == pytest.approx(1.979e15)
    assert p.ops_per_s("fp16") / p.bandwidth_bps() == pytest.approx(295.4, rel=1e-3)  # ridge point, flop/byte


def test_slug():
    assert slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert slug("NVIDIA A100-SXM4-40GB") == "nvidia-a100-sxm4-40gb"
    assert calibration_path("NVIDIA H100 80GB HBM3").name == "nvidia-h100-80gb-hbm3.json"


def _write_calibration(name: str, results: dict) -> None:
    path = calibration_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"device_name": name, "measured_at": "2026-11-23T12:00:00+00:00",
                                "results": results}))


def test_calibration_takes_precedence_field_by_field():
    name = "NVIDIA H100 80GB HBM3"
    _write_calibration(name, {"hbm_gbps": {"value": 2950.0, "median_ms": 0.7}, "fp16_tflops": {"value": 720.5},
                              "int8_tops": {"value": None, "error": "unsupported"}})
    p = peaks_for(name)
    assert p.values["hbm_gbps"] == 2950.0 and p.sources["hbm_gbps"] == "calibrated"
    assert p.values["fp16_tflops"] == 720.5 and p.sources["fp16_tflops"] == "calibrated"
    assert p.values["int8_tops"] == 1979.0 and p.sources["int8_tops"] == "datasheet"  # a failed metric keeps the sheet
    assert p.calibrated_at == "2026-11-23T12:00:00+00:00"
    assert "calibrated" in p.summary()
    assert peaks_for(name, use_calibration=False).values["hbm_gbps"] == 3350


def test_calibration_of_an_unknown_gpu_gives_it_peaks():
    name = "NVIDIA Mystery X1"
    _write_calibration(name, {f: {"value": 100.0} for f in PEAK_FIELDS})
    p = peaks_for(name)
    assert p.known and p.spec is None
    assert set(p.sources.values()) == {"calibrated"}


def test_damaged_calibration_file_is_ignored():
    path = calibration_path("NVIDIA L4")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{not json")
    assert load_calibration("NVIDIA L4") is None
    assert peaks_for("NVIDIA L4").values["hbm_gbps"] == 300


def test_calibrated_peak_far_below_the_datasheet_is_not_used_as_a_roof():
    # As measured on an H100: torch._int_mm reached 130 TOPS, a library path, not the int8 roof.
    name = "NVIDIA H100 80GB HBM3"
    _write_calibration(name, {"hbm_gbps": {"value": 3000.0}, "int8_tops": {"value": 130.4}})
    p = peaks_for(name)
    assert p.values["hbm_gbps"] == 3000.0 and p.sources["hbm_gbps"] == "calibrated"
    assert p.values["int8_tops"] == 1979.0 and p.sources["int8_tops"] == "datasheet"
    assert len(p.notes) == 1 and "int8_tops 130.4" in p.notes[0]
    assert p.to_dict()["notes"] == p.notes
