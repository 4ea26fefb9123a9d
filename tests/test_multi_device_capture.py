"""Issue 19, capture side on the CPU: --device-map values, placement summaries, the split a
72B shape gets over two GPUs (accelerate's device-map step on the meta device, the GPUs faked),
the clock joined over devices, per-device memory, and `qtrace profile --device-map auto` on a
machine with fewer than two GPUs (everything on the one device, said so)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from _cli import run_cli
from _qtrace_tiny import tiny_checkpoint

from qtrace.capture import placement
from qtrace.errors import QtraceError

GiB = 2**30


@pytest.mark.parametrize(("value", "want"), [("auto", "auto"), ("AUTO", "auto"), ("balanced_low_0", "balanced_low_0"),
                                             ("sequential", "sequential"), ("none", None), (None, None)])
def test_parse_device_map(value: str | None, want: str | None) -> None:
    assert placement.parse_device_map(value) == want


def test_parse_device_map_refuses_unknown() -> None:
    with pytest.raises(QtraceError, match="--device-map must be one of auto, balanced"):
        placement.parse_device_map("everywhere")


def test_placement_summary_gives_layer_ranges_per_device() -> None:
    hf_map = {"model.embed_tokens": 0, **{f"model.layers.{i}": 0 for i in range(39)},
              **{f"model.layers.{i}": 1 for i in range(39, 80)}, "model.norm": 1, "model.rotary_emb": 1, "lm_head": 1}
    s = placement.placement_summary(hf_map, "auto")
    assert s["device_count"] == 2 and s["strategy"] == "auto"
    d0, d1 = s["devices"]
    assert (d0["device"], d0["layers"], d0["layer_count"], d0["other_modules"]) == \
        ("cuda:0", "0-38", 39, ["model.embed_tokens"])
    assert (d1["device"], d1["layers"], d1["layer_count"]) == ("cuda:1", "39-79", 41)
    assert s["summary"] == ("cuda:0: layers 0-38 + model.embed_tokens; "
                            "cuda:1: layers 39-79 + model.norm, model.rotary_emb, lm_head")
    assert s["hf_device_map"] == hf_map
    assert placement.ranges([0, 1, 2, 5, 7, 8]) == "0-2, 5, 7-8"
    assert placement.placement_summary({"": "cpu"})["summary"] == "cpu: the whole model"
    assert placement.placement_summary(None) is None
    assert placement.gpu_indices({"a": 1, "b": "cpu", "c": "cuda:3", "d": "0"}) == [0, 1, 3]


def test_cli_bad_device_map_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "profile", "--device-map", "everywhere", "--out", str(tmp_path / "r"))
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "--device-map must be one of" in lines[0], err
    assert out == "" and not (tmp_path / "r").exists()


def test_device_map_with_a_later_gpu_is_refused() -> None:
    import torch

    from qtrace.capture.runner import _check_device_map

    with pytest.raises(QtraceError, match="CUDA_VISIBLE_DEVICES"):
        _check_device_map("auto", torch.device("cuda", 1))
    _check_device_map("auto", torch.device("cuda", 0))
    _check_device_map(None, torch.device("cuda", 1))


def test_plan_spreads_only_over_two_or_more_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from qtrace.capture import multi_device

    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(multi_device, "visible_gpus", lambda: 2)
    assert multi_device.plan("auto", cuda) == ("auto", None)
    assert multi_device.plan(None, cuda) == (None, None)
    monkeypatch.setattr(multi_device, "visible_gpus", lambda: 1)
    spread, note = multi_device.plan("auto", cuda)
    assert spread is None and "only one GPU is visible" in note and "cuda:0" in note
    spread, note = multi_device.plan("balanced", torch.device("cpu"))
    assert spread is None and "no GPU is visible" in note


def _meta_model(name: str) -> Any:
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    from qtrace.capture.models import PRESETS, quiet_libraries

    with quiet_libraries(), init_empty_weights(include_buffers=False):
        return AutoModelForCausalLM.from_config(PRESETS[name].config(), dtype=torch.float16)


def _fake_gpus(monkeypatch: pytest.MonkeyPatch, *sizes: int) -> None:
    import accelerate.utils

    monkeypatch.setattr(accelerate.utils, "get_max_memory",
                        lambda max_memory=None: {**dict(enumerate(sizes)), "cpu": 1 << 40})


def test_72b_fp16_splits_over_two_gpus_by_whole_layers(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from qtrace.capture import multi_device

    model = _meta_model("qwen2.5-72b")
    _fake_gpus(monkeypatch, 100 * GiB, 100 * GiB)
    dmap = multi_device.infer_map(model, "auto", torch.float16)
    s = placement.placement_summary(dmap, "auto")
    assert [d["device"] for d in s["devices"]] == ["cuda:0", "cuda:1"]
    layers = [d["layer_count"] for d in s["devices"]]
    assert sum(layers) == 80 and min(layers) >= 35  # balanced, each decoder layer whole on one GPU
    assert s["devices"][0]["layers"] == f"0-{layers[0] - 1}"
    assert multi_device.device_of(dmap, "model.layers.79.mlp.up_proj.weight") == torch.device("cuda", 1)
    assert multi_device.device_of(dmap, "model.embed_tokens.weight") == torch.device("cuda", 0)


@pytest.mark.parametrize("precision", ["int8", "nf4"])
def test_72b_quantized_split_is_sized_by_the_quantizer(monkeypatch: pytest.MonkeyPatch, precision: str) -> None:
    import torch
    from transformers.quantizers import AutoHfQuantizer

    from qtrace.capture import models, multi_device

    model = _meta_model("qwen2.5-72b")
    _, quant, _ = models._precision_setup(precision, "cuda", 6.0)
    models.loader(models.backend_for(precision)).keep_unquantized(quant, ["lm_head"])
    quantizer = AutoHfQuantizer.from_config(quant, pre_quantized=False)
    with models.quiet_libraries():
        quantizer.preprocess_model(model=model, dtype=torch.float16, device_map={"": 0})
    _fake_gpus(monkeypatch, 100 * GiB, 100 * GiB)
    s = placement.placement_summary(multi_device.infer_map(model, "auto", torch.float16, quantizer), "auto")
    assert s["device_count"] == 2 and sum(d["layer_count"] for d in s["devices"]) == 80


def test_72b_fp16_on_one_80gb_gpu_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from qtrace.capture import multi_device

    model = _meta_model("qwen2.5-72b")
    _fake_gpus(monkeypatch, 80 * GiB)
    with pytest.raises(QtraceError, match="does not fit on the visible GPUs"):
        multi_device.infer_map(model, "auto", torch.float16)


def test_72b_preset_shape() -> None:
    from qtrace.capture.models import PRESETS
    from qtrace.capture.size_presets import PUBLISHED_BILLIONS

    c = PRESETS["qwen2.5-72b"].config()
    assert (c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.num_attention_heads,
            c.num_key_value_heads, c.vocab_size, c.tie_word_embeddings) == (8192, 29568, 80, 64, 8, 152064, False)
    assert PRESETS["qwen2.5-72b"].init == "device" and PUBLISHED_BILLIONS["qwen2.5-72b"] == 72.7


class _FakeStream:
    def __init__(self, dev: int, log: list) -> None:
        self.dev, self.log = dev, log

    def wait_event(self, ev: Any) -> None:
        self.log.append(("wait", self.dev, ev.stream.dev))


class _FakeEvent:
    def __init__(self, log: list, enable_timing: bool = False) -> None:
        self.log, self.timing, self.stream = log, enable_timing, None

    def record(self, stream: Any = None) -> None:
        self.stream = stream
        self.log.append(("record", stream.dev, self.timing))


class _FakeCuda:
    def __init__(self) -> None:
        self.log: list = []

    def current_stream(self, device: Any) -> _FakeStream:
        return _FakeStream(device.index, self.log)

    def Event(self, enable_timing: bool = False) -> _FakeEvent:  # noqa: N802 (torch.cuda.Event)
        return _FakeEvent(self.log, enable_timing)

    def synchronize(self, device: Any) -> None:
        self.log.append(("sync", device.index))


def test_clock_joins_every_device_into_the_first_before_each_mark() -> None:
    import torch

    from qtrace.capture.protocol import CudaClock

    clock = CudaClock([torch.device("cuda", 0), torch.device("cuda", 1), torch.device("cuda", 2)])
    fake = _FakeCuda()
    clock._torch = type("T", (), {"cuda": fake})()
    ev = clock.mark()
    assert fake.log == [("record", 1, False), ("wait", 0, 1), ("record", 2, False), ("wait", 0, 2),
                        ("record", 0, True)]
    assert ev.timing and ev.stream.dev == 0
    fake.log.clear()
    clock.finish()
    assert fake.log == [("sync", 0), ("sync", 1), ("sync", 2)]


def test_one_device_clock_records_one_event() -> None:
    import torch

    from qtrace.capture.protocol import CudaClock

    clock = CudaClock(torch.device("cuda", 0))
    fake = _FakeCuda()
    clock._torch = type("T", (), {"cuda": fake})()
    clock.mark()
    assert fake.log == [("record", 0, True)]


def test_peak_memory_per_device_and_summed(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from qtrace.capture import environment, protocol

    alloc = {0: 70 * GiB, 1: 72 * GiB}
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda d: alloc[d.index])
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda d: alloc[d.index] + GiB)
    monkeypatch.setattr(environment, "nvml_process_bytes", lambda d: alloc[d.index] + 2 * GiB)
    monkeypatch.setattr(environment, "nvml_device_used_bytes", lambda d: None if d.index else 5)
    mem = protocol._read_peaks([torch.device("cuda", 0), torch.device("cuda", 1)])
    assert mem["max_allocated_bytes"] == 142 * GiB and mem["max_reserved_bytes"] == 144 * GiB
    assert mem["nvml_process_bytes"] == 146 * GiB and mem["nvml_device_used_bytes"] is None
    assert [d["device"] for d in mem["per_device"]] == ["cuda:0", "cuda:1"]
    assert mem["per_device"][1]["max_allocated_bytes"] == 72 * GiB and mem["per_device"][1]["index"] == 1
    one = protocol._read_peaks(torch.device("cuda", 1))
    assert one["max_allocated_bytes"] == 72 * GiB and "per_device" not in one  # one device: as before


def test_load_audit_records_placement() -> None:
    from qtrace.capture.load_audit import placement_facts

    class M:
        hf_device_map = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "lm_head": "cpu"}

    p = placement_facts(M(), {"device_map": "auto"})
    assert p["strategy"] == "auto" and p["devices"][0]["layers"] == "0" and "allocated_bytes" not in p
    assert placement_facts(object(), {}) is None


@pytest.mark.slow
def test_profile_device_map_auto_on_one_device(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = str(tiny_checkpoint("tiny-llama"))
    out = tmp_path / "run"
    code, stdout, err = run_cli(capsys, "profile", model, "--precision", "fp32", "--seq-len", "8", "--warmup", "0",
                                "--iters", "2", "--profile-steps", "1", "--device-map", "auto", "--out", str(out))
    assert code == 0, err
    assert "placement: --device-map auto: no GPU is visible" in err
    run = json.loads((out / "run.json").read_text())
    assert run["settings"]["device_map"] == "auto" and run["command"][-2:] == ["--device-map", "auto"]
    e = run["precisions"]["fp32"]
    assert e["status"] == "ok" and e["placement"]["device_count"] == 1
    assert e["placement"]["summary"] == "cpu: the whole model" and "nothing to split" in e["placement"]["note"]
    assert "per_device" not in e["memory"]
    code, stdout, err = run_cli(capsys, "report", str(out))
    assert code == 0 and "Devices:" not in stdout  # one device: the report is the single-device one
    assert "Placement (--device-map auto): --device-map auto: no GPU is visible" in stdout


@pytest.mark.slow
def test_profile_api_device_map_on_a_device_init_preset(tmp_path: Path) -> None:
    import qtrace

    r = qtrace.profile("tiny-qwen-a", precisions=["fp32", "int8"], seq_len=8, warmup=0, iters=2, profile_steps=0,
                       out=tmp_path / "r", device_map="balanced", quiet=True)
    for entry in r.run["precisions"].values():
        assert entry["status"] == "ok", entry["error"]
        assert entry["placement"]["strategy"] == "balanced" and entry["placement"]["device_count"] == 1


def test_gpu_session_script_parses_and_says_it_was_not_run() -> None:
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    script = repo / "examples" / "multi_gpu" / "gpu_session.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text()
    for needed in ("qwen2.5-72b", "--device-map auto", "--precision int8,nf4", "--new-tokens 64",
                   "--batch-size 32", "qwen2.5-32b"):
        assert needed in text
    assert "not run" in (repo / "examples" / "multi_gpu" / "README.md").read_text().lower()
