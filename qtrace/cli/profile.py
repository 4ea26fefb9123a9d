"""`qtrace profile` and `qtrace presets`: parse options, call qtrace.capture.runner, print."""

from __future__ import annotations

import click

PRECISION_HELP = ("Comma list of fp32, fp16, bf16, int8 (LLM.int8), nf4 (NF4 + double quant), torchao-int8wo, "
                  "torchao-w8a8, torchao-intx4, torchao-fp8wo, torchao-int4 (CUDA), torchao-fp8 (CUDA, "
                  "compute capability >= 8.9); which of them run on this machine is listed below. "
                  "Default: fp16,int8,nf4 on CUDA, fp32,int8,nf4 on CPU.")


def support_lines() -> list[str]:
    """One line per precision: runs here, or why not (missing package, GPU needed, capability)."""
    from qtrace.capture import environment as qdevice
    from qtrace.capture.models import precision_support

    dev = qdevice.resolve_device("auto")
    rows = precision_support(dev)
    width = max(len(p) for p, _, _ in rows)
    return [f"{p.ljust(width)}  {'runs here' if why is None else 'not here: ' + why}" for p, why, _ in rows] \
        + [f"(device: {dev})"]


class _SupportHelp(click.Command):
    """--help ends with what this machine can run (worked out only when help is asked for)."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_epilog(ctx, formatter)
        with formatter.section("Precisions on this machine"):
            for line in support_lines():
                formatter.write_text(line)


@click.command("profile", cls=_SupportHelp, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", required=False)
@click.option("--precision", "precisions", default=None, metavar="LIST", help=PRECISION_HELP)
@click.option("--task", type=click.Choice(["forward", "classify", "generate"]), default="forward", show_default=True,
              help="forward: one pass over the prompt (LM/MLM head); classify: sequence-classification head; "
                   "generate: greedy, exactly --new-tokens tokens (decoders).")
@click.option("--batch-size", type=int, default=1, show_default=True)
@click.option("--seq-len", type=int, default=128, show_default=True, help="Prompt length in tokens (random ids).")
@click.option("--new-tokens", type=int, default=16, show_default=True, help="Tokens per generation (--task generate).")
@click.option("--warmup", type=int, default=3, show_default=True, help="Un-timed passes before timing.")
@click.option("--iters", type=int, default=20, show_default=True, help="Timed, un-profiled passes.")
@click.option("--profile-steps", type=int, default=3, show_default=True,
              help="Recorded profiler steps (after one profiler warm-up step); keep small, traces grow fast. "
                   "0 measures only and records no trace.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Run folder (default qtrace-runs/<model>-<timestamp>).")
@click.option("--force", is_flag=True, help="Overwrite an existing non-empty --out folder.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the input ids and of new heads.")
@click.option("--int8-threshold", type=float, default=6.0, show_default=True,
              help="LLM.int8 outlier threshold (0 disables the outlier path).")
@click.option("--outlier-dims", type=int, default=0, show_default=True,
              help="Scale N fixed hidden dims of every norm weight x30, so LLM.int8 meets outlier columns "
                   "as in trained models (random weights have none).")
@click.option("--trust-remote-code", is_flag=True, help="Allow a checkout's own Python code (off by default).")
@click.option("--lean/--no-lean", default=None,
              help="After the timed pass, record the profiled steps with CUDA activity only (lean_trace.json.gz), "
                   "which `qtrace compare` times phases with. Default: on with a CUDA device; a CPU has none.")
@click.option("--device-map", "device_map", default=None, metavar="STRATEGY",
              help="Spread the model over the visible GPUs with accelerate: auto, balanced, balanced_low_0 or "
                   "sequential (as from_pretrained's device_map); none (default) keeps it on --device. With one GPU "
                   "the model stays whole on it and the run says so. run.json records layers and memory per GPU.")
@click.option("-q", "--quiet", is_flag=True, help="No progress on stderr.")
def profile_cmd(model: str | None, precisions: str | None, task: str, batch_size: int, seq_len: int,
                new_tokens: int, warmup: int, iters: int, profile_steps: int, device: str, out: str | None,
                force: bool, seed: int, int8_threshold: float, outlier_dims: int, trust_remote_code: bool,
                lean: bool | None, device_map: str | None, quiet: bool) -> None:
    """Measure MODEL at several precisions and record one torch.profiler trace per precision.

    MODEL is a built-in preset (default tiny-llama; see `qtrace presets`), a local Hugging Face
    checkout folder, or a Hugging Face id already in the local cache (never downloaded).
    Writes <out>/run.json and <out>/<precision>/trace.json.gz (on CUDA also lean_trace.json.gz), and prints a
    short table.
    """
    from qtrace.capture.runner import profile

    result = profile(model=model, precisions=precisions, task=task, batch_size=batch_size, seq_len=seq_len,
                     new_tokens=new_tokens, warmup=warmup, iters=iters, profile_steps=profile_steps,
                     device=device, out=out, force=force, seed=seed, int8_threshold=int8_threshold,
                     outlier_dims=outlier_dims, trust_remote_code=trust_remote_code, lean=lean,
                     quiet=quiet, device_map=device_map)
    click.echo(result.table())
    click.echo(f"run folder: {result.out}")


def _cached(preset: object, is_cached: object) -> str:
    """'on device' for presets built at each load (nothing cached), else yes/no."""
    if getattr(preset, "init", "disk") == "device":
        return "on device"
    return "yes" if is_cached(preset.name) else "no"  # type: ignore[operator, attr-defined]


@click.command("presets", context_settings={"help_option_names": ["-h", "--help"]})
def presets_cmd() -> None:
    """List the built-in model presets (random weights built from a config, cached on disk)."""
    from qtrace.capture.models import PRESETS, count_params, preset_dir, preset_is_cached

    rows = [("name", "arch", "params", "tasks", "cached", "for")]
    for p in PRESETS.values():
        cfg = p.config()
        params = count_params(cfg, p.kind)
        rows.append((p.name, f"{type(cfg).__name__.removesuffix('Config')} {p.kind}", f"{params / 1e6:.1f}M",
                     ",".join(p.tasks), _cached(p, preset_is_cached), p.purpose))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1])
    click.echo(f"cache: {preset_dir('<name>')} (set QTRACE_CACHE to move it)")
    click.echo("\nprecisions (--precision):")
    for line in support_lines():
        click.echo("  " + line)
