"""`qtrace sweep`: measure precisions across batch sizes (and prompt lengths), find the crossover."""

from __future__ import annotations

import click

from qtrace.cli.profile import PRECISION_HELP


@click.command("sweep", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", required=False, metavar="MODEL[,MODEL...]")
@click.option("--precision", "precisions", default=None, metavar="LIST", help=PRECISION_HELP)
@click.option("--batch-size", "batch_sizes", default="1,4,16,64", show_default=True, metavar="LIST",
              help="Comma list of batch sizes.")
@click.option("--seq-len", "seq_lens", default="128", show_default=True, metavar="LIST",
              help="Comma list of prompt lengths (tokens).")
@click.option("--task", type=click.Choice(["forward", "classify", "generate"]), default="forward", show_default=True)
@click.option("--new-tokens", type=int, default=16, show_default=True, help="Tokens per generation (--task generate).")
@click.option("--warmup", type=int, default=3, show_default=True, help="Un-timed passes before timing, per point.")
@click.option("--iters", type=int, default=20, show_default=True, help="Timed, un-profiled passes per point.")
@click.option("--profile/--no-profile", "profile", default=False, show_default=True,
              help="Keep a torch.profiler trace per point and precision (off: timing and memory only).")
@click.option("--profile-steps", type=int, default=3, show_default=True, help="Profiler steps with --profile.")
@click.option("--baseline", default=None, help="Precision the others are compared with (default fp16, bf16 or fp32).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Sweep folder (default qtrace-runs/sweep-<model>-<timestamp>).")
@click.option("--force", is_flag=True, help="Overwrite an existing non-empty --out folder.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--int8-threshold", type=float, default=6.0, show_default=True,
              help="LLM.int8 outlier threshold (0 disables the outlier path).")
@click.option("--outlier-dims", type=int, default=0, show_default=True,
              help="Scale N fixed hidden dims of every norm weight x30 (see qtrace profile --help).")
@click.option("--trust-remote-code", is_flag=True, help="Allow a checkout's own Python code (off by default).")
@click.option("--decode", default="dynamic", show_default=True, metavar="LIST",
              help="Decode regimes for --task generate: dynamic (eager, dynamic KV cache) and/or static "
                   "(static cache + CUDA graphs where the precision allows).")
@click.option("--point-budget", type=float, default=None, metavar="S",
              help="Seconds per point; a point past it is recorded as timeout and the sweep goes on.")
@click.option("--time-budget", type=float, default=None, metavar="S",
              help="Seconds for the whole sweep; points left after it are recorded as skipped.")
@click.option("-q", "--quiet", is_flag=True, help="No progress on stderr.")
def sweep_cmd(model: str | None, precisions: str | None, batch_sizes: str, seq_lens: str, task: str, new_tokens: int,
              warmup: int, iters: int, profile: bool, profile_steps: int, baseline: str | None, device: str,
              out: str | None, force: bool, seed: int, int8_threshold: float, outlier_dims: int,
              trust_remote_code: bool, decode: str, point_budget: float | None, time_budget: float | None,
              quiet: bool) -> None:
    """Run the measurement protocol of `qtrace profile` at every batch size (x seq len) and write
    sweep.csv, sweep.json, sweep.md and sweep.png (latency per example and peak memory against
    batch size), marking where each quantized precision crosses the baseline, or saying that it
    never does in the range.

    Several models (`qwen2.5-0.5b,1.5b,3b,7b`: short names after the first resolve within its
    family) add the model axis: prefill, decode ms/token, tokens/s, peak and load memory per
    point, the first size where a quantized precision beats the baseline, a linear model of the
    ratio extrapolated past the largest size, memory limits per card, and size.png.
    """
    from qtrace.capture.sweep import run_sweep

    result = run_sweep(model, precisions, batch_sizes, seq_lens, task=task, out=out, force=force, profile=profile,
                       profile_steps=profile_steps, baseline=baseline, quiet=quiet, new_tokens=new_tokens,
                       warmup=warmup, iters=iters, device=device, seed=seed, int8_threshold=int8_threshold,
                       outlier_dims=outlier_dims, trust_remote_code=trust_remote_code, decode=decode,
                       point_budget_s=point_budget, time_budget_s=time_budget)
    for c in result.crossovers:
        click.echo(c["message"])
    click.echo(f"sweep folder: {result.out}")
