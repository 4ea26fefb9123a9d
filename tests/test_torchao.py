"""torchao backend on the CPU: every mode that runs here, its phases, coverage and refusals."""

from __future__ import annotations

import pandas as pd
import pytest
from _cli import run_cli
from _qtrace_tiny import tiny_checkpoint

from qtrace.analyzers.attribution import op_contexts, op_phases
from qtrace.analyzers.phase_rules import classify
from qtrace.analyzers.phases import coverage
from qtrace.backends import backend_for, unavailable
from qtrace.backends.torchao import phase_rules, support
from qtrace.errors import QtraceError
from qtrace.tracefile import load_trace

pytest.importorskip("torchao")

CPU_MODES = ["torchao-int8wo", "torchao-w8a8", "torchao-intx4", "torchao-fp8wo"]
# The phase of each mode's quantized GEMM, and the weight class its linears carry.
GEMM_PHASE = {"torchao-int8wo": "torchao.wo_gemm", "torchao-w8a8": "torchao.int8_gemm",
              "torchao-intx4": "torchao.wo_gemm", "torchao-fp8wo": "torchao.wo_gemm"}
WEIGHT_TAG = {"torchao-int8wo": "Int8Tensor", "torchao-w8a8": "Int8Tensor+act",
              "torchao-intx4": "IntxUnpackedToInt8Tensor", "torchao-fp8wo": "Float8Tensor"}


def _ctx(**kw: str) -> pd.DataFrame:
    row = {"kind": "cpu_op", "quant_op": "", "below_quant_op": "", "module": "", "weight": "", "ops": "",
           "kernel": ""}
    return pd.DataFrame([{**row, **kw}])


@pytest.mark.parametrize(("ctx", "phase"), [
    (dict(module="Linear", weight="Int8Tensor", ops="aten::mm"), "torchao.wo_gemm"),
    (dict(module="Linear", weight="", ops="aten::mm"), "dense.gemm"),  # a plain Linear stays dense
    (dict(module="Linear", ops="aten::mm"), "dense.gemm"),
    (dict(module="Linear", weight="Int8Tensor", ops="aten::_to_copy/aten::to"), "torchao.weight_dequant"),
    (dict(module="Linear", weight="Int8Tensor", ops="aten::mul"), "torchao.scale_apply"),
    (dict(module="Linear", weight="Int8Tensor+act", ops="aten::_int_mm"), "torchao.int8_gemm"),
    (dict(module="Linear", weight="Int8Tensor+act", ops="aten::mul"), "torchao.scale_apply"),
    (dict(module="Linear", weight="Int8Tensor+act", ops="aten::_local_scalar_dense/aten::item"), "torchao.repr_probe"),
    (dict(module="Linear", weight="Int8Tensor+act", ops="aten::as_strided/aten::select/aten::unbind"),
     "torchao.repr_probe"),
    (dict(kind="gpu_memcpy", module="Linear", weight="Int8Tensor+act", ops="aten::copy_/aten::_to_copy/aten::to"),
     "torchao.repr_probe"),
    (dict(module="Linear", weight="Int8Tensor+act", ops="aten::as_strided/aten::transpose/aten::t"), "torchao.glue"),
    (dict(module="Linear", weight="Int8Tensor", ops="aten::select"), "torchao.glue"),  # weight-only: no probe
    (dict(module="Linear", weight="Int8Tensor+act", quant_op="torchao::quantize_affine", ops="aten::round"),
     "torchao.act_quant"),
    (dict(module="Linear", weight="IntxUnpackedToInt8Tensor", quant_op="torchao::dequantize_affine",
          ops="aten::sub"), "torchao.weight_dequant"),
    (dict(module="Linear", weight="Float8Tensor", ops="aten::mul"), "torchao.weight_dequant"),
    (dict(kind="kernel", module="Linear", weight="Float8Tensor+act", ops="aten::_scaled_mm",
          kernel="sm90_xmma_gemm_e4m3"), "torchao.fp8_gemm"),
    (dict(kind="kernel", module="Linear", weight="Float8Tensor+act", ops="aten::abs", kernel="vectorized_elementwise"),
     "torchao.act_quant"),
    (dict(kind="kernel", module="Linear", weight="Int4TilePackedTo4dTensor", ops="aten::_weight_int4pack_mm",
          kernel="tinygemm_m16n8k16_chunk_kernel"), "torchao.int4_gemm"),
    (dict(kind="kernel", module="Linear", weight="Int4TilePackedTo4dTensor", ops="aten::constant_pad_nd/aten::pad",
          kernel="vectorized_elementwise"), "torchao.act_prep"),
    (dict(kind="kernel", ops="aten::_weight_int4pack_mm", kernel="tinygemm"), "torchao.int4_gemm"),  # no annotation
])
def test_rules(ctx: dict[str, str], phase: str) -> None:
    assert classify(_ctx(**ctx)).iloc[0] == phase


def test_rules_without_weight_column() -> None:
    """Callers that build contexts without the `weight` field still classify (as no subclass weight)."""
    df = _ctx(module="Linear", ops="aten::mm").drop(columns="weight")
    assert classify(df).iloc[0] == "dense.gemm"


def test_availability_reasons() -> None:
    assert unavailable("torchao-int8wo", "cpu") is None
    assert unavailable("fp32", "cpu") is None and unavailable("int8", "cpu") is None
    assert "needs a CUDA GPU" in unavailable("torchao-int4", "cpu")
    assert "compute capability >= 8.9" in unavailable("torchao-fp8", "cpu")
    assert "this GPU is 8.0" in unavailable("torchao-fp8", "cuda", (8, 0))
    assert unavailable("torchao-fp8", "cuda", (9, 0)) is None
    assert unavailable("torchao-int4", "cuda", (8, 0)) is None
    assert backend_for("torchao-w8a8").name == "torchao"
    assert set(support.MODES) == set(backend_for("torchao-w8a8").precisions)


def test_missing_package_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(support.importlib.util, "find_spec", lambda name: None)
    assert "torchao package is not installed" in support.unavailable("torchao-int8wo", "cpu", None)


def test_gpu_only_refused_on_cpu(tmp_path) -> None:
    import qtrace

    with pytest.raises(QtraceError, match="torchao-fp8 needs a CUDA GPU"):
        qtrace.profile(str(tiny_checkpoint("tiny-llama")), precisions="fp32,torchao-fp8", device="cpu",
                       out=tmp_path / "r", quiet=True)
    assert not (tmp_path / "r" / "run.json").exists()


def test_detect_precision() -> None:
    names = pd.Series(["aten::mm", "torchao::quantize_affine", "aten::_int_mm"])
    assert phase_rules.detect_precision(names) == "torchao-w8a8"
    assert phase_rules.detect_precision(pd.Series(["aten::_weight_int4pack_mm"])) == "torchao-int4"
    assert phase_rules.detect_precision(pd.Series(["aten::mm"])) is None


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory: pytest.TempPathFactory):
    import qtrace

    out = tmp_path_factory.mktemp("torchao") / "run"
    return qtrace.profile(str(tiny_checkpoint("tiny-llama")), precisions=["fp32", *CPU_MODES], device="cpu",
                          out=out, warmup=0, iters=1, profile_steps=1, seq_len=16, quiet=True)


@pytest.mark.slow
@pytest.mark.parametrize("precision", CPU_MODES)
def test_cpu_mode_phases(cpu_run, precision: str) -> None:
    entry = cpu_run.run["precisions"][precision]
    assert entry["status"] == "ok", entry.get("error")
    base = cpu_run.run["precisions"]["fp32"]
    assert entry["load"]["footprint_bytes"] < base["load"]["footprint_bytes"]  # int8 / int4 / fp8 weights
    trace = load_trace(cpu_run.trace_path(precision))
    ops = op_phases(trace)
    ctx = op_contexts(trace)
    names = set(ops["name"])
    assert f"qtrace.module:Linear:model.layers.0.mlp.up_proj:{WEIGHT_TAG[precision]}" in names
    assert "qtrace.module:Linear:lm_head" in names  # the head stays unquantized, and untagged
    cpu = ops[ops["cat"] == "cpu_op"]
    quantized = cpu[ctx.loc[cpu.index, "weight"].ne("")]
    gemms = quantized[quantized["name"].str.match(r"aten::(mm|addmm|_int_mm|matmul|linear)$")]
    assert len(gemms) and (gemms["phase"] == GEMM_PHASE[precision]).all()
    assert not quantized["phase"].eq("dense.gemm").any()  # no torchao GEMM passes for a dense one
    assert not quantized["phase"].eq("other").any()
    host_cov = cpu.loc[cpu["phase"] != "other", "self_us"].sum() / cpu["self_us"].sum()
    assert host_cov >= 0.99
    assert coverage(trace) >= 0.99


@pytest.mark.slow
def test_cpu_run_quality_and_report(cpu_run, capsys: pytest.CaptureFixture[str]) -> None:
    runs = cpu_run.run["precisions"]
    assert runs["fp32"]["quality"]["is_baseline"] is True
    for p in CPU_MODES:
        q = runs[p]["quality"]
        assert q["baseline"] == "fp32" and 0.0 <= q["top1_agreement"] <= 1.0 and q["kl_mean"] >= 0.0
        assert q["perplexity"] > 0 and q["baseline_perplexity"] == runs["fp32"]["quality"]["perplexity"]
    assert runs["torchao-int8wo"]["quality"]["kl_mean"] < runs["torchao-intx4"]["quality"]["kl_mean"]  # 8 < 4 bits
    code, out, err = run_cli(capsys, "report", str(cpu_run.out), "--format", "json")
    assert code == 0, err
    assert '"quality"' in out and '"top1_agreement"' in out
    code, out, err = run_cli(capsys, "compare", str(cpu_run.out))
    assert code == 0, err
    assert "Quality vs fp32" in out
