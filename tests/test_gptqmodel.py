"""GPTQModel backend on the CPU: GPTQ and AWQ checkpoints built from a tiny model, their phases,
coverage and quality figures (checked against a dequantization done here, from the checkpoint)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _cli import run_cli
from _qtrace_tiny import tiny_checkpoint

from qtrace.analyzers.attribution import op_contexts, op_phases
from qtrace.analyzers.phase_rules import classify
from qtrace.analyzers.phases import coverage
from qtrace.backends import backend_for, unavailable
from qtrace.backends.gptqmodel import checkpoints, phase_rules, support
from qtrace.errors import QtraceError
from qtrace.tracefile import load_trace

if support.package_missing("gptq"):  # found, not imported: gptqmodel needs qtrace's import workaround
    pytest.skip(support.package_missing("gptq"), allow_module_level=True)

CPU_PRECISIONS = ["gptq-int4", "awq-int4"]
MODULE_CLASS = {"gptq-int4": "TorchLinear", "awq-int4": "AwqTorchLinear"}


def _ctx(**kw: str) -> pd.DataFrame:
    row = {"kind": "cpu_op", "quant_op": "", "below_quant_op": "", "module": "", "weight": "", "ops": "",
           "kernel": "", "quant_backend": ""}
    return pd.DataFrame([{**row, **kw}])


@pytest.mark.parametrize(("ctx", "phase"), [
    (dict(module="TorchLinear", ops="aten::mm/aten::matmul"), "gptqmodel.dequant_gemm"),
    (dict(module="AwqTorchLinear", ops="aten::mm/aten::matmul"), "gptqmodel.dequant_gemm"),
    (dict(module="Linear", ops="aten::mm"), "dense.gemm"),  # a plain Linear (the head) stays dense
    (dict(module="TorchLinear", ops="aten::bitwise_right_shift"), "gptqmodel.unpack"),
    (dict(module="AwqTorchLinear", ops="aten::bitwise_and"), "gptqmodel.unpack"),
    (dict(module="TorchLinear", ops="aten::copy_/aten::_to_copy/aten::to"), "gptqmodel.unpack"),
    (dict(module="TorchLinear", ops="aten::index"), "gptqmodel.dequant"),
    (dict(module="AwqTorchLinear", ops="aten::sub"), "gptqmodel.dequant"),
    (dict(module="TorchLinear", ops="aten::view"), "gptqmodel.glue"),
    (dict(kind="kernel", module="TritonV2Linear", ops="", kernel="dequant_kernel_248"), "gptqmodel.dequant"),
    (dict(kind="kernel", module="TritonV2Linear", ops="aten::mm/aten::matmul", kernel="sm90_xmma_gemm_f16f16"),
     "gptqmodel.dequant_gemm"),
    (dict(kind="kernel", module="MarlinLinear", quant_op="gptqmodel_marlin_fp16::gptq_marlin_gemm_fp16",
          ops="gptqmodel_marlin_fp16::gptq_marlin_gemm_fp16", kernel="marlin::Marlin<256, 4>"),
     "gptqmodel.int4_gemm"),
    (dict(kind="kernel", module="AwqMarlinLinear", quant_op="gptqmodel_marlin_fp16::awq_marlin_repack",
          kernel="awq_marlin_repack_kernel"), "gptqmodel.repack"),
    (dict(kind="kernel", module="MarlinLinear", ops="aten::zeros", kernel="vectorized_elementwise_kernel"),
     "gptqmodel.glue"),
    (dict(kind="kernel", kernel="marlin::Marlin<256, 1, 8, 8, 4, 8>", quant_backend="gptqmodel"),
     "gptqmodel.int4_gemm"),  # no op ancestry
    (dict(kind="kernel", kernel="marlin::Marlin<256, 1, 8, 8, 4, 8>"), "other"),  # trace shows no quantization
])
def test_rules(ctx: dict[str, str], phase: str) -> None:
    assert classify(_ctx(**ctx)).iloc[0] == phase


def test_availability_reasons() -> None:
    assert unavailable("gptq-int4", "cpu") is None and unavailable("awq-int4-torch", "cpu") is None
    assert "needs a CUDA GPU" in unavailable("gptq-int4-marlin", "cpu")
    assert "needs a CUDA GPU" in unavailable("gptq-int4-triton", "cpu")
    assert "this GPU is 7.5" in unavailable("awq-int4-marlin", "cuda", (7, 5))
    assert unavailable("gptq-int4-marlin", "cuda", (9, 0)) is None
    assert support.kernel_of("gptq-int4", "cuda", (9, 0)) == "marlin"
    assert support.kernel_of("gptq-int4", "cuda", (7, 5)) == "torch"
    assert support.kernel_of("awq-int4", "cpu", None) == "torch"
    assert backend_for("awq-int4").name == "gptqmodel"
    assert set(support.MODES) == set(backend_for("gptq-int4").precisions)


def test_missing_package_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(support.importlib.util, "find_spec", lambda name: None)
    assert "gptqmodel package is not installed" in support.unavailable("gptq-int4", "cpu", None)
    monkeypatch.setattr(support.importlib.util, "find_spec", lambda name: None if name == "optimum" else object())
    assert "optimum" in support.unavailable("gptq-int4", "cpu", None)
    assert support.unavailable("awq-int4", "cpu", None) is None  # AWQ loads without optimum


def test_gpu_only_refused_on_cpu(tmp_path: Path) -> None:
    import qtrace

    with pytest.raises(QtraceError, match="gptq-int4-marlin needs a CUDA GPU"):
        qtrace.profile(str(tiny_checkpoint("tiny-llama")), precisions="fp32,gptq-int4-marlin", device="cpu",
                       out=tmp_path / "r", quiet=True)
    assert not (tmp_path / "r" / "run.json").exists()


def test_detect_precision() -> None:
    assert phase_rules.detect_precision(pd.Series(["gptqmodel_marlin_fp16::gptq_marlin_gemm_fp16"])) \
        == "gptq-int4-marlin"
    assert phase_rules.detect_precision(pd.Series(["gptqmodel_marlin_fp16::awq_marlin_repack"])) == "awq-int4-marlin"
    assert phase_rules.detect_precision(pd.Series(["aten::mm"])) is None


def test_group_size_fits_the_model() -> None:
    assert checkpoints.group_size({"hidden_size": 896, "intermediate_size": 4864}) == 128
    assert checkpoints.group_size({"hidden_size": 64, "intermediate_size": 128}) == 64
    with pytest.raises(QtraceError):
        checkpoints.group_size({"hidden_size": 48})


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory: pytest.TempPathFactory):
    """One CLI run, fp32 + GPTQ + AWQ, with the checkpoints built into this session's cache."""
    root = tmp_path_factory.mktemp("gptqmodel")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QTRACE_CACHE", str(root / "cache"))
        from qtrace.cli import main  # run_cli needs capsys, which a module fixture cannot have

        try:
            main(["profile", str(tiny_checkpoint("tiny-llama")), "--precision", "fp32," + ",".join(CPU_PRECISIONS),
                  "--device", "cpu", "--warmup", "0", "--iters", "1", "--profile-steps", "1", "--seq-len", "16",
                  "--out", str(root / "run"), "--quiet"])
        except SystemExit as exc:
            assert not exc.code, f"qtrace profile exited {exc.code}"
        yield root, json.loads((root / "run" / "run.json").read_text())


@pytest.mark.slow
def test_checkpoints_built_once_and_cached(cpu_run, monkeypatch: pytest.MonkeyPatch) -> None:
    root, run = cpu_run
    from qtrace.capture import models

    for p in CPU_PRECISIONS:
        ck = run["precisions"][p]["checkpoint"]
        assert ck["source"] == "built" and ck["build_seconds"] > 0, ck
        assert ck["recipe"]["method"] == p.split("-")[0] and ck["recipe"]["group_size"] == 64
        folder = Path(ck["path"])
        assert folder.parent == root / "cache" / "quantized"
        assert checkpoints.is_quantized_folder(folder) == p.split("-")[0]
        assert (folder / "tokenizer.json").is_file()  # generated: the tiny model has none
    monkeypatch.setenv("QTRACE_CACHE", str(root / "cache"))
    spec = models.resolve_model(str(tiny_checkpoint("tiny-llama")))
    again = models.prepare_checkpoints(spec, ["fp32", *CPU_PRECISIONS], "cpu")
    assert set(again) == set(CPU_PRECISIONS)
    assert all(a["source"] == "cache" for a in again.values())
    assert again["gptq-int4"]["build_seconds"] == pytest.approx(run["precisions"]["gptq-int4"]["checkpoint"]
                                                               ["build_seconds"], abs=0.01)


@pytest.mark.slow
@pytest.mark.parametrize("precision", CPU_PRECISIONS)
def test_cpu_phases_and_coverage(cpu_run, precision: str) -> None:
    root, run = cpu_run
    entry = run["precisions"][precision]
    assert entry["status"] == "ok", entry.get("error")
    assert entry["load"]["footprint_bytes"] < run["precisions"]["fp32"]["load"]["footprint_bytes"]
    trace = load_trace(root / "run" / entry["trace"])
    ops = op_phases(trace)
    ctx = op_contexts(trace)
    names = set(ops["name"])
    assert f"qtrace.module:{MODULE_CLASS[precision]}:model.layers.0.mlp.up_proj" in names
    assert "qtrace.module:Linear:lm_head" in names  # the head stays unquantized
    cpu = ops[ops["cat"] == "cpu_op"]
    quantized = cpu[ctx.loc[cpu.index, "module"].eq(MODULE_CLASS[precision])]
    gemms = quantized[quantized["name"].str.match(r"aten::(mm|addmm|matmul)$")]
    assert len(gemms) and (gemms["phase"] == "gptqmodel.dequant_gemm").all()
    seen = set(quantized["phase"])
    assert {"gptqmodel.unpack", "gptqmodel.dequant", "gptqmodel.dequant_gemm"} <= seen
    assert not seen & {"dense.gemm", "other"}
    host_cov = cpu.loc[cpu["phase"] != "other", "self_us"].sum() / cpu["self_us"].sum()
    assert host_cov >= 0.99
    assert coverage(trace) >= 0.99


def _unpack_int4(packed: np.ndarray, axis: int) -> np.ndarray:
    """8 nibbles per int32, lowest first, along `axis` (GPTQ's layout)."""
    words = packed.astype(np.uint32)
    nibbles = np.stack([(words >> (4 * i)) & 0xF for i in range(8)], axis=axis + 1)
    shape = list(packed.shape)
    shape[axis] *= 8
    return nibbles.reshape(shape).astype(np.float32)


def _gptq_dense_weights(folder: Path) -> dict[str, np.ndarray]:
    """Every GPTQ linear of the checkpoint dequantized here, with numpy: W = s[g] * (q - z[g]),
    zeros stored minus one (GPTQ v1 format), as an [out, in] float32 weight."""
    from safetensors.numpy import load_file

    tensors = load_file(str(folder / "model.safetensors"))
    out = {}
    for key in [k for k in tensors if k.endswith(".qweight")]:
        base = key[: -len(".qweight")]
        q = _unpack_int4(tensors[key].view(np.int32), axis=0)  # [in, out]
        z = _unpack_int4(tensors[base + ".qzeros"].view(np.int32), axis=1) + 1  # [groups, out]
        s = tensors[base + ".scales"].astype(np.float32)  # [groups, out]
        g = tensors[base + ".g_idx"].astype(np.int64)  # [in]
        out[base + ".weight"] = (s[g] * (q - z[g])).T.copy()
    return out


@pytest.mark.slow
def test_quality_against_own_dequant(cpu_run) -> None:
    """The GPTQ quality block matches a dense fp32 model built from weights dequantized here, and
    the AWQ one matches logits computed here from the loaded models."""
    import torch
    from transformers import AutoModelForCausalLM

    from qtrace.analyzers import quality as figures
    from qtrace.capture import models
    from qtrace.capture.protocol import prompt_ids

    root, run = cpu_run
    base_path = tiny_checkpoint("tiny-llama")
    base = AutoModelForCausalLM.from_pretrained(str(base_path), dtype=torch.float32, use_safetensors=True).eval()
    models._ensure_pad_token(base)  # as qtrace does: the prompts' pad id is the eos id here
    inputs = run["precisions"]["gptq-int4"]["quality"]["inputs"]
    ids = prompt_ids(int(base.config.vocab_size), int(base.config.pad_token_id), inputs["rows"],
                     inputs["seq_len"], inputs["seed"])
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        base_logits = base(input_ids=ids, attention_mask=mask, use_cache=False).logits.float().numpy()

    dense = AutoModelForCausalLM.from_pretrained(str(base_path), dtype=torch.float32, use_safetensors=True).eval()
    weights = _gptq_dense_weights(Path(run["precisions"]["gptq-int4"]["checkpoint"]["path"]))
    state = dense.state_dict()
    assert set(weights) <= set(state) and len(weights) == 2 * 7  # 2 layers x 7 linears
    dense.load_state_dict({**state, **{k: torch.from_numpy(v) for k, v in weights.items()}})
    with torch.inference_mode():
        mine = dense(input_ids=ids, attention_mask=mask, use_cache=False).logits.float().numpy()
    recorded = run["precisions"]["gptq-int4"]["quality"]
    diff = np.abs(mine - base_logits)
    assert recorded["max_abs_diff"] == pytest.approx(float(diff.max()), rel=0.05, abs=2e-3)
    assert recorded["mean_abs_diff"] == pytest.approx(float(diff.mean()), rel=0.05, abs=2e-4)
    agree = float((mine.argmax(-1) == base_logits.argmax(-1)).mean())
    assert abs(recorded["top1_agreement"] - agree) <= 2 / mine[..., 0].size

    spec = models.resolve_model(str(base_path))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QTRACE_CACHE", str(root / "cache"))
        loaded = models.load_model(spec, "awq-int4", "forward", torch.device("cpu"))
    with torch.inference_mode():
        awq = loaded.model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float().numpy()
    recorded = run["precisions"]["awq-int4"]["quality"]
    diff = np.abs(awq - base_logits)
    assert recorded["max_abs_diff"] == pytest.approx(float(diff.max()), rel=1e-3, abs=1e-4)
    assert recorded["mean_abs_diff"] == pytest.approx(float(diff.mean()), rel=1e-3, abs=1e-5)
    kl = figures.quality_block("fp32", inputs, base_logits, awq, ids.numpy(), None)["kl_mean"]
    assert recorded["kl_mean"] == pytest.approx(kl, rel=1e-3, abs=1e-7)
    for p in CPU_PRECISIONS:
        assert run["precisions"][p]["quality"]["baseline"] == "fp32"


@pytest.mark.slow
def test_report_and_compare(cpu_run, capsys: pytest.CaptureFixture[str]) -> None:
    root, _ = cpu_run
    code, out, err = run_cli(capsys, "report", str(root / "run"))
    assert code == 0, err
    assert "gptqmodel.dequant_gemm" in out and "gptqmodel.unpack" in out
    code, out, err = run_cli(capsys, "compare", str(root / "run"))
    assert code == 0, err
    assert "Quality vs fp32" in out and "awq-int4" in out
