"""HTML reports and charts: self-contained (no URL anywhere), escaped, rendered without a display."""

from __future__ import annotations

import base64
import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from _synthetic_trace import stepped_trace, write_trace

from qtrace.analyzers.compare import compare_reports
from qtrace.analyzers.phase_rules import PHASE_ORDER
from qtrace.analyzers.trace_analysis import analyze_trace
from qtrace.cli import main
from qtrace.reports import charts
from qtrace.reports.html import compare_charts, compare_html, report_html
from qtrace.tracefile.kineto import load_trace

TRACES = Path(__file__).resolve().parent.parent / "traces"
FP16 = TRACES / "h100_qwen05-shape-outliers_fp16_bs1_seq128.json.gz"
NF4 = TRACES / "h100_modernbert-shape-outliers_nf4_bs1_seq128.json.gz"
HOSTILE = "<script>alert(1)</script>"
EXTERNAL = [re.compile(p, re.I) for p in (r"https?://", r"//cdn", r"\bsrc\s*=\s*[\"'](?!data:image/png;base64,)",
                                          r"<link\b", r"<script\b", r"@import", r"url\(", r"\bhref\s*=")]


def _check_self_contained(page: str) -> None:
    # Base64 data can hold "//" by chance; look for URLs outside the data URIs only.
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "data:image/png;base64,", page)
    for pattern in EXTERNAL:
        assert not pattern.search(text), pattern.pattern


@pytest.fixture(scope="module")
def hostile_trace(tmp_path_factory) -> Path:
    """A copy of the NF4 trace whose heaviest kernel is named like an XSS payload."""
    with gzip.open(NF4, "rt") as fh:
        doc = json.load(fh)
    top = analyze_trace(load_trace(NF4)).kernels.iloc[0]["name"]
    n = 0
    for e in doc["traceEvents"]:
        if e.get("name") == top and e.get("cat") == "kernel":
            e["name"] = HOSTILE
            n += 1
    assert n > 0
    return write_trace(doc, tmp_path_factory.mktemp("hostile") / "hostile_trace.json.gz")


@pytest.fixture(scope="module")
def hostile_report(hostile_trace):
    return analyze_trace(load_trace(hostile_trace))


@pytest.fixture(scope="module")
def fp16_report():
    return analyze_trace(load_trace(FP16))


def test_report_html_escapes_a_hostile_kernel_name(hostile_report):
    assert hostile_report.kernels.iloc[0]["name"] == HOSTILE
    page = report_html([hostile_report], ["annotated_trace.json.gz"])
    assert HOSTILE not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    _check_self_contained(page)


def test_compare_html_escapes_and_is_self_contained(fp16_report, hostile_report):
    c = compare_reports([fp16_report, hostile_report])
    page = compare_html(c, compare_charts(c, top=4), ["x.annotated_trace.json.gz"], top=4)
    assert HOSTILE not in page and "&lt;script&gt;" in page
    _check_self_contained(page)
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) >= 4  # waterfall, phase stacks, busy/idle, kernels
    for img in images:
        png = base64.b64decode(img)
        assert png.startswith(b"\x89PNG") and b"matplotlib.org" not in png  # no Software tag with its URL


def test_report_out_writes_html_md_and_annotated_trace(capsys, hostile_trace, tmp_path):
    out = tmp_path / "rep"
    try:
        main(["report", str(hostile_trace), "--out", str(out)])
    except SystemExit as exc:  # pragma: no cover - a failure shows its message
        pytest.fail(f"exit {exc.code}: {capsys.readouterr().err}")
    for name in ("report.md", "report.html", "annotated_trace.json.gz"):
        assert (out / name).is_file(), name
    page = (out / "report.html").read_text()
    assert HOSTILE not in page and "annotated_trace.json.gz" in page
    _check_self_contained(page)
    assert HOSTILE not in (out / "report.md").read_text()


def test_charts_render_without_a_display(tmp_path):
    """A fresh interpreter with no DISPLAY and an interactive MPLBACKEND still renders PNGs."""
    script = (
        "import sys\n"
        "from qtrace.reports import charts\n"
        "import pandas as pd\n"
        "df = pd.DataFrame({'gpu_time_us': [1.0, 2.0], 'exposed_us': [3.0, 4.0]}, index=['int8.gemm', 'other'])\n"
        "png = charts.to_png(charts.phase_stack_chart([('a', df), ('b', df)], 'pass'))\n"
        "assert png.startswith(b'\\x89PNG'), png[:8]\n"
        "import matplotlib\n"
        "print(matplotlib.get_backend())\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    for backend in (None, "TkAgg"):
        if backend:
            env["MPLBACKEND"] = backend
        else:
            env.pop("MPLBACKEND", None)
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr


def test_waterfall_bars_add_up_after_merging(fp16_report, hostile_report):
    c = compare_reports([fp16_report, hostile_report])
    steps = c.comparisons[0].trace_waterfall
    merged = charts._merge_small(steps[1:-1], top=2)
    assert len(merged) <= 6
    total = sum(s["value_us"] for s in merged)
    assert total == pytest.approx(steps[-1]["value_us"] - steps[0]["value_us"], abs=1.0)  # only < 0.5 us bars dropped


def test_one_colour_per_phase():
    assert list(charts.PHASE_COLORS) == PHASE_ORDER
    assert len(set(charts.PHASE_COLORS.values())) == len(PHASE_ORDER)


@pytest.mark.parametrize(("name", "short"), [
    ("void at::native::reduce_kernel<512, 1, at::native::ReduceOp<bool, at::native::func_wrapper_t<bool, "
     "at::native::or_kernel_cuda(at::TensorIterator&)::{lambda()#1}>, unsigned int, bool, 4, 4> >(at::native::"
     "ReduceOp<bool>)", "reduce_kernel · or_kernel_cuda"),
    ("void cutlass::Kernel2<cutlass_80_tensorop_i16832gemm_s8_64x64_128x6_tn_align16>(cutlass_80_tensorop_"
     "i16832gemm_s8_64x64_128x6_tn_align16::Params)", "cutlass_80_tensorop_i16832gemm_s8_64x64_128x6_tn_al…"),
    ("void kInt8VectorQuant<__half, 1024, 1>(__half*, signed char*, float*, float, int, int)",
     "kInt8VectorQuant<__half, 1024, 1>"),
    ("void at::native::elementwise_kernel<128, 4, at::native::gpu_kernel_impl_nocast<at::native::BinaryFunctor<"
     "c10::Half, c10::Half, c10::Half, at::native::binary_internal::MulFunctor<float> > >(at::TensorIteratorBase&)"
     "::{lambda(int)#1}>(int)", "elementwise_kernel · MulFunctor"),
    ("void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<c10::Half, float, false>(int, float)",
     "vectorized_layer_norm_kernel<Half, float, false>"),
    ("Memcpy DtoH (Device -> Pinned)", "Memcpy DtoH (Device -> Pinned)"),
])
def test_short_kernel_names(name, short):
    assert charts.short_kernel_name(name) == short


def test_step_chart_uses_profiler_steps(tmp_path):
    r = analyze_trace(load_trace(write_trace(stepped_trace(3), tmp_path / "s_trace.json.gz")))
    rows = charts.busy_idle_rows("x", r, 3)
    assert [row[0] for row in rows] == ["x · step 0", "x · step 1", "x · step 2"]
    assert charts.to_png(charts.busy_idle_chart(rows, "t")).startswith(b"\x89PNG")
