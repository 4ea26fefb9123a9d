"""qtrace's GPU busy/idle against HTA's temporal breakdown on the same trace.

The figures differ for stated reasons (HTA rounds timestamps inward to whole µs and uses a
GPU-only window: see qtrace.analyzers.crosscheck). The test applies those conventions and then
demands exact agreement, and checks that the rounding explains the whole gap.
"""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import msgspec
import pytest

from qtrace.analyzers.crosscheck import hta_convention
from qtrace.analyzers.trace_analysis import analyze_trace
from qtrace.tracefile.kineto import load_trace

hta_analysis = pytest.importorskip("hta.trace_analysis")  # installed by the test set-up ([hta] extra)

TRACES = Path(__file__).resolve().parent.parent / "traces"
INT8 = "h100_qwen05-shape_int8_bs1_seq128.json.gz"
FP16 = "h100_qwen05-shape-outliers_fp16_bs1_seq128.json.gz"
NF4 = "h100_modernbert-shape-outliers_nf4_bs1_seq128.json.gz"


def _hta(src: Path, tmp_path: Path):
    # HTA wants a plain JSON with distributedInfo.rank; give it a copy, never the committed file.
    with gzip.open(src, "rb") as fh:
        doc = msgspec.json.decode(fh.read())
    doc.setdefault("distributedInfo", {"rank": 0})
    dst = tmp_path / "rank0.json"
    dst.write_bytes(msgspec.json.encode(doc))
    logging.getLogger("hta").setLevel(logging.ERROR)
    return hta_analysis.TraceAnalysis(trace_dir=str(tmp_path), trace_files={0: dst.name})


@pytest.mark.parametrize("name", [INT8])
def test_busy_idle_match_hta_under_its_conventions(name, tmp_path):
    src = TRACES / name
    trace = load_trace(src)
    report = analyze_trace(trace)
    hta = _hta(src, tmp_path).get_temporal_breakdown(visualize=False).iloc[0].to_dict()
    ours = hta_convention(trace)
    hta_busy = hta["compute_time(us)"] + hta["non_compute_time(us)"]
    assert ours["busy_us"] == pytest.approx(hta_busy, abs=0.5)
    assert ours["compute_us"] == pytest.approx(hta["compute_time(us)"], abs=0.5)
    assert ours["span_us"] == pytest.approx(hta["kernel_time(us)"], abs=0.5)
    assert ours["idle_us"] == pytest.approx(hta["idle_time(us)"], abs=0.5)
    # The whole gap between qtrace's busy time and HTA's is the rounding of each event.
    assert report.host["gpu_busy_us"] - hta_busy == pytest.approx(ours["rounding_loss_us"], abs=0.5)
    assert ours["rounding_loss_us"] > 0


@pytest.mark.parametrize("name", [FP16, NF4])
def test_hta_fails_exactly_where_rounding_predicts(name, tmp_path):
    src = TRACES / name
    ours = hta_convention(load_trace(src))
    assert ours["non_compute_us"] < 0  # rounded sub-µs events: all-events busy < compute-only busy
    with pytest.raises(AssertionError):
        _hta(src, tmp_path).get_temporal_breakdown(visualize=False)
