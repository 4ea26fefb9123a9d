"""Security: remote code only on request, no pickle anywhere, every trace string escaped in
Markdown (and HTML) output, and no network access while qtrace runs."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
SMALL = REPO / "traces" / "h100_qwen05-shape-outliers_fp16_bs1_seq128.json.gz"

SCRIPT = "<script>alert(1)</script>"
IMG = "<img src=x onerror=alert(1)>"
HOSTILE_KERNEL = f"a|b{SCRIPT} *x* `y` [z](http://evil) #h _u_\nsecond line"
HOSTILE_OP = f"aten::mm|{IMG}"
HOSTILE_MODULE = f"qtrace.module:Evil|{SCRIPT}:layers.0|x"
HOSTILE_STEP = f"qtrace.step:step|{IMG}"
HOSTILE_DEVICE = f"GPU|{SCRIPT}"


def hostile_trace(path: Path) -> Path:
    """A small valid trace whose every free-text field carries Markdown/HTML syntax."""
    ev = []
    corr = 0
    for i in range(3):
        t = i * 100.0
        ev += [
            {"ph": "X", "cat": "user_annotation", "name": HOSTILE_STEP, "pid": 1, "tid": 1, "ts": t, "dur": 90},
            {"ph": "X", "cat": "user_annotation", "name": HOSTILE_MODULE, "pid": 1, "tid": 1, "ts": t + 1, "dur": 80},
            {"ph": "X", "cat": "cpu_op", "name": HOSTILE_OP, "pid": 1, "tid": 1, "ts": t + 2, "dur": 50,
             "args": {"External id": i + 1, "Input Dims": [[4, 8], [8, 16]], "Input type": ["c10::Half", SCRIPT]}},
        ]
        for k in range(2):
            corr += 1
            ev += [
                {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": 1, "tid": 1,
                 "ts": t + 3 + 10 * k, "dur": 5, "args": {"correlation": corr, "External id": i + 1}},
                {"ph": "X", "cat": "kernel", "name": HOSTILE_KERNEL if k == 0 else f"k{k}|{IMG}", "pid": 0,
                 "tid": 7, "ts": t + 20 + 10 * k, "dur": 8,
                 "args": {"correlation": corr, "device": 0, "stream": 7, "External id": i + 1}},
            ]
        ev.append({"ph": "i", "cat": "cpu_instant_event", "name": "[memory]", "pid": 1, "tid": 1, "ts": t + 4,
                   "args": {"Bytes": 512, "Addr": 4096 + i, "Total Allocated": 512 * (i + 1), "Device Type": 1,
                            "Device Id": 0}})
    doc = {"deviceProperties": [{"id": 0, "name": HOSTILE_DEVICE}],
           "qtrace": {"model": f"model|{SCRIPT}", "precision": f"int8|{IMG}"}, "traceEvents": ev}
    path.write_text(json.dumps(doc))
    return path


def _unescaped_pipes(line: str) -> int:
    return len(re.findall(r"(?<!\\)\|", line))


def test_markdown_escapes_every_trace_string(tmp_path: Path) -> None:
    from qtrace.cli import cli

    result = CliRunner().invoke(cli, ["report", str(hostile_trace(tmp_path / "t.json")), "--format", "md"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    md = result.stdout
    assert "a\\|b\\<script\\>" in md  # the kernel is there, escaped
    # No tag from the trace can open: its '<' comes escaped. No link can form: its '[' neither.
    raw = [ln for ln in md.splitlines() if re.search(r"(?<!\\)<(script|/script|img)", ln)]
    assert raw == []
    assert not re.search(r"(?<!\\)\[z", md) and "\\[z\\]" in md
    # A trace string never adds a column: every row of a table has its header's cell count.
    lines = md.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("| ") and i + 1 < len(lines) and re.match(r"^\| -", lines[i + 1]):
            want = _unescaped_pipes(line)
            j = i + 2
            while j < len(lines) and lines[j].startswith("|"):
                assert _unescaped_pipes(lines[j]) == want, lines[j]
                j += 1
    assert "second line" not in [ln.strip() for ln in lines]  # a newline in a name does not end the row


def test_html_escapes_every_trace_string(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from qtrace.cli import cli

    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["report", str(hostile_trace(tmp_path / "t.json")), "--out", str(out)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    pages = list(out.glob("*.html"))
    if not pages:
        pytest.skip("no HTML renderer in this version")
    for page in pages:
        tags = _tags(page.read_text())
        names = [t for t, _ in tags]
        assert "script" not in names and "iframe" not in names and "object" not in names, page.name
        for tag, attrs in tags:
            assert not [k for k, _ in attrs if k.startswith("on")], (page.name, tag, attrs)
            if tag == "img":  # charts are inline PNGs; a trace string never becomes a src
                assert dict(attrs)["src"].startswith("data:image/"), (page.name, attrs)
        assert SCRIPT not in page.read_text() and IMG not in page.read_text()


def _tags(text: str) -> list[tuple[str, list[tuple[str, str | None]]]]:
    from html.parser import HTMLParser

    found: list[tuple[str, list[tuple[str, str | None]]]] = []

    class Collect(HTMLParser):
        def handle_starttag(self, tag, attrs):
            found.append((tag, attrs))

    Collect().feed(text)
    return found


def block_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Block and watch every way out of the machine; the returned list collects the attempts."""
    attempts: list[str] = []

    def refuse(*args, **kwargs):
        attempts.append(repr(args[:2]))
        raise OSError("network access blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


def test_no_network_while_reporting(monkeypatch: pytest.MonkeyPatch) -> None:
    """`qtrace report` (in-process, every analyzer) with every way out of the machine blocked and watched."""
    attempts = block_network(monkeypatch)
    from qtrace.cli import cli

    result = CliRunner().invoke(cli, ["report", str(SMALL), "--format", "json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["gpu_time_us"] > 0
    assert attempts == []


def test_profile_resolves_hub_ids_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """An HF id is looked up in the local cache only: HF_HUB_OFFLINE is set and nothing dials out."""
    pytest.importorskip("huggingface_hub")
    attempts = block_network(monkeypatch)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    from qtrace.capture.models import resolve_model
    from qtrace.errors import QtraceError

    with pytest.raises(QtraceError, match="not in the local Hugging Face cache"):
        resolve_model("someorg/some-model")
    import os

    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    assert attempts == []


@pytest.mark.slow
def test_profile_of_a_local_checkout_never_dials_out(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from _qtrace_tiny import tiny_checkpoint

    import qtrace

    ckpt = tiny_checkpoint("tiny-llama")
    attempts = block_network(monkeypatch)
    result = qtrace.profile(model=str(ckpt), precisions="fp32", seq_len=8, warmup=0, iters=1, profile_steps=1,
                            device="cpu", out=tmp_path / "run", quiet=True)
    assert result.run["precisions"]["fp32"]["status"] == "ok", result.run["precisions"]["fp32"]
    assert attempts == []


# ---------------------------------------------------------------- remote code


def test_trust_remote_code_is_off_unless_asked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The CLI passes trust_remote_code=False by default and True only with --trust-remote-code."""
    import qtrace.capture.runner
    from qtrace.cli import main

    seen: list[bool] = []

    class Stop(BaseException):  # past the CLI's own error handling
        pass

    def fake_profile(**kwargs):
        seen.append(kwargs["trust_remote_code"])
        raise Stop

    monkeypatch.setattr(qtrace.capture.runner, "profile", fake_profile)
    for extra in ([], ["--trust-remote-code"]):
        with pytest.raises(Stop):
            main(["profile", "tiny-llama", "--device", "cpu", "--out", str(tmp_path / "r"), *extra])
    assert seen == [False, True]
    assert qtrace.capture.runner.Settings().trust_remote_code is False


def test_model_loading_never_passes_remote_code_or_unpickles_by_default(monkeypatch: pytest.MonkeyPatch,
                                                                       tmp_path: Path) -> None:
    """What reaches from_pretrained / AutoConfig: safetensors only, local files only, no remote code."""
    pytest.importorskip("torch")
    import transformers

    from qtrace.capture import models

    calls: list[tuple[str, dict]] = []

    class FakeAuto:
        @staticmethod
        def from_pretrained(path, **kwargs):
            calls.append(("model", kwargs))
            raise RuntimeError("stop here")

    real_config = transformers.AutoConfig.from_pretrained

    def spy_config(path, **kwargs):
        calls.append(("config", kwargs))
        return real_config(path, **kwargs)

    monkeypatch.setattr(models, "auto_class", lambda task, kind: FakeAuto)
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", spy_config)
    models._head_modules_cached.cache_clear()
    import torch
    from _qtrace_tiny import tiny_checkpoint

    spec = models.resolve_model(str(tiny_checkpoint("tiny-llama")))
    for trust in (False, True):
        calls.clear()
        with pytest.raises(Exception, match="stop here"):
            models.load_model(spec, "fp32", "forward", torch.device("cpu"), trust_remote_code=trust)
        model_kwargs = [k for what, k in calls if what == "model"][0]
        assert model_kwargs["use_safetensors"] is True and model_kwargs["local_files_only"] is True
        assert model_kwargs.get("trust_remote_code", False) is trust
    models._head_modules_cached.cache_clear()


# ---------------------------------------------------------------- no pickle

_PICKLE_USES = [
    re.compile(r"^\s*(import|from)\s+(c?pickle|dill|joblib|shelve|marshal|cloudpickle)\b"),
    re.compile(r"\b(c?pickle|dill|joblib|shelve|cloudpickle)\.(loads?|dumps?|Unpickler|Pickler|open)\b"),
    re.compile(r"\bread_pickle\s*\(|\.to_pickle\s*\("),
    re.compile(r"allow_pickle\s*=\s*True"),
    re.compile(r"use_safetensors\s*[=:]\s*False"),
    re.compile(r"weights_only\s*=\s*False"),
]


def _code_lines(path: Path):
    for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        code = line.split("#", 1)[0]
        yield no, code


def test_no_pickle_anywhere() -> None:
    files = [p for d in ("qtrace", "benchmarks", "scripts", "examples") for p in (REPO / d).rglob("*.py")]
    assert files
    found = []
    for path in files:
        for no, code in _code_lines(path):
            if any(rx.search(code) for rx in _PICKLE_USES):
                found.append(f"{path.relative_to(REPO)}:{no}: {code.strip()}")
            # torch.load unpickles unless told not to.
            if re.search(r"\btorch\.load\s*\(", code) and "weights_only=True" not in code:
                found.append(f"{path.relative_to(REPO)}:{no}: {code.strip()}")
    assert found == []


def test_no_pickle_test_would_catch_a_use(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import pickle\nx = torch.load(f)\ny = np.load(f, allow_pickle=True)  # why\n")
    hits = [no for no, code in _code_lines(bad)
            if any(rx.search(code) for rx in _PICKLE_USES) or ("torch.load(" in code and "weights_only" not in code)]
    assert hits == [1, 2, 3]


def test_outlier_layer_table_escapes_step_and_layer_names() -> None:
    """The LLM.int8 outlier table names layers and steps from trace annotations."""
    import pandas as pd

    from qtrace.backends.bitsandbytes import outliers

    layers = pd.DataFrame([{"module": f"layers.0|{SCRIPT}", "step": 3, "step_name": f"decode|{IMG}", "calls": 2,
                            "K": 64, "N": 128, "k": 1, "share": 1 / 64, "outlier_gpu_us": 1.5,
                            "outlier_cpu_us": 2.0, "outlier_syncs": 2}])
    md = outliers._markdown({"summary": f"sum|{SCRIPT}", "phase_time": {}}, pd.DataFrame(), layers)
    rows = [ln for ln in md.splitlines() if ln.startswith("|")]
    assert len({_unescaped_pipes(r) for r in rows}) == 1, rows
    assert not re.search(r"(?<!\\)<(script|img)", md)
