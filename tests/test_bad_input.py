"""Bad input, as a user meets it: `python -m qtrace ...` in a fresh interpreter must say what is wrong
in exactly one line on stderr ("qtrace: error: ..."), exit non-zero, show no traceback and leave
nothing half-written. Also: a precision that runs out of GPU memory is reported for that precision
while the others are still measured and written; Ctrl-C keeps finished results and marks the run
folder INCOMPLETE, which `qtrace report` then warns about.

The CLI cases run two at a time in one fixture (each is a separate interpreter) to keep this quick."""

from __future__ import annotations

import gzip
import json
import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from qtrace.fileio import INCOMPLETE_MARKER

REPO = Path(__file__).resolve().parents[1]
TRACES = REPO / "traces"
SMALL = TRACES / "h100_qwen05-shape-outliers_fp16_bs1_seq128.json.gz"
INT8 = TRACES / "h100_qwen05-shape_int8_bs1_seq128.json.gz"


def qtrace_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "qtrace", *args]


def env(tmp: Path) -> dict[str, str]:
    e = {**os.environ, "PYTHONPATH": str(REPO), "QTRACE_CACHE": str(tmp / "qtrace-cache"),
         "HF_HOME": str(tmp / "hf-home"), "HF_HUB_CACHE": str(tmp / "hf-home" / "hub")}
    e.pop("QTRACE_DEBUG", None)
    return e


def write_bad_inputs(d: Path) -> None:
    """One file or folder per kind of bad input (names are the case ids)."""
    real = gzip.decompress(SMALL.read_bytes())
    (d / "empty.json").write_bytes(b"")
    (d / "truncated.json.gz").write_bytes(SMALL.read_bytes()[:200_000])
    (d / "truncated.json").write_bytes(real[: len(real) // 2])
    rnd = random.Random(7)
    (d / "random.json").write_bytes(bytes(rnd.randrange(256) for _ in range(4096)))
    (d / "random.json.gz").write_bytes(b"\x1f\x8b" + bytes(rnd.randrange(256) for _ in range(4096)))
    (d / "gzip-garbage-after.json.gz").write_bytes(gzip.compress(real) + b"PK\x03\x04 not gzip")
    (d / "array.json").write_text("[1, 2, 3]")
    (d / "string.json").write_text('"traceEvents"')
    (d / "no-events.json").write_text('{"schemaVersion": 1, "deviceProperties": []}')
    (d / "events-not-list.json").write_text('{"traceEvents": {"ph": "X"}}')
    (d / "wrong-types.json").write_text('{"traceEvents": [{"ph": "X", "cat": "kernel", "name": 5, "ts": "soon"}]}')
    (d / "ts-is-text.json").write_text('{"traceEvents": [{"ph": "X", "cat": "cpu_op", "name": "a", "ts": "1"}]}')
    (d / "huge-int.json").write_text('{"traceEvents": [{"ph": "X", "cat": "cpu_op", "name": "a", "pid": 1, '
                                     '"tid": 1, "ts": 1, "dur": 1, "args": {"External id": 99999999999999999999}}]}')
    (d / "huge-float.json").write_text('{"traceEvents": [{"ph": "X", "cat": "kernel", "name": "k", "ts": 1e999}]}')
    (d / "only-metadata.json").write_text('{"traceEvents": [{"ph": "M", "name": "process_name", "pid": 1, '
                                          '"args": {"name": "python3"}}]}')
    (d / "no-events-at-all.json").write_text('{"traceEvents": []}')
    (d / "utf16.json").write_bytes('{"traceEvents": []}'.encode("utf-16"))
    (d / "empty-folder").mkdir()
    (d / "folder-without-trace").mkdir()
    (d / "folder-without-trace" / "notes.txt").write_text("no trace here")
    (d / "bad-run-json").mkdir()
    (d / "bad-run-json" / "run.json").write_text("{not json")
    run = d / "run-with-broken-trace"
    (run / "int8").mkdir(parents=True)
    (run / "int8" / "trace.json.gz").write_bytes(SMALL.read_bytes()[:1000])
    (run / "run.json").write_text(json.dumps({"precisions": {"int8": {"status": "ok", "trace": "int8/trace.json.gz"}}}))
    for name, text in (("run-json-not-utf8", b'{"precisions": {"\xff": 1}}'),
                       ("run-json-precisions-list", b'{"precisions": [1, 2]}'),
                       ("run-json-escapes", b'{"precisions": {"int8": {"trace": "../../outside.json"}}}')):
        (d / name).mkdir()
        (d / name / "run.json").write_bytes(text)
    (d / "existing-run").mkdir()
    (d / "existing-run" / "run.json").write_text("{}")
    (d / "a-file").write_text("x")


# (case id, arguments: "{d}" is the bad-input folder, "{out}" a fresh --out path; words the line must hold)
CASES = [
    ("missing path", ["report", "{d}/no-such-trace.json"], "no such file"),
    ("empty file", ["report", "{d}/empty.json"], "empty file"),
    ("truncated .json.gz", ["report", "{d}/truncated.json.gz"], "truncated gzip"),
    ("truncated .json", ["report", "{d}/truncated.json"], "not valid JSON"),
    ("random bytes", ["report", "{d}/random.json"], "not valid JSON"),
    ("random bytes behind a gzip magic", ["report", "{d}/random.json.gz"], "gzip"),
    ("garbage after the gzip data", ["report", "{d}/gzip-garbage-after.json.gz"], "gzip"),
    ("JSON array, not an object", ["report", "{d}/array.json"], "not an object"),
    ("JSON string, not an object", ["report", "{d}/string.json"], "not an object"),
    ("no traceEvents", ["report", "{d}/no-events.json"], "no 'traceEvents'"),
    ("traceEvents not a list", ["report", "{d}/events-not-list.json"], "traceEvents"),
    ("event fields of the wrong type", ["report", "{d}/wrong-types.json"], "traceEvents[0].name"),
    ("timestamp as text", ["report", "{d}/ts-is-text.json"], "traceEvents[0].ts"),
    ("integer beyond 64 bits", ["report", "{d}/huge-int.json"], "External id"),
    ("number beyond a double", ["report", "{d}/huge-float.json"], "out of range"),
    ("only metadata events", ["report", "{d}/only-metadata.json"], "no profiler events"),
    ("empty traceEvents", ["report", "{d}/no-events-at-all.json"], "no profiler events"),
    ("UTF-16 text", ["report", "{d}/utf16.json"], "not valid JSON"),
    ("empty folder", ["report", "{d}/empty-folder"], "folder holds no trace"),
    ("folder with no trace", ["report", "{d}/folder-without-trace"], "folder holds no trace"),
    ("run.json not JSON", ["report", "{d}/bad-run-json"], "run.json"),
    ("run.json not UTF-8", ["report", "{d}/run-json-not-utf8"], "run.json: not valid JSON"),
    ("run.json precisions not an object", ["report", "{d}/run-json-precisions-list"], "'precisions'"),
    ("run.json trace path leaves the folder", ["report", "{d}/run-json-escapes"], "leads out of the run folder"),
    ("run folder with a broken trace", ["report", "{d}/run-with-broken-trace"], "int8/trace.json.gz"),
    ("--top 0", ["report", str(SMALL), "--top", "0"], "--top"),
    ("unknown --format", ["report", str(SMALL), "--format", "xml"], "--format"),
    ("--out is a file", ["report", str(SMALL), "--out", "{d}/a-file"], "not a folder"),
    ("--out holds results", ["report", str(SMALL), "--out", "{d}/existing-run"], "--force"),
    ("--out cannot be created", ["report", str(SMALL), "--out", "/proc/qtrace-cannot-be-here"], "cannot create"),
    ("bad trace with --out", ["report", "{d}/truncated.json.gz", "--out", "{out}"], "truncated gzip"),
    ("compare with one truncated input", ["compare", str(SMALL), "{d}/truncated.json.gz"], "truncated.json.gz"),
    ("compare with one missing input", ["compare", str(SMALL), "{d}/nope.json", "--out", "{out}"], "nope.json"),
    ("compare with one input", ["compare", str(SMALL)], "at least two"),
    ("profile: no such model folder", ["profile", "{d}/no-such-model", "--device", "cpu"], "does not exist"),
    ("profile: HF id not in the cache", ["profile", "nobody-xyz/not-a-cached-model", "--device", "cpu"],
     "not in the local Hugging Face cache"),
    ("profile: unknown precision", ["profile", "--precision", "fp16,int4", "--device", "cpu"], "unknown precision"),
    ("profile: --out holds a run", ["profile", "--device", "cpu", "--out", "{d}/existing-run"], "--force"),
    ("profile: --iters 0", ["profile", "--device", "cpu", "--iters", "0"], "--iters"),
    ("unknown command", ["frobnicate"], "frobnicate"),
]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[subprocess.CompletedProcess, Path, Path]]:
    d = tmp_path_factory.mktemp("bad")
    write_bad_inputs(d)
    work = tmp_path_factory.mktemp("cwd")

    def run(case: tuple[str, list[str], str]) -> tuple[str, tuple[subprocess.CompletedProcess, Path, Path]]:
        cid, args, _ = case
        out = work / ("out-" + "".join(c if c.isalnum() else "-" for c in cid))
        argv = [a.replace("{d}", str(d)).replace("{out}", str(out)) for a in args]
        proc = subprocess.run(qtrace_cmd(*argv), capture_output=True, text=True, env=env(work), cwd=work,
                              timeout=300, check=False)
        return cid, (proc, d, out)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(run, CASES))


@pytest.mark.parametrize(("cid", "needle"), [(c[0], c[2]) for c in CASES], ids=[c[0] for c in CASES])
def test_one_clear_line_and_nothing_written(results, cid: str, needle: str) -> None:
    proc, d, out = results[cid]
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("qtrace: error: "), lines[0]
    assert needle in lines[0], lines[0]
    assert proc.stdout == ""
    # Nothing half-written: no --out files, no temp files, no default run folder.
    assert not out.exists() or not any(out.rglob("*")), sorted(out.rglob("*"))
    assert not list(d.rglob("*.tmp")) and not list(d.rglob(".*.tmp"))
    assert not (out.parent / "qtrace-runs").exists()


def test_existing_run_is_untouched(results) -> None:
    _, d, _ = results["--out holds results"]
    assert [p.name for p in (d / "existing-run").iterdir()] == ["run.json"]
    assert (d / "existing-run" / "run.json").read_text() == "{}"


# ---------------------------------------------------------------- odd but valid input


def _write_events(path: Path, events: list[dict]) -> Path:
    path.write_text(json.dumps({"traceEvents": events}))
    return path


def test_gpu_events_without_a_launch_still_report(tmp_path: Path) -> None:
    """Kernels whose correlation id matches no runtime call (and no host ops at all): reported as `other`."""
    trace = _write_events(tmp_path / "orphans.json", [
        {"ph": "X", "cat": "kernel", "name": "k", "pid": 0, "tid": 7, "ts": 10, "dur": 5,
         "args": {"correlation": 99, "device": 0, "stream": 7}},
        {"ph": "X", "cat": "gpu_memcpy", "name": "Memcpy DtoH", "pid": 0, "tid": 7, "ts": 20, "dur": 1,
         "args": {"bytes": 8}},
    ])
    proc = subprocess.run(qtrace_cmd("report", str(trace), "--format", "json"), capture_output=True, text=True,
                          env=env(tmp_path), cwd=tmp_path, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(proc.stdout)
    assert rep["gpu_time_us"] == 6.0
    assert {k["name"]: k["phase"] for k in rep["kernels"]}["k"] == "other"  # no launching op: no context


def test_zero_length_copy_reports(tmp_path: Path) -> None:
    """A copy of 0 µs (clock granularity) once crashed the roofline's bound ranking (0 / 0 shares)."""
    trace = _write_events(tmp_path / "zero.json", [
        {"ph": "X", "cat": "gpu_memcpy", "name": "Memcpy HtoD (Pageable -> Device)", "pid": 0, "tid": 7, "ts": 5,
         "dur": 0, "args": {"bytes": 4, "correlation": 1, "device": 0, "stream": 7}},
    ])
    for fmt in ("json", "md"):
        proc = subprocess.run(qtrace_cmd("report", str(trace), "--format", fmt), capture_output=True, text=True,
                              env=env(tmp_path), cwd=tmp_path, timeout=120, check=False)
        assert proc.returncode == 0, proc.stderr


def test_cpu_only_trace_reports(tmp_path: Path) -> None:
    trace = _write_events(tmp_path / "cpu.json", [
        {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "pid": 1, "tid": 1, "ts": 0, "dur": 10},
        {"ph": "X", "cat": "cpu_op", "name": "aten::add", "pid": 1, "tid": 1, "ts": 2, "dur": 3},
    ])
    proc = subprocess.run(qtrace_cmd("report", str(trace)), capture_output=True, text=True, env=env(tmp_path),
                          cwd=tmp_path, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "cpu-only" in proc.stdout


# ---------------------------------------------------------------- a precision runs out of GPU memory


def test_oom_in_one_precision_keeps_the_others(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The only way to meet an OOM on a CPU box: make int8's load raise torch's CUDA OOM error."""
    torch = pytest.importorskip("torch")
    from _qtrace_tiny import tiny_checkpoint

    import qtrace
    from qtrace.capture import models

    real_load = models.load_model

    def load(spec, precision, *args, **kwargs):
        if precision == "int8":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 79.1 GiB "
                                              "total capacity)\nmore detail on a second line")
        return real_load(spec, precision, *args, **kwargs)

    monkeypatch.setattr(models, "load_model", load)
    out = tmp_path / "run"
    result = qtrace.profile(model=str(tiny_checkpoint("tiny-llama")), precisions="int8,fp32", seq_len=8,
                            warmup=0, iters=1, profile_steps=1, device="cpu", out=out, quiet=True)
    run = json.loads((out / "run.json").read_text())
    int8 = run["precisions"]["int8"]
    assert int8["status"] == "error" and int8["trace"] is None
    assert int8["error"].startswith("OutOfMemoryError: CUDA out of memory") and "\n" not in int8["error"]
    fp32 = run["precisions"]["fp32"]  # measured after the failure
    assert fp32["status"] == "ok" and (out / fp32["trace"]).is_file(), fp32
    assert not (out / INCOMPLETE_MARKER).exists()
    assert "OutOfMemoryError" in result.table()
    # The report covers the precisions that have a trace, and says nothing is missing by accident.
    proc = subprocess.run(qtrace_cmd("report", str(out), "--format", "json"), capture_output=True, text=True,
                          env=env(tmp_path), cwd=tmp_path, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert [r["precision"] for r in json.loads(proc.stdout)["reports"]] == ["fp32"]
    assert "warning" not in proc.stderr


# ---------------------------------------------------------------- Ctrl-C


def _wait_for(proc: subprocess.Popen, path: Path, needle: str, timeout: float) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"exited early ({proc.returncode})")
        if path.exists() and needle in path.read_text(errors="replace"):
            return
        time.sleep(0.02)
    raise AssertionError(f"{needle!r} never appeared in {path}")


@pytest.mark.slow
def test_ctrl_c_during_profile_keeps_finished_precisions(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from _qtrace_tiny import tiny_checkpoint

    out = tmp_path / "run"
    log = tmp_path / "stderr.txt"
    # Many timed iterations: int8 runs long enough on CPU to be interrupted in the middle.
    args = ["profile", str(tiny_checkpoint("tiny-llama")), "--precision", "fp32,int8", "--device", "cpu",
            "--seq-len", "8", "--warmup", "0", "--iters", "400", "--profile-steps", "1", "--out", str(out)]
    with open(log, "w") as err:
        proc = subprocess.Popen(qtrace_cmd(*args), stdout=subprocess.PIPE, stderr=err, env=env(tmp_path),
                                cwd=tmp_path, text=True)
        try:
            _wait_for(proc, log, "[int8] loading", timeout=240)
            proc.send_signal(signal.SIGINT)
            stdout, _ = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    stderr = log.read_text()
    assert proc.returncode == 130, stderr
    assert stderr.splitlines()[-1] == "qtrace: interrupted" and "Traceback" not in stderr
    assert (out / INCOMPLETE_MARKER).exists()
    run = json.loads((out / "run.json").read_text())
    assert list(run["precisions"]) == ["fp32"] and run["precisions"]["fp32"]["status"] == "ok"
    assert not list(out.rglob("*.tmp"))
    with gzip.open(out / run["precisions"]["fp32"]["trace"]) as fh:  # the finished trace is whole
        assert json.load(fh)["traceEvents"]
    proc = subprocess.run(qtrace_cmd("report", str(out), "--format", "json"), capture_output=True, text=True,
                          env=env(tmp_path), cwd=tmp_path, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    warning = proc.stderr.strip().splitlines()
    assert len(warning) == 1 and warning[0].startswith("qtrace: warning: ") and "incomplete" in warning[0]
    assert "(fp32)" in warning[0]
    assert [r["precision"] for r in json.loads(proc.stdout)["reports"]] == ["fp32"]


def test_ctrl_c_during_report_out_leaves_only_whole_files(tmp_path: Path) -> None:
    """Interrupt `report --out` at a random moment: whatever is in --out is complete, never a temp file."""
    out = tmp_path / "out"
    proc = subprocess.Popen(qtrace_cmd("report", str(INT8), "--out", str(out), "--format", "json"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env(tmp_path), cwd=tmp_path,
                            text=True)
    t0 = time.monotonic()
    while not out.exists() and proc.poll() is None and time.monotonic() - t0 < 60:
        time.sleep(0.01)
    time.sleep(random.uniform(0.0, 1.5))
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode in (0, 130), stderr
    assert "Traceback" not in stderr
    if proc.returncode == 130:
        # click ends the terminal's "^C" line first, hence the blank line.
        assert [ln for ln in stderr.splitlines() if ln] == ["qtrace: interrupted"]
    files = [p for p in out.rglob("*") if p.is_file()]
    assert not [p for p in files if p.name.endswith(".tmp")]
    for p in files:
        if p.name.endswith(".json"):
            json.loads(p.read_text())
        elif p.name.endswith(".gz"):
            json.loads(gzip.decompress(p.read_bytes()))
        else:
            assert p.stat().st_size > 0


def test_report_and_compare_out_with_bad_input_leave_no_folder(tmp_path):
    bad = tmp_path / "empty.json"
    bad.write_text("")
    for args in (["report", str(bad), "--out", str(tmp_path / "rep")],
                 ["compare", str(bad), str(bad), "--out", str(tmp_path / "cmp")]):
        p = subprocess.run([sys.executable, "-m", "qtrace", *args], capture_output=True, text=True)
        assert p.returncode == 2
        assert not (tmp_path / args[-1]).exists()


def test_view_of_an_empty_file_is_an_error(tmp_path):
    empty = tmp_path / "annotated_trace.json.gz"
    empty.write_bytes(b"")
    p = subprocess.run([sys.executable, "-m", "qtrace", "view", str(empty)], capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.strip() == f"qtrace: error: {empty}: empty file"


def test_sweep_of_a_missing_model_makes_no_folder(tmp_path):
    out = tmp_path / "sw"
    p = subprocess.run([sys.executable, "-m", "qtrace", "sweep", str(tmp_path / "no-such-model"), "--out", str(out)],
                       capture_output=True, text=True)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1
    assert not out.exists()
