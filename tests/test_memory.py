"""Memory analyzer: peak, live set and its split by phase, on hand-built, tiny CPU and real H100 traces.

Expected figures are either written by hand next to the hand-built events, or read from the raw
trace JSON / the model's config inside the test, never copied from the analyzer's output.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import msgspec
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qtrace.analyzers import memory
from qtrace.analyzers.trace_analysis import analyze_trace
from qtrace.reports.trace_report import headline, render_markdown, to_json_obj
from qtrace.tracefile.kineto import load_trace

TRACES = Path(__file__).resolve().parent.parent / "traces"
INT8 = TRACES / "h100_qwen05-shape_int8_bs1_seq128.json.gz"
FP16 = TRACES / "h100_qwen05-shape-outliers_fp16_bs1_seq128.json.gz"
NF4 = TRACES / "h100_modernbert-shape-outliers_nf4_bs1_seq128.json.gz"
SHARED = [INT8, FP16, NF4]

# --- a hand-built trace ------------------------------------------------------------------------
# Host ops (pid/tid 1), µs:   mul [10,20]   int8_linear_matmul [30,50] > aten::empty [31,33]
#                             int8_mm_dequant [60,70] > aten::empty_like [61,63]   add [80,85]
# CUDA allocator: 10_000 B live before the window (first event: total 14_096 - its 4_096 B).
#   ts 12   +4096 @A  (mul)            -> 14096
#   ts 20.5 -1000 @X  (no op; X was allocated before the window)  -> 13096
#   ts 32   +8192 @B  (int8.gemm)      -> 21288
#   ts 62   +2048 @C  (int8.dequant)   -> 23336   <- peak: A + B + C + resident 9000
#   ts 65   -8192 @B  (int8.dequant)   -> 15144
#   ts 81   +1024 @B  (add; B's address reused)  -> 16168
#   ts 84   -1024 @B  (add)            -> 15144
#   ts 86   -4096 @A  (no op)          -> 11048   (listed before the ts 84 event on purpose)
# CPU allocator (same address as A, must not pair with CUDA blocks): +64 @A at 13, -64 @A at 14.
A, B, C, X = 0x7F0000001000, 0x7F0000002000, 0x7F0000003000, 0x7F0000009000
HAND_PEAK = 23336
HAND_AT_PEAK = {"resident": 9000, "int8.gemm": 8192, "elementwise": 4096, "int8.dequant": 2048}


def _op(name: str, ts: float, dur: float, ext: int) -> dict:
    return {"ph": "X", "cat": "cpu_op", "name": name, "pid": 1, "tid": 1, "ts": ts, "dur": dur,
            "args": {"External id": ext}}


def _mem(ts: float, addr: int, nbytes: int, total: int, device_type: int = 1, device_id: int = 0,
         reserved: int = 2**21) -> dict:
    return {"ph": "i", "cat": "cpu_instant_event", "s": "t", "name": "[memory]", "pid": 1, "tid": 1, "ts": ts,
            "args": {"Total Reserved": reserved if device_type == 1 else 0, "Total Allocated": total,
                     "Bytes": nbytes, "Device Id": device_id, "Device Type": device_type, "Addr": addr}}


def _hand_events() -> list[dict]:
    ops = [_op("aten::mul", 10, 10, 1), _op("bitsandbytes::int8_linear_matmul", 30, 20, 2),
           _op("aten::empty", 31, 2, 3), _op("bitsandbytes::int8_mm_dequant", 60, 10, 4),
           _op("aten::empty_like", 61, 2, 5), _op("aten::add", 80, 5, 6)]
    # One kernel launched by mul, so the whole report (which wants GPU events) runs on this trace.
    gpu = [{"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": 1, "tid": 1, "ts": 11, "dur": 2,
            "args": {"correlation": 7, "External id": 1}},
           {"ph": "X", "cat": "kernel", "name": "elementwise_kernel", "pid": 0, "tid": 7, "ts": 14, "dur": 3,
            "args": {"correlation": 7, "device": 0, "stream": 7, "External id": 1}}]
    mem = [_mem(12, A, 4096, 14096), _mem(13, A, 64, 64, device_type=0, device_id=-1),
           _mem(14, A, -64, 0, device_type=0, device_id=-1), _mem(20.5, X, -1000, 13096),
           _mem(32, B, 8192, 21288), _mem(62, C, 2048, 23336), _mem(65, B, -8192, 15144),
           _mem(81, B, 1024, 16168), _mem(86, A, -4096, 11048), _mem(84, B, -1024, 15144)]
    return ops + gpu + mem


def _write(tmp_path: Path, events: list[dict], name: str = "hand.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps({"schemaVersion": 1, "traceEvents": events}))
    return path


@pytest.fixture
def hand(tmp_path):
    return load_trace(_write(tmp_path, _hand_events()))


def test_hand_peak_and_split_exact(hand):
    sec = memory.memory_section(hand, None)
    assert sec["available"] is True
    assert sec["device"] == "cuda:0"
    assert sec["peak_allocated_bytes"] == HAND_PEAK
    assert {e["phase"]: e["bytes"] for e in sec["at_peak"]} == HAND_AT_PEAK
    assert sum(e["bytes"] for e in sec["at_peak"]) == HAND_PEAK
    assert sec["at_peak"][0]["phase"] == "resident"
    # Timestamps are relative to the trace's first event (ts 10).
    assert sec["peak_ts_us"] == pytest.approx(62 - 10)
    kinds = {e["phase"]: e["kind"] for e in sec["at_peak"]}
    assert kinds["int8.gemm"] == "int32 accumulator"
    assert kinds["int8.dequant"] == "dequantized output"
    assert kinds["elementwise"] == "activations"
    assert sec["notes"] == []
    assert sec["start_allocated_bytes"] == 10000
    assert sec["resident_bytes"] == 9000


def test_hand_phase_table_exact(hand):
    rows = {r["phase"]: r for r in memory.memory_section(hand, None)["phases"]}
    assert list(rows) == ["int8.gemm", "int8.dequant", "elementwise"]  # vocabulary order; `other` only freed
    assert rows["int8.gemm"] == {"phase": "int8.gemm", "group": "int8 GEMM", "kind": "int32 accumulator",
                                 "allocs": 1, "alloc_bytes": 8192, "transient_bytes": 8192,
                                 "peak_increment_bytes": 8192, "live_at_peak_bytes": 8192, "live_at_end_bytes": 0}
    # C is never freed; the dequant occurrence (+2048, then B's free) rose 2048 above its entry.
    d = rows["int8.dequant"]
    assert (d["allocs"], d["alloc_bytes"], d["transient_bytes"], d["peak_increment_bytes"],
            d["live_at_peak_bytes"], d["live_at_end_bytes"]) == (1, 2048, 0, 2048, 2048, 2048)
    # Two elementwise occurrences (+4096, then +1024 -1024): the larger rise counts.
    e = rows["elementwise"]
    assert (e["allocs"], e["alloc_bytes"], e["transient_bytes"], e["peak_increment_bytes"],
            e["live_at_peak_bytes"], e["live_at_end_bytes"]) == (2, 5120, 5120, 4096, 4096, 0)
    assert list(rows["elementwise"]) == memory.PHASE_KEYS


def test_hand_devices_kept_apart(hand):
    devs = {d["device"]: d for d in memory.memory_section(hand, None)["devices"]}
    assert set(devs) == {"cuda:0", "cpu"}
    assert devs["cpu"]["peak_allocated_bytes"] == 64
    cpu = memory.memory_blocks(hand, "cpu")
    assert len(cpu) == 1 and cpu["free_ts"].iat[0] == pytest.approx(14 - 10)
    # A's CUDA block is closed by the CUDA free at 86, not by the CPU free at the same address.
    cuda = memory.memory_blocks(hand, "cuda:0").set_index("alloc_ts")
    assert cuda.loc[12 - 10, "free_ts"] == pytest.approx(86 - 10)
    with pytest.raises(KeyError):
        memory.memory_blocks(hand, "cuda:3")


def test_hand_dataframes(hand):
    live = memory.live_blocks(hand)
    assert live["bytes"].sum() == HAND_PEAK
    assert live["phase"].iat[-1] == "resident" and live["bytes"].iat[-1] == 9000
    # After the last event: only C and the resident 9000 remain.
    late = memory.live_blocks(hand, at_ts=100)
    assert sorted(late["bytes"]) == [2048, 9000]
    tl = memory.memory_timeline(hand)
    assert list(tl["ts"]) == sorted(tl["ts"])
    assert (tl["allocated"] == tl["rebuilt"]).all()
    assert list(tl["resident"]) == [10000] + [9000] * 7
    assert memory.memory_phase_table(hand)["live_at_peak_bytes"].sum() == HAND_PEAK - 9000


def test_free_closes_most_recent_block_at_address(tmp_path):
    # Two blocks open at one address (not something the caching allocator does, but the rule must hold).
    events = [_op("aten::mul", 0, 10, 1), _op("aten::add", 20, 10, 2),
              _mem(1, A, 100, 100), _mem(21, A, 300, 400), _mem(25, A, -300, 100), _mem(26, A, 50, 150)]
    t = load_trace(_write(tmp_path, events))
    blocks = memory.memory_blocks(t)
    by_size = blocks.set_index("bytes")
    assert by_size.loc[300, "free_ts"] == pytest.approx(25)
    assert by_size.loc[100, "free_ts"] != by_size.loc[100, "free_ts"]  # NaN: still live
    sec = memory.memory_section(t, None)
    assert sec["peak_allocated_bytes"] == 400
    assert {e["phase"]: e["bytes"] for e in sec["at_peak"]} == {"resident": 0, "elementwise": 400}


def test_missing_events_are_reported_not_hidden(tmp_path):
    # The allocator's total jumps by 5000 B that no event accounts for (a lost event).
    events = [_op("aten::mul", 0, 10, 1), _mem(1, A, 100, 1100), _mem(2, B, 200, 6300), _mem(3, A, -100, 6200)]
    t = load_trace(_write(tmp_path, events))
    sec = memory.memory_section(t, None)
    assert sec["peak_allocated_bytes"] == 6300  # the allocator's figure, as the events report it
    assert sum(e["bytes"] for e in sec["at_peak"]) == 6300
    assert {e["phase"]: e["bytes"] for e in sec["at_peak"]} == {"resident": 6000, "elementwise": 300}
    assert any("departs from the running sum" in n for n in sec["notes"])
    assert "inconsistent" in sec["summary"]


def test_no_memory_events_is_a_section_not_an_error(tmp_path):
    events = [e for e in _hand_events() if e["name"] != "[memory]"]
    t = load_trace(_write(tmp_path, events))
    sec = memory.memory_section(t, {"memory": {"max_allocated_bytes": 10}})
    assert sec["available"] is False and sec["peak_allocated_bytes"] is None and sec["at_peak"] == []
    assert "profile_memory" in sec["summary"] and "profile_memory" in sec["markdown"]
    r = analyze_trace(t)
    assert r.extra["memory"]["available"] is False
    assert memory.live_blocks(t).empty and memory.memory_phase_table(t).empty and memory.memory_timeline(t).empty


def test_measured_block(hand):
    measured = {"memory": {"max_allocated_bytes": 30000, "max_reserved_bytes": 2**21, "nvml_process_bytes": 2**29},
                "load": {"footprint_bytes": 8000}}
    sec = memory.memory_section(hand, measured)
    m = sec["measured"]
    assert m["outside_allocator_bytes"] == 2**29 - 2**21
    assert m["allocator_cache_bytes"] == 2**21 - 30000
    assert m["resident_beyond_footprint_bytes"] == 9000 - 8000
    assert m["trace_peak_minus_measured_bytes"] == HAND_PEAK - 30000
    assert any("CUDA context" in n for n in m["notes"])
    assert "Beside the un-profiled measurements" in sec["markdown"]
    # Partial run.json figures (a CPU run has no CUDA ones): no differences invented.
    part = memory.memory_section(hand, {"load": {"footprint_bytes": 8000}})["measured"]
    assert part["outside_allocator_bytes"] is None and part["allocator_cache_bytes"] is None


def test_report_integration(hand):
    r = analyze_trace(hand, measured={"memory": {"max_allocated_bytes": 30000}})
    sec = r.extra["memory"]
    assert sec["peak_allocated_bytes"] == HAND_PEAK
    obj = to_json_obj([r], r.source, None)
    assert "markdown" not in obj["memory"] and obj["memory"]["at_peak"] == sec["at_peak"]
    msgspec.json.encode(obj)  # plain JSON types only
    assert any(line.startswith("Memory: peak 22.8 KiB") for line in headline(r))
    md = render_markdown([r])
    assert "### Memory" in md and "int32 accumulator" in md and "int8.dequant" in md


def test_markdown_escapes_names(hand):
    md = memory.memory_section(hand, None)["markdown"]
    assert "int8.gemm" in md
    assert "| resident | allocated before the window |" in md


# --- the shared H100 traces --------------------------------------------------------------------


def _raw_memory(path: Path, device_type: int = 1) -> list[dict]:
    with gzip.open(path, "rt") as fh:
        events = json.load(fh)["traceEvents"]
    return [e["args"] for e in events if e.get("name") == "[memory]" and e["args"].get("Device Type") == device_type]


@pytest.fixture(scope="module")
def shared():
    return {p.name: load_trace(p) for p in SHARED}


@pytest.mark.parametrize("path", SHARED, ids=lambda p: p.name)
def test_shared_peak_is_allocator_max_and_split_adds_up(shared, path):
    raw = _raw_memory(path)
    t = shared[path.name]
    sec = memory.memory_section(t, None)
    assert sec["device"] == "cuda:0"
    assert sec["peak_allocated_bytes"] == max(a["Total Allocated"] for a in raw)
    assert sec["max_reserved_bytes"] == max(a["Total Reserved"] for a in raw)
    assert sum(e["bytes"] for e in sec["at_peak"]) == sec["peak_allocated_bytes"]
    assert sum(k["bytes"] for e in sec["at_peak"] for k in e["kinds"]) == sec["peak_allocated_bytes"]
    # These traces are self-consistent: resident is what the allocator held before the first event.
    assert sec["notes"] == []
    assert sec["resident_bytes"] == raw[0]["Total Allocated"] - raw[0]["Bytes"]
    assert memory.live_blocks(t)["bytes"].sum() == sec["peak_allocated_bytes"]
    assert sum(p["alloc_bytes"] for p in sec["phases"]) == sum(a["Bytes"] for a in raw if a["Bytes"] > 0)
    assert len(sec["summary"].splitlines()) == 1


def test_int8_trace_int32_accumulator(shared):
    sec = memory.memory_section(shared[INT8.name], None)
    gemm = {p["phase"]: p for p in sec["phases"]}["int8.gemm"]
    assert gemm["kind"] == "int32 accumulator" and gemm["transient_bytes"] > 0
    # Qwen2.5-0.5B shapes at T=128 tokens: out_features 896 (q, o, down), 128 (k, v), 4864 (gate, up).
    blocks = memory.memory_blocks(shared[INT8.name])
    acc = blocks[blocks["kind"] == "int32 accumulator"]
    assert set(acc["bytes"]) == {128 * n * 4 for n in (896, 128, 4864)}
    assert len(acc) == 3 * 24 * 7  # passes x layers x linears
    assert {"int8.outlier_detect", "int8.act_quant", "int8.dequant"} <= {p["phase"] for p in sec["phases"]}


def test_nf4_trace_dequantized_weight_buffers(shared):
    blocks = memory.memory_blocks(shared[NF4.name])
    deq = blocks[blocks["kind"] == "dequantized weight"]
    # ModernBERT-base linears (K, N): Wqkv/Wi (768, 2304), attn Wo (768, 768), mlp Wo (1152, 768),
    # head (768, 768), classifier (768, 113); a dequantized [N, K] fp16 buffer is 2*N*K bytes.
    assert len(deq) > 0 and set(deq["bytes"]) <= {2 * k * n for k, n in
                                                  ((768, 2304), (768, 768), (1152, 768), (768, 113))}
    assert set(deq["phase"]) == {"nf4.dequant"}
    # The fused path's output buffer is not mistaken for a weight buffer.
    fused = blocks[blocks["kind"] == "4-bit GEMM output"]
    # The CUDA caching allocator rounds requests up to 512 B.
    assert len(fused) > 0 and set(fused["bytes"]) <= {-(-2 * n * t // 512) * 512 for n in (2304, 768, 113)
                                                      for t in (128, 1)}


def test_fp16_trace_has_no_quantization_memory(shared):
    phases = {p["phase"] for p in memory.memory_section(shared[FP16.name], None)["phases"]}
    assert not any(p.startswith(("int8.", "nf4.")) for p in phases)


# --- tiny quantized models on CPU --------------------------------------------------------------

T = 16  # tokens
TINY = {"vocab_size": 128, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64}


def _linear_shapes() -> list[tuple[int, int]]:
    """(in, out) of each quantized linear of one layer of the tiny Llama."""
    h, i = TINY["hidden_size"], TINY["intermediate_size"]
    kv = TINY["num_key_value_heads"] * h // TINY["num_attention_heads"]
    return [(h, h), (h, kv), (h, kv), (h, h), (h, i), (h, i), (i, h)]


@pytest.fixture(scope="module")
def cpu_traces(tmp_path_factory):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("bitsandbytes")
    from torch.profiler import ProfilerActivity, profile

    root = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**TINY))
    with torch.no_grad():  # a few hidden dims x30 in every norm, so LLM.int8 meets outlier columns
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p[:3] *= 30
    model.save_pretrained(root / "model")
    configs = {"int8": transformers.BitsAndBytesConfig(load_in_8bit=True),
               "nf4": transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                      bnb_4bit_compute_dtype=torch.float16)}
    ids = torch.randint(0, TINY["vocab_size"], (1, T))
    out = {}
    for prec, qc in configs.items():
        q = transformers.AutoModelForCausalLM.from_pretrained(root / "model", quantization_config=qc,
                                                              dtype=torch.float16, device_map="cpu")
        for mod in q.modules():  # the dequant + GEMM path on any CPU, not the AVX512-BF16 packed GEMV
            if hasattr(mod, "support_avx512bf16_for_cpu"):
                mod.support_avx512bf16_for_cpu = False
        with torch.inference_mode():
            q(ids)
            with profile(activities=[ProfilerActivity.CPU], record_shapes=True, profile_memory=True) as prof:
                q(ids)
        path = root / f"cpu_{prec}.json"
        prof.export_chrome_trace(str(path))
        out[prec] = path
    return out


def _raw_cpu_totals(path: Path) -> list[int]:
    events = json.loads(path.read_text())["traceEvents"]
    return [e["args"]["Total Allocated"] for e in events
            if e.get("name") == "[memory]" and e["args"].get("Device Type") == 0]


@pytest.mark.slow
@pytest.mark.parametrize("prec", ["int8", "nf4"])
def test_cpu_tiny_model_peak(cpu_traces, prec):
    t = load_trace(cpu_traces[prec])
    sec = memory.memory_section(t, None)
    assert sec["device"] == "cpu"
    assert sec["peak_allocated_bytes"] == max(_raw_cpu_totals(cpu_traces[prec]))
    assert sum(e["bytes"] for e in sec["at_peak"]) == sec["peak_allocated_bytes"]
    assert any(n.startswith("CPU:") for n in sec["notes"])


@pytest.mark.slow
def test_cpu_tiny_int8(cpu_traces):
    t = load_trace(cpu_traces["int8"])
    blocks = memory.memory_blocks(t)
    acc = blocks[blocks["kind"] == "int32 accumulator"]
    layers = TINY["num_hidden_layers"]
    # Each int8 matmul leaves its [T, N] int32 result. (bitsandbytes' CPU path may allocate float
    # temporaries in the same op, e.g. when torch._int_mm is not used; those land here too.)
    sizes = acc["bytes"].value_counts()
    for size, calls in pd.Series([T * n * 4 for _, n in _linear_shapes()]).value_counts().items():
        assert sizes.get(size, 0) >= layers * calls
    phases = {p["phase"]: p for p in memory.memory_section(t, None)["phases"]}
    assert phases["int8.gemm"]["transient_bytes"] > 0
    # x30 norm dims give outlier columns: their gather and fp16 GEMM allocate.
    assert phases["int8.outlier_gather"]["allocs"] > 0 and phases["int8.outlier_gemm"]["allocs"] > 0
    assert phases["int8.act_quant"]["kind"] == "int8 activations"


@pytest.mark.slow
def test_cpu_tiny_nf4(cpu_traces):
    t = load_trace(cpu_traces["nf4"])
    blocks = memory.memory_blocks(t)
    deq = blocks[blocks["kind"] == "dequantized weight"]
    assert len(deq) == TINY["num_hidden_layers"] * len(_linear_shapes())
    assert set(deq["bytes"]) == {2 * k * n for k, n in _linear_shapes()}
    phases = {p["phase"]: p for p in memory.memory_section(t, None)["phases"]}
    assert phases["nf4.dequant"]["peak_increment_bytes"] >= 2 * TINY["hidden_size"] * TINY["intermediate_size"]


@settings(max_examples=300, deadline=None)
@given(events=st.lists(st.tuples(st.integers(0, 3), st.sampled_from([0, 5, 7, -5, -7])), max_size=60))
def test_vectorized_block_matching_matches_the_stack(events):
    """Frees pair with allocations exactly as the per-address stack pairs them, unknown frees included."""
    import numpy as np

    from qtrace.analyzers.memory import _match_blocks, _match_blocks_loop

    addr = np.array([a for a, _ in events], dtype=np.int64)
    nbytes = np.array([b for _, b in events], dtype=np.int64)
    loop, vec = _match_blocks_loop(addr, nbytes), _match_blocks(addr, nbytes)
    assert loop[0].tolist() == vec[0].tolist() and loop[1].tolist() == vec[1].tolist() and loop[2] == vec[2]
