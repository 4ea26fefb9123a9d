"""`qtrace report PATH`: where did the time go, phase by phase, on the GPU and on the host."""

from __future__ import annotations

import sys

import click
import msgspec

from qtrace.analyzers.ranks import rank_summary
from qtrace.analyzers.trace_analysis import analyze_target, load_target
from qtrace.cli import fast_exit
from qtrace.cli.allocator import return_big_blocks
from qtrace.fileio import check_out_dir, prepare_out_dir
from qtrace.reports import trace_report


@click.command("report")
@click.argument("path", type=click.Path(path_type=str))
@click.option("--format", "fmt", type=click.Choice(["table", "md", "csv", "json"]), default="table", show_default=True,
              help="What to print on stdout.")
@click.option("--out", "out_dir", type=click.Path(path_type=str), default=None,
              help="Also write report.md, report.json and CSVs (and HTML, when available) into this folder.")
@click.option("--force", is_flag=True, help="Overwrite an existing non-empty --out folder.")
@click.option("--top", type=click.IntRange(min=1), default=15, show_default=True, help="How many kernels to list.")
def report_cmd(path: str, fmt: str, out_dir: str | None, force: bool, top: int) -> None:
    """Attribute GPU time and host time of a trace (or each trace of a run folder) to phases.

    PATH is a torch.profiler Chrome trace (.json or .json.gz) or a run folder written by
    `qtrace profile`.
    """
    return_big_blocks()  # a big trace's freed arrays leave no resident heap holes
    if out_dir:
        check_out_dir(out_dir, force)
    target = load_target(path)
    if target.incomplete:
        click.echo(f"qtrace: warning: {target.incomplete}", err=True)
    reports = analyze_target(target, top=top, fork_sections=True)  # a big trace's sections in two processes
    ranks = rank_summary(reports, target.ranks) if target.ranks else None
    out = prepare_out_dir(out_dir, force) if out_dir else None
    if out is not None:
        trace_report.write_outputs(reports, out, str(target.path), target.run)
        from qtrace.reports import html
        from qtrace.reports import (
            perfetto as annotate,  # the annotated trace for Perfetto (`qtrace view OUT` says how to open it)
        )

        annotate.write_for_reports(reports, out)
        html.write_report_html(reports, out)
        click.echo(f"wrote reports to {out}", err=True)
    if fmt == "json":
        obj = trace_report.to_json_obj(reports, str(target.path), target.run)
        if ranks is not None:
            obj["ranks"] = ranks
        sys.stdout.write(msgspec.json.encode(obj).decode())
        sys.stdout.write("\n")
    elif fmt == "md":
        click.echo(trace_report.render_markdown(reports))
        if ranks is not None:
            click.echo(trace_report.render_ranks_markdown(ranks))
    elif fmt == "csv":
        click.echo(trace_report.render_csv(reports), nl=False)
    else:
        click.echo(trace_report.render_text(reports))
        if ranks is not None:
            click.echo(trace_report.render_ranks_text(ranks))
    fast_exit.request()  # all is written: the console script may leave without freeing the tables
