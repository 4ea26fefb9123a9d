"""The measurement protocol and the traces it records, end to end on tiny CPU models."""

from __future__ import annotations

import collections
import gzip
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from _qtrace_tiny import tiny_checkpoint
from hypothesis import given, settings
from hypothesis import strategies as st

import qtrace
from qtrace import fileio
from qtrace.capture import environment as device
from qtrace.capture import models
from qtrace.capture import protocol as capture
from qtrace.capture import runner as api

ITERS = 4
STEPS = 2
BATCH = 2


def _trace(path: Path) -> dict[str, Any]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return json.load(fh)


def _names(trace: dict[str, Any]) -> collections.Counter:
    return collections.Counter(e.get("name") for e in trace["traceEvents"] if e.get("ph") == "X")


@pytest.fixture(scope="module")
def forward_run(tmp_path_factory: pytest.TempPathFactory) -> qtrace.ProfileResult:
    out = tmp_path_factory.mktemp("fwd") / "run"
    return qtrace.profile(model=str(tiny_checkpoint("tiny-llama")), precisions="fp32,int8,nf4", task="forward",
                          batch_size=BATCH, seq_len=32, warmup=1, iters=ITERS, profile_steps=STEPS,
                          outlier_dims=2, out=out, quiet=True)


@pytest.fixture(scope="module")
def generate_run(tmp_path_factory: pytest.TempPathFactory) -> qtrace.ProfileResult:
    out = tmp_path_factory.mktemp("gen") / "run"
    return qtrace.profile(model=str(tiny_checkpoint("qwen2.5-0.5b")), precisions=["int8", "fp32"], task="generate",
                          batch_size=1, seq_len=16, new_tokens=4, warmup=1, iters=3, profile_steps=1,
                          out=out, quiet=True)


# ---------------------------------------------------------------------------------------
# Statistics


def test_stats_known_values() -> None:
    s = capture.stats([float(x) for x in range(10, 0, -1)])
    assert s["median"] == 5.5 and s["min"] == 1.0 and s["mean"] == 5.5 and s["n"] == 10
    assert s["p90"] == pytest.approx(9.1)
    assert s["stdev"] == pytest.approx(3.0276504)
    assert capture.stats([2.0])["stdev"] == 0.0
    assert capture.stats([])["median"] is None


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=0.001, max_value=1e4), min_size=1, max_size=50))
def test_stats_match_numpy(values: list[float]) -> None:
    s = capture.stats(values)
    assert s["median"] == pytest.approx(np.median(values), rel=1e-6, abs=1e-6)
    assert s["p90"] == pytest.approx(np.percentile(values, 90), rel=1e-6, abs=1e-6)
    assert s["min"] <= s["median"] <= s["p90"] <= max(values) + 1e-6


# ---------------------------------------------------------------------------------------
# run.json and the protocol's figures


def test_run_json_on_disk_matches_result_and_folder_is_complete(forward_run: qtrace.ProfileResult) -> None:
    on_disk = json.loads((forward_run.out / "run.json").read_text())
    assert on_disk == forward_run.run
    assert not (forward_run.out / fileio.INCOMPLETE_MARKER).exists()
    assert set(on_disk) >= {"qtrace_version", "created", "command", "settings", "environment", "precisions"}
    assert on_disk["settings"]["iters"] == ITERS and on_disk["settings"]["outlier_dims"] == 2
    assert len(on_disk["settings"]["outlier_dim_indices"]) == 2
    assert on_disk["environment"]["device_type"] == "cpu" and on_disk["environment"]["nvml"] is None
    assert on_disk["environment"]["versions"]["bitsandbytes"]
    assert isinstance(on_disk["environment"]["env"], dict)
    assert on_disk["environment"]["cpu_affinity"] == device.cpu_ranges(os.sched_getaffinity(0))
    assert on_disk["command"][:2] == ["qtrace", "profile"] and "--outlier-dims" in on_disk["command"]
    assert list(on_disk["precisions"]) == ["fp32", "int8", "nf4"]


def test_protocol_figures_are_present_and_sane(forward_run: qtrace.ProfileResult) -> None:
    for precision, e in forward_run.run["precisions"].items():
        assert e["status"] == "ok" and e["error"] is None, precision
        assert e["timer"] == "perf_counter"
        per_iter, per_ex = e["latency_ms"]["per_iter"], e["latency_ms"]["per_example"]
        assert per_iter["n"] == ITERS
        assert 0 < per_iter["min"] <= per_iter["median"] <= per_iter["p90"]
        assert per_iter["mean"] > 0 and per_iter["stdev"] >= 0
        for key in ("median", "p90", "min", "mean", "stdev"):
            assert per_ex[key] == pytest.approx(per_iter[key] / BATCH, rel=1e-4, abs=1e-6), key
        # The wall clock around the whole loop covers at least the per-iteration marks.
        assert e["latency_ms"]["wall_mean_per_iter"] >= 0.99 * per_iter["mean"]
        assert e["generate"] is None
        assert e["load"]["seconds"] > 0 and e["load"]["footprint_bytes"] > 0
        assert e["memory"]["cpu_peak_rss_bytes"] > 0
        assert e["memory"]["max_allocated_bytes"] is None  # no CUDA here
    fp = {p: e["load"]["footprint_bytes"] for p, e in forward_run.run["precisions"].items()}
    assert fp["nf4"] < fp["int8"] < fp["fp32"]
    assert forward_run.run["precisions"]["fp32"]["compute_dtype"] == "float32"


def test_generate_figures(generate_run: qtrace.ProfileResult) -> None:
    for precision, e in generate_run.run["precisions"].items():
        assert e["status"] == "ok", (precision, e["error"])
        g = e["generate"]
        assert g["new_tokens"] == 4 and g["prompts"] == 1 and g["distinct_prompts"] == 3
        assert g["ttft_ms"]["n"] == 3 and g["decode_ms_per_token"]["n"] == 3 * (4 - 1)
        assert 0 < g["ttft_ms"]["median"] < e["latency_ms"]["per_iter"]["median"]
        assert 0 < g["decode_ms_per_token"]["median"] <= g["decode_ms_per_token"]["p90"]
        # tokens/s is the batch's new tokens over a median generate call
        assert g["tokens_per_s"] == pytest.approx(4 / (e["latency_ms"]["per_iter"]["median"] / 1e3), rel=1e-4)
        # prefill + 3 decode steps fit in one call
        assert g["ttft_ms"]["min"] + 3 * g["decode_ms_per_token"]["min"] <= e["latency_ms"]["per_iter"]["p90"]


def test_timed_generation_uses_one_distinct_prompt_per_iteration(monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_checkpoint("qwen2.5-0.5b"))).eval()
    model.config.pad_token_id = 0  # qtrace's loader sets one; a bare checkpoint may have none
    work = capture.make_workload(model, "decoder", "generate", 2, 8, 2, seed=5, device=torch.device("cpu"))
    seen: list[torch.Tensor] = []
    real = capture.run_generate

    def recording(m: Any, w: capture.Workload, processors: Any = None) -> Any:
        seen.append(w.input_ids.clone())
        return real(m, w, processors)

    monkeypatch.setattr(capture, "run_generate", recording)
    with torch.inference_mode():
        capture.timed_pass(model, work, 3, torch.device("cpu"))
    assert len(seen) == 3 and all(ids.shape == (2, 8) for ids in seen)
    prompts = {tuple(ids.flatten().tolist()) for ids in [work.input_ids, *seen]}
    assert len(prompts) == 4  # warm-up's prompt 0 and three different timed prompts
    pad = int(model.config.pad_token_id)
    assert all(pad not in ids for ids in seen)
    # Same seed, same prompts: every precision of a run generates from the same inputs.
    assert torch.equal(work.with_prompt(2).input_ids, seen[1])


def test_result_frame_and_trace_paths(forward_run: qtrace.ProfileResult) -> None:
    df = forward_run.to_frame()
    assert list(df.index) == ["fp32", "int8", "nf4"]
    assert {"median_ms", "p90_ms", "per_example_median_ms", "footprint_bytes", "cpu_peak_rss_bytes"} <= set(df)
    assert (df["median_ms"] > 0).all() and (df["p90_ms"] >= df["median_ms"]).all()
    for p in df.index:
        assert forward_run.trace_path(p) == forward_run.out / p / "trace.json.gz"
        assert forward_run.trace_path(p).is_file()
    with pytest.raises(KeyError):
        forward_run.trace_path("bf16")
    again = qtrace.ProfileResult.load(forward_run.out)
    assert again.run == forward_run.run
    table = forward_run.table().splitlines()
    assert table[0].split()[0] == "precision" and [r.split()[0] for r in table[1:]] == ["fp32", "int8", "nf4"]
    assert "1.00x" in table[1]


# ---------------------------------------------------------------------------------------
# Traces


def test_trace_metadata(forward_run: qtrace.ProfileResult) -> None:
    for precision in forward_run.precisions:
        trace = _trace(forward_run.trace_path(precision))
        assert trace["distributedInfo"] == {"rank": 0}
        meta = trace["qtrace"]
        assert meta["precision"] == precision and meta["task"] == "forward"
        assert meta["batch_size"] == BATCH and meta["seq_len"] == 32 and meta["profile_steps"] == STEPS
        assert meta["int8_threshold"] == 6.0 and meta["outlier_dims"] == 2
        assert meta["config"]["hidden"] == 64 and meta["config"]["layers"] == 2 and meta["config"]["vocab"] == 256
        assert meta["config"]["intermediate"] == 128 and meta["config"]["heads"] == 4
        assert meta["versions"]["torch"] and meta["versions"]["transformers"] and meta["versions"]["qtrace"]
        assert meta["device_name"] and meta["compute_dtype"] == "float32"


def test_trace_steps_and_bitsandbytes_ops(forward_run: qtrace.ProfileResult) -> None:
    for precision in forward_run.precisions:
        names = _names(_trace(forward_run.trace_path(precision)))
        steps = sorted(n for n in names if n.startswith("ProfilerStep#"))
        assert len(steps) == STEPS, (precision, steps)
        assert names[capture.STEP_FORWARD] == STEPS
        bnb_ops = {n for n in names if n.startswith("bitsandbytes::")}
        if precision == "fp32":
            assert not bnb_ops
        elif precision == "int8":
            assert {"bitsandbytes::int8_vectorwise_quant", "bitsandbytes::int8_linear_matmul"} <= bnb_ops
            # --outlier-dims 2 makes the outlier path run: weight columns dequantized back to float
            assert "bitsandbytes::int8_vectorwise_dequant" in bnb_ops
        else:
            assert bnb_ops & {"bitsandbytes::gemv_4bit", "bitsandbytes::gemm_4bit", "bitsandbytes::dequantize_4bit"}


def test_trace_module_annotations(forward_run: qtrace.ProfileResult) -> None:
    linear_cls = {"fp32": "Linear", "int8": "Linear8bitLt", "nf4": "Linear4bit"}
    for precision, cls in linear_cls.items():
        names = _names(_trace(forward_run.trace_path(precision)))
        for expected in (
            f"qtrace.module:{cls}:model.layers.0.self_attn.q_proj",
            f"qtrace.module:{cls}:model.layers.1.mlp.down_proj",
            "qtrace.module:Linear:lm_head",
            "qtrace.module:LlamaDecoderLayer:model.layers.0",
            "qtrace.module:LlamaAttention:model.layers.1.self_attn",
            "qtrace.module:LlamaMLP:model.layers.1.mlp",
            "qtrace.module:LlamaRMSNorm:model.layers.0.input_layernorm",
            "qtrace.module:LlamaRMSNorm:model.norm",
            "qtrace.module:Embedding:model.embed_tokens",
        ):
            assert names[expected] == STEPS, (precision, expected)


def test_generate_trace_has_prefill_and_decode_steps(generate_run: qtrace.ProfileResult) -> None:
    for precision in generate_run.precisions:
        names = _names(_trace(generate_run.trace_path(precision)))
        assert names[capture.STEP_PREFILL] == 1 and names[capture.STEP_DECODE] == 3
        assert names[capture.STEP_FORWARD] == 0
        assert sum(1 for n in names if n.startswith("ProfilerStep#")) == 1
        assert names["qtrace.module:Qwen2DecoderLayer:model.layers.0"] == 4  # one per forward


def test_trace_events_nest_steps_inside_profiler_steps(forward_run: qtrace.ProfileResult) -> None:
    events = [e for e in _trace(forward_run.trace_path("int8"))["traceEvents"] if e.get("ph") == "X"]
    steps = [e for e in events if e["name"].startswith("ProfilerStep#")]
    for fwd in (e for e in events if e["name"] == capture.STEP_FORWARD):
        assert any(s["ts"] <= fwd["ts"] and fwd["ts"] + fwd["dur"] <= s["ts"] + s["dur"] + 1 for s in steps)


# ---------------------------------------------------------------------------------------
# Instrumentation exists only during the profiled pass


def _hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


def test_annotations_are_removed_after_the_profiled_pass(tmp_path: Path) -> None:
    spec = models.ModelSpec("m", tiny_checkpoint("modernbert-base"), "local", None, "encoder")
    model = models.load_model(spec, "int8", "classify", torch.device("cpu")).model
    baseline = _hook_count(model)
    labels = [label for label, _ in capture.annotated_modules(model)]
    roles = {label.split(":")[1] for label in labels}
    assert {"ModernBertEncoderLayer", "Linear8bitLt", "LayerNorm", "ModernBertAttention", "ModernBertMLP",
            "ModernBertEmbeddings", "Embedding", "Linear"} <= roles
    with capture.module_annotations(model) as n:
        assert n == len(labels) and _hook_count(model) == baseline + 2 * n
    assert _hook_count(model) == baseline
    work = capture.make_workload(model, "encoder", "classify", 1, 16, 1, 0, torch.device("cpu"))
    with torch.inference_mode():
        capture.profiled_pass(model, work, 1, torch.device("cpu"), tmp_path / "t.json.gz", {"x": 1})
    assert _hook_count(model) == baseline
    assert not list(tmp_path.glob(".trace.*")), "raw trace temp file removed"


def test_workload_inputs_are_seeded_and_avoid_the_pad_token() -> None:
    spec = models.ModelSpec("m", tiny_checkpoint("tiny-llama"), "local", None, "decoder")
    model = models.load_model(spec, "fp32", "forward", torch.device("cpu")).model
    a = capture.make_workload(model, "decoder", "forward", 4, 64, 1, 7, torch.device("cpu"))
    b = capture.make_workload(model, "decoder", "forward", 4, 64, 1, 7, torch.device("cpu"))
    c = capture.make_workload(model, "decoder", "forward", 4, 64, 1, 8, torch.device("cpu"))
    assert torch.equal(a.input_ids, b.input_ids) and not torch.equal(a.input_ids, c.input_ids)
    assert not (a.input_ids == a.pad_token_id).any()


# ---------------------------------------------------------------------------------------
# Failures and interruptions


def test_failing_precision_is_recorded_and_others_still_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A library error inside one precision's first forward (as bitsandbytes raises for shapes its
    # kernels refuse; which shapes it refuses changes between releases, so the error is planted).
    real_warm_up = capture.warm_up

    def failing_for_nf4(model: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(model.config, "quantization_config", None) is not None:
            raise RuntimeError("planted: the 4-bit kernel refuses this shape")
        return real_warm_up(model, *args, **kwargs)

    monkeypatch.setattr(capture, "warm_up", failing_for_nf4)
    result = qtrace.profile(model="tiny-llama", precisions="nf4,fp32", seq_len=16, warmup=1, iters=2,
                            profile_steps=1, out=tmp_path / "run", quiet=True)
    nf4, fp32 = result.run["precisions"]["nf4"], result.run["precisions"]["fp32"]
    assert nf4["status"] == "error" and nf4["trace"] is None and nf4["latency_ms"] is None
    assert nf4["error"] and "\n" not in nf4["error"] and len(nf4["error"]) <= 400
    assert (tmp_path / "run" / "nf4" / "error.txt").read_text().startswith("Traceback")
    assert fp32["status"] == "ok" and result.trace_path("fp32").is_file()
    assert json.loads((tmp_path / "run" / "run.json").read_text())["precisions"]["nf4"]["status"] == "error"
    rows = result.table().splitlines()
    assert rows[1].startswith("nf4") and "error" in rows[1] and "1.00x" in rows[2]


def test_interrupted_run_keeps_finished_precisions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = capture.profiled_pass
    calls = []

    def interrupt_second(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(capture, "profiled_pass", interrupt_second)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        qtrace.profile(model=str(tiny_checkpoint("tiny-llama")), precisions="fp32,int8", seq_len=16, warmup=0,
                       iters=1, profile_steps=1, out=out, quiet=True)
    assert (out / fileio.INCOMPLETE_MARKER).exists()
    saved = json.loads((out / "run.json").read_text())
    assert list(saved["precisions"]) == ["fp32"] and saved["precisions"]["fp32"]["status"] == "ok"


def test_force_clears_stale_results(tmp_path: Path) -> None:
    out = tmp_path / "run"
    (out / "bf16").mkdir(parents=True)
    (out / "bf16" / "trace.json.gz").write_bytes(b"old")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(qtrace.QtraceError, match="--force"):
        qtrace.profile(model=str(tiny_checkpoint("tiny-llama")), precisions="fp32", out=out, quiet=True)
    result = qtrace.profile(model=str(tiny_checkpoint("tiny-llama")), precisions="fp32", seq_len=8, warmup=0,
                            iters=1, profile_steps=1, out=out, force=True, quiet=True)
    assert not (out / "bf16").exists() and (out / "notes.txt").exists()
    assert result.precisions == ["fp32"]


def test_progress_messages_go_to_the_sink(tmp_path: Path) -> None:
    lines: list[str] = []
    qtrace.profile(model=str(tiny_checkpoint("tiny-llama")), precisions="fp32", seq_len=8, warmup=1, iters=1,
                   profile_steps=1, out=tmp_path / "r", progress=lines.append)
    text = "\n".join(lines)
    assert "[fp32] loading" in text and "[fp32] median" in text and "trace" in text
def test_import_qtrace_does_not_import_torch() -> None:
    import subprocess
    import sys

    # qtrace.profile resolves lazily; `import qtrace` alone must not pull torch in.
    code = "import sys, qtrace; assert 'torch' not in sys.modules, 'torch imported'; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_timing_environment_variables_are_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    from qtrace.capture import environment as device

    monkeypatch.setenv("CUDA_LAUNCH_BLOCKING", "1")
    monkeypatch.setenv("QTRACE_UNRELATED", "x")
    env = device.timing_env()
    assert env["CUDA_LAUNCH_BLOCKING"] == "1" and "QTRACE_UNRELATED" not in env


def test_cpu_ranges_compacts_runs_of_cpus() -> None:
    assert device.cpu_ranges([8, 0, 1, 2, 3]) == "0-3,8"
    assert device.cpu_ranges({5}) == "5"
    assert device.cpu_ranges([0, 2, 3, 4, 7, 8]) == "0,2-4,7-8"
    assert device.cpu_ranges([]) == ""


def test_pinned_process_records_its_cpus() -> None:
    code = ("import os; os.sched_setaffinity(0, {0}); from qtrace.capture import environment; "
            "print(environment.cpu_affinity())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0 and out.stdout.strip() == "0", out.stderr


def test_api_exports() -> None:
    assert qtrace.profile is api.profile and qtrace.ProfileResult is api.ProfileResult
    assert math.isclose(api.Settings().int8_threshold, 6.0)
