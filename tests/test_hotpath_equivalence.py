"""The sped-up attribution/host internals (level-by-level contexts, classify once per distinct
context, the tight segment sweep) give exactly what the straightforward versions gave
(tests/reference_analyzers.py), on the committed real traces and on random synthetic ones."""

from __future__ import annotations

import random
from pathlib import Path

import pandas as pd
import pytest
import reference_analyzers as ref
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from synthetic_traces import random_events, write_trace

from qtrace.analyzers import attribution, host
from qtrace.tracefile.kineto import TraceFormatError, load_trace

TRACES = sorted((Path(__file__).resolve().parent.parent / "traces").glob("*.json.gz"))
FUNCS = ("op_contexts", "gpu_phases", "op_phases", "runtime_phases")


def assert_same_analysis(trace) -> None:
    for fn in FUNCS:
        pd.testing.assert_frame_equal(getattr(ref, fn)(trace), getattr(attribution, fn)(trace), check_exact=True,
                                      obj=fn)
    threads = {tuple(x) for x in trace.ops[["pid", "tid"]].drop_duplicates().itertuples(index=False)}
    threads |= {tuple(x) for x in trace.runtime[["pid", "tid"]].drop_duplicates().itertuples(index=False)}
    pd.testing.assert_frame_equal(ref.step_table(trace), host.step_table(trace), check_exact=True, obj="steps")
    for thread in sorted(threads) + [("no", "such")]:
        pd.testing.assert_frame_equal(ref._self_segments(trace, thread), host._self_segments(trace, thread),
                                      check_exact=True, obj=f"segments {thread}")


@pytest.mark.parametrize("path", TRACES, ids=lambda p: p.name.split("_bs")[0])
def test_real_traces(path):
    assert_same_analysis(load_trace(path))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 150))
def test_random_traces(tmp_path, seed, n):
    path = tmp_path / "t.json"
    write_trace(path, random_events(random.Random(seed), n), "compact")
    try:
        trace = load_trace(path)
    except TraceFormatError:
        return
    assert_same_analysis(trace)


_times = st.one_of(st.integers(0, 30).map(float), st.floats(0, 30, allow_nan=False))


@settings(max_examples=300, deadline=None)
@given(events=st.lists(st.tuples(_times, st.one_of(st.just(0.0), _times), st.sampled_from("abc")), max_size=40))
def test_vectorized_segments_match_the_sweep(events):
    """The segment-tree labelling gives the stack sweep's segments, partial overlaps and ties included."""
    import numpy as np

    from qtrace.analyzers.segments import sweep_segments, sweep_segments_loop

    ts = np.array([e[0] for e in events], dtype=float)
    end = ts + np.array([e[1] for e in events], dtype=float)
    phase = np.array([e[2] for e in events], dtype=object)
    order = np.lexsort((np.arange(len(ts)), -end, ts))
    loop = sweep_segments_loop(ts[order].tolist(), end[order].tolist(), phase[order].tolist())
    vec = sweep_segments(ts[order], end[order], phase[order])
    assert [list(x) for x in loop] == [v.tolist() for v in vec]


@given(values=st.lists(st.one_of(st.sampled_from(["a", "b", "tf32_x", ""]), st.none(), st.just(float("nan"))),
                       max_size=30))
def test_distinct_helpers_match_plain_loops(values):
    import numpy as np

    from qtrace.analyzers.distinct import map_distinct, mask_distinct

    def fn(v):
        return f"<{v}>"

    def pred(v):
        return isinstance(v, str) and "tf32" in v

    arr = np.array(values, dtype=object)
    assert map_distinct(arr, fn).tolist() == [fn(v) for v in values]
    assert mask_distinct(pd.Series(arr, dtype=object), pred).tolist() == [pred(v) for v in values]


_FIELD_TEXTS = {
    "kind": ["cpu_op", "kernel", "gpu_memcpy", "gpu_memset", ""],
    "quant_op": ["", "bitsandbytes::int8_linear_matmul", "bitsandbytes::gemm_4bit", "aten::_weight_int8pack_mm"],
    "below_quant_op": ["", "aten::mm", "bitsandbytes::int8_vectorwise_quant", "aten::copy_"],
    "module": ["", "Linear", "Linear8bitLt", "Linear4bit", "Embedding", "LayerNorm"],
    "weight": ["", "Int8Tensor", "AffineQuantizedTensor"],
    "ops": ["", "aten::linear/aten::mm", "aten::softmax", "aten::layer_norm", "aten::add", "aten::copy_"],
    "kernel": ["", "sm90_xmma_gemm_f16", "triton_poi_fused", "flash_fwd_kernel", "elementwise_kernel",
               "kInt8VectorQuant", "Memcpy DtoH (Device -> Pageable)"],
    "quant_backend": ["", "bitsandbytes", "torchao", "gptqmodel"],
}


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(st.fixed_dictionaries({f: st.sampled_from(v) for f, v in _FIELD_TEXTS.items()}), max_size=40),
       drop=st.sampled_from([None, "weight", "quant_backend"]))
def test_classify_matches_the_pandas_rules(rows, drop):
    """classify (rules tried on the open rows, as lists) gives what the per-rule pandas masks gave."""
    from qtrace.analyzers.phase_rules import classify

    ctx = pd.DataFrame(rows, columns=list(_FIELD_TEXTS), index=pd.RangeIndex(len(rows)) * 3)
    if drop:  # a missing field reads as ""
        ctx = ctx.drop(columns=[drop])
    expected = ref.classify_rules(ctx)
    got = classify(ctx)
    assert got.index.equals(expected.index)
    assert got.tolist() == expected.tolist()


def _edited(base: list[int], edits: list[tuple[int, int, int]]) -> list[int]:
    """base with each (op, position, value) applied: 0 delete, 1 insert, 2 replace."""
    out = list(base)
    for op, pos, value in edits:
        if op == 1 or not out:
            out.insert(pos % (len(out) + 1), value)
        elif op == 0:
            del out[pos % len(out)]
        else:
            out[pos % len(out)] = value
    return out


_edits = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 10_000), st.integers(0, 6)), max_size=8)


@settings(max_examples=300, deadline=None)
@given(unit=st.lists(st.integers(0, 5), min_size=1, max_size=25), repeat=st.integers(1, 12), edits=_edits,
       other=st.one_of(st.none(), st.lists(st.integers(0, 5), max_size=80)), small=st.sampled_from([0, 16, 4096]))
def test_matching_blocks_match_difflib(unit, repeat, edits, other, small):
    """seqmatch's blocks are difflib's, on repeated units with a few edits (a lean trace against its full one)
    and on unrelated sequences; small=0 sends every range through the hashed search."""
    import difflib

    import numpy as np

    from qtrace.analyzers.seqmatch import matching_blocks

    a = unit * repeat
    b = _edited(a, edits) if other is None else other
    want = [tuple(m) for m in difflib.SequenceMatcher(None, a, b, autojunk=False).get_matching_blocks()][:-1]
    assert matching_blocks(np.array(a, dtype=np.int64), np.array(b, dtype=np.int64), small) == want


LEAN_PAIRS = sorted(p.parent for p in (Path(__file__).resolve().parent.parent / "traces").glob(
    "*/*/*/lean_trace.json.gz"))


@pytest.mark.parametrize("pair", LEAN_PAIRS, ids=lambda p: f"{p.parent.name}-{p.name}")
def test_alignment_matches_difflib(pair, monkeypatch):
    """align() of every committed lean + full pair is what difflib gave; expected_steps=1 aligns the
    whole window at once, so each stream is one long sequence of repeated kernels."""
    from qtrace.analyzers import lean_alignment

    full, lean = load_trace(pair / "trace.json.gz"), load_trace(pair / "lean_trace.json.gz")
    got = lean_alignment.align(full, lean, 1)
    monkeypatch.setattr(lean_alignment, "name_blocks", ref.name_blocks)
    want = lean_alignment.align(full, lean, 1)
    pd.testing.assert_frame_equal(got.phases, want.phases, check_exact=True)
    assert got.summary() == want.summary()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=7), max_size=60), st.integers(min_value=0, max_value=4))
def test_first_appearance_codes_match_factorize(values, extra):
    import numpy as np

    k = max(values, default=-1) + 1 + extra  # some possible values never appear
    arr = np.asarray(values, dtype=np.int32)
    codes, uniq = host._first_appearance_codes(arr, k)
    want_codes, want_uniq = pd.factorize(arr.astype(np.int64), use_na_sentinel=False)
    assert codes.dtype == np.int32
    assert codes.tolist() == want_codes.tolist()
    assert uniq.tolist() == want_uniq.tolist()
