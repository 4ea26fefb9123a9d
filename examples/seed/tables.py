"""Print the Markdown tables of examples/seed/README.md from the committed run folders.

Every figure comes from traces/seed/*/run.json (measured on the GPU by `qtrace profile`) or from
qtrace's own analysis of the committed traces; nothing is typed in by hand. Run from the
repository root:  python examples/seed/tables.py > examples/seed/tables.md
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from qtrace.analyzers.compare import compare_reports, comparison_to_dict, profiler_cost_per_event_us
from qtrace.analyzers.trace_analysis import analyze_target, load_target

SEED = Path("traces/seed")
PRECISIONS = ("fp16", "int8", "nf4")
CLASSIFY = [("qwen_bs1", "Qwen2.5-0.5B", 1, 0), ("qwen_bs1_out6", "Qwen2.5-0.5B", 1, 6),
            ("qwen_bs16", "Qwen2.5-0.5B", 16, 0), ("qwen_bs16_out6", "Qwen2.5-0.5B", 16, 6),
            ("mb_bs1", "ModernBERT-base", 1, 0), ("mb_bs1_out6", "ModernBERT-base", 1, 6),
            ("mb_bs16", "ModernBERT-base", 16, 0), ("mb_bs16_out6", "ModernBERT-base", 16, 6)]
# The seed post's T4 findings, as the brief states them (ratios against fp16).
SEED_T4 = {"int8": "2.5x slower, peak VRAM +44-63%", "nf4": "1.38-1.57x slower"}


def run(name: str) -> dict:
    return json.loads((SEED / name / "run.json").read_text())


def mib(b: float | None) -> str:
    return "-" if b is None else f"{b / 2**20:.0f}"


def classify_table() -> str:
    head = ("| model | batch | outlier dims | precision | ms/example median (p90) | x fp16 | peak alloc MiB | "
            "x fp16 | J/example |\n|---|---:|---:|---|---:|---:|---:|---:|---:|")
    rows = [head]
    for name, model, bs, out in CLASSIFY:
        r = run(name)["precisions"]
        base_t = r["fp16"]["latency_ms"]["per_example"]["median"]
        base_m = r["fp16"]["memory"]["max_allocated_bytes"]
        for p in PRECISIONS:
            e = r[p]
            lat = e["latency_ms"]["per_example"]
            mem = e["memory"]["max_allocated_bytes"]
            joules = (e.get("energy") or {}).get("joules_per_example")
            rows.append(f"| {model} | {bs} | {out} | {p} | {lat['median']:.2f} ({lat['p90']:.2f}) | "
                        f"{lat['median'] / base_t:.2f} | {mib(mem)} | {mem / base_m:.2f} | "
                        f"{'-' if joules is None else f'{joules:.3f}'} |")
    return "\n".join(rows)


# Generation runs, in the order shown: the seed-001 protocol with 20 prompts (visit D: fp16 + int8
# in D2, whose NF4 hit the call's time limit, then NF4 + a fresh fp16 baseline in D4), and visit
# B's earlier 4-prompt run. Ratios are taken against the fp16 of the same run only.
GENERATE_RUNS = [("qwen_gen128_p20", "D2"), ("qwen_gen128_p20_nf4", "D4"), ("qwen_gen128", "B")]


def generate_table() -> str:
    rows = ["| run (visit) | prompts | precision | TTFT ms median | decode ms/token median (p90) | tokens/s | "
            "x fp16 tok/s (same run) | peak alloc MiB | load footprint MiB | J/token |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, visit in GENERATE_RUNS:
        r = run(name)
        s = r["settings"]
        assert s["new_tokens"] == 128 and s["seq_len"] == 128 and s["warmup"] == 1 and s["batch_size"] == 1
        ok = {p: e for p, e in r["precisions"].items() if e["status"] == "ok"}
        base = ok["fp16"]["generate"]["tokens_per_s"]
        for p in PRECISIONS:
            if p not in ok:
                continue
            e = ok[p]
            g = e["generate"]
            j = (e.get("energy") or {}).get("joules_per_token")
            prompts = g.get("distinct_prompts", 1)  # before distinct prompts, every iteration reused one
            rows.append(f"| {name} ({visit}) | {prompts} | {p} | {g['ttft_ms']['median']:.1f} | "
                        f"{g['decode_ms_per_token']['median']:.1f} ({g['decode_ms_per_token']['p90']:.1f}) | "
                        f"{g['tokens_per_s']:.1f} | {g['tokens_per_s'] / base:.2f} | "
                        f"{mib(e['memory']['max_allocated_bytes'])} | {mib(e['load']['footprint_bytes'])} | "
                        f"{'-' if j is None else f'{j:.2f}'} |")
    return "\n".join(rows)


def explanation_table(cases: list[str]) -> str:
    rows = ["| case | run | measured ms (x fp16) | traced ms/pass (profiler x) | "
            "traced Δ/pass = GPU busy Δ + GPU idle Δ | "
            "top host-side phase deltas (ms/pass) | syncs/pass | launches/pass | measured Δ ms | "
            "profiler µs/event | explained share of measured Δ | not explained ms | "
            "timed-pass spread ms (p90 - min, both runs) |",
            "|---|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for case in cases:
        reports = analyze_target(load_target(SEED / case))
        if len(reports) < 2:
            continue
        comparison = compare_reports(reports, baseline="fp16")
        cost = profiler_cost_per_event_us(comparison.baseline)
        d = comparison_to_dict(comparison)
        base = next(x for x in d["runs"] if x["is_baseline"])
        for x in d["runs"]:
            if x["is_baseline"]:
                continue
            passes = x["passes"] or 1
            trace = x["waterfall"]["trace"]
            host = sorted((b for b in trace if b["kind"] == "host"), key=lambda b: -abs(b["value_us"]))[:3]
            hd = x["host_delta"]
            span_d = hd["span_us_delta"] / passes / 1000
            busy_d = hd["gpu_busy_us_delta"] / passes / 1000
            idle_d = hd["gpu_idle_us_delta"] / passes / 1000
            lat = x["latency"]
            meas_d = lat["measured_ms"] - base["latency"]["measured_ms"]
            mw = x["waterfall"]["measured"]
            residual = sum(b["value_us"] for b in mw if b["kind"] == "residual") / 1000
            spread = lat["measured_spread_ms"] + base["latency"]["measured_spread_ms"]
            rows.append(
                f"| {case} | {x['run']} | {lat['measured_ms']:.1f} (x{x['latency_ratio']:.2f}) | "
                f"{lat['trace_ms']:.1f} (x{lat['profiler_inflation']:.1f}) | "
                f"{span_d:+.1f} = {busy_d:+.2f} + {idle_d:+.1f} | "
                + ", ".join(f"{b['phase']} {b['value_us'] / 1000:+.1f}" for b in host)
                + f" | {x['host']['syncs'] / passes:.0f} | {x['host']['launches'] / passes:.0f} | {meas_d:+.1f} | "
                f"{cost:.2f} | {1 - residual / meas_d:.0%} | {residual:+.1f} | "
                f"{spread:.1f} ({'residual within' if abs(residual) <= spread else 'residual exceeds'}) |")
    return "\n".join(rows)


def memory_table(cases: list[str]) -> str:
    rows = ["| case | precision | peak allocated MiB (trace) | resident MiB | top transient entries live at the peak | "
            "max allocated MiB (un-profiled) | NVML process MiB |", "|---|---|---:|---:|---|---:|---:|"]
    for case in cases:
        for r in analyze_target(load_target(SEED / case)):
            m = r.extra.get("memory") or {}
            at = [a for a in m.get("at_peak", []) if a["phase"] != "resident"]
            at = sorted(at, key=lambda a: -a["bytes"])[:3]
            res = next((a["bytes"] for a in m.get("at_peak", []) if a["phase"] == "resident"), None)
            meas = (r.measured or {}).get("memory") or {}
            rows.append(f"| {case} | {r.precision} | {mib(m.get('peak_allocated_bytes'))} | {mib(res)} | "
                        + ", ".join(f"{a['phase']} {a['bytes'] / 2**20:.2f}" for a in at)
                        + f" | {mib(meas.get('max_allocated_bytes'))} | {mib(meas.get('nvml_process_bytes'))} |")
    return "\n".join(rows)


LOGS = Path("examples/seed/logs")


def _jsonl(name: str) -> list[dict]:
    return [json.loads(x) for x in (LOGS / name).read_text().splitlines() if x.strip().startswith("{")]


def _summary(ratios: dict[str, list[float]]) -> str:
    return "; ".join(f"{p}: median ratio {statistics.median(v):.3f} over {len(v)} pairs, "
                     f"{sum(abs(x - 1) <= 0.05 for x in v)} of {len(v)} within 5%" for p, v in ratios.items())


PAIR_LOGS = ("plain_B.jsonl", "plain_C.jsonl", "plain_D1.jsonl", "plain_D3.jsonl")


def _process_pairs() -> list[tuple[str, str, dict]]:
    """(log, round name, line) for every qtrace/plain pair of the separate-process rounds."""
    pairs = []
    for log in PAIR_LOGS:
        for i, d in enumerate(_jsonl(log)):
            if "qtrace_median_ms" in d:
                rnd = d.get("round") or f"{log[6]}{i // 3 + 1 if log == 'plain_B.jsonl' else i // 2 + 1}"
                pairs.append((log, rnd, d))
    return pairs


def process_pairs_table() -> str:
    """Separate processes: `qtrace profile`, then the plain loop, per round (visits B, C, D1, D3)."""
    rows = ["| round | batch | pinned to CPUs | precision | qtrace median ms | plain loop median ms | qtrace / plain |",
            "|---|---:|---|---|---:|---:|---:|"]
    ratios: dict[str, list[float]] = {}
    pairs = _process_pairs()
    for _, rnd, d in pairs:
        pin = d.get("pinned", "").replace("taskset -c ", "") or "-"
        ratios.setdefault(d["precision"], []).append(d["qtrace_over_plain"])
        rows.append(f"| {rnd} | {d['batch_size']} | {pin} | {d['precision']} | {d['qtrace_median_ms']:.2f} | "
                    f"{d['median_ms']:.2f} | {d['qtrace_over_plain']:.3f} |")
    return "\n".join(rows) + "\n\n" + _summary(ratios) + "\n\n" + _same_tool_steps(pairs)


def _same_tool_steps(pairs: list[tuple[str, str, dict]]) -> str:
    """A/A across processes: one tool's median against its own in the next round of the same visit."""
    series: dict[tuple[str, str, str, str], list[float]] = {}
    for log, _, d in pairs:
        key = (log, f"{d['batch_size']}", d["precision"])
        series.setdefault(key + ("qtrace",), []).append(d["qtrace_median_ms"])
        series.setdefault(key + ("plain",), []).append(d["median_ms"])
    steps: dict[str, list[float]] = {}
    for (_, _, _, tool), values in series.items():
        steps.setdefault(tool, []).extend(b / a for a, b in zip(values, values[1:], strict=False))
    return "Same tool, next round of the same visit (A/A across processes): " + "; ".join(
        f"{tool}: ratios {min(v):.2f}-{max(v):.2f}, {sum(abs(x - 1) <= 0.05 for x in v)} of {len(v)} within 5%"
        for tool, v in steps.items())


def placement_table() -> str:
    """benchmarks/cpu_placement.py: one int8 process, its launching thread moved over every CPU."""
    lines = _jsonl("placement_D1.jsonl")
    summary = next(d for d in lines if d.get("summary"))
    rows = ["| sweep | fastest CPU ms (cpu) | slowest CPU ms (cpu) | median ms | "
            "CPUs slower than 1.3x the sweep's fastest |", "|---:|---:|---:|---:|---|"]
    for sweep in sorted({d["sweep"] for d in lines if "sweep" in d}):
        pts = [d for d in lines if d.get("sweep") == sweep]
        fast = min(pts, key=lambda d: d["median_ms"])
        slow = max(pts, key=lambda d: d["median_ms"])
        slow_cpus = [d["cpu"] for d in pts if d["median_ms"] > 1.3 * fast["median_ms"]]
        rows.append(f"| {sweep} | {fast['median_ms']:.1f} ({fast['cpu']}) | {slow['median_ms']:.1f} ({slow['cpu']}) | "
                    f"{statistics.median(d['median_ms'] for d in pts):.1f} | {', '.join(map(str, slow_cpus))} |")
    return ("\n".join(rows) + f"\n\nSlowest over fastest CPU (medians over sweeps): "
            f"{summary['slowest_over_fastest_cpu']:.2f}x; slowest over fastest sweep: "
            f"{summary['slowest_over_fastest_sweep']:.2f}x.")


def interleaved_table() -> str:
    """benchmarks/latency_agreement.py: both sides in one process, taking turns (D3, then D2)."""
    rows = ["| visit | sides | batch | precision | turns x iters | side A median ms | plain median ms | A / plain | "
            "median of per-turn ratios | host speed range over turns |",
            "|---|---|---:|---|---|---:|---:|---:|---:|---:|"]
    for log, visit in (("agree_D3.jsonl", "D3"), ("agree_D2.jsonl", "D2")):
        for d in _jsonl(log):
            rows.append(f"| {visit} | {d.get('sides', 'qtrace/plain')} | {d['batch_size']} | {d['precision']} | "
                        f"{d['blocks']} x {d['block_iters']} | {d['qtrace_median_ms']:.2f} | "
                        f"{d['plain_median_ms']:.2f} | "
                        f"{d['qtrace_over_plain']:.3f} | {d['block_ratio_median']:.3f} | "
                        f"{d['host_range_over_blocks']:.2f}x |")
    return "\n".join(rows)


def main() -> int:
    out = ["<!-- generated by examples/seed/tables.py from traces/seed/; do not edit by hand -->", "",
           "## Classification forward, sequence 128", "", classify_table(), "",
           f"The seed's T4 figures against fp16: int8 {SEED_T4['int8']}; NF4 {SEED_T4['nf4']}.", "",
           "## Generation", "", generate_table(), "",
           "## Where the slowdown comes from (qtrace compare, per profiled pass)", "",
           explanation_table(["qwen_bs1", "qwen_bs16", "mb_bs1"]), "",
           "## What is live at the allocator peak", "", memory_table(["qwen_bs1", "qwen_bs16", "mb_bs1"]), "",
           "## Independent latency check", "",
           "### Separate processes, alternating (benchmarks/plain_latency.py after qtrace profile)", "",
           process_pairs_table(), "",
           "### Does the launching CPU matter? (benchmarks/cpu_placement.py, int8, batch 1, visit D1)", "",
           placement_table(), "",
           "### One process, taking turns (benchmarks/latency_agreement.py; A/A = plain vs plain)", "",
           interleaved_table(), ""]
    sys.stdout.write("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
