"""Presets, model resolution, loading at a precision, and the outlier emulation (CPU)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from _qtrace_tiny import TINY, tiny_checkpoint

from qtrace.capture import models
from qtrace.errors import QtraceError

CPU = torch.device("cpu")


def _spec(preset: str, **extra: int) -> models.ModelSpec:
    return models.ModelSpec(preset, tiny_checkpoint(preset, **extra), "local", None, models.PRESETS[preset].kind)


# ---------------------------------------------------------------------------------------
# Real preset shapes, without materialising a single weight


def test_qwen_preset_has_qwen25_05b_shape() -> None:
    cfg = models.PRESETS["qwen2.5-0.5b"].config()
    assert (cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size) == (151936, 896, 4864)
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (24, 14, 2)
    assert cfg.tie_word_embeddings is True
    # Qwen2.5-0.5B's published size (tied embeddings counted once): 494,032,768.
    assert models.count_params(cfg, "decoder") == 494_032_768


def test_modernbert_preset_has_modernbert_base_shape() -> None:
    cfg = models.PRESETS["modernbert-base"].config()
    assert (cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size) == (50368, 768, 1152)
    assert (cfg.num_hidden_layers, cfg.num_attention_heads) == (22, 12)
    assert 149e6 < models.count_params(cfg, "encoder") < 150.5e6  # ModernBERT-base: 149M


@pytest.mark.parametrize("name", sorted(models.PRESETS))
def test_presets_fit_cpu_nf4_shapes(name: str) -> None:
    """bitsandbytes' CPU NF4 path needs out % 32 == 0 and in % 64 == 0 for every quantized linear."""
    cfg = models.PRESETS[name].config()
    assert cfg.hidden_size % 64 == 0 and cfg.intermediate_size % 64 == 0


def test_preset_config_overrides_build_smaller_variants() -> None:
    cfg = models.PRESETS["modernbert-base"].config(num_hidden_layers=4, hidden_size=64)
    assert cfg.num_hidden_layers == 4 and len(cfg.layer_types) == 4 and cfg.hidden_size == 64
    assert models.PRESETS["modernbert-base"].config().num_hidden_layers == 22  # presets stay untouched


# ---------------------------------------------------------------------------------------
# Loading each family at fp32 / int8 / nf4


@pytest.mark.parametrize("preset", ["tiny-llama", "qwen2.5-0.5b", "modernbert-base"])
def test_load_each_family_at_fp32_int8_nf4(preset: str) -> None:
    import bitsandbytes as bnb

    spec = _spec(preset)
    expected = {"fp32": torch.nn.Linear, "int8": bnb.nn.Linear8bitLt, "nf4": bnb.nn.Linear4bit}
    footprints = {}
    logits = {}
    ids = torch.randint(3, 256, (2, 24), generator=torch.Generator().manual_seed(0))
    for precision, cls in expected.items():
        loaded = models.load_model(spec, precision, "forward", CPU)
        model = loaded.model
        linears = [m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n]
        assert linears and all(type(m) is cls for m in linears), precision
        head = model.get_output_embeddings()
        assert type(head) is torch.nn.Linear, "the LM head stays in full precision"
        assert loaded.load_seconds > 0
        footprints[precision] = loaded.footprint_bytes
        with torch.inference_mode():
            logits[precision] = model(input_ids=ids).logits.float()
        assert logits[precision].shape == (2, 24, 256)
        assert torch.isfinite(logits[precision]).all()
        models.free_model(loaded)
    assert footprints["nf4"] < footprints["int8"] < footprints["fp32"]
    # Quantized models compute the same function, approximately: same weights, not noise.
    for precision in ("int8", "nf4"):
        cos = torch.nn.functional.cosine_similarity(logits[precision].flatten(), logits["fp32"].flatten(), dim=0)
        assert cos > 0.9, (precision, float(cos))


def test_nf4_on_cpu_warns_about_fp32_compute_and_int8_about_casts() -> None:
    spec = _spec("tiny-llama")
    nf4 = models.load_model(spec, "nf4", "forward", CPU)
    assert nf4.compute_dtype == "float32" and any("SGEMM" in w for w in nf4.warnings)
    int8 = models.load_model(spec, "int8", "forward", CPU)
    assert any("float16" in w for w in int8.warnings)
    fp32 = models.load_model(spec, "fp32", "forward", CPU)
    assert fp32.warnings == []


@pytest.mark.parametrize("precision", ["int8", "nf4"])
def test_classify_head_with_bias_stays_full_precision(precision: str) -> None:
    """ModernBERT's classifier has a bias; transformers' own skip rule misses it and leaves an
    unquantized bnb layer that crashes in forward."""
    loaded = models.load_model(_spec("modernbert-base"), precision, "classify", CPU)
    assert type(loaded.model.classifier) is torch.nn.Linear
    with torch.inference_mode():
        out = loaded.model(input_ids=torch.randint(3, 256, (1, 16)))
    assert out.logits.shape == (1, models.CLASSIFY_LABELS)


def test_bf16_and_fp16_load_in_their_dtype() -> None:
    spec = _spec("qwen2.5-0.5b")
    for precision, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        loaded = models.load_model(spec, precision, "forward", CPU)
        assert next(loaded.model.parameters()).dtype == dtype
        assert loaded.compute_dtype == str(dtype).removeprefix("torch.")


# ---------------------------------------------------------------------------------------
# Outlier emulation


def _outlier_columns(model: torch.nn.Module, ids: torch.Tensor, threshold: float) -> dict[str, set[int]]:
    """Input columns with any |x| > threshold, per Linear8bitLt, seen by a pre-hook."""
    import bitsandbytes as bnb

    seen: dict[str, set[int]] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, bnb.nn.Linear8bitLt):
            def hook(_m: torch.nn.Module, args: tuple, name: str = name) -> None:
                x = args[0].reshape(-1, args[0].shape[-1])
                seen[name] = set(torch.nonzero((x.abs() > threshold).any(dim=0)).flatten().tolist())
            handles.append(module.register_forward_pre_hook(hook))
    with torch.inference_mode():
        model(input_ids=ids)
    for h in handles:
        h.remove()
    return seen


def test_outlier_dims_produce_int8_outlier_columns() -> None:
    spec = _spec("tiny-llama")
    ids = torch.randint(3, 256, (1, 64), generator=torch.Generator().manual_seed(1))
    plain = models.load_model(spec, "int8", "forward", CPU).model
    before = _outlier_columns(plain, ids, 6.0)
    assert before and all(not cols for cols in before.values()), "random weights alone have no outliers"

    scaled = models.load_model(spec, "int8", "forward", CPU).model
    dims = models.apply_outlier_dims(scaled, 4)
    assert len(dims) == 4 and all(0 <= d < 64 for d in dims)
    after = _outlier_columns(scaled, ids, 6.0)
    # Every linear fed by a norm (q/k/v, gate/up) now meets exactly the scaled dims as outliers.
    for layer in range(2):
        for proj in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj"):
            assert after[f"model.layers.{layer}.{proj}"] == set(dims), proj


def test_outlier_dims_are_fixed_and_scale_every_norm() -> None:
    assert models.outlier_dim_indices(896, 6) == models.outlier_dim_indices(896, 6)
    assert len(set(models.outlier_dim_indices(896, 6))) == 6
    loaded = models.load_model(_spec("modernbert-base"), "fp32", "forward", CPU)
    before = {n: m.weight.clone() for n, m in models.norm_modules(loaded.model)}
    dims = models.apply_outlier_dims(loaded.model, 3)
    after = dict(models.norm_modules(loaded.model))
    assert len(before) >= 5  # embeddings norm, per-layer norms, final norm, head norm
    for name, w in before.items():
        ratio = after[name].weight / w
        assert torch.allclose(ratio[dims], torch.full((3,), models.OUTLIER_SCALE))
        others = [i for i in range(64) if i not in dims]
        assert torch.allclose(ratio[others], torch.ones(len(others)))
    with pytest.raises(QtraceError):
        models.outlier_dim_indices(64, 65)


# ---------------------------------------------------------------------------------------
# Resolving MODEL


def test_resolve_local_folder_and_missing_paths(tmp_path: Path) -> None:
    folder = tiny_checkpoint("tiny-llama")
    spec = models.resolve_model(str(folder))
    assert (spec.source, spec.kind, spec.path) == ("local", "decoder", folder)
    assert models.resolve_model(str(tiny_checkpoint("modernbert-base"))).kind == "encoder"
    with pytest.raises(QtraceError, match="does not exist"):
        models.resolve_model(str(tmp_path / "nope"))
    with pytest.raises(QtraceError, match="does not exist"):
        models.resolve_model("./models/nope")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((folder / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(QtraceError, match="safetensors"):
        models.resolve_model(str(pickled))
    (tmp_path / "empty").mkdir()
    with pytest.raises(QtraceError, match="no config.json"):
        models.resolve_model(str(tmp_path / "empty"))


def test_hf_id_resolves_only_from_local_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hub = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(hub))
    with pytest.raises(QtraceError, match="not in the local Hugging Face cache"):
        models.resolve_model("someorg/tiny-model")
    # Lay out a cache entry the way huggingface_hub does: refs/main -> snapshots/<commit>/.
    commit = "0" * 40
    repo = hub / "models--someorg--tiny-model"
    snapshot = repo / "snapshots" / commit
    snapshot.parent.mkdir(parents=True)
    import shutil

    shutil.copytree(tiny_checkpoint("tiny-llama"), snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    spec = models.resolve_model("someorg/tiny-model")
    assert spec.source == "hf-cache" and spec.path == snapshot and spec.kind == "decoder"
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_preset_is_built_once_and_rebuilt_when_stale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QTRACE_CACHE", str(tmp_path))
    tiny = models.Preset("tiny-test", "llama", "decoder", "test", dict(TINY["tiny-llama"]))
    monkeypatch.setitem(models.PRESETS, "tiny-test", tiny)
    messages: list[str] = []
    spec = models.resolve_model("tiny-test", progress=messages.append)
    assert spec.source == "preset" and spec.path == tmp_path / "presets" / "tiny-test"
    assert (spec.path / "model.safetensors").is_file() and any("building" in m for m in messages)
    assert not list((tmp_path / "presets").glob(".*tmp*")), "temp build folder renamed away"
    stamp = spec.path / "qtrace_preset.json"
    mtime = stamp.stat().st_mtime_ns
    messages.clear()
    models.resolve_model("tiny-test", progress=messages.append)
    assert messages == [] and stamp.stat().st_mtime_ns == mtime
    stamp.write_text(json.dumps({"fingerprint": "stale"}))
    models.resolve_model("tiny-test", progress=messages.append)
    assert any("building" in m for m in messages) and models.preset_is_cached("tiny-test")


def test_parse_precisions() -> None:
    assert models.parse_precisions("fp32, INT8,nf4,int8") == ["fp32", "int8", "nf4"]
    assert models.parse_precisions(["bf16"]) == ["bf16"]
    with pytest.raises(QtraceError, match="unknown precision 'int4'"):
        models.parse_precisions("fp16,int4")
    with pytest.raises(QtraceError):
        models.parse_precisions(" , ")
    assert models.default_precisions("cuda") == ["fp16", "int8", "nf4"]
    assert models.default_precisions("cpu") == ["fp32", "int8", "nf4"]


def test_generate_needs_a_decoder() -> None:
    with pytest.raises(QtraceError, match="encoder"):
        models.check_task("generate", "encoder", "x")
    models.check_task("generate", "decoder", "x")
