"""Per-device rows of a report on a trace with GPU events on several devices (qtrace.analyzers.devices)."""

from __future__ import annotations

from typing import Any

from qtrace.markup import md_escape, md_table, ms, pct, text_table

DEVICE_HEADERS = ["GPU", "GPU ms", "GPU %", "events", "busy ms", "busy %", "idle ms", "waits for other GPU ms",
                  "peer copy ms", "peer copies"]
DEVICE_PHASE_HEADERS = ["GPU", "phase", "group", "GPU ms", "share of GPU", "events"]
COPY_HEADERS = ["from GPU", "to GPU", "copies", "MB", "ms", "GB/s"]
TOP_PHASES_PER_DEVICE = 6


def _dev(d: Any) -> str:
    return "?" if d is None or int(d) < 0 else str(int(d))


def device_rows(section: dict[str, Any]) -> list[list[str]]:
    return [[_dev(d["device"]), ms(d["gpu_time_us"], 3), pct(d["gpu_share"]), str(d["kernels"]), ms(d["busy_us"]),
             pct(d["busy_share"]), ms(d["idle_us"]), ms(d["waiting_us"]), ms(d["copy_us"], 3), str(d["copies"])]
            for d in section["devices"]]


def device_phase_rows(section: dict[str, Any], top: int = TOP_PHASES_PER_DEVICE) -> list[list[str]]:
    rows: list[list[str]] = []
    by_dev: dict[int, list[dict[str, Any]]] = {}
    for p in section["phases"]:
        by_dev.setdefault(int(p["device"]), []).append(p)
    for dev, phases in by_dev.items():
        for p in sorted(phases, key=lambda x: -x["gpu_time_us"])[:top]:
            rows.append([_dev(dev), p["phase"], p["group"], ms(p["gpu_time_us"], 3), pct(p["share_of_device"]),
                         str(p["kernels"])])
    return rows


def copy_rows(section: dict[str, Any]) -> list[list[str]]:
    return [[_dev(c["src_device"]), _dev(c["dst_device"]), str(c["copies"]), f"{c['bytes'] / 1e6:.2f}",
             ms(c["gpu_time_us"], 3), "-" if c["gb_per_s"] is None else f"{c['gb_per_s']:.1f}"]
            for c in section["copies"]]


def _has(section: Any) -> bool:
    return isinstance(section, dict) and bool(section.get("devices"))


def render_text(section: Any) -> list[str]:
    if not _has(section):
        return []
    out = ["", text_table(DEVICE_HEADERS, device_rows(section)), "",
           text_table(DEVICE_PHASE_HEADERS, device_phase_rows(section), "lll" + "r" * 3)]
    if section["copies"]:
        out += ["", text_table(COPY_HEADERS, copy_rows(section))]
    return out


def render_markdown(section: Any) -> list[str]:
    if not _has(section):
        return []
    out = ["", "### Devices", "",
           "Per GPU inside the trace window: busy is the union of its events; it waits for the other GPU when it "
           "is idle while another one works (a layer split runs its stages one at a time); peer copies are the "
           "hand-offs between stages (phase `device.copy`).", "",
           md_table(DEVICE_HEADERS, device_rows(section)), "",
           md_table(DEVICE_PHASE_HEADERS, [[md_escape(c) for c in r] for r in device_phase_rows(section)],
                    "lll" + "r" * 3)]
    if section["copies"]:
        out += ["", md_table(COPY_HEADERS, copy_rows(section))]
    return out


def html_tables(section: Any, table: Any) -> list[str]:
    """HTML for the report page; `table` is html._table (headers, rows, left=...)."""
    if not _has(section):
        return []
    out = ["<h3>Devices</h3>", f"<p>{_escape(section['summary'])}</p>",
           table(DEVICE_HEADERS, device_rows(section), left=1),
           table(DEVICE_PHASE_HEADERS, device_phase_rows(section), left=3)]
    if section["copies"]:
        out.append(table(COPY_HEADERS, copy_rows(section), left=2))
    return out


def _escape(text: str) -> str:
    import html

    return html.escape(str(text), quote=True)
