"""The `qtrace` command: a thin click group. Each subcommand lives in its own module and
imports heavy libraries (torch, transformers) only when it runs, so `qtrace report` on a
laptop without a GPU starts fast."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

import click

from qtrace import __version__
from qtrace.cli import fast_exit
from qtrace.cli.early_decode import start_early
from qtrace.errors import QtraceError

# name -> (module, attribute, one-line help). Loaded lazily.
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "profile": ("qtrace.cli.profile", "profile_cmd", "Measure a model at several precisions and record traces."),
    "presets": ("qtrace.cli.profile", "presets_cmd", "List the built-in model presets."),
    "report": ("qtrace.cli.report", "report_cmd", "Attribute GPU and host time of a trace to quantization phases."),
    "compare": ("qtrace.cli.compare", "compare_cmd", "Explain the slowdown between precisions, phase by phase."),
    "view": ("qtrace.cli.view", "view_cmd", "Say how to open an annotated trace in Perfetto or chrome://tracing."),
    "sweep": ("qtrace.cli.sweep", "sweep_cmd", "Measure precisions across batch sizes and find the crossover."),
    "run": ("qtrace.cli.run", "run_cmd", "Run your own script unchanged and explain the models it loads and calls."),
    "calibrate": ("qtrace.cli.calibrate", "calibrate_cmd", "Measure this GPU's copy and GEMM peaks."),
    "project": ("qtrace.cli.project", "project_cmd", "Project a trace onto another GPU (an estimate, labelled)."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in SUBCOMMANDS:
            return None
        module_name, attr, help_text = SUBCOMMANDS[name]
        if importlib.util.find_spec(module_name) is None:
            return _not_yet(name, help_text)
        module = importlib.import_module(module_name)
        return getattr(module, attr, None) or _not_yet(name, help_text)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Short help from the table, so `qtrace --help` imports no subcommand module.
        with formatter.section("Commands"):
            formatter.write_dl([(n, h) for n, (_, _, h) in SUBCOMMANDS.items()])


def _not_yet(name: str, help_text: str) -> click.Command:
    @click.command(name=name, help=help_text + " (not yet available)",
                   context_settings={"ignore_unknown_options": True})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def cmd(args: tuple[str, ...]) -> None:
        raise QtraceError(f"qtrace {name}: not yet available in this version")

    return cmd


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="qtrace")
def cli() -> None:
    """qtrace: why is my quantized model slower and hungrier than fp16?

    Profile a Hugging Face model at fp16/bf16, LLM.int8 and NF4, then attribute GPU time,
    host time and memory to the phases of the quantized matmul.
    """


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line on stderr and exit code 2, never a traceback."""
    try:
        start_early(sys.argv[1:] if argv is None else list(argv))  # a big trace's helper decodes during the imports
        cli.main(args=argv, prog_name="qtrace", standalone_mode=False)
        if argv is None:  # the console script: a finished report skips the interpreter's teardown
            fast_exit.exit_if_requested()
    except QtraceError as exc:
        click.echo(f"qtrace: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("qtrace: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        click.echo(f"qtrace: error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("qtrace: interrupted", err=True)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
    except Exception as exc:  # a bug, not bad input: still one line, the traceback on request
        if os.environ.get("QTRACE_DEBUG"):
            raise
        click.echo(f"qtrace: internal error: {type(exc).__name__}: {exc} (set QTRACE_DEBUG=1 for the traceback)",
                   err=True)
        sys.exit(1)
