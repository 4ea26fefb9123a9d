"""qtrace sweep: crossover logic on synthetic frames, outputs, a fake runner, and one real CPU run."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from qtrace.capture.sweep import (
    baseline_of,
    crossovers,
    frame,
    parse_int_list,
    plot,
    rows_from_run,
    run_sweep,
    to_markdown,
    write_outputs,
)
from qtrace.errors import QtraceError

REPO = Path(__file__).resolve().parent.parent


def _df(points: dict[str, dict[int, float]], seq: int = 128, metric: str = "latency_ms_per_example",
        status: dict[tuple[str, int], str] | None = None) -> pd.DataFrame:
    rows = []
    for p, by_bs in points.items():
        for bs, v in by_bs.items():
            st = (status or {}).get((p, bs), "ok")
            rows.append({"precision": p, "batch_size": bs, "seq_len": seq, "status": st,
                         metric: v if st == "ok" else None})
    return frame(rows)


def _one(found, precision, metric="latency_ms_per_example", seq=128):
    return next(c for c in found if c["precision"] == precision and c["metric"] == metric and c["seq_len"] == seq)


def test_crosses_once_with_log_interpolation():
    df = _df({"fp16": {1: 10.0, 4: 3.0, 16: 1.0, 64: 0.5},
              "int8": {1: 40.0, 4: 6.0, 16: 0.5, 64: 0.2}})
    c = _one(crossovers(df, "fp16"), "int8")
    assert c["status"] == "crosses" and len(c["crossings"]) == 1
    x = c["crossings"][0]
    assert (x["from_batch"], x["to_batch"], x["direction"]) == (4, 16, "becomes_better")
    # log ratio goes from log(2) at batch 4 to log(0.5) at batch 16: zero halfway in log2 -> batch 8
    assert x["batch_size_est"] == pytest.approx(8.0)
    assert c["ratios"] == {1: 4.0, 4: 2.0, 16: 0.5, 64: 0.4}
    assert "int8 overtakes fp16 at batch ~8" in c["message"] and "between 4 and 16" in c["message"]


def test_never_and_always():
    df = _df({"fp16": {1: 1.0, 8: 0.5}, "int8": {1: 3.0, 8: 1.5}, "nf4": {1: 0.9, 8: 0.1}})
    found = crossovers(df, "fp16")
    never = _one(found, "int8")
    assert never["status"] == "never" and never["crossings"] == []
    assert "never beats fp16" in never["message"] and "closest at batch 1: 3.00x" in never["message"]
    always = _one(found, "nf4")
    assert always["status"] == "always_better" and "every measured batch size" in always["message"]


def test_crosses_back():
    df = _df({"fp16": {1: 1.0, 2: 1.0, 4: 1.0, 8: 1.0}, "nf4": {1: 2.0, 2: 0.5, 4: 0.5, 8: 2.0}})
    c = _one(crossovers(df, "fp16"), "nf4")
    assert [x["direction"] for x in c["crossings"]] == ["becomes_better", "becomes_worse"]
    assert c["crossings"][0]["batch_size_est"] == pytest.approx(2 ** 0.5, abs=0.01)  # rounded to 2 decimals
    assert "then falls behind" in c["message"]


def test_failed_points_are_skipped_and_missing_baseline_is_no_data():
    df = _df({"fp16": {1: 10.0, 4: 3.0, 16: 1.0}, "int8": {1: 20.0, 4: 1.0, 16: 0.5}},
             status={("int8", 4): "error"})
    c = _one(crossovers(df, "fp16"), "int8")
    assert c["batches"] == [1, 16] and c["crossings"][0]["from_batch"] == 1
    df2 = _df({"fp16": {1: 1.0}, "int8": {2: 1.0}})
    assert _one(crossovers(df2, "fp16"), "int8")["status"] == "no_data"


def test_per_seq_len_and_memory_metric():
    a = _df({"fp16": {1: 100.0, 4: 200.0}, "int8": {1: 60.0, 4: 120.0}}, seq=128, metric="peak_memory_bytes")
    b = _df({"fp16": {1: 100.0, 4: 200.0}, "int8": {1: 160.0, 4: 420.0}}, seq=512, metric="peak_memory_bytes")
    found = crossovers(pd.concat([a, b], ignore_index=True), "fp16", "peak_memory_bytes")
    assert _one(found, "int8", "peak_memory_bytes", 128)["status"] == "always_better"
    assert _one(found, "int8", "peak_memory_bytes", 512)["status"] == "never"


def test_ties_count_as_not_worse():
    df = _df({"fp16": {1: 1.0, 2: 1.0}, "int8": {1: 1.0, 2: 1.0}})
    assert _one(crossovers(df, "fp16"), "int8")["status"] == "always_better"


def test_parse_and_baseline():
    assert parse_int_list("64, 1,4,4", "batch-size") == [1, 4, 64]
    for bad in ("0", "x", ""):
        with pytest.raises(QtraceError):
            parse_int_list(bad, "batch-size")
    assert baseline_of(["int8", "fp16", "nf4"]) == "fp16"
    assert baseline_of(["int8", "fp32"]) == "fp32"
    assert baseline_of(["int8", "nf4"]) == "int8"
    with pytest.raises(QtraceError):
        baseline_of(["int8", "fp16"], "bf16")


def _run_json(bs: int, lat: dict[str, float], mem: dict[str, int], error: str | None = None) -> dict:
    precisions = {}
    for p, v in lat.items():
        precisions[p] = {
            "status": "ok", "error": None, "trace": f"{p}/trace.json.gz",
            "latency_ms": {"per_iter": {"median": v * bs, "p90": v * bs * 1.1},
                           "per_example": {"median": v, "p90": v * 1.1}},
            "memory": {"max_allocated_bytes": mem[p], "cpu_peak_rss_bytes": 1},
            "load": {"footprint_bytes": mem[p] // 2},
            "energy": {"joules_per_iter": 0.5 * bs, "joules_per_example": 0.5, "joules_per_token": None,
                       "source": "nvml_total_energy"},
        }
    if error:
        precisions["nf4"] = {"status": "error", "error": error, "trace": None, "latency_ms": None, "memory": None}
    return {"settings": {}, "environment": {"device_name": "Fake GPU"}, "precisions": precisions}


def test_rows_from_run():
    rows = rows_from_run(_run_json(4, {"fp16": 2.0, "int8": 5.0}, {"fp16": 100, "int8": 60}, "OutOfMemoryError: x"),
                         4, 128, "points/bs4_seq128")
    by = {r["precision"]: r for r in rows}
    assert by["fp16"]["latency_ms_per_example"] == 2.0 and by["fp16"]["latency_ms_per_iter"] == 8.0
    assert by["fp16"]["examples_per_s"] == pytest.approx(500.0) and by["int8"]["peak_memory_bytes"] == 60
    assert by["int8"]["memory_metric"] == "max_allocated_bytes" and by["fp16"]["joules_per_example"] == 0.5
    assert by["nf4"]["status"] == "error" and by["nf4"]["latency_ms_per_example"] is None


def test_rows_carry_the_quality_cost_of_each_precision():
    run = _run_json(1, {"fp16": 2.0, "int8": 5.0}, {"fp16": 100, "int8": 60})
    run["precisions"]["fp16"]["quality"] = {"baseline": "fp16", "is_baseline": True}
    run["precisions"]["int8"]["quality"] = {"baseline": "fp16", "kl_mean": 0.0123, "top1_agreement": 0.75,
                                            "max_abs_diff": 0.5}
    by = {r["precision"]: r for r in rows_from_run(run, 1, 128)}
    assert (by["fp16"]["kl_mean"], by["fp16"]["top1_agreement"], by["fp16"]["max_abs_diff"]) == (0.0, 1.0, 0.0)
    assert (by["int8"]["kl_mean"], by["int8"]["top1_agreement"], by["int8"]["max_abs_diff"]) == (0.0123, 0.75, 0.5)
    del run["precisions"]["int8"]["quality"]  # an older run folder: no figure, not a zero
    assert rows_from_run(run, 1, 128)[1]["kl_mean"] is None
    df = frame(rows_from_run(run, 1, 128))
    assert "1.23e-02" not in to_markdown(df, []) and "KL (nats)" in to_markdown(df, [])


def test_outputs_and_plot(tmp_path):
    df = _df({"fp16": {1: 10.0, 4: 3.0, 16: 1.0}, "int8": {1: 40.0, 4: 6.0, 16: 0.5}, "nf4": {1: 30, 4: 9, 16: 2}})
    df["peak_memory_bytes"] = [100e6, 150e6, 300e6, 60e6, 90e6, 200e6, 50e6, 80e6, 180e6]
    found = crossovers(df, "fp16") + crossovers(df, "fp16", "peak_memory_bytes")
    files = write_outputs(df, found, tmp_path, {"model": "m", "task": "forward", "baseline": "fp16"}, ["a note"])
    assert {f.name for f in files} == {"sweep.csv", "sweep.json", "sweep.md", "sweep.png"}
    assert (tmp_path / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((tmp_path / "sweep.json").read_text())
    assert len(data["rows"]) == 9 and data["notes"] == ["a note"] and data["crossovers"]
    assert pd.read_csv(tmp_path / "sweep.csv").shape[0] == 9
    md = (tmp_path / "sweep.md").read_text()
    assert "int8 overtakes fp16" in md and "nf4 never beats fp16" in md and "nf4 beats fp16 on peak memory" in md
    assert "![sweep](sweep.png)" in md
    assert to_markdown(df.iloc[:0], [], None).startswith("# qtrace sweep")
    plot(df.iloc[:0], [], tmp_path / "empty.png")  # nothing measured: still a (blank) figure


def test_run_sweep_with_fake_runner(tmp_path):
    calls = []
    lat = {1: {"fp16": 10.0, "int8": 30.0}, 8: {"fp16": 2.0, "int8": 2.5}, 64: {"fp16": 1.0, "int8": 0.6}}

    class Result:
        def __init__(self, run):
            self.run = run

    def runner(**kw):
        calls.append(kw)
        out = Path(kw["out"])
        if kw["profile_steps"]:
            for p in ("fp16", "int8"):
                (out / p).mkdir(parents=True, exist_ok=True)
                (out / p / "trace.json.gz").write_bytes(b"x")
        bs = kw["batch_size"]
        return Result(_run_json(bs, lat[bs], {"fp16": 1000 * bs, "int8": 600 * bs}))

    res = run_sweep("tiny", "fp16,int8", "64,1,8", "32", out=tmp_path / "sw", runner=runner, quiet=True, iters=2)
    assert [c["batch_size"] for c in calls] == [1, 8, 64]
    assert all(c["profile_steps"] == 0 and c["seq_len"] == 32 and c["iters"] == 2 for c in calls)
    assert all(c["out"] == tmp_path / "sw" / "points" / f"bs{c['batch_size']}_seq32" for c in calls)
    assert not list((tmp_path / "sw").rglob("trace.json.gz"))  # no --profile: no trace recorded
    assert not (tmp_path / "sw" / "INCOMPLETE").exists()
    lat_c = _one(res.crossovers, "int8", seq=32)
    assert lat_c["status"] == "crosses" and lat_c["crossings"][0]["from_batch"] == 8
    assert _one(res.crossovers, "int8", "peak_memory_bytes", 32)["status"] == "always_better"
    assert res.settings["baseline"] == "fp16" and res.settings["device_name"] == "Fake GPU"
    assert len(res.frame) == 6
    # --profile keeps the traces
    run_sweep("tiny", "fp16,int8", "1", "32", out=tmp_path / "sw2", runner=runner, quiet=True, profile=True)
    assert len(list((tmp_path / "sw2").rglob("trace.json.gz"))) == 2
    assert calls[-1]["profile_steps"] == 3
    with pytest.raises(QtraceError):  # a non-empty --out needs --force
        run_sweep("tiny", "fp16,int8", "1", "32", out=tmp_path / "sw2", runner=runner, quiet=True)


def test_run_sweep_rejects_bad_input_before_running(tmp_path):
    def runner(**kw):
        raise AssertionError("must not run")

    for kwargs in ({"batch_sizes": "1,zero"}, {"precisions": "fp16,int4"}, {"baseline": "bf16"}):
        args = {"model": "m", "precisions": "fp16,int8", "batch_sizes": "1", **kwargs}
        with pytest.raises(QtraceError):
            run_sweep(out=tmp_path / "x", runner=runner, quiet=True, **args)


@pytest.mark.slow
def test_sweep_cli_end_to_end_on_cpu(tmp_path):
    """The real protocol: a tiny-llama-family checkpoint, fp32 vs int8, batch 1 and 2."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _qtrace_tiny import tiny_checkpoint

    model = str(tiny_checkpoint("tiny-llama"))
    env = {**os.environ, "PYTHONPATH": str(REPO), "QTRACE_CACHE": str(tmp_path / "cache")}
    out = tmp_path / "sweep"
    p = subprocess.run([sys.executable, "-m", "qtrace", "sweep", model, "--precision", "fp32,int8",
                        "--batch-size", "1,2", "--seq-len", "16", "--iters", "2", "--warmup", "1", "--device", "cpu",
                        "--out", str(out), "-q"], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert "sweep folder:" in p.stdout and "int8" in p.stdout
    data = json.loads((out / "sweep.json").read_text())
    assert {(r["precision"], r["batch_size"]) for r in data["rows"]} == {("fp32", 1), ("fp32", 2), ("int8", 1),
                                                                        ("int8", 2)}
    assert all(r["status"] == "ok" and r["latency_ms_per_example"] > 0 for r in data["rows"])
    assert all(r["memory_metric"] == "cpu_peak_rss_bytes" for r in data["rows"])
    assert {c["metric"] for c in data["crossovers"]} == {"latency_ms_per_example", "peak_memory_bytes"}
    assert all(c["status"] in ("crosses", "never", "always_better") for c in data["crossovers"])
    assert (out / "sweep.png").stat().st_size > 1000 and (out / "sweep.csv").is_file()
    for point in ("bs1_seq16", "bs2_seq16"):
        run = json.loads((out / "points" / point / "run.json").read_text())
        assert run["settings"]["batch_size"] == int(point[2]) and run["settings"]["profile_steps"] == 0
    assert not list(out.rglob("trace.json.gz"))
    assert not math.isnan(sum(r["latency_ms_per_example"] for r in data["rows"]))
