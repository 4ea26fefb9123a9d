"""LLM.int8 outlier counts: from CPU traces of a tiny int8 Llama with and without outlier dims
(checked against k computed here from each layer's real input), and on the H100 int8 trace."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qtrace.analyzers.phases import phase_table
from qtrace.analyzers.trace_analysis import analyze_trace
from qtrace.backends.bitsandbytes import outliers
from qtrace.reports.trace_report import render_markdown
from qtrace.tracefile.kineto import load_trace

TRACES = Path(__file__).resolve().parent.parent / "traces"
INT8 = TRACES / "h100_qwen05-shape_int8_bs1_seq128.json.gz"
FP16 = TRACES / "h100_qwen05-shape-outliers_fp16_bs1_seq128.json.gz"
NF4 = TRACES / "h100_modernbert-shape-outliers_nf4_bs1_seq128.json.gz"
OUTLIER_DIMS = [3, 10, 17, 29, 40, 55]  # 6 hidden dims, scaled x30 in every norm weight
THRESHOLD = 6.0


# --- the H100 trace (no outlier dims) ----------------------------------------------------


def test_h100_int8_trace_routes_no_columns():
    tr = load_trace(INT8)
    calls = outliers.outlier_calls(tr)
    assert len(calls) == 504  # 168 int8 linears x 3 passes
    assert (calls["k"] == 0).all() and calls["decomposed"].all()
    assert calls["k_source"].eq("int8_mixed_scaled_mm outlier_cols").all()
    assert set(zip(calls["K"], calls["N"], strict=True)) == {(896, 896), (896, 128), (896, 4864), (4864, 896)}
    assert (calls["T"] == 128).all()
    s = outliers.outlier_section(tr)
    assert s["calls_with_outliers"] == 0 and s["k_max"] == 0 and s["rows_by"] == "call"
    pt = phase_table(tr).set_index("phase")
    # The outlier check still runs (and syncs) every call: its time is the price of the threshold.
    assert s["phase_time"]["int8.outlier_detect"]["gpu_time_us"] == pytest.approx(pt.loc["int8.outlier_detect",
                                                                                          "gpu_time_us"])
    assert s["outlier_gpu_us"] == pytest.approx(pt.loc["int8.outlier_detect", "gpu_time_us"])
    assert s["outlier_syncs"] == pt.loc["int8.outlier_detect", "host_syncs"]
    assert "k = 0 everywhere" in s["summary"]
    json.dumps(s, allow_nan=False)


@pytest.mark.parametrize("path", [FP16, NF4], ids=lambda p: p.name)
def test_no_section_without_int8_layers(path):
    assert outliers.outlier_section(load_trace(path)) is None
    assert "outliers" not in analyze_trace(load_trace(path)).to_dict()


# --- CPU traces of a tiny int8 model -----------------------------------------------------


def _annotate(model, record_function):
    """qtrace.module:<Class>:<name> ranges around every linear, as qtrace profile records them."""
    import torch

    handles = []
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and "lm_head" not in name:
            label = f"qtrace.module:{type(mod).__name__}:{name}"
            stack = []

            def pre(_m, _a, label=label, stack=stack):
                rf = record_function(label)
                rf.__enter__()
                stack.append(rf)

            def post(_m, _a, _o, stack=stack):
                stack.pop().__exit__(None, None, None)

            handles += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]
    return handles


def _expected_k(model, ids):
    """k per linear, from its actual input: columns where any |x| >= threshold (in fp16, as bnb)."""
    import torch

    seen: dict[str, list[int]] = {}
    handles = []
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and "lm_head" not in name:
            def hook(_m, args, name=name):
                x = args[0].reshape(-1, args[0].shape[-1]).half()
                seen.setdefault(name, []).append(int((x.abs() >= THRESHOLD).any(dim=0).sum()))
            handles.append(mod.register_forward_pre_hook(hook))
    with torch.inference_mode():
        model(input_ids=ids)
    for h in handles:
        h.remove()
    return {k: v[0] for k, v in seen.items()}


def _profile(model, ids, path: Path, annotate: bool) -> Path:
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    handles = _annotate(model, record_function) if annotate else []
    try:
        with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for _ in range(2):
                with record_function("qtrace.step:forward"):
                    model(input_ids=ids)
                prof.step()
    finally:
        for h in handles:
            h.remove()
    prof.export_chrome_trace(str(path))
    return path


@pytest.fixture(scope="module")
def cpu_int8(tmp_path_factory):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("bitsandbytes")
    tmp = tmp_path_factory.mktemp("outliers")
    cfg = transformers.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(tmp / "ckpt", safe_serialization=True)

    def load(threshold: float):
        q = transformers.BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=threshold)
        m = transformers.AutoModelForCausalLM.from_pretrained(tmp / "ckpt", quantization_config=q,
                                                              device_map={"": "cpu"}, dtype=torch.float32)
        return m.eval()

    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))
    model = load(THRESHOLD)
    out = {"plain": _profile(model, ids, tmp / "plain.json", annotate=False),
           "plain_k": _expected_k(model, ids)}
    with torch.no_grad():
        for mod in model.modules():
            if "norm" in type(mod).__name__.lower():
                mod.weight[OUTLIER_DIMS] *= 30.0
    out["outliers_k"] = _expected_k(model, ids)
    out["outliers"] = _profile(model, ids, tmp / "outliers.json", annotate=True)
    off = load(0.0)
    out["off"] = _profile(off, ids, tmp / "off.json", annotate=True)
    return out


@pytest.mark.slow
def test_cpu_without_outlier_dims_counts_zero(cpu_int8):
    assert set(cpu_int8["plain_k"].values()) == {0}  # random weights: nothing reaches 6.0
    tr = load_trace(cpu_int8["plain"])
    calls = outliers.outlier_calls(tr)
    assert len(calls) == 2 * 2 * 7  # 2 steps x 2 layers x 7 linears
    assert (calls["k"] == 0).all()
    assert list(calls.groupby("step").size()) == [14, 14]
    s = outliers.outlier_section(tr)
    assert s["calls_with_outliers"] == 0 and s["rows_by"] == "call"


@pytest.mark.slow
def test_cpu_outlier_dims_per_layer_and_step_match_real_inputs(cpu_int8):
    expected = cpu_int8["outliers_k"]
    assert all(expected[f"model.layers.{i}.self_attn.q_proj"] >= len(OUTLIER_DIMS) for i in range(2))
    tr = load_trace(cpu_int8["outliers"])
    calls = outliers.outlier_calls(tr)
    assert calls["module"].notna().all() and calls["module_class"].eq("Linear8bitLt").all()
    assert (calls["k"] > 0).any()
    for r in calls.itertuples():
        assert r.k == expected[r.module], r.module  # the same k in both steps (same input)
        assert r.share == pytest.approx(r.k / r.K)
    s = outliers.outlier_section(tr)
    assert s["rows_by"] == "layer_and_step"
    rows = {(r["module"], r["step"]): r for r in s["rows"]}
    assert len(rows) == 2 * 14 and {r["step"] for r in s["rows"]} == {0, 1}
    q0 = rows[("model.layers.0.self_attn.q_proj", 0)]
    assert q0["k"] == expected["model.layers.0.self_attn.q_proj"] and q0["layer_index"] == 0 and q0["calls"] == 1
    assert q0["K"] == 64 and q0["N"] == 64
    assert s["calls_with_outliers"] == sum(1 for r in calls.itertuples() if r.k > 0)
    assert s["phase_time"] and set(s["phase_time"]) <= set(outliers.OUTLIER_PHASES)
    assert s["outlier_cpu_us"] > 0
    layers = {r["module"]: r for r in s["layers"]}
    assert layers["model.layers.1.mlp.gate_proj"]["calls"] == 2
    md = render_markdown([analyze_trace(tr)])
    assert "### LLM.int8 outliers" in md and "model.layers.0.self\\_attn.q\\_proj" in md
    json.dumps(analyze_trace(tr).to_dict()["outliers"], allow_nan=False)


@pytest.mark.slow
def test_cpu_threshold_zero_turns_decomposition_off(cpu_int8):
    tr = load_trace(cpu_int8["off"])
    assert not (tr.ops["name"] == outliers.MIXED_OP).any()
    calls = outliers.outlier_calls(tr)
    assert len(calls) == 28 and not calls["decomposed"].any() and (calls["k"] == 0).all()
    s = outliers.outlier_section(tr)
    assert s["decomposed_calls"] == 0 and "decomposition off" in s["summary"]
    assert "int8.outlier_gemm" not in s["phase_time"] and "int8.outlier_gather" not in s["phase_time"]
