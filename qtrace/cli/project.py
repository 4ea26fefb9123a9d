"""`qtrace project PATH --gpu T4`: what would this trace's kernels and latency be on another GPU (a projection)."""

from __future__ import annotations

import sys

import click
import msgspec

from qtrace.analyzers.projection_run import project_target
from qtrace.analyzers.trace_analysis import load_target
from qtrace.cli.allocator import return_big_blocks
from qtrace.errors import QtraceError
from qtrace.fileio import check_out_dir, prepare_out_dir
from qtrace.gpu_peaks import KNOWN_DEVICES, spec_by_key_or_name
from qtrace.reports import projection_report


@click.command("project")
@click.argument("path", type=click.Path(path_type=str))
@click.option("--gpu", "gpu", required=True, metavar="NAME",
              help="Target GPU: a peak table entry (" + ", ".join(s.key for s in KNOWN_DEVICES) + ") or a device "
                   "name such as 'NVIDIA A100 80GB PCIe'.")
@click.option("--host-speed", type=float, default=1.0, show_default=True,
              help="The target host's speed relative to the measured host (2 = twice as fast).")
@click.option("--format", "fmt", type=click.Choice(["table", "md", "json", "csv"]), default="table", show_default=True,
              help="What to print on stdout.")
@click.option("--out", "out_dir", type=click.Path(path_type=str), default=None,
              help="Also write projection.md, projection.json and CSVs into this folder.")
@click.option("--force", is_flag=True, help="Overwrite an existing non-empty --out folder.")
def project_cmd(path: str, gpu: str, host_speed: float, fmt: str, out_dir: str | None, force: bool) -> None:
    """Project a trace (or each precision of a run folder) onto another GPU: a labelled estimate.

    Each kernel keeps the efficiency it reached on the measured GPU against the target's roofs;
    the timeline is rebuilt so GPU idle time grows or shrinks; kernels the target cannot run
    (bf16 on a T4, fp8 before sm_89) are reported, not projected. See docs/projection.md.
    """
    return_big_blocks()  # a big trace's freed arrays leave no resident heap holes
    spec = spec_by_key_or_name(gpu)
    if spec is None:
        raise QtraceError(f"--gpu {gpu!r}: not in the peak table (known: {', '.join(s.key for s in KNOWN_DEVICES)})")
    if not host_speed > 0 or host_speed == float("inf"):
        raise QtraceError(f"--host-speed {host_speed:g}: must be a positive finite number")
    if out_dir:
        check_out_dir(out_dir, force)
    target = load_target(path)
    if target.incomplete:
        click.echo(f"qtrace: warning: {target.incomplete}", err=True)
    proj = project_target(target, spec, host_speed)
    if out_dir:
        out = prepare_out_dir(out_dir, force)
        projection_report.write_outputs(proj, out)
        click.echo(f"wrote projection to {out}", err=True)
    if fmt == "json":
        sys.stdout.write(msgspec.json.encode(proj).decode())
        sys.stdout.write("\n")
    elif fmt == "md":
        click.echo(projection_report.render_markdown(proj))
    elif fmt == "csv":
        click.echo(projection_report.render_csv(proj), nl=False)
    else:
        click.echo(projection_report.render_text(proj))
