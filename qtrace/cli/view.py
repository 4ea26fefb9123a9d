"""`qtrace view PATH`: where the annotated trace is and how to open it in Perfetto or chrome://tracing."""

from __future__ import annotations

from pathlib import Path

import click

from qtrace.errors import QtraceError

TRACE_SUFFIXES = (".json", ".json.gz")


def find_traces(path: Path) -> list[Path]:
    """The annotated traces at `path`: the file itself, or those in a report folder (any trace file as a fallback)."""
    if not path.exists():
        raise QtraceError(f"{path}: no such file or folder")
    if path.is_file():
        if not path.name.endswith(TRACE_SUFFIXES):
            raise QtraceError(f"{path}: not a trace file (expected .json or .json.gz)")
        if path.stat().st_size == 0:
            raise QtraceError(f"{path}: empty file")
        return [path]
    annotated = sorted(p for p in path.glob("*annotated_trace*") if p.is_file() and p.name.endswith(TRACE_SUFFIXES))
    if annotated:
        return annotated
    others = sorted(p for p in path.rglob("*trace*") if p.is_file() and p.name.endswith(TRACE_SUFFIXES))
    if others:
        return others
    raise QtraceError(f"{path}: no annotated trace here (write one with `qtrace report TRACE --out {path}` "
                      f"or `qtrace compare A B --out {path}`)")


def _size(p: Path) -> str:
    n = p.stat().st_size
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


@click.command("view")
@click.argument("path", type=click.Path(path_type=Path))
def view_cmd(path: Path) -> None:
    """Say where the annotated trace is and how to open it.

    PATH is an annotated trace (annotated_trace.json.gz) or a folder written by
    `qtrace report --out` / `qtrace compare --out`.
    """
    traces = find_traces(path)
    for t in traces:
        click.echo(f"trace: {t.resolve()} ({_size(t)})")
    big = any(t.stat().st_size > 200 * 2**20 for t in traces)
    which = "the file above" if len(traces) == 1 else "one of the files above"
    click.echo("")
    click.echo("Open it in Perfetto (nothing is uploaded, the file is read in the browser):")
    click.echo("  1. go to https://ui.perfetto.dev")
    click.echo(f"  2. 'Open trace file' (left bar) and pick {which}, or drag it onto the page")
    click.echo("Or in Chrome / Chromium:")
    click.echo("  1. go to chrome://tracing")
    click.echo(f"  2. 'Load' and pick {which}")
    click.echo("")
    click.echo("What to look for: the 'qtrace phases' process holds a 'GPU phase' and a 'host phase' track "
               "(group slices with phase slices inside); click a kernel to see args.qtrace_phase; the "
               "allocator counters show allocated and reserved bytes.")
    if big:
        click.echo("The file is large: Perfetto handles it; chrome://tracing may run out of memory.")
