"""The command line of the opt-in tuning: ``python -m tal_plugins.tune``.

Times the candidate configs of each requested kernel specialization on this GPU
(plugins/timing.py) and writes the fastest to its tuning cache file, which every later process
reads (plugins/tuning.py); ``--show`` prints the configs in effect and where they come from.
"""
from __future__ import annotations

import sys

import click

from . import tuning
from .timing import DTYPES, tune_key
from .tuning import TuningKey

EPILOG = """\b
Examples:
  python -m tal_plugins.tune                         # paper preset maps: 24x8, C 128, P 1 and 65, fp16
  python -m tal_plugins.tune --hw 24x8 --hw 12x4 --p 1,33 --dtype fp16,bf16
  python -m tal_plugins.tune --show                  # configs in effect, and where they come from
  TAL_QACONV_AUTOTUNE=1 tal-infer ...                # tune what the cache lacks, at first use
"""


def _hw(value: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not HxW, e.g. 24x8") from None
    if h < 1 or w < 1:
        raise click.BadParameter(f"{value!r}: sizes must be positive")
    return h, w


def _ints(value: str) -> list[int]:
    try:
        out = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers") from None
    if not out or min(out) < 1:
        raise click.BadParameter(f"{value!r}: give positive integers")
    return out


def _dtypes(value: str) -> list[str]:
    out = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in out if v not in DTYPES]
    if bad or not out:
        raise click.BadParameter(f"{value!r}: choose from {', '.join(DTYPES)}")
    return out


def requested_keys(arch: str, hws: list[tuple[int, int]], channels: int, ps: list[int],
                   dtypes: list[str], responses: bool) -> list[TuningKey]:
    """One key per (map size, P range, dtype); P values of one range compile alike."""
    keys = []
    for (h, w) in hws:
        for dtype in dtypes:
            for p in ([1] if responses else ps):
                key = TuningKey(arch, h * w, h * w, channels, p, dtype, responses)
                if all(k.text() != key.text() for k in keys):
                    keys.append(key)
    return keys


@click.command(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--hw", "hws", multiple=True, default=("24x8",), show_default=True,
              help="Feature map HxW (query and gallery alike); repeat for several scales.")
@click.option("--channels", default=128, show_default=True, type=click.IntRange(1, 256),
              help="Feature channels C.")
@click.option("--p", "ps", default="1,65", show_default=True,
              help="Projection widths P (1: QAConv score; 1 + hidden: MSDA-QAConv).")
@click.option("--dtype", "dtypes", default="fp16", show_default=True,
              help="Input dtypes, comma-separated: fp16, bf16, fp32.")
@click.option("--responses", is_flag=True, help="Tune the unprojected responses mode instead.")
@click.option("--queries", default=64, show_default=True, type=click.IntRange(1),
              help="Queries of the timed problem.")
@click.option("--galleries", default=512, show_default=True, type=click.IntRange(1),
              help="Gallery items of the timed problem.")
@click.option("--show", is_flag=True, help="Print the configs in effect and their source; time nothing.")
def main(hws, channels, ps, dtypes, responses, queries, galleries, show) -> None:
    """Tune the QAConvMatch Triton kernel's launch configs on this GPU and save the fastest in
    its tuning cache ($TAL_CACHE_DIR, else $XDG_CACHE_HOME/tal-reid), read by later processes.
    Without tuning, a built-in table and a default rule give the configs (no run-time
    autotuning); see plugins/README.md."""
    try:
        import torch
    except ImportError:
        _fail("python -m tal_plugins.tune needs torch with CUDA")
    if not torch.cuda.is_available():
        _fail("python -m tal_plugins.tune needs a CUDA GPU (torch.cuda.is_available() is False)")
    from . import kernel

    index = torch.cuda.current_device()
    name, arch = kernel.device_identity(index)
    try:
        keys = requested_keys(arch, [_hw(v) for v in hws], channels, _ints(ps), _dtypes(dtypes),
                              responses)
    except click.BadParameter as err:
        _fail(err.message)
    path = tuning.cache_file(name, arch)
    click.echo(f"{name} ({arch}); tuning cache {path}")
    for key in keys:
        if show:
            config, source = tuning.choose(key, name)
            click.echo(f"{key.text()}: {config} ({source})")
            continue
        result = tune_key(key, index, queries, galleries)
        flop = 2.0 * key.hwq * key.hwg * key.channels * queries * galleries
        for config, ms in result.timings:
            speed = "does not fit" if ms is None else f"{ms:8.3f} ms {flop / ms / 1e9:7.1f} TFLOP/s"
            mark = "  <- chosen" if config == result.best else ""
            click.echo(f"  {key.text()} {config}: {speed}{mark}")
    if not show:
        click.echo(f"wrote {path}")


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


if __name__ == "__main__":
    main()
