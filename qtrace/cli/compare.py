"""`qtrace compare A B [C ...]`: explain the slowdown between precisions, phase by phase."""

from __future__ import annotations

import sys

import click
import msgspec

from qtrace.analyzers.compare import compare_reports, run_labels
from qtrace.analyzers.trace_analysis import TraceReport, analyze_target, load_target
from qtrace.cli.allocator import return_big_blocks
from qtrace.errors import QtraceError
from qtrace.fileio import check_out_dir, prepare_out_dir
from qtrace.reports import compare_report


def _load_all(paths: tuple[str, ...], top: int) -> list[TraceReport]:
    """Every input resolved and analyzed; a run folder contributes one report per precision.

    All inputs are resolved before any trace is analyzed, so a bad third argument fails at
    once with its own name instead of after minutes of loading.
    """
    targets = [load_target(p) for p in paths]
    for t in targets:
        if t.incomplete:
            click.echo(f"qtrace: warning: {t.incomplete}", err=True)
    reports: list[TraceReport] = []
    for t in targets:
        reports += analyze_target(t, top=max(top, 10), fork_sections=True)
    return reports


@click.command("compare")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--baseline", default=None, metavar="NAME|INDEX",
              help="The run the others are compared with: its label (precision), file name, or 0-based index in "
                   "the list of runs. Default: the first.")
@click.option("--format", "fmt", type=click.Choice(["table", "md", "json", "csv"]), default="table",
              show_default=True, help="What to print on stdout.")
@click.option("--out", "out_dir", type=click.Path(path_type=str), default=None,
              help="Also write report.md, report.html, compare.json, CSVs, chart PNGs and annotated traces here.")
@click.option("--force", is_flag=True, help="Overwrite an existing non-empty --out folder.")
@click.option("--top", type=click.IntRange(min=1), default=6, show_default=True,
              help="Phases named in the summary and drawn as their own waterfall bars (kernels charted: at least 10).")
@click.option("--passes", type=click.IntRange(min=1), default=None,
              help="Passes each trace window holds, for traces without ProfilerStep markers or qtrace metadata "
                   "(default: inferred when the op sequence repeats).")
def compare_cmd(paths: tuple[str, ...], baseline: str | None, fmt: str, out_dir: str | None, force: bool, top: int,
                passes: int | None) -> None:
    """Compare traces or run folders against a baseline, phase by phase.

    Each PATH is a torch.profiler trace (.json / .json.gz) or a run folder from `qtrace profile`
    (every precision in it is compared). The first run is the baseline unless --baseline says
    otherwise. Per run: the latency ratio (un-profiled when run folders give it), and per phase
    the change of GPU time, host CPU time, launches, syncs and GPU idle time; they add up to the
    run's totals minus the baseline's.
    """
    return_big_blocks()  # a big trace's freed arrays leave no resident heap holes
    if out_dir:
        check_out_dir(out_dir, force)
    reports = _load_all(paths, top)
    if len(reports) < 2:
        raise QtraceError(f"compare needs at least two runs; {' '.join(paths)} gave {len(reports)}")
    labels = run_labels(reports)
    comparison = compare_reports(reports, baseline=baseline, passes=passes, labels=labels)
    out = prepare_out_dir(out_dir, force) if out_dir else None
    if out is not None:
        from qtrace.reports import html
        from qtrace.reports import perfetto as annotate

        charts = html.compare_charts(comparison, top)
        rel = html.write_chart_files(charts, out)
        compare_report.write_outputs(comparison, out, top, rel)
        written = annotate.write_for_reports(reports, out, labels)
        html.write_compare_html(comparison, out, top, [p.name for p in written], charts)
        click.echo(f"wrote reports to {out}", err=True)
    if fmt == "json":
        sys.stdout.write(msgspec.json.encode(comparison.to_dict()).decode())
        sys.stdout.write("\n")
    elif fmt == "md":
        click.echo(compare_report.render_markdown(comparison, top))
    elif fmt == "csv":
        click.echo(compare_report.render_csv(comparison), nl=False)
    else:
        click.echo(compare_report.render_text(comparison, top))
