"""Where a model's modules live when accelerate spreads it over devices (`device_map="auto"`).

`--device-map` takes accelerate's strategies: ``auto`` (= ``balanced``), ``balanced``,
``balanced_low_0``, ``sequential``; ``none`` (the default) keeps the whole model on ``--device``.
With fewer than two GPUs visible a strategy has nothing to spread over: the model goes whole onto
the one device (never offloaded to CPU RAM or disk, which would measure the offload), and the run
says so (`placement.note`).

`placement_summary` turns a model's ``hf_device_map`` (module name -> device index, "cpu" or
"disk") into what run.json records: the map itself, and per device the decoder layers it holds as
ranges ("0-39") and its other modules (embeddings, final norm, head). No torch here.
"""

from __future__ import annotations

import re
from typing import Any

from qtrace.errors import QtraceError

STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
NONE = "none"
_LAYER = re.compile(r"(?:^|\.)(?:layers|h|layer|blocks|block)\.(?P<i>\d+)$")  # model.layers.12, transformer.h.3


def parse_device_map(value: str | None) -> str | None:
    """The strategy for --device-map, None for ``none``/absent; one clear QtraceError otherwise."""
    if value is None:
        return None
    v = str(value).strip().lower()
    if v in ("", NONE):
        return None
    if v not in STRATEGIES:
        raise QtraceError(f"--device-map must be one of {', '.join((*STRATEGIES, NONE))}, got {value!r}")
    return v


def device_label(d: Any) -> str:
    """'cuda:1' for 1 (accelerate writes GPU indices as ints), 'cpu', 'disk', or the text as given."""
    if isinstance(d, bool):
        return str(d)
    if isinstance(d, int):
        return f"cuda:{d}"
    text = str(d)
    return f"cuda:{text}" if text.isdigit() else text


def ranges(numbers: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2, 5, 7-8'."""
    out: list[str] = []
    nums = sorted(set(numbers))
    i = 0
    while i < len(nums):
        j = i
        while j + 1 < len(nums) and nums[j + 1] == nums[j] + 1:
            j += 1
        out.append(str(nums[i]) if i == j else f"{nums[i]}-{nums[j]}")
        i = j + 1
    return ", ".join(out)


def placement_summary(device_map: dict[str, Any] | None, strategy: str | None = None,
                      note: str | None = None) -> dict[str, Any] | None:
    """run.json's ``placement``: the map and, per device, layer ranges and other modules; None without a map."""
    if not device_map:
        return None
    per: dict[str, dict[str, Any]] = {}
    for module, dev in device_map.items():
        label = device_label(dev)
        entry = per.setdefault(label, {"device": label, "layers": [], "other_modules": []})
        m = _LAYER.search(module)
        if m:
            entry["layers"].append(int(m.group("i")))
        else:
            entry["other_modules"].append(module or "(whole model)")
    devices = []
    for label in sorted(per, key=_device_order):
        e = per[label]
        devices.append({"device": label, "layer_count": len(e["layers"]), "layers": ranges(e["layers"]),
                        "other_modules": e["other_modules"]})
    out: dict[str, Any] = {
        "strategy": strategy,
        "devices": devices,
        "device_count": len(devices),
        "hf_device_map": {str(k): (v if isinstance(v, int | str) else str(v)) for k, v in device_map.items()},
        "summary": "; ".join(_device_words(d) for d in devices),
    }
    if note:
        out["note"] = note
    return out


def _device_words(d: dict[str, Any]) -> str:
    if not d["layers"]:
        return f"{d['device']}: " + (", ".join(d["other_modules"]) if d["other_modules"] != ["(whole model)"]
                                     else "the whole model")
    rest = f" + {', '.join(d['other_modules'])}" if d["other_modules"] else ""
    return f"{d['device']}: layers {d['layers']}{rest}"


def _device_order(label: str) -> tuple[int, int, str]:
    if label.startswith("cuda:") and label[5:].isdigit():
        return (0, int(label[5:]), label)
    return (1, 0, label)


def single_device_note(strategy: str, device: str, gpus: int) -> str:
    """What a run says when --device-map has fewer than two GPUs to spread over."""
    seen = "no GPU is visible" if gpus == 0 else "only one GPU is visible"
    return f"--device-map {strategy}: {seen}, so the whole model is on {device} (nothing to split)"


def gpu_indices(device_map: dict[str, Any] | None) -> list[int]:
    """The GPU indices a map uses, ascending (cpu/disk entries left out)."""
    found: set[int] = set()
    for v in (device_map or {}).values():
        if isinstance(v, bool):
            continue
        if isinstance(v, int):
            found.add(v)
        elif str(v).isdigit():
            found.add(int(v))
        elif str(v).startswith("cuda:") and str(v)[5:].isdigit():
            found.add(int(str(v)[5:]))
    return sorted(found)
