"""Models: built-in presets, resolving MODEL, loading at a precision, outlier emulation.

Presets are Hugging Face configs with random weights (no hub access anywhere qtrace runs):
built once with a fixed seed, saved as safetensors under the preset cache and loaded back
through `from_pretrained`, so every precision goes through the same loading path a real
checkpoint would (including bitsandbytes' quantize-on-load).

torch and transformers are imported inside functions: `qtrace presets --help` and the CLI
group stay fast, and `import qtrace` never pulls them in.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import inspect
import json
import logging
import math
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qtrace.backends import BACKENDS, backend_for, loader, quantized_precisions, unavailable
from qtrace.errors import QtraceError
from qtrace.fileio import atomic_folder

PRECISIONS = ("fp32", "fp16", "bf16", *quantized_precisions())
TASKS = ("forward", "classify", "generate")
DEFAULT_PRESET = "tiny-llama"
# Same label count as the reference H100 traces (../shared/traces), so classify runs compare
# like for like. The head stays in full precision (transformers skips the last module).
CLASSIFY_LABELS = 113
# Preset weights do not depend on --seed: a preset is one fixed model everywhere.
PRESET_SEED = 0
# Bumped when a preset's weights would change, so stale caches get rebuilt.
PRESET_FORMAT = 1
OUTLIER_SCALE = 30.0
# Fixed, so the same --outlier-dims N always picks the same hidden dims (as trained models
# have fixed outlier features) and runs on different machines are comparable.
OUTLIER_SEED = 1234


@dataclass(frozen=True)
class Preset:
    name: str
    family: str  # key of _CONFIG_CLASSES
    kind: str  # "decoder" (forward/classify/generate) or "encoder" (forward/classify)
    purpose: str
    config_kwargs: dict[str, Any] = field(default_factory=dict)
    # "disk": built once on the CPU, cached as safetensors, loaded by from_pretrained;
    # "device": built on the target device at each load (qtrace.capture.device_init), no disk copy.
    init: str = "disk"

    def config(self, **overrides: Any) -> Any:
        """The preset's transformers config; overrides build smaller variants (tests)."""
        return build_config(self.family, **{**self.config_kwargs, **overrides})

    @property
    def tasks(self) -> tuple[str, ...]:
        return TASKS if self.kind == "decoder" else ("forward", "classify")


# Every quantized linear has out_features % 32 == 0 and in_features % 64 == 0: bitsandbytes'
# CPU NF4 path repacks weights in blocks of 32 rows and 64-element scale blocks and fails on
# other shapes (CUDA has no such limit).
PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "tiny-llama", "llama", "decoder",
            "default; CPU runs and CI: fp32,int8,nf4 finish in well under a minute on 2 cores",
            dict(vocab_size=8192, hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
                 num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=2048),
        ),
        Preset(
            "tiny-modernbert", "modernbert", "encoder",
            "small encoder for CPU runs and tests",
            dict(vocab_size=4096, hidden_size=256, intermediate_size=384, num_hidden_layers=4,
                 num_attention_heads=4, max_position_embeddings=1024, local_attention=64,
                 pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2),
        ),
        Preset(
            "qwen2.5-0.5b", "qwen2", "decoder",
            "Qwen2.5-0.5B shape (GPU): the reference model of the H100 traces",
            dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                 num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True,
                 max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
                 bos_token_id=151643, eos_token_id=151643),
        ),
        Preset(
            "modernbert-base", "modernbert", "encoder",
            "ModernBERT-base shape (GPU): an encoder classifier",
            dict(vocab_size=50368, hidden_size=768, intermediate_size=1152, num_hidden_layers=22,
                 num_attention_heads=12),
        ),
    )
}


def _size_presets() -> dict[str, Preset]:
    from qtrace.capture.size_presets import SIZE_FAMILIES, SIZE_SHAPES, TINY_SHAPES

    out = {name: Preset(name, SIZE_FAMILIES[name], "decoder",
                        f"{source} shape (GPU, built on the device; published {billions}B parameters)",
                        kwargs, init="device")
           for name, (kwargs, billions, source) in SIZE_SHAPES.items()}
    out.update({name: Preset(name, "qwen2", "decoder", "tiny Qwen2 shape built on the device (size-axis tests)",
                             kwargs, init="device") for name, kwargs in TINY_SHAPES.items()})
    return out


PRESETS.update(_size_presets())


def build_config(family: str, **kwargs: Any) -> Any:
    import transformers

    classes = {"llama": "LlamaConfig", "qwen2": "Qwen2Config", "modernbert": "ModernBertConfig"}
    if family not in classes:
        raise QtraceError(f"unknown model family {family!r}; known: {', '.join(classes)}")
    return getattr(transformers, classes[family])(**kwargs)


def _transformers_major() -> int:
    import transformers

    return int(transformers.__version__.split(".")[0])


# ---------------------------------------------------------------------------------------
# Resolving MODEL


@dataclass
class ModelSpec:
    """What MODEL resolved to: a folder from_pretrained can read, and where it came from."""

    name: str  # what the user asked for (preset name, path or HF id)
    path: Path
    source: str  # "preset" | "local" | "hf-cache"
    preset: str | None
    kind: str  # "decoder" | "encoder"


_HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def resolve_model(model: str | None, trust_remote_code: bool = False,
                  progress: Any = None) -> ModelSpec:
    """Preset name, local folder or HF id in the local cache; anything else is one clear error."""
    name = model or DEFAULT_PRESET
    if name in PRESETS and PRESETS[name].init == "device":  # nothing on disk: built at each load
        return ModelSpec(name, Path(f"<device-init:{name}>"), "device-init", name, PRESETS[name].kind)
    if name in PRESETS:
        path = ensure_preset(name, progress=progress)
        return ModelSpec(name, path, "preset", name, PRESETS[name].kind)
    local = Path(name).expanduser()
    if local.exists():
        if not (local.is_dir() and (local / "config.json").is_file()):
            raise QtraceError(f"model {name}: not a Hugging Face checkout (no config.json in that folder)")
        _require_safetensors(local, name)
        return ModelSpec(name, local, "local", None, _kind_of(local, trust_remote_code))
    looks_like_path = name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name
    if looks_like_path or not _HF_ID.match(name):
        raise QtraceError(f"model path {name} does not exist")
    cached = _hf_cache_snapshot(name)
    if cached is None:
        raise QtraceError(
            f"model {name}: no such local folder or preset, and not in the local Hugging Face cache "
            f"(qtrace never downloads; see `qtrace presets`)"
        )
    _require_safetensors(cached, name)
    return ModelSpec(name, cached, "hf-cache", None, _kind_of(cached, trust_remote_code))


def _require_safetensors(path: Path, name: str) -> None:
    """qtrace loads with use_safetensors=True (unpickling a checkpoint can run code): say so up
    front instead of failing once per precision."""
    if not any(path.glob("*.safetensors")):
        raise QtraceError(f"model {name}: no .safetensors weights in {path} "
                          f"(qtrace does not load pickled .bin checkpoints)")


def _hf_cache_snapshot(repo_id: str) -> Path | None:
    os.environ["HF_HUB_OFFLINE"] = "1"  # offline only, whatever the caller's environment says
    from huggingface_hub import snapshot_download

    try:
        path = Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # LocalEntryNotFoundError, a malformed id, an unreadable cache: all "not cached"
        return None
    return path if (path / "config.json").is_file() else None


def _kind_of(path: Path, trust_remote_code: bool) -> str:
    """decoder if the checkout can generate text, else encoder."""
    try:
        cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise QtraceError(f"model {path}: unreadable config.json ({exc})") from None
    archs = cfg.get("architectures") or []
    if any(a.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")) for a in archs):
        return "decoder"
    if archs:
        return "encoder"
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return "decoder" if cfg.get("model_type") in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES else "encoder"


# ---------------------------------------------------------------------------------------
# Preset cache


def cache_root() -> Path:
    env = os.environ.get("QTRACE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "qtrace"


def preset_dir(name: str) -> Path:
    return cache_root() / "presets" / name


def _fingerprint(preset: Preset) -> str:
    blob = json.dumps([preset.family, preset.kind, preset.config_kwargs, PRESET_SEED, PRESET_FORMAT],
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def preset_is_cached(name: str) -> bool:
    stamp = preset_dir(name) / "qtrace_preset.json"
    try:
        return json.loads(stamp.read_text())["fingerprint"] == _fingerprint(PRESETS[name])
    except (OSError, ValueError, KeyError):
        return False


def ensure_preset(name: str, progress: Any = None) -> Path:
    """The preset's checkpoint folder, built on first use (temp folder, then renamed into place)."""
    target = preset_dir(name)
    if preset_is_cached(name):
        return target
    preset = PRESETS[name]
    if progress:
        progress(f"building preset {name} (random weights, seed {PRESET_SEED}) into {target} ...")
    t0 = time.perf_counter()
    try:
        with atomic_folder(target) as tmp:
            save_checkpoint(preset.config(), preset.kind, tmp)
            (tmp / "qtrace_preset.json").write_text(json.dumps({"name": name, "fingerprint": _fingerprint(preset)}))
    except OSError as exc:
        raise QtraceError(f"cannot write preset cache {target}: {exc} (set QTRACE_CACHE to a writable folder)") \
            from None
    if progress:
        progress(f"built preset {name} in {time.perf_counter() - t0:.1f} s")
    return target


def save_checkpoint(config: Any, kind: str, dest: Path, seed: int = PRESET_SEED) -> Path:
    """Random-weight checkpoint for `config` at `dest` (safetensors, fp16 to halve disk and load
    time; N(0, 0.02) weights and unit norm weights are exact enough in fp16)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    auto = AutoModelForCausalLM if kind == "decoder" else AutoModelForMaskedLM
    # Always initialised on the CPU: the same seed then gives the same weights on every machine
    # (a GPU's generator would draw different ones). 0.5B parameters take ~15 s on 2 cores.
    torch.manual_seed(seed)
    with quiet_libraries(), torch.device("cpu"):
        model = auto.from_config(config)
    model = model.to(dtype=torch.float16)
    dest.mkdir(parents=True, exist_ok=True)
    with quiet_libraries():
        model.save_pretrained(dest, safe_serialization=True)
    del model
    gc.collect()
    return dest


def count_params(config: Any, kind: str) -> int:
    """Parameter count without materialising weights (meta device)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    auto = AutoModelForCausalLM if kind == "decoder" else AutoModelForMaskedLM
    with quiet_libraries(), torch.device("meta"):
        model = auto.from_config(config)
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------
# Loading at a precision


@dataclass
class LoadedModel:
    model: Any
    precision: str
    compute_dtype: str  # "float16", ...
    load_seconds: float
    footprint_bytes: int
    allocated_delta_bytes: int | None
    warnings: list[str]
    placement: dict[str, Any] | None = None  # run.json's placement (qtrace.capture.placement), --device-map only
    devices: list[Any] = field(default_factory=list)  # the devices the model occupies, first one first


def parse_precisions(text: str | list[str] | tuple[str, ...]) -> list[str]:
    items = text.split(",") if isinstance(text, str) else list(text)
    out: list[str] = []
    for raw in items:
        p = raw.strip().lower()
        if not p:
            continue
        if p not in PRECISIONS:
            raise QtraceError(f"unknown precision {raw.strip()!r}; choose from {', '.join(PRECISIONS)}")
        if p not in out:
            out.append(p)
    if not out:
        raise QtraceError(f"no precision given; choose from {', '.join(PRECISIONS)}")
    return out


def device_capability(device: Any) -> tuple[int, int] | None:
    """CUDA compute capability of `device`, None off CUDA."""
    if getattr(device, "type", device) != "cuda":
        return None
    import torch

    return tuple(torch.cuda.get_device_capability(device))  # type: ignore[return-value]


def check_available(precisions: list[str] | tuple[str, ...], device: Any) -> None:
    """Refuse, in one line per precision, what this device cannot run (before any model loads)."""
    cap = device_capability(device)
    reasons = [r for p in precisions if (r := unavailable(p, device.type, cap))]
    if reasons:
        raise QtraceError("; ".join(reasons))


PRECISION_NOTES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16",
                   **{p: text for b in BACKENDS for p, text in b.describe.items()}}


def precision_support(device: Any) -> list[tuple[str, str | None, str]]:
    """(precision, why it cannot run here or None, what it is) for every precision, on `device`."""
    cap = device_capability(device)
    return [(p, unavailable(p, device.type, cap), PRECISION_NOTES.get(p, "")) for p in PRECISIONS]


def default_precisions(device_type: str) -> list[str]:
    return ["fp16", "int8", "nf4"] if device_type == "cuda" else ["fp32", "int8", "nf4"]


def base_dtype_name(device_type: str) -> str:
    """The float dtype int8/nf4 models keep their non-quantized parts in (and NF4 computes in)."""
    return "float16" if device_type == "cuda" else "float32"


def auto_class(task: str, kind: str) -> Any:
    import transformers

    if task == "classify":
        return transformers.AutoModelForSequenceClassification
    if kind == "decoder":
        return transformers.AutoModelForCausalLM
    return transformers.AutoModelForMaskedLM


def check_task(task: str, kind: str, name: str) -> None:
    if task not in TASKS:
        raise QtraceError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    if task == "generate" and kind != "decoder":
        raise QtraceError(f"model {name} is an encoder; --task generate needs a decoder (use forward or classify)")


def load_model(spec: ModelSpec, precision: str, task: str, device: Any, int8_threshold: float = 6.0,
               trust_remote_code: bool = False, seed: int = 0, device_map: str | None = None) -> LoadedModel:
    """Load `spec` fresh at `precision` on `device`, timing the load and measuring its footprint.

    device_map: an accelerate strategy ("auto", ...; qtrace.capture.placement) to spread the model
    over the visible GPUs; with fewer than two GPUs the model goes whole onto `device`, and says so.
    """
    import torch

    from qtrace.capture import multi_device
    from qtrace.capture.placement import placement_summary

    check_available([precision], device)
    dtype_name, quant, warnings = _precision_setup(precision, device, int8_threshold)
    backend = backend_for(precision)
    path = checkpoint_path(spec, precision, device, seed=seed) if backend is not None else spec.path
    if quant is not None and backend is not None:
        # Heads stay in full precision, as transformers intends; its own choice (the module of the
        # last parameter) misses heads with a bias and then leaves a freshly initialised
        # classification head as an unquantized bnb layer that crashes in forward.
        loader(backend).keep_unquantized(quant, head_modules(spec, task, trust_remote_code))
    spread, note = multi_device.plan(device_map, device)
    kwargs: dict[str, Any] = {
        "device_map": spread or {"": device.index if device.type == "cuda" else "cpu"},
        "use_safetensors": True,  # never unpickle a checkpoint
        "local_files_only": True,
        "low_cpu_mem_usage": True,
        ("dtype" if _transformers_major() >= 5 else "torch_dtype"): getattr(torch, dtype_name),
    }
    if quant is not None:
        kwargs["quantization_config"] = quant
    if trust_remote_code:  # passed only when asked: remote code runs arbitrary Python
        kwargs["trust_remote_code"] = True
    if task == "classify":
        kwargs["num_labels"] = CLASSIFY_LABELS
    torch.manual_seed(seed)  # heads that the checkpoint lacks (classify) are initialised from it
    gpus = [torch.device("cuda", i) for i in range(multi_device.visible_gpus())] if spread else [device]
    before = multi_device.allocated(gpus)
    t0 = time.perf_counter()
    with quiet_libraries():
        if spec.source == "device-init" and path == spec.path:
            from qtrace.capture.device_init import build_on_device

            built_step = getattr(loader(backend), "quantize_built", None) if backend is not None else None
            model = build_on_device(_spec_config(spec, task), auto_class(task, spec.kind),
                                    getattr(torch, dtype_name), device, quant, seed=seed, device_map=spread,
                                    quantize_built=built_step)
        else:
            model = auto_class(task, spec.kind).from_pretrained(str(path), **kwargs)
            if spec.source == "device-init" and task == "classify":  # the head the baseline drew
                from qtrace.capture.device_folder import redraw_heads

                redraw_heads(model, head_modules(spec, task, trust_remote_code), seed)
    model.eval()
    if device.type == "cuda":
        for d in gpus:
            torch.cuda.synchronize(d)
    seconds = time.perf_counter() - t0
    after = multi_device.allocated(gpus)
    _ensure_pad_token(model)
    placement = None
    if device_map is not None:  # asked for: record where everything went (one device, or the split)
        hf_map = getattr(model, "hf_device_map", None) if spread else None
        placement = placement_summary(hf_map or {"": device.index if device.type == "cuda" else "cpu"},
                                      device_map, note)
    return LoadedModel(
        model=model, precision=precision, compute_dtype=dtype_name, load_seconds=seconds,
        footprint_bytes=footprint(model),
        allocated_delta_bytes=None if before is None or after is None else after - before,
        warnings=warnings, placement=placement, devices=multi_device.model_devices(model, device),
    )


def _tensor_bytes(t: Any) -> int:
    """Bytes a tensor holds; a wrapper subclass (torchao) holds its inner tensors, not its outer dtype."""
    flatten = getattr(t, "__tensor_flatten__", None)
    if flatten is None:
        return t.nelement() * t.element_size()
    names, _ = flatten()
    return sum(_tensor_bytes(getattr(t, n)) for n in names if getattr(t, n, None) is not None)


def footprint(model: Any) -> int:
    """Parameter + buffer bytes. transformers' get_memory_footprint counts a torchao weight at the
    outer dtype it advertises (fp32 on the CPU), so quantized and dense models would look equal."""
    tensors = [*model.parameters(), *model.buffers()]
    if not any(hasattr(t, "__tensor_flatten__") for t in tensors):
        return int(model.get_memory_footprint())  # bitsandbytes and dense models: unchanged figures
    return sum(_tensor_bytes(t) for t in tensors)


@functools.lru_cache(maxsize=8)
def _head_modules_cached(path: str, task: str, kind: str, trust_remote_code: bool) -> tuple[str, ...]:
    import torch
    from transformers import AutoConfig

    if path.startswith("<device-init:"):
        config = PRESETS[path[len("<device-init:"):-1]].config()
    else:
        config = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)
    if task == "classify":
        config.num_labels = CLASSIFY_LABELS
    with quiet_libraries(), torch.device("meta"):
        model = auto_class(task, kind).from_config(config, trust_remote_code=trust_remote_code)
    names: set[str] = set()
    out_emb = model.get_output_embeddings()
    params = list(model.named_parameters())
    last_owner = params[-1][0].rsplit(".", 1)[0] if params else None
    for name, module in model.named_modules():
        if name and (module is out_emb or name == last_owner):
            names.add(name)
    return tuple(sorted(names))


def _spec_config(spec: ModelSpec, task: str) -> Any:
    config = PRESETS[spec.preset or spec.name].config()
    if task == "classify":
        config.num_labels = CLASSIFY_LABELS
    return config


def head_modules(spec: ModelSpec, task: str, trust_remote_code: bool = False) -> list[str]:
    """Module names of the model's output head(s), built on the meta device (no weights)."""
    return list(_head_modules_cached(str(spec.path), task, spec.kind, trust_remote_code))


def warm_imports(spec: ModelSpec, task: str, precisions: list[str] | tuple[str, ...],
                 trust_remote_code: bool = False) -> None:
    """Import the model's code (and each quantization backend) before any load is timed.

    The first from_pretrained of a process otherwise pays for importing the modeling module
    and its dependencies (seconds on a GPU host), which would land in the first precision's
    load time and make it look slow for a reason that has nothing to do with its precision.
    """
    head_modules(spec, task, trust_remote_code)  # builds the task's model on the meta device
    for backend in {b.name: b for p in precisions if (b := backend_for(p)) is not None}.values():
        with quiet_libraries():
            loader(backend).warm_import()


FLOAT_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def _precision_setup(precision: str, device: Any, threshold: float) -> tuple[str, Any, list[str]]:
    """(dtype name, quantization_config or None, warnings): plain floats here, the rest by their backend."""
    if precision in FLOAT_DTYPES:
        return FLOAT_DTYPES[precision], None, []
    backend = backend_for(precision)
    if backend is None:
        raise QtraceError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    setup = loader(backend).precision_setup
    base = base_dtype_name(getattr(device, "type", device))  # a device or its type name
    if "device" in inspect.signature(setup).parameters:  # a backend whose kernel depends on the device
        return setup(precision, base, threshold, device=device)
    return setup(precision, base, threshold)


def checkpoint_path(spec: ModelSpec, precision: str, device: Any,
                    progress: Any = None, seed: int = 0) -> Path:
    """The folder `precision` loads from: the model's own, or the one its backend makes by calibration."""
    return _checkpoint(spec, precision, device, progress, seed)[0]


def _checkpoint(spec: ModelSpec, precision: str, device: Any, progress: Any,
                seed: int = 0) -> tuple[Path, dict[str, Any] | None]:
    backend = backend_for(precision)
    make = getattr(loader(backend), "checkpoint", None) if backend is not None else None
    if make is None:
        return spec.path, None
    base = spec.path
    if spec.source == "device-init":  # calibration reads a folder: the preset's draw, written once
        from qtrace.capture.device_folder import ensure_folder

        base = ensure_folder(spec.name, seed, device, cache_root(), progress)
    return make(base, precision, device, cache_root(), progress)


def prepare_checkpoints(spec: ModelSpec, precisions: list[str] | tuple[str, ...], device: Any,
                        progress: Any = None, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Build, before any load is timed, the checkpoints that precisions need calibration for (GPTQ,
    AWQ): precision -> facts for run.json (where from, build seconds). A precision whose build fails
    gets {"error": ...}; its load then fails with the same message."""
    out: dict[str, dict[str, Any]] = {}
    for precision in precisions:
        try:
            _, facts = _checkpoint(spec, precision, device, progress, seed)
        except QtraceError as exc:
            out[precision] = {"error": str(exc).splitlines()[0]}
            continue
        if facts is not None:
            out[precision] = facts
    return out


def _ensure_pad_token(model: Any) -> None:
    """Classification with batch > 1 and generate need a pad id; random presets may lack one."""
    cfg = model.config
    if getattr(cfg, "pad_token_id", None) is None:
        eos = getattr(cfg, "eos_token_id", None)
        cfg.pad_token_id = (eos[0] if isinstance(eos, list) else eos) if eos is not None else 0


def free_model(loaded: LoadedModel | None) -> None:
    """Drop a model and give its memory back before the next precision loads."""
    import torch

    if loaded is not None:
        loaded.model = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------
# Outlier emulation


def outlier_dim_indices(hidden: int, n: int) -> list[int]:
    """N fixed hidden dims (same N and hidden size -> same dims, on any machine)."""
    import torch

    if n < 0 or n > hidden:
        raise QtraceError(f"--outlier-dims must be between 0 and the hidden size {hidden}, got {n}")
    gen = torch.Generator().manual_seed(OUTLIER_SEED)
    return sorted(torch.randperm(hidden, generator=gen)[:n].tolist())


def apply_outlier_dims(model: Any, n: int, scale: float = OUTLIER_SCALE) -> list[int]:
    """Scale N hidden dims of every norm weight by `scale`.

    Trained LLMs carry a few hidden features with huge magnitudes; random weights do not, so
    LLM.int8's outlier path (columns with |x| > threshold decomposed into an fp16 matmul)
    would never run. Norm weights set the scale of exactly the activations that feed the
    quantized linears, and they stay un-quantized, so this works the same at every precision.
    """
    import torch

    if n <= 0:
        return []
    hidden = hidden_size(model.config)
    dims = outlier_dim_indices(hidden, n)
    index = None
    touched = 0
    with torch.no_grad():
        for _, module in norm_modules(model):
            weight = getattr(module, "weight", None)
            if not isinstance(weight, torch.Tensor) or weight.dim() != 1 or weight.numel() != hidden:
                continue
            if index is None or index.device != weight.device:
                index = torch.tensor(dims, device=weight.device)
            weight[index] *= scale
            touched += 1
    if touched == 0:
        raise QtraceError("--outlier-dims: this model has no norm weights of the hidden size to scale")
    return dims


def norm_modules(model: Any) -> Iterator[tuple[str, Any]]:
    for name, module in model.named_modules():
        if is_norm(module):
            yield name, module


def is_norm(module: Any) -> bool:
    import torch

    # Class names catch the models' own RMSNorm classes (LlamaRMSNorm, Qwen2RMSNorm, ...).
    return isinstance(module, torch.nn.LayerNorm | torch.nn.GroupNorm) or type(module).__name__.endswith("Norm")


# ---------------------------------------------------------------------------------------
# Config facts


def _cfg(config: Any, *names: str) -> Any:
    for n in names:
        v = getattr(config, n, None)
        if v is not None:
            return v
    text = getattr(config, "text_config", None)
    return _cfg(text, *names) if text is not None and text is not config else None


def hidden_size(config: Any) -> int:
    value = _cfg(config, "hidden_size", "d_model", "n_embd")
    if value is None:
        raise QtraceError("cannot tell this model's hidden size from its config")
    return int(value)


def logical_params(model: Any) -> int:
    """Parameter count as in the unquantized model (4-bit weights are stored two to a byte)."""
    total = 0
    for p in model.parameters():
        state = getattr(p, "quant_state", None)
        shape = getattr(state, "shape", None)
        total += int(math.prod(shape)) if shape is not None else p.numel()
    return total


def config_summary(config: Any, arch: str | None = None, params: int | None = None) -> dict[str, Any]:
    archs = getattr(config, "architectures", None) or []
    return {
        "arch": arch or (archs[0] if archs else type(config).__name__),
        "model_type": getattr(config, "model_type", None),
        "hidden": _cfg(config, "hidden_size", "d_model", "n_embd"),
        "layers": _cfg(config, "num_hidden_layers", "n_layer", "num_layers"),
        "heads": _cfg(config, "num_attention_heads", "n_head"),
        "kv_heads": _cfg(config, "num_key_value_heads"),
        "vocab": _cfg(config, "vocab_size"),
        "intermediate": _cfg(config, "intermediate_size", "n_inner", "ffn_dim"),
        "params": params,
    }


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Silence per-call library chatter (bitsandbytes logs a cast warning on *every* int8 call on
    CPU; transformers logs newly initialised heads and draws progress bars); qtrace reports the
    facts that matter itself, once."""
    from transformers.utils import logging as hf_logging

    bnb_logger = logging.getLogger("bitsandbytes")
    old_bnb = bnb_logger.level
    old_hf = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    bnb_logger.setLevel(logging.ERROR)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        bnb_logger.setLevel(old_bnb)
        hf_logging.set_verbosity(old_hf)
        if bars:
            hf_logging.enable_progress_bar()
