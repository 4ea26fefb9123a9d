"""A device-built preset written out once as a checkpoint folder, for the backends that quantize
by calibration (GPTQ, AWQ).

The big presets (7B and up) have no folder: their weights are drawn on the device at each load
(`device_init.build_on_device`). GPTQModel quantizes from a folder, so the first GPTQ / AWQ run of
such a preset writes one here, in fp16 (a 7B shape takes ~15 GB of disk; said before it is
written), then calibrates from it as from any other folder.

The weights are the ones `build_on_device` draws for the same preset, seed and device type (one
generator per parameter name on that device), so a calibrated checkpoint quantizes the very
weights the fp16 baseline of the same run holds and the quality figures compare like with like.
Parameters a checkpoint cannot carry (a classification head, which from_pretrained would draw
from the CPU's generator) are drawn again by the device-init rule after loading
(`redraw_heads`). Needs torch.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from qtrace.errors import QtraceError
from qtrace.fileio import atomic_folder

STAMP = "qtrace_device_built.json"
FORMAT = 1  # bumped when the way the folder is written changes, so stale folders are rebuilt


def folder_for(name: str, seed: int, device: Any, cache: Path) -> Path:
    return cache / "device-built" / f"{name}-seed{seed}-{device.type}"


def _fingerprint(name: str, seed: int, device: Any) -> str:
    from qtrace.capture.models import PRESETS

    preset = PRESETS[name]
    blob = json.dumps([name, preset.family, preset.kind, preset.config_kwargs, seed, device.type, FORMAT],
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def is_built(path: Path, fingerprint: str) -> bool:
    try:
        return json.loads((path / STAMP).read_text())["fingerprint"] == fingerprint
    except (OSError, ValueError, KeyError, TypeError):
        return False


def ensure_folder(name: str, seed: int, device: Any, cache: Path, progress: Any = None) -> Path:
    """The fp16 checkpoint folder of device-init preset `name` as drawn on `device` with `seed`,
    written on first use (temp folder, then renamed into place)."""
    import torch

    from qtrace.capture.device_init import build_on_device
    from qtrace.capture.models import PRESETS, auto_class, count_params, quiet_libraries

    preset = PRESETS[name]
    target = folder_for(name, seed, device, cache)
    stamp = _fingerprint(name, seed, device)
    if is_built(target, stamp):
        return target
    if progress:
        gb = count_params(preset.config(), preset.kind) * 2 / 1e9
        progress(f"writing {name} (drawn on {device.type}, seed {seed}) as an fp16 folder for calibration: "
                 f"~{gb:.1f} GB into {target} ...")
    t0 = time.perf_counter()
    try:
        with atomic_folder(target) as tmp, quiet_libraries():
            model = build_on_device(preset.config(), auto_class("generate", preset.kind), torch.float16, device,
                                    None, seed=seed)
            model.save_pretrained(tmp, safe_serialization=True)
            del model
            (tmp / STAMP).write_text(json.dumps({"preset": name, "seed": seed, "device": device.type,
                                                 "fingerprint": stamp}))
    except OSError as exc:
        raise QtraceError(f"cannot write {name}'s fp16 folder {target}: {exc} "
                          f"(set QTRACE_CACHE to a folder with room)") from None
    except RuntimeError as exc:  # e.g. out of device memory while drawing the weights
        raise QtraceError(f"cannot draw {name} on {device} to write its fp16 folder: "
                          f"{str(exc).splitlines()[0]}") from None
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if progress:
        progress(f"wrote {name}'s fp16 folder in {time.perf_counter() - t0:.1f} s")
    return target


def redraw_heads(model: Any, head_names: list[str], seed: int) -> list[str]:
    """Draw the head modules' parameters again by the device-init rule (same seed, same names),
    so a model loaded from the folder carries the head the device-built baseline has. Returns the
    parameter names drawn."""
    import torch

    from qtrace.capture.device_init import DEFAULT_STD, draw, init_kind

    std = float(getattr(model.config, "initializer_range", DEFAULT_STD) or DEFAULT_STD)
    modules = dict(model.named_modules())
    drawn: list[str] = []
    with torch.no_grad():
        for head in head_names:
            module = modules.get(head)
            if module is None:
                continue
            for pname, p in module.named_parameters(recurse=False):
                full = f"{head}.{pname}"
                value = draw(full, tuple(p.shape), init_kind(module, pname), p.device, seed, std)
                p.copy_(value.to(p.dtype))
                drawn.append(full)
    return drawn
