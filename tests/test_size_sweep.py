"""Issue 17: the sweep's model axis, device-initialised presets, size crossovers, extrapolation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from qtrace.analyzers import crossover as xo
from qtrace.capture.size_presets import PUBLISHED_BILLIONS, expand_models


def test_short_names_resolve_within_the_family():
    from qtrace.capture.models import PRESETS

    assert expand_models("qwen2.5-0.5b,1.5b,3b,7b,14b,32b", PRESETS) == [
        "qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-3b", "qwen2.5-7b", "qwen2.5-14b", "qwen2.5-32b"]
    assert expand_models("tiny-qwen-a,b", PRESETS) == ["tiny-qwen-a", "tiny-qwen-b"]
    assert expand_models("tiny-llama", PRESETS) == ["tiny-llama"]
    assert expand_models("qwen2.5-7b,./local", PRESETS) == ["qwen2.5-7b", "./local"]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PUBLISHED_BILLIONS))
def test_big_presets_match_published_parameter_counts_on_meta(name):
    from qtrace.capture.models import PRESETS, count_params

    n = count_params(PRESETS[name].config(), "decoder")
    assert abs(n / 1e9 - PUBLISHED_BILLIONS[name]) / PUBLISHED_BILLIONS[name] < 0.03, (name, n)


def test_big_presets_shapes():
    from qtrace.capture.models import PRESETS

    c = PRESETS["qwen2.5-32b"].config()
    assert (c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.num_key_value_heads) == (5120, 27648, 64, 8)
    c7 = PRESETS["qwen2.5-7b"].config()
    assert c7.vocab_size == 152064 and not c7.tie_word_embeddings
    assert PRESETS["qwen2.5-3b"].config().tie_word_embeddings
    assert PRESETS["llama3-8b"].config().vocab_size == 128256
    assert all(PRESETS[n].init == "device" for n in ("qwen2.5-1.5b", "qwen2.5-32b", "llama3-8b", "tiny-qwen-a"))
    assert PRESETS["qwen2.5-0.5b"].init == "disk"  # the reference traces' preset is unchanged


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "int8", "nf4", "torchao-int8wo", "torchao-intx4"])
def test_in_memory_quantization_matches_from_pretrained(tmp_path, precision):
    import torch
    from transformers import AutoModelForCausalLM

    from qtrace.capture import models
    from qtrace.capture.device_init import build_on_device

    cpu = torch.device("cpu")
    cfg = models.PRESETS["tiny-qwen-a"].config()
    with models.quiet_libraries():
        build_on_device(cfg, AutoModelForCausalLM, torch.float16, cpu, None, seed=0).save_pretrained(tmp_path)

    def setup() -> tuple[Any, Any]:
        dtype, quant, _ = models._precision_setup(precision, "cpu", 6.0)
        if quant is not None:
            models.loader(models.backend_for(precision)).keep_unquantized(quant, ["lm_head"])
        return getattr(torch, dtype), quant

    backend = models.backend_for(precision)
    step = getattr(models.loader(backend), "quantize_built", None) if backend is not None else None
    dtype, quant = setup()
    with models.quiet_libraries():
        mine = build_on_device(cfg, AutoModelForCausalLM, dtype, cpu, quant, seed=0, quantize_built=step)
    dtype, quant = setup()
    kw: dict[str, Any] = {"device_map": {"": "cpu"}, "dtype": dtype, "use_safetensors": True, "local_files_only": True}
    if quant is not None:
        kw["quantization_config"] = quant
    with models.quiet_libraries():
        ref = AutoModelForCausalLM.from_pretrained(str(tmp_path), **kw)
    assert {n: type(m) for n, m in mine.named_modules()} == {n: type(m) for n, m in ref.named_modules()}
    pa, pb = dict(mine.named_parameters()), dict(ref.named_parameters())
    assert pa.keys() == pb.keys()
    for k in pa:
        a, b = pa[k], pb[k]
        assert type(a) is type(b) and a.dtype == b.dtype and a.shape == b.shape, k
        assert type(a.data) is type(b.data), k  # a torchao weight is a tensor subclass under the Parameter
        inner = getattr(b.data, "__tensor_flatten__", None)
        names = inner()[0] if inner is not None else []
        if names:  # torchao: the same quantized data and scales
            assert names == a.data.__tensor_flatten__()[0], k
            for n in names:
                assert torch.equal(getattr(a.data, n), getattr(b.data, n)), (k, n)
        else:
            assert torch.equal(a, b), k
        if precision == "int8" and hasattr(b, "SCB") and b.SCB is not None:
            assert torch.equal(a.CB, b.CB) and torch.equal(a.SCB, b.SCB), k
        qa, qb = getattr(a, "quant_state", None), getattr(b, "quant_state", None)
        assert (qa is None) == (qb is None), k
        if qb is not None:
            assert sorted(vars(qa)) == sorted(vars(qb)) and qa.shape == qb.shape and qa.blocksize == qb.blocksize
            assert torch.equal(qa.absmax, qb.absmax) and qa.quant_type == qb.quant_type
    assert models.footprint(mine) == models.footprint(ref)
    assert getattr(mine, "is_loaded_in_8bit", False) == getattr(ref, "is_loaded_in_8bit", False)
    assert getattr(mine, "is_loaded_in_4bit", False) == getattr(ref, "is_loaded_in_4bit", False)
    if quant is not None:
        assert mine.lm_head.weight.dtype == dtype  # the skip module stays in the float dtype
    ids = torch.randint(0, cfg.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode(), models.quiet_libraries():
        assert torch.equal(mine(ids).logits, ref(ids).logits)


# ---------------------------------------------------------------------------------------
# Pure parts


def table(times: dict[str, dict[float, float]], batch: int = 1, metric: str = "decode_ms_per_token") -> pd.DataFrame:
    rows = []
    for p, by_size in times.items():
        for n, t in by_size.items():
            rows.append({"model": f"m{n / 1e9:g}b", "params": n, "precision": p, "batch_size": batch, "seq_len": 128,
                         "decode": "dynamic", "status": "ok", metric: t})
    return pd.DataFrame(rows)


def test_size_crossover_first_size_never_and_always():
    df = pd.concat([table({"fp16": {1e9: 10, 3e9: 20, 7e9: 40}, "int8": {1e9: 30, 3e9: 30, 7e9: 35},
                           "nf4": {1e9: 40, 3e9: 50, 7e9: 60}}),
                    table({"fp16": {1e9: 10, 3e9: 20}, "int8": {1e9: 9, 3e9: 19}}, batch=8)])
    got = {(c["precision"], c["batch_size"]): c for c in xo.size_crossovers(df, "fp16", "decode_ms_per_token")}
    assert got[("int8", 1)]["status"] == "crosses" and got[("int8", 1)]["first_better"] == "m7b"
    assert got[("nf4", 1)]["status"] == "never" and "never in this range" in got[("nf4", 1)]["message"]
    assert got[("int8", 8)]["status"] == "always_better"
    assert got[("nf4", 8)]["status"] == "no_data"


def test_failed_points_do_not_count():
    df = table({"fp16": {1e9: 10, 3e9: 20}, "int8": {1e9: 30, 3e9: 5}})
    df.loc[(df["precision"] == "int8") & (df["params"] == 3e9), "status"] = "oom"
    (c,) = xo.size_crossovers(df, "fp16", "decode_ms_per_token")
    assert c["status"] == "never" and list(c["ratios"]) == ["m1b"]


def test_extrapolation_against_a_hand_fit():
    # fp16: t = 1 + 4/B ms; int8: t = 9 + 1.5/B ms (exact lines): they meet at (9-1)/(4-1.5) = 3.2 B
    sizes = [0.5e9, 1.5e9, 3e9]
    df = table({"fp16": {n: 1 + 4 * n / 1e9 for n in sizes}, "int8": {n: 9 + 1.5 * n / 1e9 for n in sizes},
                "nf4": {n: 5 + 5 * n / 1e9 for n in sizes}})
    got = {c["precision"]: c for c in xo.extrapolate(df, "fp16", "decode_ms_per_token")}
    assert got["int8"]["crossover_params"] == pytest.approx(3.2e9)
    assert got["int8"]["status"] == "extrapolated" and "3.20B" in got["int8"]["message"]
    assert got["int8"]["fit"]["a"] == pytest.approx(9) and got["int8"]["fit"]["b_per_billion"] == pytest.approx(1.5)
    assert got["int8"]["ratio_at"]["70.60B"] == pytest.approx((9 + 1.5 * 70.6) / (1 + 4 * 70.6))
    assert got["nf4"]["status"] == "never" and got["nf4"]["crossover_params"] is None
    # noisy points: least squares, same as numpy's hand-written normal equations
    noisy = table({"fp16": {1e9: 5.0, 2e9: 9.5, 4e9: 17.2}, "int8": {1e9: 12.0, 2e9: 14.1, 4e9: 18.3}})
    (c,) = xo.extrapolate(noisy, "fp16", "decode_ms_per_token")
    x = [1.0, 2.0, 4.0]
    mx = sum(x) / 3

    def hand(y: list[float]) -> tuple[float, float]:
        my = sum(y) / 3
        b = sum((a - mx) * (v - my) for a, v in zip(x, y, strict=True)) / sum((a - mx) ** 2 for a in x)
        return my - b * mx, b

    (aq, bq), (af, bf) = hand([12.0, 14.1, 18.3]), hand([5.0, 9.5, 17.2])
    assert c["crossover_params"] == pytest.approx((aq - af) / (bf - bq) * 1e9)


def test_memory_limits_per_card():
    # peak = 1 GB + 2 bytes/param (fp16-like): 16 GB card, 1 GB reserve -> (16-1-1)/2 = 7 B params
    df = table({"fp16": {1e9: 3e9, 3e9: 7e9}}, metric="peak_memory_bytes")
    df = df.assign(footprint_bytes=df["params"] * 2)
    (m,) = xo.memory_limits(df)
    t4 = m["cards"]["T4 16 GB"]
    assert t4["max_params"] == pytest.approx(7e9) and t4["largest_named"] == "3B" and t4["first_not_fitting"] == "7B"
    assert m["cards"]["H200 141 GB"]["largest_named"] == "32B"
    assert m["measured"]["m1b"]["activation_bytes"] == pytest.approx(1e9)


def test_step_classification():
    assert xo.classify_step(1000, 100, 500, 10) == "host/launch overhead"
    assert xo.classify_step(1000, 900, 800, 10) == "weight bytes"
    assert xo.classify_step(1000, 900, 100, 800) == "compute"
    assert xo.floor_ms(3.35e9, 3350) == pytest.approx(1.0)


def test_explain_steps_on_a_real_gpu_trace():
    from qtrace.tracefile import load_trace

    trace = load_trace(Path(__file__).parent.parent / "traces" / "seed" / "qwen_bs1" / "int8" / "trace.json.gz")
    info = xo.explain_steps(trace, stream_bytes=0.6e9, params=0.49e9, batch_size=1, seq_len=128)
    step = info["steps"]["forward"]
    assert step["calls"] >= 1 and step["gpu_us"] < step["wall_us"]
    assert step["dominant"] == "host/launch overhead"  # the int8 pass the README explains
    assert info["host_verdict"].startswith("host-bound")


# ---------------------------------------------------------------------------------------
# The model axis


class FakeResult:
    def __init__(self, out: Path, run: dict[str, Any]) -> None:
        self.out, self.run = out, run


def fake_runner(calls: list[dict[str, Any]]):
    def runner(**kw: Any) -> FakeResult:
        calls.append(kw)
        n = 1 if kw["model"] == "tiny-qwen-a" else 2
        if kw["model"] == "tiny-qwen-b" and kw["batch_size"] == 8:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")
        kw["progress"]("[fp16] loading x ...")
        entries = {}
        for p, t in {"fp16": 10.0 * n, "int8": 30.0 + n, "nf4": 12.0 + 1.0 * n}.items():
            entries[p] = {"status": "ok", "error": None, "compute_dtype": "float16",
                          "latency_ms": {"per_example": {"median": t * 4}, "per_iter": {"median": t * 4}},
                          "generate": {"ttft_ms": {"median": t}, "decode_ms_per_token": {"median": t},
                                       "tokens_per_s": 1000 / t},
                          "memory": {"max_allocated_bytes": 1e6 * n + 5e5}, "load": {"footprint_bytes": 1e6 * n}}
        if kw["decode"] == "static":
            entries["int8"] = {"status": "unsupported", "error": "LLM.int8 cannot use CUDA graphs"}
        return FakeResult(kw["out"], {"precisions": entries, "environment": {"device_name": "fake",
                                                                              "device_type": "cpu"}})

    return runner


def test_model_axis_with_fake_runner(tmp_path):
    from qtrace.capture.sweep import run_sweep

    calls: list[dict[str, Any]] = []
    res = run_sweep("tiny-qwen-a,b", "fp16,int8,nf4", "1,8", "16", task="generate", out=tmp_path / "s",
                    runner=fake_runner(calls), quiet=True, decode="dynamic,static")
    assert {c["decode"] for c in calls} == {"dynamic", "static"} and len(calls) == 8
    df = res.frame
    assert set(df["model"]) == {"tiny-qwen-a", "tiny-qwen-b"}
    assert set(df.loc[(df["model"] == "tiny-qwen-b") & (df["batch_size"] == 8), "status"]) == {"oom"}
    assert set(df.loc[(df["decode"] == "static") & (df["precision"] == "int8") & (df["model"] == "tiny-qwen-a"),
                      "status"]) == {"unsupported"}
    data = json.loads((tmp_path / "s" / "sweep.json").read_text())
    nf4 = [c for c in data["size_crossovers"] if c["precision"] == "nf4" and c["metric"] == "decode_ms_per_token"
           and c["batch_size"] == 1 and c["decode"] == "dynamic"]
    assert nf4[0]["first_better"] == "tiny-qwen-b"  # 14 vs 20 ms at the larger size, 13 vs 10 at the smaller
    assert (tmp_path / "s" / "size.png").stat().st_size > 10_000
    assert "never in this range" in (tmp_path / "s" / "sweep.md").read_text()
    assert data["memory_limits"] and data["extrapolation"]


def test_point_budget_and_sweep_budget(tmp_path):
    from qtrace.capture.size_sweep import run_size_sweep

    calls: list[dict[str, Any]] = []
    res = run_size_sweep(["tiny-qwen-a", "tiny-qwen-b"], ["fp16", "int8", "nf4"], "1", task="generate",
                         out=tmp_path / "s", runner=fake_runner(calls), quiet=True, point_budget_s=-1.0)
    assert set(res.frame["status"]) == {"timeout"}
    res = run_size_sweep(["tiny-qwen-a", "tiny-qwen-b"], ["fp16"], "1", task="generate", out=tmp_path / "t",
                         runner=fake_runner(calls), quiet=True, time_budget_s=-1.0)
    assert set(res.frame["status"]) == {"skipped"}


@pytest.mark.slow
def test_model_axis_end_to_end_on_cpu(tmp_path, monkeypatch):
    """Two tiny device-initialised models, real runs, one profiled step each for the explanation."""
    from qtrace.capture.sweep import run_sweep

    monkeypatch.setenv("QTRACE_CACHE", str(tmp_path / "cache"))
    res = run_sweep("tiny-qwen-a,b", "fp32,int8", "1", "8", task="generate", out=tmp_path / "s", quiet=True,
                    profile=True, profile_steps=1, new_tokens=2, warmup=0, iters=1, device="cpu")
    df = res.frame
    assert set(df["status"]) == {"ok"} and df["decode_ms_per_token"].notna().all()
    assert df["params"].nunique() == 2
    data = json.loads((tmp_path / "s" / "sweep.json").read_text())
    assert len(data["explanations"]) == 4
    assert (tmp_path / "s" / "size.png").exists()
    assert not (tmp_path / "cache" / "presets").exists()  # nothing written to disk for device presets
