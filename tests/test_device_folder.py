"""Issue 16 at 7B: GPTQ / AWQ of a device-initialised preset, calibrated from its fp16 folder."""

from __future__ import annotations

import json

import pytest


def _cpu():
    import torch

    return torch.device("cpu")


def test_folder_holds_the_device_draw(tmp_path):
    """The written folder's weights are the ones build_on_device draws for the same seed."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from qtrace.capture import models
    from qtrace.capture.device_folder import ensure_folder, folder_for
    from qtrace.capture.device_init import build_on_device

    lines: list[str] = []
    folder = ensure_folder("tiny-qwen-a", 3, _cpu(), tmp_path, progress=lines.append)
    assert folder == folder_for("tiny-qwen-a", 3, _cpu(), tmp_path)
    assert any("fp16 folder" in line and "GB" in line for line in lines)
    saved: dict[str, torch.Tensor] = {}
    for f in folder.glob("*.safetensors"):
        saved.update(load_file(str(f)))
    with models.quiet_libraries():
        drawn = build_on_device(models.PRESETS["tiny-qwen-a"].config(), AutoModelForCausalLM, torch.float16,
                                _cpu(), None, seed=3)
    state = drawn.state_dict()
    assert saved and set(saved) <= set(state)
    for name, value in saved.items():
        assert torch.equal(value, state[name]), name
    # Another seed is another folder with other weights; the same one is found, not rebuilt.
    other = ensure_folder("tiny-qwen-a", 4, _cpu(), tmp_path)
    assert other != folder
    again: list[str] = []
    assert ensure_folder("tiny-qwen-a", 3, _cpu(), tmp_path, progress=again.append) == folder and not again
    stamp = json.loads((folder / "qtrace_device_built.json").read_text())
    assert stamp["seed"] == 3 and stamp["device"] == "cpu"


def test_redrawn_head_matches_the_device_built_baseline(tmp_path):
    """A classifier loaded from the folder gets the head the device-built baseline draws; without
    the redraw from_pretrained's own (CPU generator) head would differ."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from qtrace.capture import models
    from qtrace.capture.device_folder import ensure_folder, redraw_heads
    from qtrace.capture.device_init import build_on_device

    folder = ensure_folder("tiny-qwen-a", 0, _cpu(), tmp_path)
    spec = models.resolve_model("tiny-qwen-a")
    heads = models.head_modules(spec, "classify")
    with models.quiet_libraries():
        base = build_on_device(models._spec_config(spec, "classify"), AutoModelForSequenceClassification,
                               torch.float32, _cpu(), None, seed=0)
        loaded = AutoModelForSequenceClassification.from_pretrained(
            str(folder), num_labels=models.CLASSIFY_LABELS, dtype=torch.float32, local_files_only=True)
    models._ensure_pad_token(base)
    models._ensure_pad_token(loaded)
    head = heads[0]
    before = dict(loaded.named_parameters())[f"{head}.weight"].detach().clone()
    want = dict(base.named_parameters())[f"{head}.weight"]
    assert not torch.equal(before, want)
    assert redraw_heads(loaded, heads, 0) == [f"{head}.weight"]
    assert torch.equal(dict(loaded.named_parameters())[f"{head}.weight"], want)
    ids = torch.randint(0, 1024, (2, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids).logits, base(input_ids=ids).logits, atol=1e-5)


@pytest.mark.slow
def test_gptq_of_a_device_preset_end_to_end(tmp_path, monkeypatch):
    """qtrace profile of a device-init preset at gptq-int4: folder written, calibrated, loaded with
    the baseline's head; its quality is a quantization error (top-1 agreement, small KL), not the
    near-random agreement two different heads would give."""
    import qtrace

    monkeypatch.setenv("QTRACE_CACHE", str(tmp_path / "cache"))
    run = qtrace.profile("tiny-qwen-a", precisions=["fp32", "gptq-int4-torch"], device="cpu", task="classify",
                         batch_size=4, seq_len=16, warmup=0, iters=1, profile_steps=0, out=tmp_path / "run", quiet=True)
    entry = run.run["precisions"]["gptq-int4-torch"]
    assert entry["status"] == "ok", entry
    assert entry["checkpoint"]["source"] == "built"
    assert "tiny-qwen-a-seed0-cpu" in entry["checkpoint"]["path"]
    q = entry["quality"]
    assert q["top1_agreement"] >= 0.75 and q["kl_mean"] < 0.01, q
    assert (tmp_path / "cache" / "device-built" / "tiny-qwen-a-seed0-cpu" / "config.json").is_file()


def test_a_failed_draw_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    from qtrace.capture import device_init
    from qtrace.capture.device_folder import ensure_folder
    from qtrace.errors import QtraceError

    def no_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")

    monkeypatch.setattr(device_init, "build_on_device", no_memory)
    with pytest.raises(QtraceError, match="cannot draw tiny-qwen-a on cpu.*out of memory") as info:
        ensure_folder("tiny-qwen-a", 0, _cpu(), tmp_path)
    assert "\n" not in str(info.value)
    built = tmp_path / "device-built"
    assert not built.exists() or not any(built.iterdir())  # no half-written folder left behind
