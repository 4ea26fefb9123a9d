"""GPTQ and AWQ checkpoints that qtrace makes itself: calibrated on random token ids, cached.

GPTQ and AWQ need calibration data to quantize, and qtrace never downloads any: the calibration
set is `SAMPLES` rows of `SEQ_LEN` random token ids (seeded), which is enough for either
algorithm to run and for the packed layout, the kernels and their cost to be the real ones.
With the presets' random weights the outputs measure quantization error, not task accuracy.

A checkpoint is built once per (model folder, method, recipe, GPTQModel version) under
`$QTRACE_CACHE/quantized/`, from a copy of the model folder with a small generated tokenizer
(GPTQModel's loader insists on one; the presets have none), then renamed into place. How long
the build took is kept in its stamp and reported once, when it is built. Needs torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from qtrace.errors import QtraceError

SAMPLES = 16
SEQ_LEN = 128
CALIBRATION_SEED = 0
RECIPE_FORMAT = 1  # bumped when the recipe below changes, so stale caches are rebuilt
STAMP = "qtrace_quantized.json"
GROUP_SIZES = (128, 64, 32)  # the first that divides every quantized linear's in_features


def is_quantized_folder(path: Path) -> str | None:
    """The quant method ("gptq" / "awq") of a checkpoint folder that is already quantized, else None."""
    try:
        cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    method = (cfg.get("quantization_config") or {}).get("quant_method")
    return str(method).lower() if method else None


def _model_config(base: Path) -> dict[str, Any]:
    try:
        return json.loads((base / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise QtraceError(f"model {base}: unreadable config.json ({exc})") from None


def group_size(cfg: dict[str, Any]) -> int:
    """GPTQ/AWQ group size for this model: 128 (the common choice) unless an in_features is smaller."""
    widths = [int(cfg[k]) for k in ("hidden_size", "intermediate_size") if cfg.get(k)]
    for g in GROUP_SIZES:
        if all(w % g == 0 for w in widths):
            return g
    raise QtraceError(f"no GPTQ/AWQ group size in {GROUP_SIZES} divides the widths {widths}")


def recipe(method: str, cfg: dict[str, Any]) -> dict[str, Any]:
    from qtrace.backends.gptqmodel.support import PINNED

    return {"method": method, "bits": 4, "group_size": group_size(cfg), "sym": True, "desc_act": False,
            "samples": SAMPLES, "seq_len": SEQ_LEN, "seed": CALIBRATION_SEED, "gptqmodel": PINNED,
            "format": RECIPE_FORMAT}


def _fingerprint(base: Path, rec: dict[str, Any]) -> str:
    """Same model files + same recipe -> same checkpoint. Weights are identified by name and size
    (a preset's stamp also carries its own fingerprint), config.json by its full text."""
    parts = [(base / "config.json").read_text(encoding="utf-8"), json.dumps(rec, sort_keys=True)]
    stamp = base / "qtrace_preset.json"
    if stamp.is_file():
        parts.append(stamp.read_text(encoding="utf-8"))
    parts += [f"{p.name}:{p.stat().st_size}" for p in sorted(base.glob("*.safetensors"))]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def checkpoint_dir(base: Path, method: str, cache: Path) -> Path:
    rec = recipe(method, _model_config(base))
    return cache / "quantized" / f"{base.name}-{method}-int4-{_fingerprint(base, rec)}"


def cached_build_seconds(path: Path) -> float | None:
    try:
        return float(json.loads((path / STAMP).read_text())["build_seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def ensure_checkpoint(base: Path, method: str, cache: Path, device: Any,
                      progress: Callable[[str], None] | None = None) -> tuple[Path, float, bool]:
    """(folder, seconds the build took, built now?) of `base` quantized with `method` on `device`."""
    base, cache = Path(base).resolve(), Path(cache).resolve()  # absolute: the build changes directory
    target = checkpoint_dir(base, method, cache)
    seconds = cached_build_seconds(target)
    if seconds is not None:
        return target, seconds, False
    cfg = _model_config(base)
    rec = recipe(method, cfg)
    if progress:
        progress(f"building a {method.upper()} int4 checkpoint of {base.name} (group {rec['group_size']}, "
                 f"{SAMPLES} x {SEQ_LEN} random calibration tokens, on {device}) into {target} ...")
    t0 = time.perf_counter()
    work = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    try:
        source = work / "source"
        _copy_model(base, source)
        if not any(source.glob("tokenizer*.json")):
            write_tokenizer(source, int(cfg.get("vocab_size") or 0))
        quantized = work / "out"
        _quantize(source, quantized, rec, int(cfg["vocab_size"]), device)
        seconds = time.perf_counter() - t0
        (quantized / STAMP).write_text(json.dumps({"base": str(base), "recipe": rec,
                                                   "build_seconds": round(seconds, 2), "device": str(device)}))
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            shutil.rmtree(target)
        os.replace(quantized, target)
    except OSError as exc:
        raise QtraceError(f"cannot write the quantized checkpoint cache {target}: {exc} "
                          f"(set QTRACE_CACHE to a writable folder)") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if progress:
        progress(f"built the {method.upper()} checkpoint of {base.name} in {seconds:.1f} s (cached for later runs)")
    return target, seconds, True


def _copy_model(base: Path, dest: Path) -> None:
    """The model's files, hard-linked where the file system allows (weights are large), else copied."""
    dest.mkdir(parents=True)
    for item in base.iterdir():
        if item.is_file() and item.name != "qtrace_preset.json":
            try:
                os.link(item, dest / item.name)
            except OSError:
                shutil.copy2(item, dest / item.name)


def write_tokenizer(dest: Path, vocab_size: int) -> None:
    """A word-level tokenizer over the ids ("t0", "t1", ...): GPTQModel loads one with the model."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 3:
        raise QtraceError(f"model {dest}: vocab_size {vocab_size} too small for a tokenizer")
    tok = Tokenizer(models.WordLevel(vocab={f"t{i}": i for i in range(vocab_size)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="t0", pad_token="t0", bos_token="t1",
                                   eos_token="t2")
    fast.save_pretrained(str(dest))


def _quantize(source: Path, dest: Path, rec: dict[str, Any], vocab: int, device: Any) -> None:
    import torch

    from qtrace.backends.gptqmodel.loading import import_gptqmodel

    gptqmodel = import_gptqmodel()
    from gptqmodel.quantization.config import AWQConfig, GPTQConfig

    # offload_to_disk=False: GPTQModel's default stages every finished module through a temp
    # folder, which made a 2-layer toy model's GPTQ build take 163 s instead of 4 s on 2 cores.
    target = "cuda" if getattr(device, "type", str(device)) == "cuda" else "cpu"
    common = dict(bits=rec["bits"], group_size=rec["group_size"], sym=rec["sym"], desc_act=rec["desc_act"],
                  offload_to_disk=False)
    if target == "cuda":
        # Packing on the GPU: the same packed layout; GPTQModel's default packs on the CPU, one
        # thread under the GIL, which a 7B shape's 6.5 billion quantized weights make long.
        common["pack_impl"] = "gpu"
    config = GPTQConfig(**common) if rec["method"] == "gptq" else AWQConfig(**common)
    backend = gptqmodel.BACKEND.GPTQ_TORCH if rec["method"] == "gptq" else gptqmodel.BACKEND.AWQ_TORCH
    gen = torch.Generator().manual_seed(rec["seed"])
    calibration = [{"input_ids": torch.randint(0, vocab, (rec["seq_len"],), generator=gen).tolist(),
                    "attention_mask": [1] * rec["seq_len"]} for _ in range(rec["samples"])]
    # GPTQModel writes a per-run log under ./logs of the working directory: keep it in the scratch folder.
    with _quiet(), _working_dir(dest.parent):
        # fp16: the dtype the presets are stored in and the kernels' native one; GPTQModel would
        # otherwise pick bf16 on the CPU and round the unquantized embeddings and norms too.
        model = gptqmodel.GPTQModel.load(str(source), config, device=target, dtype=torch.float16,
                                         trust_remote_code=False)
        # Packing with the torch kernels: portable, and the kernel used at load time is chosen
        # again by the precision (Marlin repacks the same GPTQ/AWQ layout on load).
        model.quantize(calibration, batch_size=1, backend=backend)
        model.save(str(dest))
    for leftover in ("quant_log.csv",):
        with contextlib.suppress(OSError):
            (dest / leftover).unlink()


@contextlib.contextmanager
def _working_dir(path: Path) -> Iterator[None]:
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """GPTQModel draws progress bars and logs every module to stdout and stderr; a failure still
    raises with its message, and the tail of what it printed is kept for the error."""
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            yield
    except Exception as exc:
        tail = sink.getvalue()[-1500:]
        raise QtraceError(f"GPTQModel failed to quantize: {exc}\n--- its last output ---\n{tail}") from exc
