"""Python API: `qtrace.profile(...)` runs the whole protocol and returns a `ProfileResult`.

    import qtrace
    result = qtrace.profile("tiny-llama", precisions=["fp32", "int8", "nf4"], out="runs/tiny")
    result.to_frame()[["median_ms", "p90_ms", "footprint_bytes"]]
    result.trace_path("int8")      # runs/tiny/int8/trace.json.gz

The CLI (`qtrace profile`) is a thin wrapper over this function; run.json is described in
docs/profile.md.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from qtrace import __version__, fileio
from qtrace.capture.energy import energy_block
from qtrace.capture.placement import parse_device_map
from qtrace.capture.quality import QualityProbe
from qtrace.errors import QtraceError

RUN_FILE = "run.json"
TRACE_NAME = "trace.json.gz"
LEAN_TRACE_NAME = "lean_trace.json.gz"
LEAN_NOTE_CPU = ("no lean trace: the device is a CPU, and a lean trace records CUDA activity only (kernels, "
                 "copies, runtime calls); on a CPU only the full trace exists")


@dataclass(frozen=True)
class Settings:
    model: str | None = None
    precisions: tuple[str, ...] | None = None
    task: str = "forward"
    batch_size: int = 1
    seq_len: int = 128
    new_tokens: int = 16
    warmup: int = 3
    iters: int = 20
    profile_steps: int = 3
    device: str = "auto"
    seed: int = 0
    int8_threshold: float = 6.0
    outlier_dims: int = 0
    trust_remote_code: bool = False
    lean: bool | None = None  # None: on where the device is CUDA
    decode: str = "dynamic"  # "static": static KV cache + CUDA graphs where the precision allows
    device_map: str | None = None  # an accelerate strategy (qtrace.capture.placement), None: all on `device`

    def validate(self) -> None:
        for name in ("batch_size", "seq_len", "new_tokens", "iters"):
            if getattr(self, name) < 1:
                raise QtraceError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("warmup", "profile_steps"):  # profile_steps 0: measure only, record no trace
            if getattr(self, name) < 0:
                raise QtraceError(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(self, name)}")
        if self.int8_threshold < 0:
            raise QtraceError(f"--int8-threshold must be 0 or more, got {self.int8_threshold}")
        if self.outlier_dims < 0:
            raise QtraceError(f"--outlier-dims must be 0 or more, got {self.outlier_dims}")
        if self.decode not in ("dynamic", "static"):
            raise QtraceError(f"--decode must be dynamic or static, got {self.decode!r}")
        parse_device_map(self.device_map)


class ProfileResult:
    """What `profile` measured: `run` is run.json as a dict; traces live under `out`."""

    def __init__(self, out: Path, run: dict[str, Any]) -> None:
        self.out = Path(out)
        self.run = run

    def __repr__(self) -> str:
        return f"ProfileResult(out={str(self.out)!r}, precisions={self.precisions})"

    @classmethod
    def load(cls, out: str | Path) -> ProfileResult:
        """Read a finished (or interrupted) run folder back."""
        import msgspec

        path = Path(out) / RUN_FILE
        try:
            return cls(Path(out), msgspec.json.decode(path.read_bytes()))
        except (OSError, msgspec.DecodeError) as exc:
            raise QtraceError(f"{path}: not a readable qtrace run ({exc})") from None

    @property
    def precisions(self) -> list[str]:
        return list(self.run.get("precisions", {}))

    def trace_path(self, precision: str) -> Path | None:
        entry = self.run.get("precisions", {}).get(precision)
        if entry is None:
            raise KeyError(f"precision {precision!r} not in this run ({', '.join(self.precisions) or 'none'})")
        return self.out / entry["trace"] if entry.get("trace") else None

    def lean_trace_path(self, precision: str) -> Path | None:
        """`<precision>/lean_trace.json.gz` (CUDA activity only), or None (CPU, --no-lean)."""
        self.trace_path(precision)  # the same KeyError for an unknown precision
        entry = self.run["precisions"][precision]
        return self.out / entry["lean_trace"] if entry.get("lean_trace") else None

    def to_frame(self) -> Any:
        """One row per precision (index: precision), plain columns with units in their names."""
        import pandas as pd

        rows = [flatten_precision(p, e) for p, e in self.run.get("precisions", {}).items()]
        return pd.DataFrame(rows).set_index("precision") if rows else pd.DataFrame()

    def table(self) -> str:
        return format_table(self.run)


def flatten_precision(precision: str, e: dict[str, Any]) -> dict[str, Any]:
    lat = (e.get("latency_ms") or {}).get("per_iter") or {}
    ex = (e.get("latency_ms") or {}).get("per_example") or {}
    gen = e.get("generate") or {}
    mem = e.get("memory") or {}
    load = e.get("load") or {}
    return {
        "precision": precision, "status": e.get("status"), "error": e.get("error"),
        "compute_dtype": e.get("compute_dtype"), "timer": e.get("timer"),
        "median_ms": lat.get("median"), "p90_ms": lat.get("p90"), "min_ms": lat.get("min"),
        "mean_ms": lat.get("mean"), "stdev_ms": lat.get("stdev"), "n": lat.get("n"),
        "per_example_median_ms": ex.get("median"), "per_example_p90_ms": ex.get("p90"),
        "ttft_median_ms": (gen.get("ttft_ms") or {}).get("median"),
        "decode_median_ms_per_token": (gen.get("decode_ms_per_token") or {}).get("median"),
        "tokens_per_s": gen.get("tokens_per_s"),
        "load_seconds": load.get("seconds"), "footprint_bytes": load.get("footprint_bytes"),
        "max_allocated_bytes": mem.get("max_allocated_bytes"), "max_reserved_bytes": mem.get("max_reserved_bytes"),
        "nvml_process_bytes": mem.get("nvml_process_bytes"), "cpu_peak_rss_bytes": mem.get("cpu_peak_rss_bytes"),
        "trace": e.get("trace"),
    }


# ---------------------------------------------------------------------------------------


def profile(
    model: str | None = None,
    precisions: list[str] | tuple[str, ...] | str | None = None,
    task: str = "forward",
    batch_size: int = 1,
    seq_len: int = 128,
    new_tokens: int = 16,
    warmup: int = 3,
    iters: int = 20,
    profile_steps: int = 3,
    device: str = "auto",
    out: str | Path | None = None,
    force: bool = False,
    seed: int = 0,
    int8_threshold: float = 6.0,
    outlier_dims: int = 0,
    trust_remote_code: bool = False,
    lean: bool | None = None,
    progress: Callable[[str], None] | None = None,
    quiet: bool = False,
    decode: str = "dynamic",
    device_map: str | None = None,
) -> ProfileResult:
    """Load `model` at each precision in turn, measure it, record a trace; see docs/profile.md.

    model: preset name (default tiny-llama), local HF checkout folder, or HF id already in the
    local cache (never downloaded). precisions: list or comma string of fp32, fp16, bf16, int8,
    nf4 (default fp16,int8,nf4 on CUDA, fp32,int8,nf4 on CPU). progress: called with one-line
    status messages (default: stderr, unless quiet). lean: beside each full trace, record the
    same steps with CUDA activity only (`<precision>/lean_trace.json.gz`, the trace `qtrace
    compare` times phases with); default on a CUDA device, impossible on a CPU. device_map:
    "auto" (or "balanced", "balanced_low_0", "sequential") spreads the model over the visible
    GPUs with accelerate, as `from_pretrained(device_map="auto")` does; run.json records where
    each layer went and memory per GPU. With one GPU (or none) the model stays whole on `device`.
    """
    from qtrace.capture import models

    strategy = parse_device_map(device_map)
    settings = Settings(model, None, task, batch_size, seq_len, new_tokens, warmup, iters, profile_steps,
                        device, seed, float(int8_threshold), outlier_dims, trust_remote_code, lean, decode, strategy)
    settings.validate()
    if task not in models.TASKS:
        raise QtraceError(f"unknown task {task!r}; choose from {', '.join(models.TASKS)}")
    # Cheap checks first (bad precision, device or --out), before a preset takes minutes to build.
    chosen = models.parse_precisions(precisions) if precisions is not None else None
    say = _Reporter(progress, quiet)
    from qtrace.capture import environment as qdevice

    dev = qdevice.resolve_device(device)
    _check_device_map(strategy, dev)
    chosen = chosen or models.default_precisions(dev.type)
    models.check_available(chosen, dev)  # a GPU-only or missing-package precision: one line, before any work
    out_path = Path(out) if out is not None else default_out_dir(model or models.DEFAULT_PRESET)
    if out_path.exists():
        fileio.prepare_out_dir(out_path, force)
    preset = models.PRESETS.get(model or models.DEFAULT_PRESET)
    if preset is not None:  # refuse before building it
        models.check_task(task, preset.kind, preset.name)
    spec = models.resolve_model(model, trust_remote_code, progress=say.line)
    models.check_task(task, spec.kind, spec.name)
    out_path = fileio.prepare_out_dir(out_path, force)
    _clear_old_results(out_path)
    return _Runner(settings, tuple(chosen), dev, spec, out_path, say).run()


def _check_device_map(strategy: str | None, dev: Any) -> None:
    """A split starts on GPU 0 and uses every visible GPU: --device cuda:N (N > 0) cannot say which to use."""
    if strategy is not None and dev.type == "cuda" and (dev.index or 0) != 0:
        raise QtraceError(f"--device-map {strategy} spreads the model over every visible GPU from cuda:0; "
                          f"choose the GPUs with CUDA_VISIBLE_DEVICES instead of --device {dev}")


def default_out_dir(model: str) -> Path:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model).name if Path(model).exists() else model).strip("-")
    return Path("qtrace-runs") / f"{stem or 'model'}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def _clear_old_results(out: Path) -> None:
    """With --force, drop what an earlier run left (its traces would pass for this run's)."""
    from qtrace.capture.models import PRECISIONS

    (out / RUN_FILE).unlink(missing_ok=True)
    for p in PRECISIONS:
        if (out / p).is_dir():
            shutil.rmtree(out / p)


class _Reporter:
    """Progress on stderr: phase lines, plus a counter that rewrites itself on a terminal."""

    def __init__(self, sink: Callable[[str], None] | None, quiet: bool) -> None:
        self.sink = sink
        self.quiet = quiet
        self.tty = sink is None and sys.stderr.isatty()
        self._transient = False

    def line(self, msg: str) -> None:
        if self.quiet:
            return
        if self.sink is not None:
            self.sink(msg)
            return
        self._clear()
        print(msg, file=sys.stderr, flush=True)

    def counter(self, prefix: str) -> Callable[[str], None] | None:
        """Per-iteration updates: only on a terminal (a log gets the phase lines alone)."""
        if self.quiet or not self.tty:
            return None

        def update(msg: str) -> None:
            sys.stderr.write(f"\r\033[K{prefix} {msg}")
            sys.stderr.flush()
            self._transient = True

        return update

    def _clear(self) -> None:
        if self._transient:
            sys.stderr.write("\r\033[K")
            self._transient = False


class _Runner:
    def __init__(self, settings: Settings, precisions: tuple[str, ...], dev: Any, spec: Any, out: Path,
                 say: _Reporter) -> None:
        self.s = settings
        self.precisions = precisions
        self.dev = dev
        self.spec = spec
        self.out = out
        self.say = say
        self.config_summary: dict[str, Any] | None = None
        self.outlier_indices: list[int] = []
        self.quality = QualityProbe(settings.task, spec.kind, settings.batch_size, settings.seq_len, settings.seed)

    def run(self) -> ProfileResult:
        import torch

        from qtrace.capture import environment as qdevice
        from qtrace.capture import models
        from qtrace.capture import protocol as capture
        from qtrace.capture.models import quiet_libraries

        capture.ensure_cupti_teardown()  # before the environment is recorded: run.json shows the setting in force
        run = self._run_header(qdevice.environment(self.dev))
        fileio.mark_incomplete(self.out, f"qtrace profile started {run['created']}; if this file remains, "
                                         "the run was interrupted and run.json holds only finished precisions")
        fileio.write_json(self.out / RUN_FILE, run)
        if self.dev.type == "cuda":
            torch.cuda.set_device(self.dev)  # CUDA events record on the current device's stream
        models.warm_imports(self.spec, self.s.task, self.precisions, self.s.trust_remote_code)
        # GPTQ / AWQ checkpoints are made by calibration: built (or found in the cache) here, once,
        # so that no precision's load time holds a quantization run.
        self.checkpoints = models.prepare_checkpoints(self.spec, self.precisions, self.dev, self.say.line,
                                                       self.s.seed)
        changed = env_changes(run["environment"]["env"], qdevice.timing_env())
        if changed:  # e.g. GPTQModel's import sets PYTORCH_ALLOC_CONF for the whole process
            run["environment"]["env"] = qdevice.timing_env()
            run["environment"]["env_changed_by_imports"] = changed
            for name, (was, now) in changed.items():
                self.say.line(f"note: a library imported for this run set {name}={now!r} (was {was!r}); "
                              "every precision is timed with it")
        models.free_model(None)  # a preset just built, or an earlier run, may still hold memory
        with quiet_libraries(), torch.inference_mode():
            for precision in self.precisions:
                run["precisions"][precision] = self._one(precision)
                run["settings"]["outlier_dim_indices"] = self.outlier_indices
                fileio.write_json(self.out / RUN_FILE, run)
        fileio.clear_incomplete(self.out)
        self.say.line(f"wrote {self.out / RUN_FILE}")
        return ProfileResult(self.out, run)

    def _run_header(self, environment: dict[str, Any]) -> dict[str, Any]:
        s = self.s
        settings = {
            "model": self.spec.name, "preset": self.spec.preset, "model_path": str(self.spec.path),
            "model_source": self.spec.source, "task": s.task, "batch_size": s.batch_size, "seq_len": s.seq_len,
            "new_tokens": s.new_tokens, "warmup": s.warmup, "iters": s.iters, "profile_steps": s.profile_steps,
            "seed": s.seed, "int8_threshold": s.int8_threshold, "outlier_dims": s.outlier_dims,
            "outlier_dim_indices": [], "device": str(self.dev), "precisions": list(self.precisions),
            "trust_remote_code": s.trust_remote_code, "lean": self._lean_on(),
            **({"decode": s.decode} if s.decode != "dynamic" else {}),
            **({"device_map": s.device_map} if s.device_map else {}),
        }
        if s.device_map:  # every visible GPU's facts (name, memory, NVML), not just the first's
            from qtrace.capture import environment as qdevice

            environment = {**environment, "gpus": qdevice.gpu_inventory()}
        return {
            "qtrace_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": equivalent_command(s, self.spec.name, self.precisions, self.dev, self.out),
            "settings": settings, "environment": environment, "precisions": {},
        }

    def _one(self, precision: str) -> dict[str, Any]:
        from qtrace.capture import models

        tag = f"[{precision}]"
        entry = _empty_entry(precision, self.dev)
        if precision in getattr(self, "checkpoints", {}):
            entry["checkpoint"] = self.checkpoints[precision]
        loaded = None
        try:
            self.say.line(f"{tag} loading {self.spec.name} ...")
            loaded = models.load_model(self.spec, precision, self.s.task, self.dev, self.s.int8_threshold,
                                       self.s.trust_remote_code, self.s.seed, device_map=self.s.device_map)
            entry["compute_dtype"] = loaded.compute_dtype
            if loaded.placement is not None:
                entry["placement"] = loaded.placement
                self.say.line(f"{tag} placement: {loaded.placement.get('note') or loaded.placement['summary']}")
            entry["warnings"] = list(loaded.warnings)
            for w in loaded.warnings:
                self.say.line(f"{tag} warning: {w}")
            entry["load"] = {"seconds": round(loaded.load_seconds, 4), "footprint_bytes": loaded.footprint_bytes,
                             "allocated_delta_bytes": loaded.allocated_delta_bytes}
            self.say.line(f"{tag} loaded in {loaded.load_seconds:.2f} s, footprint {fmt_bytes(loaded.footprint_bytes)}")
            self._measure(loaded, entry, tag)
            entry["status"] = "ok"
        except _unsupported() as exc:  # --decode static where the precision cannot: say why, not an error
            entry["status"] = "unsupported"
            entry["error"] = str(exc)
            self.say.line(f"{tag} unsupported: {exc}")
        except Exception as exc:  # one precision failing (OOM, a bnb error) must not lose the others
            entry["status"] = "error"
            entry["error"] = one_line(exc)
            self._save_traceback(precision)
            self.say.line(f"{tag} error: {entry['error']}")
        finally:
            models.free_model(loaded)
        return entry

    def _measure(self, loaded: Any, entry: dict[str, Any], tag: str) -> None:
        from qtrace.capture import models
        from qtrace.capture import protocol as capture

        model = loaded.model
        # The devices the clock, syncs and memory readings cover: every GPU of a split model.
        devs = loaded.devices if len(loaded.devices) > 1 else self.dev
        dims = models.apply_outlier_dims(model, self.s.outlier_dims)
        self.outlier_indices = dims
        if self.config_summary is None:
            self.config_summary = models.config_summary(model.config, arch=type(model).__name__,
                                                        params=models.logical_params(model))
        entry["quality"] = self.quality.observe(loaded.precision, model)  # same inputs for every precision
        work = capture.make_workload(model, self.spec.kind, self.s.task, self.s.batch_size, self.s.seq_len,
                                     self.s.new_tokens, self.s.seed, self.dev)
        if self.s.decode == "static" and self.s.task == "generate":
            from qtrace.capture.static_decode import generate_kwargs

            work.generate_kwargs = generate_kwargs(model, loaded.precision, self.dev)
            entry["decode"] = "static"
        self.say.line(f"{tag} warm-up x{self.s.warmup}, timed x{self.s.iters} ({self.s.task}, "
                      f"batch {self.s.batch_size}, seq {self.s.seq_len})")
        capture.warm_up(model, work, self.s.warmup, devs, self.say.counter(tag))
        timing = capture.timed_pass(model, work, self.s.iters, devs, self.say.counter(tag))
        entry["timer"] = timing.clock
        entry["latency_ms"] = capture.latency_block(timing, self.s.batch_size)
        entry["generate"] = capture.generate_block(timing, work)
        entry["memory"] = timing.memory
        entry["energy"] = energy_block(timing.energy, self.s.iters, self.s.batch_size,
                                       self.s.new_tokens if self.s.task == "generate" else None)
        med = entry["latency_ms"]["per_iter"]
        self.say.line(f"{tag} median {med['median']:.2f} ms/iter, p90 {med['p90']:.2f} ms")
        if self.s.profile_steps == 0:
            self.say.line(f"{tag} --profile-steps 0: no trace recorded")
            return
        meta = self._metadata(loaded)
        if loaded.placement is not None:
            meta["placement"] = {k: v for k, v in loaded.placement.items() if k != "hf_device_map"}
        # The lean trace right after the timed pass, then a short timed burst: its steps sit between
        # two un-profiled stretches, so the host's drift during it is measured, not guessed.
        if self._lean(model, work, loaded, meta, entry, tag, devs):
            after = capture.timed_pass(model, work, after_lean_iters(self.s.iters), devs, self.say.counter(tag))
            entry["latency_ms"]["after_lean"] = capture.stats(after.per_iter_ms)
        trace = self.out / loaded.precision / TRACE_NAME
        self.say.line(f"{tag} profiling {self.s.profile_steps} step(s) ...")
        info = capture.profiled_pass(model, work, self.s.profile_steps, devs, trace, meta,
                                     self.say.counter(tag))
        entry["trace"] = trace.relative_to(self.out).as_posix()
        entry["trace_bytes"] = info["trace_bytes"]
        entry["annotated_modules"] = info["annotated_modules"]
        self.say.line(f"{tag} trace {trace} ({fmt_bytes(info['trace_bytes'])})")

    def _lean_on(self) -> bool:
        return self.dev.type == "cuda" and self.s.lean is not False

    def _lean(self, model: Any, work: Any, loaded: Any, meta: dict[str, Any], entry: dict[str, Any],
              tag: str, devs: Any = None) -> bool:
        """The lean trace of the full one's steps (run.json: lean_trace, lean_trace_bytes); True if written."""
        from qtrace.capture import protocol as capture

        entry["lean_trace"] = None
        if self.dev.type != "cuda":
            entry["lean_note"] = LEAN_NOTE_CPU
            return False
        if self.s.lean is False:
            entry["lean_note"] = "no lean trace: --no-lean"
            return False
        lean = self.out / loaded.precision / LEAN_TRACE_NAME
        self.say.line(f"{tag} lean trace (CUDA activity only), {self.s.profile_steps} step(s) ...")
        try:
            if capture.prime_cupti(model, work, self.dev):
                self.say.line(f"{tag} CUPTI primed (a throwaway lean session: a process's first one runs slower)")
            info = capture.lean_pass(model, work, self.s.profile_steps, devs if devs is not None else self.dev, lean,
                                     meta, self.say.counter(tag))
        except Exception as exc:  # the full trace and timings stand without it
            entry["lean_note"] = f"lean trace failed: {one_line(exc)}"
            self.say.line(f"{tag} {entry['lean_note']}")
            return False
        entry["lean_trace"] = lean.relative_to(self.out).as_posix()
        entry["lean_trace_bytes"] = info["trace_bytes"]
        entry["lean_note"] = None
        self.say.line(f"{tag} lean trace {lean} ({fmt_bytes(info['trace_bytes'])})")
        return True

    def _metadata(self, loaded: Any) -> dict[str, Any]:
        from qtrace.capture import environment as qdevice
        from qtrace.capture.models import OUTLIER_SCALE

        s = self.s
        return {
            "qtrace_version": __version__, "precision": loaded.precision, "model": self.spec.name,
            "preset": self.spec.preset, "config": self.config_summary, "outlier_dims": s.outlier_dims,
            "outlier_dim_indices": self.outlier_indices, "outlier_scale": OUTLIER_SCALE if s.outlier_dims else None,
            "task": s.task, "batch_size": s.batch_size, "seq_len": s.seq_len,
            "new_tokens": s.new_tokens if s.task == "generate" else None, "int8_threshold": s.int8_threshold,
            "compute_dtype": loaded.compute_dtype, "device": str(self.dev),
            "device_name": qdevice.device_name(self.dev), "nvml": qdevice.nvml_facts(self.dev),
            "versions": qdevice.versions(), "profile_steps": s.profile_steps, "warmup": s.warmup, "seed": s.seed,
        }

    def _save_traceback(self, precision: str) -> None:
        with contextlib.suppress(OSError):
            fileio.write_text(self.out / precision / "error.txt", traceback.format_exc())


def env_changes(before: dict[str, str], after: dict[str, str]) -> dict[str, list[str | None]]:
    """Timing-relevant variables whose value differs: name -> [before, after] (None: unset)."""
    return {k: [before.get(k), after.get(k)] for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)}


def after_lean_iters(iters: int) -> int:
    """Timed iterations after the lean pass: enough for a median, fewer than the main pass."""
    return max(3, iters // 2)


def _unsupported() -> type[Exception]:
    from qtrace.capture.static_decode import StaticDecodeUnsupported

    return StaticDecodeUnsupported


def _empty_entry(precision: str, dev: Any) -> dict[str, Any]:
    return {
        "status": "error", "error": None, "trace": None, "lean_trace": None, "compute_dtype": None,
        "load": None, "latency_ms": None, "generate": None, "memory": None, "energy": None,
        "timer": "cuda_event" if dev.type == "cuda" else "perf_counter", "warnings": [],
    }


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    msg = text[0].strip() if text else ""
    msg = msg if len(msg) <= 300 else msg[:297] + "..."
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def equivalent_command(s: Settings, model: str, precisions: tuple[str, ...], dev: Any, out: Path) -> list[str]:
    """The `qtrace profile` command line that reproduces this run, every setting explicit."""
    cmd = ["qtrace", "profile", model, "--precision", ",".join(precisions), "--task", s.task,
           "--batch-size", str(s.batch_size), "--seq-len", str(s.seq_len), "--new-tokens", str(s.new_tokens),
           "--warmup", str(s.warmup), "--iters", str(s.iters), "--profile-steps", str(s.profile_steps),
           "--device", str(dev), "--seed", str(s.seed), "--int8-threshold", str(s.int8_threshold),
           "--outlier-dims", str(s.outlier_dims), "--out", str(out)]
    if s.lean is not None:
        cmd.append("--lean" if s.lean else "--no-lean")
    cmd += ["--decode", s.decode] if s.decode != "dynamic" else []
    cmd += ["--device-map", s.device_map] if s.device_map else []
    return cmd + (["--trust-remote-code"] if s.trust_remote_code else [])


# ---------------------------------------------------------------------------------------
# The terminal table


def fmt_bytes(n: int | float | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.{3 if unit == 'GB' else 1}f} {unit}"
    return f"{int(n)} B"


def _fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def format_table(run: dict[str, Any]) -> str:
    """Short fixed-width table: one row per precision, ratios against the first that worked."""
    entries = run.get("precisions", {})
    on_gpu = (run.get("environment") or {}).get("device_type") == "cuda"
    generate = (run.get("settings") or {}).get("task") == "generate"
    peak_key, peak_head = ("max_allocated_bytes", "peak alloc") if on_gpu else ("cpu_peak_rss_bytes", "peak RSS")
    base = next((flatten_precision(p, e) for p, e in entries.items() if e.get("status") == "ok"), None)
    head = ["precision", "median ms", "p90 ms", "ms/example"]
    head += ["TTFT ms", "ms/token", "tok/s"] if generate else []
    head += [peak_head, "footprint", f"time vs {base['precision']}" if base else "time vs -",
             f"footprint vs {base['precision']}" if base else "footprint vs -", "trace"]
    rows = [head]
    for p, e in entries.items():
        f = flatten_precision(p, e)
        if e.get("status") != "ok":
            rows.append([p, "error: " + (e.get("error") or "?")])
            continue
        row = [p, _fmt(f["median_ms"]), _fmt(f["p90_ms"]), _fmt(f["per_example_median_ms"])]
        if generate:
            row += [_fmt(f["ttft_median_ms"]), _fmt(f["decode_median_ms_per_token"]), _fmt(f["tokens_per_s"], 1)]
        mem = (e.get("memory") or {}).get(peak_key)
        row += [fmt_bytes(mem), fmt_bytes(f["footprint_bytes"]),
                _ratio(f["median_ms"], base["median_ms"]), _ratio(f["footprint_bytes"], base["footprint_bytes"]),
                f["trace"] or "-"]
        rows.append(row)
    return _render(rows)


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if not a or not b else f"{a / b:.2f}x"


def _render(rows: list[list[str]]) -> str:
    width = len(rows[0])
    widths = [max(len(r[i]) for r in rows if len(r) == width) for i in range(width)]
    lines = []
    for r in rows:
        if len(r) != width:  # an error row: precision then the message, unpadded
            lines.append(f"{r[0].ljust(widths[0])}  {r[1]}")
            continue
        lines.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))))
    return "\n".join(lines)

