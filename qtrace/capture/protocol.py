"""The measurement protocol and the torch.profiler capture.

Per precision (see api.py for the loop): warm-up passes, then an **un-profiled** timed pass
(CUDA events on a GPU, perf_counter on a CPU) with peak-memory readings, then a **profiled**
pass of a few steps whose trace carries qtrace's annotations:

* steps: `qtrace.step:forward` (forward/classify, one per iteration), `qtrace.step:prefill`
  and `qtrace.step:decode` (generate: the first forward of a generation, then one per further
  token), each inside the profiler's `ProfilerStep#N`;
* modules: `qtrace.module:<ClassName>:<qualified.name>[:<WeightClass>]` around every transformer block, linear,
  norm, attention, MLP and embedding module, from forward hooks that exist only during the
  profiled pass (the timed pass runs the bare model);
* trace metadata: a top-level `"qtrace"` object (see docs/profile.md) and
  `"distributedInfo": {"rank": 0}` for HTA.

The profiler slows a host-bound int8 forward about 3x, which is why the figures come from the
timed pass and the trace only from the profiled one.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from qtrace.capture import environment as qdevice
from qtrace.capture.energy import EnergyMeter
from qtrace.fileio import atomic_open

STEP_FORWARD = "qtrace.step:forward"
STEP_PREFILL = "qtrace.step:prefill"
STEP_DECODE = "qtrace.step:decode"
MODULE_PREFIX = "qtrace.module:"

Progress = Callable[[str], None]


# ---------------------------------------------------------------------------------------
# Statistics


def stats(values: list[float]) -> dict[str, float | int | None]:
    """median, p90 (linear interpolation, as numpy's default), min, mean, sample stdev, n."""
    n = len(values)
    if n == 0:
        return {"median": None, "p90": None, "min": None, "mean": None, "stdev": None, "n": 0}
    ordered = sorted(values)
    pos = 0.9 * (n - 1)
    lo = int(pos)
    hi = min(lo + 1, n - 1)
    p90 = ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)
    return {
        "median": _r(statistics.median(ordered)),
        "p90": _r(p90),
        "min": _r(ordered[0]),
        "mean": _r(statistics.fmean(ordered)),
        "stdev": _r(statistics.stdev(ordered)) if n > 1 else 0.0,
        "n": n,
    }


def _r(x: float) -> float:
    return round(float(x), 6)


# ---------------------------------------------------------------------------------------
# Workload


@dataclass
class Workload:
    """One iteration's inputs and what to do with them."""

    task: str
    batch_size: int
    seq_len: int
    new_tokens: int
    kind: str  # "decoder" | "encoder"
    input_ids: Any
    attention_mask: Any
    pad_token_id: int
    vocab_size: int
    seed: int
    # Extra generate() arguments (--decode static: cache_implementation etc.); empty by default.
    generate_kwargs: dict[str, Any] = field(default_factory=dict)

    def with_prompt(self, index: int) -> Workload:
        """The same workload on prompt `index` (seeded from the run's seed, same for every precision).

        Timed generation uses prompt 1..N, one per iteration (seed-001 times N different
        prompts); warm-up and the forward tasks use prompt 0, the workload's own ids.
        """
        if index == 0:
            return self
        ids = prompt_ids(self.vocab_size, self.pad_token_id, self.batch_size, self.seq_len,
                         self.seed + index).to(self.input_ids.device)
        return replace(self, input_ids=ids)


def prompt_ids(vocab: int, pad: int, batch_size: int, seq_len: int, seed: int) -> Any:
    """Random token ids from a seeded generator, pad id avoided (on the CPU)."""
    import torch

    ids = torch.randint(0, vocab, (batch_size, seq_len), generator=torch.Generator().manual_seed(seed))
    # A pad id inside the prompt would make classification pool an earlier token.
    return torch.where(ids == pad, (ids + 1) % vocab, ids)


def make_workload(model: Any, kind: str, task: str, batch_size: int, seq_len: int, new_tokens: int,
                  seed: int, device: Any) -> Workload:
    """Random token ids from a seeded generator (same ids for every precision of a run)."""
    import torch

    vocab = int(model.config.vocab_size)
    pad = int(model.config.pad_token_id)
    ids = prompt_ids(vocab, pad, batch_size, seq_len, seed)
    return Workload(task, batch_size, seq_len, new_tokens, kind, ids.to(device),
                    torch.ones_like(ids).to(device), pad, vocab, seed)


def run_forward(model: Any, work: Workload) -> Any:
    extra = {"use_cache": False} if work.kind == "decoder" else {}
    return model(input_ids=work.input_ids, attention_mask=work.attention_mask, **extra)


def run_generate(model: Any, work: Workload, processors: list[Any] | None = None) -> Any:
    from transformers import LogitsProcessorList

    return model.generate(
        input_ids=work.input_ids, attention_mask=work.attention_mask,
        max_new_tokens=work.new_tokens, min_new_tokens=work.new_tokens,  # always exactly N tokens
        do_sample=False, num_beams=1, use_cache=True, pad_token_id=work.pad_token_id,
        logits_processor=LogitsProcessorList(processors or []),
        **work.generate_kwargs,
    )


def run_once(model: Any, work: Workload) -> None:
    if work.task == "generate":
        run_generate(model, work)
    else:
        run_forward(model, work)


# ---------------------------------------------------------------------------------------
# Clocks


class PerfClock:
    """Host wall clock: right on a CPU, where every op is synchronous."""

    kind = "perf_counter"

    def mark(self) -> float:
        return time.perf_counter()

    def finish(self) -> None:
        pass

    def ms(self, a: float, b: float) -> float:
        return (b - a) * 1e3


class CudaClock:
    """CUDA events on the current stream: they time the GPU timeline without a sync per
    iteration, so back-to-back iterations queue as they would in a serving loop.

    With several devices (a model split by --device-map) the events are recorded on the first
    device's current stream after it has been made to wait, on the GPU, for every other device's
    current stream: a mark is reached once every device got there (qtrace.capture.multi_device
    says why this and not a host timer)."""

    kind = "cuda_event"

    def __init__(self, device: Any) -> None:
        import torch

        self._torch = torch
        self._devices = as_devices(device)
        self._device = self._devices[0]

    def mark(self) -> Any:
        cuda = self._torch.cuda
        first = cuda.current_stream(self._device)
        for other in self._devices[1:]:
            joined = cuda.Event()
            joined.record(cuda.current_stream(other))
            first.wait_event(joined)
        event = cuda.Event(enable_timing=True)
        event.record(first)
        return event

    def finish(self) -> None:
        for d in self._devices:
            self._torch.cuda.synchronize(d)

    def ms(self, a: Any, b: Any) -> float:
        return float(a.elapsed_time(b))


def as_devices(device: Any) -> list[Any]:
    """`device` (one torch.device) or a list of them (a model over several GPUs) as a list, first one first."""
    return list(device) if isinstance(device, list | tuple) else [device]


def primary(device: Any) -> Any:
    return as_devices(device)[0]


def make_clock(device: Any) -> PerfClock | CudaClock:
    return CudaClock(device) if primary(device).type == "cuda" else PerfClock()


def _token_clock_class() -> type:
    from transformers import LogitsProcessor

    class TokenClock(LogitsProcessor):
        """Marks the clock each time generate has fresh logits: the first mark ends the prefill
        (time to first token), each later one ends one decode step."""

        def __init__(self, clock: Any) -> None:
            self.clock = clock
            self.marks: list[Any] = []

        def __call__(self, input_ids: Any, scores: Any) -> Any:
            self.marks.append(self.clock.mark())
            return scores

    return TokenClock


# ---------------------------------------------------------------------------------------
# Timed pass


@dataclass
class Timing:
    clock: str
    per_iter_ms: list[float] = field(default_factory=list)
    ttft_ms: list[float] = field(default_factory=list)
    decode_ms: list[float] = field(default_factory=list)
    wall_ms_per_iter: float | None = None
    memory: dict[str, int | None] = field(default_factory=dict)
    energy: Any = None  # qtrace.capture.energy.EnergyMeter around the timed loop (no reading on CPU / without NVML)


def warm_up(model: Any, work: Workload, n: int, device: Any, progress: Progress | None = None) -> None:
    for i in range(n):
        run_once(model, work)
        if progress:
            progress(f"warm-up {i + 1}/{n}")
    _sync(device)


def timed_pass(model: Any, work: Workload, iters: int, device: Any,
               progress: Progress | None = None) -> Timing:
    """The un-profiled timed pass, bracketed by peak-memory resets and readings."""
    clock = make_clock(device)
    _reset_peaks(device)
    timing = Timing(clock=clock.kind)
    marks: list[tuple[Any, Any, list[Any]]] = []
    token_clock = _token_clock_class() if work.task == "generate" else None
    # Built before the clock starts: drawing and copying prompts is not part of the pass.
    prompts = [work.with_prompt(i + 1) for i in range(iters)] if token_clock is not None else []
    meter = EnergyMeter(primary(device)).start()  # NVML energy of the first device only
    wall0 = time.perf_counter()
    for i in range(iters):
        if token_clock is not None:
            tc = token_clock(clock)
            start = clock.mark()
            run_generate(model, prompts[i], [tc])
            marks.append((start, clock.mark(), tc.marks))
        else:
            start = clock.mark()
            run_forward(model, work)
            marks.append((start, clock.mark(), []))
        if progress:
            progress(f"timed {i + 1}/{iters}")
    clock.finish()
    meter.stop()
    timing.energy = meter
    # Host wall clock over the whole loop (after the final sync): a cross-check of the
    # per-iteration clock (CUDA events must agree with it when the host is the bottleneck).
    timing.wall_ms_per_iter = (time.perf_counter() - wall0) * 1e3 / iters
    for start, end, tokens in marks:
        timing.per_iter_ms.append(clock.ms(start, end))
        if tokens:
            timing.ttft_ms.append(clock.ms(start, tokens[0]))
            timing.decode_ms.extend(clock.ms(a, b) for a, b in zip(tokens, tokens[1:], strict=False))
    timing.memory = _read_peaks(device)
    return timing


def _sync(device: Any) -> None:
    if primary(device).type == "cuda":
        import torch

        for d in as_devices(device):
            torch.cuda.synchronize(d)


def _reset_peaks(device: Any) -> None:
    import gc

    gc.collect()
    if primary(device).type == "cuda":
        import torch

        for d in as_devices(device):
            torch.cuda.synchronize(d)
            torch.cuda.reset_peak_memory_stats(d)
    qdevice.reset_peak_rss()


MEMORY_KEYS = ("max_allocated_bytes", "max_reserved_bytes", "nvml_process_bytes", "nvml_device_used_bytes")


def _read_peaks(device: Any) -> dict[str, Any]:
    """Peak memory of the pass. Several devices: `per_device` holds each one's figures and the
    top-level figures are their sums (None where any device lacks the figure)."""
    memory: dict[str, Any] = {
        "max_allocated_bytes": None, "max_reserved_bytes": None, "nvml_process_bytes": None,
        "cpu_peak_rss_bytes": qdevice.peak_rss_bytes(), "nvml_device_used_bytes": None,
    }
    devices = as_devices(device)
    if devices[0].type == "cuda":
        per = [_device_peaks(d) for d in devices]
        if len(per) == 1:
            memory.update({k: per[0][k] for k in MEMORY_KEYS})
        else:
            memory.update({k: _sum_or_none([p[k] for p in per]) for k in MEMORY_KEYS})
            memory["per_device"] = per
    return memory


def _device_peaks(device: Any) -> dict[str, Any]:
    import torch

    return {
        "device": str(device), "index": device.index,
        "max_allocated_bytes": int(torch.cuda.max_memory_allocated(device)),
        "max_reserved_bytes": int(torch.cuda.max_memory_reserved(device)),
        # Read right after the pass: the caching allocator still holds its peak blocks, so
        # the driver's figure is the pass's footprint plus the CUDA context.
        "nvml_process_bytes": qdevice.nvml_process_bytes(device),
        "nvml_device_used_bytes": qdevice.nvml_device_used_bytes(device),
    }


def _sum_or_none(values: list[int | None]) -> int | None:
    return None if any(v is None for v in values) else int(sum(v for v in values if v is not None))


def latency_block(timing: Timing, batch_size: int) -> dict[str, Any]:
    return {
        "per_iter": stats(timing.per_iter_ms),
        "per_example": stats([t / batch_size for t in timing.per_iter_ms]),
        "wall_mean_per_iter": _r(timing.wall_ms_per_iter) if timing.wall_ms_per_iter is not None else None,
    }


def generate_block(timing: Timing, work: Workload) -> dict[str, Any] | None:
    if work.task != "generate":
        return None
    median = stats(timing.per_iter_ms)["median"]
    return {
        "ttft_ms": stats(timing.ttft_ms),
        "decode_ms_per_token": stats(timing.decode_ms),
        # Generated tokens of the whole batch per second of a median generate call.
        "tokens_per_s": _r(work.batch_size * work.new_tokens / (median / 1e3)) if median else None,
        "new_tokens": work.new_tokens,
        "prompts": work.batch_size,
        "distinct_prompts": len(timing.per_iter_ms) * work.batch_size,
    }


# ---------------------------------------------------------------------------------------
# Annotations


BLOCK_SUFFIXES = ("Layer", "Block")
ATTENTION_SUFFIXES = ("Attention",)
MLP_SUFFIXES = ("MLP", "FeedForward", "FFN")


def module_role(name: str, module: Any, parent: Any) -> str | None:
    """Which annotated kind a module is, or None (not annotated)."""
    import torch

    from qtrace.capture.models import is_norm

    cls = type(module).__name__
    if isinstance(parent, torch.nn.ModuleList) and cls.endswith(BLOCK_SUFFIXES):
        return "block"
    if isinstance(module, torch.nn.Linear):  # bnb Linear8bitLt and Linear4bit subclass it
        return "linear"
    # GPTQ / AWQ linears (GPTQModel's TorchLinear, MarlinLinear, AwqTorchLinear, ...) are plain
    # Modules holding a packed int32 `qweight`; their class is what the phase rules key on.
    if cls.endswith("Linear") and isinstance(getattr(module, "qweight", None), torch.Tensor):
        return "linear"
    if is_norm(module):
        return "norm"
    if cls.endswith(ATTENTION_SUFFIXES):
        return "attention"
    if cls.endswith(MLP_SUFFIXES):
        return "mlp"
    # Embeddings (nn.Embedding, HF's *Embeddings blocks), not rotary tables (*RotaryEmbedding).
    if isinstance(module, torch.nn.Embedding) or cls.endswith("Embeddings"):
        return "embedding"
    return None


def annotated_modules(model: Any) -> list[tuple[str, Any]]:
    """(annotation name, module) for every module the profiled pass brackets."""
    parents = {id(child): parent for parent in model.modules() for child in parent.children()}
    out = []
    for name, module in model.named_modules():
        if name and module_role(name, module, parents.get(id(module))):
            tag = weight_tag(module)
            out.append((f"{MODULE_PREFIX}{type(module).__name__}:{name}" + (f":{tag}" if tag else ""), module))
    return out


def weight_tag(module: Any) -> str | None:
    """The weight's tensor class when it is a dispatch subclass (torchao's Int8Tensor, ...), else None.

    torchao's weight-only modes launch plain aten ops (`_to_copy`, `mm`, `mul`) under an ordinary
    `Linear`: the weight's class is the only mark the phase rules can key on. "+act" marks a
    weight that also quantizes the activation (dynamic W8A8), which the class alone does not
    tell. bitsandbytes' Int8Params / Params4bit are plain Parameter subclasses without a
    `__torch_dispatch__` of their own: no tag, so their annotations stay as before.
    """
    import torch

    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        return None
    cls = type(weight)
    if getattr(cls, "__torch_dispatch__", None) is getattr(torch.Tensor, "__torch_dispatch__", None):
        return None
    return cls.__name__ + ("+act" if getattr(weight, "act_quant_kwargs", None) is not None else "")


@contextlib.contextmanager
def module_annotations(model: Any) -> Iterator[int]:
    """record_function ranges around the annotated modules, for the profiled pass only."""
    handles = []
    for label, module in annotated_modules(model):
        pre, post = _range_hooks(label)
        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post, always_call=True))
    try:
        yield len(handles) // 2
    finally:
        for h in handles:
            h.remove()


def _range_hooks(label: str) -> tuple[Callable[..., None], Callable[..., None]]:
    from torch.autograd.profiler import record_function

    stack: list[Any] = []  # a module may be re-entered (shared layers); close in LIFO order

    def pre(_module: Any, _args: Any) -> None:
        rf = record_function(label)
        rf.__enter__()
        stack.append(rf)

    def post(_module: Any, _args: Any, _output: Any) -> None:
        if stack:
            stack.pop().__exit__(None, None, None)

    return pre, post


class StepAnnotator:
    """Names each top-level forward inside generate: the first is the prefill, the rest decode."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.calls = 0
        self._stack: list[Any] = []
        self._handles: list[Any] = []

    def __enter__(self) -> StepAnnotator:
        self._handles = [
            self.model.register_forward_pre_hook(self._pre, with_kwargs=True),
            self.model.register_forward_hook(self._post, always_call=True),
        ]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        while self._stack:
            self._stack.pop().__exit__(None, None, None)

    def new_generation(self) -> None:
        self.calls = 0

    def _pre(self, _module: Any, _args: Any, _kwargs: Any) -> None:
        from torch.autograd.profiler import record_function

        rf = record_function(STEP_PREFILL if self.calls == 0 else STEP_DECODE)
        rf.__enter__()
        self._stack.append(rf)
        self.calls += 1

    def _post(self, _module: Any, _args: Any, _output: Any) -> None:
        if self._stack:
            self._stack.pop().__exit__(None, None, None)


# ---------------------------------------------------------------------------------------
# Profiled pass


def profiled_pass(model: Any, work: Workload, steps: int, device: Any, trace_path: Path,
                  metadata: dict[str, Any], progress: Progress | None = None) -> dict[str, Any]:
    """Run 1 warm-up + `steps` recorded iterations under torch.profiler; write the gzipped trace.

    The full trace: CPU ops with shapes, memory, module and step annotations (and CUDA activity on
    a GPU). It labels every event with its phase, but slows a host-bound pass 1.2-2.6x unevenly.
    """
    return _recorded_pass(model, work, steps, device, trace_path, metadata, progress, lean=False)


def lean_pass(model: Any, work: Workload, steps: int, device: Any, trace_path: Path,
              metadata: dict[str, Any], progress: Progress | None = None) -> dict[str, Any]:
    """The same steps under a profiler with CUDA activity only: the trace that times the phases.

    No CPU ops, shapes, memory or module hooks: CUPTI still records every kernel, memcpy, memset
    and CUDA runtime call with correlation ids, and a host-bound pass stays within ~10% of its
    un-profiled time. Its phases come from the full trace (qtrace.analyzers.lean_alignment).
    """
    if primary(device).type != "cuda":
        raise ValueError("a lean (CUDA-activity-only) trace needs a CUDA device")
    return _recorded_pass(model, work, steps, device, trace_path, {**metadata, "lean": True}, progress, lean=True)


CUPTI_TEARDOWN_VAR = "TEARDOWN_CUPTI"
_cupti_primed: set[str] = set()


def ensure_cupti_teardown() -> str:
    """Make Kineto finalize CUPTI when each profiler session stops; returns the setting in force.

    Kineto keeps CUPTI initialised after a session unless TEARDOWN_CUPTI=1 (pytorch/pytorch#144455),
    and that taxes every later un-profiled pass of the process. On an H200 (examples/lean/README.md),
    without teardown the fp16 pass timed right after its lean pass ran 1.23-2.48x its first timed
    pass in 9 of 9 processes (and every precision after the first was timed taxed); with teardown,
    0.67-1.68x, median 1.01. A value the user set (e.g. 0) is left alone and recorded in run.json.
    (torch itself sets 0 for CUDA graphs on CUDA < 12.6, where re-initialising CUPTI crashed.)
    """
    if CUPTI_TEARDOWN_VAR not in os.environ:
        os.environ[CUPTI_TEARDOWN_VAR] = "1"  # read by Kineto's C++ at each stop (getenv), so this takes effect
        return "1 (set by qtrace)"
    return os.environ[CUPTI_TEARDOWN_VAR]


def prime_cupti(model: Any, work: Workload, device: Any) -> bool:
    """Where CUPTI is kept between sessions (TEARDOWN_CUPTI not 1): one throwaway lean session per
    process and device before the first recorded lean pass, so that no recorded one runs on a freshly
    initialised CUPTI (on an H200 such a session ran 1.24-1.33x its bracketing un-profiled blocks, one
    on an initialised CUPTI 1.05-1.15x: benchmarks/lean_overhead.py). With teardown every session is a
    fresh one and priming would change nothing. Returns True if it primed now.
    """
    key = str(device)
    if device.type != "cuda" or key in _cupti_primed or os.environ.get(CUPTI_TEARDOWN_VAR) == "1":
        return False
    fd, tmp = tempfile.mkstemp(prefix=".prime.", suffix=".json.gz")
    os.close(fd)
    try:
        _recorded_pass(model, work, 1, device, Path(tmp), {"prime": True}, None, lean=True)
    finally:
        Path(tmp).unlink(missing_ok=True)
    _cupti_primed.add(key)
    return True


def lean_experimental_config() -> Any:
    """The lean profiler's Kineto settings: external correlation off, where torch offers the switch.

    External correlation ties CPU ops to the kernels they launch; a lean trace records no CPU ops,
    so it only costs host time there. On an H200 (benchmarks/cupti_cost.py, examples/lean/README.md,
    visit 4) a lean session with it off cost less than one with it on in 10 of 12 interleaved
    comparisons (tiny launches and qwen2.5-0.5b forwards, batch 1 and 32), though the matrix of
    visit 5 still saw lean inflations of 1.09-1.88: CUPTI's per-launch cost remains. The
    runtime-to-kernel links qtrace's alignment uses are CUPTI's own correlation ids and stay.
    None: keep torch's default.
    """
    try:
        from torch._C._profiler import _ExperimentalConfig

        return _ExperimentalConfig(disable_external_correlation=True)
    except (ImportError, TypeError):  # an older torch without the switch
        return None


def _recorded_pass(model: Any, work: Workload, steps: int, device: Any, trace_path: Path,
                   metadata: dict[str, Any], progress: Progress | None, lean: bool) -> dict[str, Any]:
    from torch.autograd.profiler import record_function
    from torch.profiler import ProfilerActivity, profile, schedule

    ensure_cupti_teardown()
    if lean:
        activities = [ProfilerActivity.CUDA]
    else:
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if primary(device).type == "cuda" else [])
    trace_path.parent.mkdir(parents=True, exist_ok=True)
    fd, raw = tempfile.mkstemp(prefix=".trace.", suffix=".json", dir=trace_path.parent)
    os.close(fd)
    exported: list[bool] = []

    def on_ready(prof: Any) -> None:
        prof.export_chrome_trace(raw)
        exported.append(True)

    # The lean pass runs the bare model: module hooks and step names cost host time it must not pay.
    annotations = contextlib.nullcontext(0) if lean else module_annotations(model)
    step_names = StepAnnotator(model) if work.task == "generate" and not lean else contextlib.nullcontext()
    extra: dict[str, Any] = {}
    if lean:
        config = lean_experimental_config()
        if config is not None:
            extra["experimental_config"] = config
        metadata = {**metadata, "external_correlation": config is None}
    prof = profile(activities=activities, schedule=schedule(wait=0, warmup=1, active=steps, repeat=1),
                   record_shapes=not lean, profile_memory=not lean, with_stack=False, on_trace_ready=on_ready,
                   **extra)
    try:
        with warnings.catch_warnings(), annotations as n_modules, step_names as steps_ann:
            # One schedule cycle is all we record, so torch's "clears events at the end of each
            # cycle" warning (printed on CUDA builds) says nothing useful here.
            warnings.filterwarnings("ignore", message=".*Profiler clears events.*")
            with native_output_filtered():
                prof.__enter__()
            try:
                for i in range(1 + steps):
                    if i == 1:  # metadata is kept only once the profiler records (after its warm-up step)
                        prof.add_metadata_json("qtrace", json.dumps({**metadata, "annotated_modules": n_modules}))
                        prof.add_metadata_json("distributedInfo", json.dumps({"rank": 0}))
                    if work.task == "generate":
                        if steps_ann is not None:
                            steps_ann.new_generation()
                        run_generate(model, work)
                    else:
                        with record_function(STEP_FORWARD):
                            run_forward(model, work)
                    # Every step ends with a device sync: in a lean trace, which may hold no
                    # ProfilerStep markers, these cudaDeviceSynchronize calls mark the steps.
                    _sync(device)
                    with native_output_filtered():
                        prof.step()
                    if progress:
                        what = "lean " if lean else ""
                        progress(f"{what}profiled step {i}/{steps}" if i else f"{what}profiler warm-up step")
            finally:
                with native_output_filtered():
                    prof.__exit__(None, None, None)
        if not exported:
            raise RuntimeError("torch.profiler produced no trace (schedule did not complete)")
        _gzip_into(Path(raw), trace_path)
    finally:
        Path(raw).unlink(missing_ok=True)
    return {"trace_bytes": trace_path.stat().st_size, "annotated_modules": n_modules}


# Kineto's C++ side prints these on the CPU build at every profiler start and stop, straight to
# fd 2 (past Python's sys.stderr): noise on the user's terminal, nothing they can act on.
_NATIVE_NOISE = ("profiler_start", "profiler_stop")


def is_native_noise(line: str) -> bool:
    return "USDT" in line and any(word in line for word in _NATIVE_NOISE)


@contextlib.contextmanager
def native_output_filtered() -> Iterator[None]:
    """Redirect fd 1 and 2 into temp files (at OS level, where C++ writes), then re-emit all but
    Kineto's USDT start/stop lines to where they were going."""
    import sys

    saved: list[tuple[int, int, Any]] = []
    for stream, fd in ((sys.stdout, 1), (sys.stderr, 2)):
        with contextlib.suppress(Exception):
            stream.flush()
        try:
            keep = os.dup(fd)
        except OSError:  # no such fd (a daemon): nothing to filter
            continue
        tmp = tempfile.TemporaryFile()  # noqa: SIM115 (closed in the finally below, after fd restore)
        os.dup2(tmp.fileno(), fd)
        saved.append((fd, keep, tmp))
    try:
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        for fd, keep, tmp in saved:
            os.dup2(keep, fd)
            os.close(keep)
            tmp.seek(0)
            text = tmp.read()
            tmp.close()
            rest = [ln for ln in text.splitlines(keepends=True) if not is_native_noise(ln.decode(errors="replace"))]
            if rest:
                os.write(fd, b"".join(rest))


def _gzip_into(src: Path, dest: Path) -> None:
    with open(src, "rb") as fin, atomic_open(dest, "wb", gz=True) as fout:
        while chunk := fin.read(1 << 20):
            fout.write(chunk)
