"""`qtrace run [OPTIONS] -- python SCRIPT [ARGS...]`: explain your own code (docs/run.md)."""

from __future__ import annotations

import sys

import click


@click.command(name="run", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--out", type=click.Path(), default=None, help="Run folder to write (default qtrace-runs/run-<time>).")
@click.option("--force", is_flag=True, help="Overwrite an --out folder that holds results.")
@click.option("--skip", type=click.IntRange(min=0), default=1, show_default=True,
              help="Calls per model timed (un-profiled) before the recorded ones: warm-up.")
@click.option("--steps", type=click.IntRange(min=0), default=2, show_default=True,
              help="Calls per model recorded under torch.profiler after the skipped ones.")
@click.argument("target", nargs=-1, type=click.UNPROCESSED, required=True)
def run_cmd(out: str | None, force: bool, skip: int, steps: int, target: tuple[str, ...]) -> None:
    """Run SCRIPT unchanged and explain every Hugging Face model it loads and calls.

    TARGET is `python SCRIPT ARGS`, `python -m MODULE ARGS`, or `SCRIPT ARGS`. The script's exit
    code is qtrace's exit code."""
    from qtrace.capture.run_script import run_script

    command = ["qtrace", "run", *(["--out", out] if out else []), *(["--force"] if force else []),
               "--skip", str(skip), "--steps", str(steps), "--", *target]
    code = run_script(list(target), out, force, skip, steps, command)
    sys.exit(code)
