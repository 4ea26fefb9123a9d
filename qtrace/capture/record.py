"""`qtrace.record()` and `qtrace run`: explain the user's own, unchanged code.

While recording, `transformers.PreTrainedModel.from_pretrained` is wrapped: every model it
returns becomes one entry (load facts from capture/load_audit.py). A forward pre/post hook on
the model's root module and a wrapper around its `generate` count the top-level calls (a call
nested in another, such as generate's forwards, counts once at the top). Calls skip+1 ..
skip+steps run under torch.profiler with qtrace's module annotations and a `ProfilerStep#N`
range per call; the other calls are timed un-profiled. The result is a run folder shaped like
`qtrace profile`'s (docs/run.md), so `qtrace report` and `qtrace compare` read it unchanged.

Hooks run in whichever thread calls the model, so calls from other threads are counted and
timed too; the call depth is tracked per thread. Only one profiler session exists at a time:
a model whose turn comes while another model's calls are being recorded waits for its next call.
"""

from __future__ import annotations

import html
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import traceback
import warnings
import weakref
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from qtrace import __version__, fileio
from qtrace.capture.runner import RUN_FILE, TRACE_NAME, fmt_bytes, one_line

_PROFILER_LOCK = threading.Lock()  # one torch.profiler session per process


class _Call:
    __slots__ = ("index", "kind", "batch", "profiled", "start", "end", "wall0", "wall1", "autocast", "error",
                 "other_profiler", "forwards")

    def __init__(self, index: int, kind: str, batch: int | None) -> None:
        self.index, self.kind, self.batch = index, kind, batch
        self.profiled = False
        self.other_profiler = False
        self.start = self.end = None
        self.wall0 = self.wall1 = 0.0
        self.autocast: str | None = None
        self.error: str | None = None
        self.forwards = 0


class _Entry:
    """One loaded model: its facts, hooks and calls."""

    def __init__(self, rec: Recorder, key: str, model: Any, facts: dict[str, Any]) -> None:
        # Only a weak reference: a script that deletes its model and empties the cache (the seed
        # notebook does, between precisions) must get that memory back, or its own readings change.
        self.rec, self.key, self._model, self.facts = rec, key, weakref.ref(model), facts
        self.calls: list[_Call] = []
        self.local = threading.local()
        self.handles: list[Any] = []
        self.recorded = 0
        self.prof: Any = None
        self.annotations: Any = None
        self.step_ranges: list[Any] = []
        self.trace: str | None = None
        self.trace_bytes: int | None = None
        self.trace_error: str | None = None
        self.generate_patched = False
        self.cuda = facts["device"].startswith("cuda")

    @property
    def model(self) -> Any:
        return self._model()

    # -- hooks ------------------------------------------------------------------------

    def install(self) -> None:
        m = self.model
        self.handles = [m.register_forward_pre_hook(self._pre, with_kwargs=True),
                        m.register_forward_hook(self._post, always_call=True)]
        gen = getattr(m, "generate", None)
        if callable(gen) and "generate" not in vars(m):
            entry = self

            def generate(*args: Any, **kwargs: Any) -> Any:
                entry._begin("generate", args, kwargs)
                failed = True
                try:
                    out = gen(*args, **kwargs)
                    failed = False
                    return out
                finally:
                    entry._end(failed)

            m.generate = generate  # instance attribute: the class and other instances stay untouched
            self.generate_patched = True

    def uninstall(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []
        if self.generate_patched and self.model is not None:
            vars(self.model).pop("generate", None)
            self.generate_patched = False

    def _depth(self) -> int:
        return getattr(self.local, "depth", 0)

    def _pre(self, _module: Any, args: Any, kwargs: Any) -> None:
        if self._depth() == 0:
            self._begin("forward", args, kwargs)
        else:
            self._nested_forward()
            self.local.depth += 1

    def _post(self, _module: Any, _args: Any, _kwargs: Any, _output: Any = None) -> None:
        if self._depth() <= 0:
            return
        if self._depth() == 1:
            self._end(False)
        else:
            self.local.depth -= 1
            stack = getattr(self.local, "inner", [])
            if stack:
                stack.pop().__exit__(None, None, None)

    def _nested_forward(self) -> None:
        # Inside a profiled generate: name each forward prefill / decode, as qtrace profile does.
        call = getattr(self.local, "call", None)
        stack = self.local.__dict__.setdefault("inner", [])
        if call is not None and call.profiled and call.kind == "generate":
            from torch.autograd.profiler import record_function

            from qtrace.capture.protocol import STEP_DECODE, STEP_PREFILL

            rf = record_function(STEP_PREFILL if call.forwards == 0 else STEP_DECODE)
            rf.__enter__()
            stack.append(rf)
            call.forwards += 1
        else:
            stack.append(_Null())

    # -- calls ------------------------------------------------------------------------

    def _begin(self, kind: str, args: Any, kwargs: Any) -> None:
        import torch

        self.local.depth = 1
        call = _Call(len(self.calls) + 1, kind, batch_size(args, kwargs))
        self.calls.append(call)
        self.local.call = call
        dev = "cuda" if self.cuda else "cpu"
        if torch.is_autocast_enabled(dev):
            from qtrace.capture.load_audit import dtype_name

            call.autocast = dtype_name(torch.get_autocast_dtype(dev))
        rec = self.rec
        if call.index > rec.skip and self.recorded < rec.steps:
            if self.prof is None and _PROFILER_LOCK.acquire(blocking=False):
                self._start_profiler()
            if self.prof is not None:
                call.profiled = True
                from torch.autograd.profiler import record_function

                from qtrace.capture.protocol import STEP_FORWARD

                self.step_ranges = [record_function(f"ProfilerStep#{self.recorded + 1}")]
                if kind == "forward":
                    self.step_ranges.append(record_function(STEP_FORWARD))
                for r in self.step_ranges:
                    r.__enter__()
        call.other_profiler = not call.profiled and rec.profiling_key not in (None, self.key)
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            call.start = ev
        call.wall0 = time.perf_counter()

    def _end(self, failed: bool) -> None:
        import torch

        call: _Call = self.local.call
        self.local.depth = 0
        self.local.call = None
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            call.end = ev
            if call.profiled:
                torch.cuda.synchronize()
        call.wall1 = time.perf_counter()
        if failed:
            call.error = "raised"
        if call.profiled:
            for r in reversed(self.step_ranges):
                r.__exit__(None, None, None)
            self.step_ranges = []
            self.recorded += 1
            if self.recorded >= self.rec.steps:
                self.stop_profiler()

    # -- profiler ---------------------------------------------------------------------

    def _start_profiler(self) -> None:
        from torch.profiler import ProfilerActivity, profile

        from qtrace.capture.protocol import ensure_cupti_teardown, module_annotations

        ensure_cupti_teardown()  # the script's later, un-profiled calls must not pay for a kept CUPTI

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
        self.annotations = module_annotations(self.model)  # the model is being called: it is alive
        n_modules = self.annotations.__enter__()
        self.prof = profile(activities=acts, record_shapes=True, profile_memory=True, with_stack=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.prof.__enter__()
        meta = {"qtrace_version": __version__, "precision": self.facts["precision"], "model": self.facts["name"],
                "entry": self.key, "source": "qtrace run", "device": self.facts["device"],
                "compute_dtype": self.facts.get("matmul_dtype"), "annotated_modules": n_modules,
                "int8_threshold": (self.facts.get("quantization") or {}).get("llm_int8_threshold"),
                "skip": self.rec.skip, "steps": self.rec.steps}
        self.prof.add_metadata_json("qtrace", json.dumps(meta))
        self.prof.add_metadata_json("distributedInfo", json.dumps({"rank": 0}))
        self.rec.profiling_key = self.key

    def stop_profiler(self) -> None:
        """Stop this entry's profiler (after its last recorded call, or at the end of recording) and write the trace."""
        if self.prof is None:
            return
        import torch

        prof, self.prof = self.prof, None
        try:
            for r in reversed(self.step_ranges):  # the script ended inside a recorded call
                r.__exit__(None, None, None)
            self.step_ranges = []
            if self.cuda:
                torch.cuda.synchronize()
            prof.__exit__(None, None, None)
            self.annotations.__exit__(None, None, None)
            self.annotations = None
            out = self.rec.prepare_out()
            dest = out / self.key / TRACE_NAME
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, raw = tempfile.mkstemp(prefix=".trace.", suffix=".json", dir=dest.parent)
            os.close(fd)
            try:
                prof.export_chrome_trace(raw)
                with open(raw, "rb") as fin, fileio.atomic_open(dest, "wb", gz=True) as fout:
                    shutil.copyfileobj(fin, fout, 1 << 20)
            finally:
                Path(raw).unlink(missing_ok=True)
            self.trace = dest.relative_to(out).as_posix()
            self.trace_bytes = dest.stat().st_size
        except Exception as exc:  # the script's own work must go on; the entry says what failed
            self.trace_error = one_line(exc)
        finally:
            self.rec.profiling_key = None
            _PROFILER_LOCK.release()

    # -- results ----------------------------------------------------------------------

    def result(self) -> dict[str, Any]:
        from qtrace.analyzers import audit
        from qtrace.capture.protocol import stats

        times = []
        for c in self.calls:
            ms = None
            if c.end is not None and c.start is not None:
                try:
                    ms = float(c.start.elapsed_time(c.end))
                except RuntimeError:
                    ms = None
            if ms is None and c.wall1:
                ms = (c.wall1 - c.wall0) * 1e3
            times.append(ms)
        rows = [{"call": c.index, "kind": c.kind, "batch_size": c.batch, "ms": None if t is None else round(t, 6),
                 "host_ms": round((c.wall1 - c.wall0) * 1e3, 6) if c.wall1 else None, "profiled": c.profiled,
                 "under_other_profiler": c.other_profiler, "autocast": c.autocast, "error": c.error}
                for c, t in zip(self.calls, times, strict=True)]
        sample, source = self._sample(rows)
        notes = list(self.facts.get("notes", []))
        if self.rec.steps and self.recorded < self.rec.steps:
            notes.append(f"--steps {self.rec.steps}: only {self.recorded} call(s) were recorded under the profiler "
                         f"({len(self.calls)} call(s) in all, first {self.rec.skip} skipped)")
        if self.trace_error:
            notes.append(f"the trace could not be written: {self.trace_error}")
        autocasts = [c.autocast for c in self.calls if c.autocast]
        entry: dict[str, Any] = {
            "status": "ok" if self.calls else "not-called",
            "error": None, "trace": self.trace, "trace_bytes": self.trace_bytes,
            "compute_dtype": audit.compute_dtype({"autocast_dtype": max(set(autocasts), key=autocasts.count)
                                                  if autocasts else None, **self.facts}),
            "timer": "cuda_event" if self.cuda else "perf_counter",
            "latency_ms": {"per_iter": stats([r["ms"] for r in sample]),
                           "per_example": stats([r["ms"] / r["batch_size"] for r in sample if r["batch_size"]]),
                           "wall_mean_per_iter": None, "calls_used": [r["call"] for r in sample], "source": source},
            "generate": None, "energy": None,
            "memory": {"max_allocated_bytes": None, "max_reserved_bytes": None, "nvml_process_bytes": None,
                       "cpu_peak_rss_bytes": None},
            "warnings": [],
            **self.facts,
            "autocast_dtype": max(set(autocasts), key=autocasts.count) if autocasts else None,
            "calls": {"count": len(self.calls), "profiled": self.recorded, "skip": self.rec.skip,
                      "steps": self.rec.steps, "rows": rows},
            "notes": notes,
        }
        entry["load"] = {**self.facts["load"], "footprint_bytes": self.facts["total_bytes"]}
        if not self.calls:
            entry["notes"].append("the model was loaded but never called")
        if self.trace:
            try:
                from qtrace.tracefile import load_trace

                entry["trace_facts"] = audit.trace_facts(load_trace(self.rec.out / self.trace))
            except Exception as exc:  # a trace the analyzers cannot read still leaves the load audit
                entry["notes"].append(f"trace facts unavailable: {one_line(exc)}")
        entry["findings"] = audit.findings(entry)
        return entry

    def _sample(self, rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
        """Which calls the latency figures use: un-profiled calls after the skipped ones, else
        the skipped ones but the first (it pays one-time costs), else whatever there is."""
        plain = [r for r in rows if not r["profiled"] and not r["under_other_profiler"] and r["ms"] is not None
                 and not r["error"]]
        after = [r for r in plain if r["call"] > self.rec.skip]
        if after:
            return after, f"un-profiled calls after the first {self.rec.skip}"
        if len(plain) > 1:
            return plain[1:], "no un-profiled call after the skipped ones: the skipped calls but the first"
        return plain, "only call(s) available" if plain else "no un-profiled call"


class _Null:
    def __exit__(self, *a: object) -> None:
        pass


def batch_size(args: Any, kwargs: Any) -> int | None:
    """First dim of input_ids (or inputs_embeds), else of the first tensor argument."""
    import torch

    for key in ("input_ids", "inputs_embeds", "pixel_values", "input_features"):
        t = (kwargs or {}).get(key)
        if isinstance(t, torch.Tensor) and t.dim():
            return int(t.shape[0])
    for t in list(args or ()) + list((kwargs or {}).values()):
        if isinstance(t, torch.Tensor) and t.dim():
            return int(t.shape[0])
    return None


class Recorder:
    """Context manager behind `qtrace.record()` and `qtrace run`; see the module docstring."""

    def __init__(self, out: str | os.PathLike | None = None, skip: int = 1, steps: int = 2, force: bool = False,
                 command: list[str] | None = None, quiet: bool = False) -> None:
        if skip < 0 or steps < 0:
            raise fileio.QtraceError(f"skip and steps must be 0 or more, got skip={skip}, steps={steps}")
        self.out = Path(out) if out is not None else default_out()
        fileio.check_out_dir(self.out, force)  # before any work: an occupied --out is refused at once
        self.skip, self.steps, self.force = skip, steps, force
        self.command = command or ["qtrace.record"]
        self.quiet = quiet
        self.entries: list[_Entry] = []
        self.profiling_key: str | None = None
        self.failed: str | None = None
        self.exit_code: int | None = None
        self.run: dict[str, Any] | None = None
        self.created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self._prepared = False
        self._orig: Any = None
        self._loading = threading.local()

    # -- from_pretrained --------------------------------------------------------------

    def __enter__(self) -> Recorder:
        from transformers import PreTrainedModel

        self._orig = PreTrainedModel.__dict__["from_pretrained"]
        orig_func = self._orig.__func__
        rec = self

        def from_pretrained(cls: type, *args: Any, **kwargs: Any) -> Any:
            if getattr(rec._loading, "depth", 0):  # a load inside a load (composite models): the outer one counts
                return orig_func(cls, *args, **kwargs)
            from qtrace.capture.load_audit import LoadMemory

            mem = LoadMemory().start()
            rec._loading.depth = 1
            try:
                model = orig_func(cls, *args, **kwargs)
            finally:
                rec._loading.depth = 0
            rec._add(model, args, kwargs, mem.finish())
            return model

        PreTrainedModel.from_pretrained = classmethod(from_pretrained)
        return self

    def _add(self, model: Any, args: tuple[Any, ...], kwargs: dict[str, Any], memory: dict[str, Any]) -> None:
        from qtrace.capture.load_audit import load_facts

        try:
            facts = load_facts(model, args, kwargs, memory)
        except Exception as exc:  # never break the user's load over an audit bug
            self._say(f"could not audit a load: {one_line(exc)}")
            return
        n = len(self.entries)
        key = f"m{n}-{facts['precision']}"
        facts["name"] = facts["arguments"]["model"]
        facts["load_index"] = n
        same = [e for e in self.entries if e.facts["name"] == facts["name"]]
        if same:
            facts["notes"] = [f"the same checkpoint was loaded {len(same) + 1} times (entries "
                              + ", ".join(e.key for e in same) + f", {key})"]
        entry = _Entry(self, key, model, facts)
        entry.install()
        self.entries.append(entry)
        self._say(f"{key}: {type(model).__name__} {facts['name']} loaded in {memory['seconds']:.2f} s, "
                  f"{fmt_bytes(facts['total_bytes'])} ({facts['precision']})")

    # -- the end ----------------------------------------------------------------------

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc is not None and self.failed is None:
            self.failed = one_line(exc)
        self.close()

    def close(self) -> None:
        from transformers import PreTrainedModel

        if self._orig is not None:
            PreTrainedModel.from_pretrained = self._orig
            self._orig = None
        for e in self.entries:
            e.uninstall()
            e.stop_profiler()
        if not self.entries:
            self._say("no Hugging Face model was loaded (from_pretrained of a PreTrainedModel): nothing recorded, "
                      "nothing written")
            return
        self.run = self._run_dict()
        out = self.prepare_out()
        fileio.write_json(out / RUN_FILE, self.run)
        if self.failed:
            fileio.mark_incomplete(out, f"the recorded code failed ({self.failed}); run.json holds what was "
                                        "recorded until then")
        else:
            fileio.clear_incomplete(out)
        for key, e in self.run["precisions"].items():  # findings first, costliest first
            lat = ((e.get("latency_ms") or {}).get("per_example") or {}).get("median")
            self._say(f"{key}: {(e.get('calls') or {}).get('count', 0)} call(s)"
                      + (f", {lat:.3f} ms/example" if lat is not None else ""))
            for f in (e.get("findings") or [])[:5]:
                self._say(f"  [{f['severity']}] {f['id']}: {f['title']}; fix: {f['fix']}")
        self._say(f"wrote {out / RUN_FILE} ({len(self.entries)} model(s)); explain it with: qtrace report {out}")

    def prepare_out(self) -> Path:
        """Create --out on the first write (a script that loads nothing leaves no folder)."""
        if not self._prepared:
            fileio.prepare_out_dir(self.out, self.force)
            if self.force:  # an earlier run's entries would pass for this one's
                (self.out / RUN_FILE).unlink(missing_ok=True)
                for d in self.out.iterdir():
                    if d.is_dir() and d.name[:1] == "m" and "-" in d.name:
                        shutil.rmtree(d)
            fileio.mark_incomplete(self.out, f"qtrace run started {self.created}; if this file remains, the "
                                             "recording was interrupted")
            self._prepared = True
        return self.out

    def _run_dict(self) -> dict[str, Any]:
        from qtrace.capture import environment as qdevice

        precisions = {}
        for e in self.entries:
            try:
                precisions[e.key] = e.result()
            except Exception as exc:
                precisions[e.key] = {"status": "error", "error": one_line(exc), "trace": e.trace,
                                     "traceback": traceback.format_exc()}
        cuda = any(e.cuda for e in self.entries)
        try:
            import torch

            env = qdevice.environment(torch.device("cuda" if cuda else "cpu"))
        except Exception as exc:
            env = {"error": one_line(exc)}
        return {
            "qtrace_version": __version__, "created": self.created, "kind": "qtrace-run",
            "command": self.command,
            "settings": {"skip": self.skip, "steps": self.steps, "device": "cuda" if cuda else "cpu",
                         "precisions": list(precisions), "source": "qtrace run"},
            "script": {"exit_code": self.exit_code, "failed": self.failed},
            "environment": env, "precisions": precisions,
        }

    def _say(self, msg: str) -> None:
        if not self.quiet:
            print(f"qtrace: {msg}", file=sys.stderr, flush=True)

    # -- results for Python callers ---------------------------------------------------

    def _entries(self) -> dict[str, dict[str, Any]]:
        return (self.run or {}).get("precisions", {})

    @property
    def loads(self) -> Any:
        import pandas as pd

        rows = []
        for key, e in self._entries().items():
            load = e.get("load") or {}
            rows.append({"entry": key, "class": e.get("class"), "model": e.get("name"), "precision": e.get("precision"),
                         "backend": e.get("backend"), "model_dtype": e.get("model_dtype"),
                         "compute_dtype": e.get("compute_dtype"), "load_s": load.get("seconds"),
                         "total_bytes": e.get("total_bytes"), "load_peak_bytes": load.get("peak_bytes"),
                         "resident_bytes": load.get("resident_bytes"), "calls": (e.get("calls") or {}).get("count"),
                         "median_ms": ((e.get("latency_ms") or {}).get("per_iter") or {}).get("median"),
                         "ms_per_example": ((e.get("latency_ms") or {}).get("per_example") or {}).get("median")})
        return pd.DataFrame(rows)

    @property
    def calls(self) -> Any:
        import pandas as pd

        rows = [{"entry": k, **r} for k, e in self._entries().items() for r in (e.get("calls") or {}).get("rows", [])]
        return pd.DataFrame(rows)

    @property
    def findings(self) -> Any:
        import pandas as pd

        rows = [{"entry": k, **{x: f[x] for x in ("id", "severity", "cost", "title", "fix")}}
                for k, e in self._entries().items() for f in e.get("findings") or []]
        df = pd.DataFrame(rows)
        return df.sort_values("cost", ascending=False, kind="stable").reset_index(drop=True) if len(df) else df

    def _repr_html_(self) -> str:
        esc = html.escape
        parts = [f"<div><b>qtrace recording</b> → {esc(str(self.out))}"]
        f = self.findings
        if len(f):
            parts.append("<h4>Findings</h4><table><tr><th>entry</th><th>id</th><th>severity</th><th>finding</th>"
                         "<th>fix</th></tr>")
            for r in f.itertuples():
                parts.append(f"<tr><td>{esc(str(r.entry))}</td><td>{esc(str(r.id))}</td><td>{esc(str(r.severity))}"
                             f"</td><td>{esc(str(r.title))}</td><td>{esc(str(r.fix))}</td></tr>")
            parts.append("</table>")
        loads = self.loads
        if len(loads):
            parts.append("<h4>Models</h4><table><tr>" + "".join(f"<th>{esc(str(c))}</th>" for c in loads.columns)
                         + "</tr>")
            for row in loads.itertuples(index=False):
                parts.append("<tr>" + "".join(f"<td>{esc(str(v))}</td>" for v in row) + "</tr>")
            parts.append("</table>")
        elif self.run is None:
            parts.append("<p>nothing recorded yet (or no model was loaded)</p>")
        return "".join(parts) + "</div>"


def default_out() -> Path:
    return Path("qtrace-runs") / f"run-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def record(out: str | os.PathLike | None = None, skip: int = 1, steps: int = 2, force: bool = False,
           quiet: bool = False) -> Recorder:
    """`with qtrace.record(out="runs/mine") as rec: ...` records every HF model loaded inside.

    After the block: rec.loads, rec.calls, rec.findings (DataFrames), rec.run (run.json as a dict)."""
    return Recorder(out, skip, steps, force, quiet=quiet)
