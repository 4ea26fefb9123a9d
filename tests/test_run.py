"""`qtrace run` and `qtrace.record()` on real scripts with tiny models built from configs (CPU).

On the CPU the int8 model's fp16 sibling runs fine (fp16 linears work on this torch build), so the
script mirrors the seed notebook: int8 loaded with no dtype from an fp32 checkpoint, beside fp16.
"""

from __future__ import annotations

import json
import runpy
import sys
import textwrap
from pathlib import Path

import pytest

from qtrace.fileio import INCOMPLETE_MARKER
from tests._cli import run_cli

pytestmark = pytest.mark.slow

MAIN_SCRIPT = """
import sys, torch
from transformers import AutoModelForSequenceClassification, BitsAndBytesConfig
path, dest = sys.argv[1], sys.argv[2]
m8 = AutoModelForSequenceClassification.from_pretrained(path, quantization_config=BitsAndBytesConfig(load_in_8bit=True))
m16 = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float16)
ids = torch.randint(3, 250, (2, 16), generator=torch.Generator().manual_seed(0))
outs = []
with torch.no_grad():
    for m in (m8, m16):
        for _ in range(3):
            outs.append(m(input_ids=ids).logits.float())
open(dest, "wb").write(torch.stack(outs).numpy().tobytes())
print("script done")
"""


@pytest.fixture(scope="module")
def fp32_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Qwen2-family classifier saved in fp32 (as a merged training checkpoint would be)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from qtrace.capture.models import PRESETS
    from tests._qtrace_tiny import TINY

    cfg = PRESETS["qwen2.5-0.5b"].config(**TINY["qwen2.5-0.5b"])
    cfg.pad_token_id, cfg.num_labels = 2, 7
    torch.manual_seed(0)
    dest = tmp_path_factory.mktemp("ck") / "qwen-fp32"
    AutoModelForSequenceClassification.from_config(cfg).to(torch.float32).save_pretrained(dest)
    return dest


def _script(tmp_path: Path, name: str, body: str) -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(body))
    return p


def _run(path: Path) -> dict:
    return json.loads((path / "run.json").read_text())


@pytest.fixture(scope="module")
def main_run(fp32_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("main")
    script = _script(tmp, "lab.py", MAIN_SCRIPT)
    capsys_out = tmp / "out"
    argv = sys.argv
    try:  # the same script without qtrace, for the "recording changes nothing" check
        sys.argv = [str(script), str(fp32_checkpoint), str(tmp / "plain.bin")]
        runpy.run_path(str(script), run_name="__main__")
    finally:
        sys.argv = argv
    from qtrace.cli import main

    try:
        main(["run", "--out", str(capsys_out), "--skip", "1", "--steps", "1", "--", "python", str(script),
              str(fp32_checkpoint), str(tmp / "recorded.bin")])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    return {"code": code, "out": capsys_out, "tmp": tmp, "ckpt": fp32_checkpoint}


def test_run_folder_entries_and_outputs_unchanged(main_run: dict) -> None:
    assert main_run["code"] == 0
    run = _run(main_run["out"])
    assert list(run["precisions"]) == ["m0-int8", "m1-fp16"]
    e8, e16 = run["precisions"]["m0-int8"], run["precisions"]["m1-fp16"]
    assert e8["backend"] == "bitsandbytes" and e8["quantization"]["llm_int8_threshold"] == 6.0
    assert e8["arguments"]["quantization_config"]["load_in_8bit"] is True and "dtype" not in e8["arguments"]
    assert e16["arguments"]["dtype"] == "fp16"
    for e in (e8, e16):
        assert e["calls"]["count"] == 3 and e["calls"]["profiled"] == 1
        assert e["latency_ms"]["calls_used"] == [3] and e["latency_ms"]["per_example"]["median"] > 0
        assert (main_run["out"] / e["trace"]).is_file()
        assert e["load"]["peak_bytes"] is None and e["load"]["memory_note"]  # CPU: not measured, said so
    assert not (main_run["out"] / INCOMPLETE_MARKER).exists()
    plain = (main_run["tmp"] / "plain.bin").read_bytes()
    assert plain == (main_run["tmp"] / "recorded.bin").read_bytes()


def test_wide_dtype_bytes_match_named_parameters(main_run: dict) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, BitsAndBytesConfig

    e8 = _run(main_run["out"])["precisions"]["m0-int8"]
    f = {x["id"]: x for x in e8["findings"]}["wide-dtype-params"]
    model = AutoModelForSequenceClassification.from_pretrained(
        main_run["ckpt"], quantization_config=BitsAndBytesConfig(load_in_8bit=True))
    quantized = {n for n, m in model.named_modules() if type(m).__name__ == "Linear8bitLt"}
    wide = [p for n, p in model.named_parameters()
            if n.rsplit(".", 1)[0] not in quantized and p.dtype == torch.float32]
    expect = sum(p.numel() * 4 for p in wide)
    assert expect > 0
    assert f["evidence"]["bytes"] == expect
    assert f["evidence"]["saved_bytes"] == expect // 2
    assert f["evidence"]["compute_dtype"] == "fp16"
    costs = [x["cost"] for x in e8["findings"]]
    assert costs == sorted(costs, reverse=True)
    ids = {x["id"] for x in e8["findings"]}
    assert {"quant-matmul-casts", "outlier-threshold", "skipped-modules"} <= ids


def test_report_and_compare_read_the_folder(main_run: dict, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "compare", str(main_run["out"]))
    assert code == 0, err
    assert "m0-int8" in out and "m1-fp16" in out
    code, out, err = run_cli(capsys, "report", str(main_run["out"]))
    assert code == 0, err
    # The audit's findings open each section, before the verdict, in the audit's order.
    int8_section = out[out.index("precision m0-int8"):out.index("precision m1-fp16")]
    run = json.loads((main_run["out"] / "run.json").read_text())
    first = run["precisions"]["m0-int8"]["findings"][0]["id"]
    assert int8_section.index("Finding [") < int8_section.index("Verdict:")
    assert f"] {first}:" in int8_section.splitlines()[1]


def test_occupied_out_is_refused(main_run: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = _script(tmp_path, "s.py", "print('never runs')\n")
    code, out, err = run_cli(capsys, "run", "--out", str(main_run["out"]), "--", "python", str(script))
    assert code == 2 and "already holds results" in err and "never runs" not in out
    assert len(err.strip().splitlines()) == 1


def test_script_that_raises_keeps_what_was_recorded(fp32_checkpoint: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    script = _script(tmp_path, "boom.py", f"""
        import torch
        from transformers import AutoModelForSequenceClassification
        m = AutoModelForSequenceClassification.from_pretrained({str(fp32_checkpoint)!r})
        with torch.no_grad():
            m(input_ids=torch.ones(1, 8, dtype=torch.long) * 5)
        def inner():
            return 1 / 0
        inner()
        """)
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "run", "--out", str(out), "--skip", "0", "--steps", "1", str(script))
    assert code == 1
    assert "ZeroDivisionError" in err and str(script) in err and "in inner" in err
    assert (out / INCOMPLETE_MARKER).is_file()
    e = _run(out)["precisions"]["m0-fp32"]
    assert e["calls"]["count"] == 1 and e["trace"]
    assert _run(out)["script"]["exit_code"] == 1


def test_script_loading_no_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = _script(tmp_path, "none.py", "import sys\nprint('hello', sys.argv[1:])\nsys.exit(3)\n")
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, "run", "--out", str(out), "--", "python", str(script), "a", "--b")
    assert code == 3
    assert "hello ['a', '--b']" in stdout
    assert "no Hugging Face model was loaded" in err
    assert not out.exists()


def test_loaded_twice_never_called_steps_beyond_calls(fp32_checkpoint: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    script = _script(tmp_path, "twice.py", f"""
        import torch
        from transformers import AutoModelForSequenceClassification
        a = AutoModelForSequenceClassification.from_pretrained({str(fp32_checkpoint)!r})
        b = AutoModelForSequenceClassification.from_pretrained({str(fp32_checkpoint)!r})
        with torch.no_grad():
            a(input_ids=torch.ones(3, 8, dtype=torch.long) * 5)
        """)
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "run", "--out", str(out), "--skip", "0", "--steps", "5", str(script))
    assert code == 0, err
    run = _run(out)
    assert list(run["precisions"]) == ["m0-fp32", "m1-fp32"]
    a, b = run["precisions"]["m0-fp32"], run["precisions"]["m1-fp32"]
    assert a["calls"]["profiled"] == 1 and any("only 1 call(s) were recorded" in n for n in a["notes"])
    assert a["calls"]["rows"][0]["batch_size"] == 3
    assert b["calls"]["count"] == 0 and b["status"] == "not-called" and b["trace"] is None
    assert "never-called" in {f["id"] for f in b["findings"]}
    assert any("loaded 2 times" in n for n in b["notes"])
    code, out_text, err = run_cli(capsys, "report", str(out))
    assert code == 0, err


def test_record_api_generate_counts_once(tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, PreTrainedModel

    import qtrace
    from tests._qtrace_tiny import tiny_checkpoint

    ck = tiny_checkpoint("tiny-llama")
    before = PreTrainedModel.__dict__["from_pretrained"]
    out = tmp_path / "<b>run"
    with qtrace.record(out=out, skip=1, steps=1, quiet=True) as rec:
        m = AutoModelForCausalLM.from_pretrained(ck, dtype=torch.float32)
        ids = torch.ones(1, 6, dtype=torch.long) * 5
        with torch.no_grad():
            m.generate(input_ids=ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
            m.generate(input_ids=ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
            m(input_ids=ids)
    assert PreTrainedModel.__dict__["from_pretrained"] is before
    assert "generate" not in vars(m)
    calls = rec.calls
    assert list(calls["kind"]) == ["generate", "generate", "forward"]
    assert list(calls["profiled"]) == [False, True, False]
    assert len(rec.loads) == 1 and rec.loads["calls"].iloc[0] == 3
    html_text = rec._repr_html_()
    assert "&lt;b&gt;run" in html_text and "<b>run" not in html_text
    from qtrace.tracefile import load_trace

    names = set(load_trace(out / rec.run["precisions"]["m0-fp32"]["trace"]).ops["name"])
    assert "qtrace.step:prefill" in names and "qtrace.step:decode" in names and "ProfilerStep#1" in names


def test_recording_keeps_no_model_alive(fp32_checkpoint: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """A script that deletes its model gets the memory back (the seed notebook measures VRAM so)."""
    script = _script(tmp_path, "free.py", f"""
        import gc, weakref, torch
        from transformers import AutoModelForSequenceClassification
        m = AutoModelForSequenceClassification.from_pretrained({str(fp32_checkpoint)!r})
        with torch.no_grad():
            m(input_ids=torch.ones(1, 8, dtype=torch.long) * 5)
            m(input_ids=torch.ones(1, 8, dtype=torch.long) * 5)
        ref = weakref.ref(m)
        del m
        gc.collect()
        print("freed" if ref() is None else "alive")
        """)
    code, out, err = run_cli(capsys, "run", "--out", str(tmp_path / "out"), "--skip", "0", "--steps", "1",
                             str(script))
    assert code == 0, err
    assert "freed" in out
    assert _run(tmp_path / "out")["precisions"]["m0-fp32"]["calls"]["count"] == 2


def test_module_target_and_help(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "qtrace_run_probe_mod.py").write_text("import sys\nprint('argv', sys.argv[1:])\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    code, out, err = run_cli(capsys, "run", "--out", str(tmp_path / "o"), "--", "python", "-m",
                             "qtrace_run_probe_mod", "x")
    assert code == 0 and "argv ['x']" in out and not (tmp_path / "o").exists()
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0 and "run" in out
