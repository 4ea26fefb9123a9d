"""`qtrace calibrate`: measure this GPU's copy bandwidth and GEMM peaks; cache them for the roofline."""

from __future__ import annotations

import sys

import click
import msgspec


@click.command("calibrate", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--device", default="cuda", show_default=True, help="cuda or cuda:N.")
@click.option("--size-mb", type=click.IntRange(min=16), default=1024, show_default=True,
              help="Bytes of the device-to-device copy (read and write are both counted).")
@click.option("--gemm-n", type=click.IntRange(min=256), default=8192, show_default=True,
              help="n of the n x n x n GEMMs (fp16, bf16, int8 via torch._int_mm, fp32).")
@click.option("--warmup", type=click.IntRange(min=0), default=5, show_default=True)
@click.option("--repeats", type=click.IntRange(min=1), default=10, show_default=True,
              help="Timed samples per metric; the median is kept.")
@click.option("--no-save", is_flag=True, help="Do not write the calibration cache.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--show", is_flag=True, help="Print the datasheet table and cached calibrations, measure nothing "
                                           "(works without a GPU).")
def calibrate_cmd(device: str, size_mb: int, gemm_n: int, warmup: int, repeats: int, no_save: bool, fmt: str,
                  show: bool) -> None:
    """Measure a large device-to-device copy (GB/s) and large fp16/bf16/int8/fp32 GEMMs (TFLOPS/TOPS)
    with CUDA events (warm-up, median of --repeats), print them against the datasheet, and cache
    them under ~/.cache/qtrace/calibration/ (or $QTRACE_CACHE), where `qtrace report` prefers them
    to the datasheet peaks for the roofline."""
    from qtrace.capture import calibrate as cal

    if show:
        click.echo(cal.show_cached())
        return
    data = cal.calibrate(device=device, size_mb=size_mb, gemm_n=gemm_n, warmup=warmup, repeats=repeats,
                         save=not no_save, progress=lambda m: click.echo(m, err=True))
    if fmt == "json":
        sys.stdout.write(msgspec.json.format(msgspec.json.encode(data), indent=2).decode() + "\n")
    else:
        click.echo(cal.format_table(data))
