"""Opt-in tuning of the QAConvMatch kernel's launch configs: ``python -m tal_plugins.tune``.

Times every candidate config (`tuning.tuning_candidates`: the least-padding tiles x (warps,
stages)) of each requested kernel specialization on this GPU, on random unit-length maps, and
writes the fastest to this GPU's tuning cache file, which every later process reads
(plugins/tuning.py). Each candidate costs one compile (seconds), so this is done once per
machine, never at a first call, unless a process is started with ``TAL_QACONV_AUTOTUNE=1``:
then a specialization the cache lacks is tuned at its first call, as here.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import click

from . import tuning
from .tuning import LaunchConfig, TuningKey

DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}

EPILOG = """\b
Examples:
  python -m tal_plugins.tune                         # paper preset maps: 24x8, C 128, P 1 and 65, fp16
  python -m tal_plugins.tune --hw 24x8 --hw 12x4 --p 1,33 --dtype fp16,bf16
  python -m tal_plugins.tune --show                  # configs in effect, and where they come from
  TAL_QACONV_AUTOTUNE=1 tal-infer ...                # tune what the cache lacks, at first use
"""


@dataclass
class TuneResult:
    """Timings of one specialization's candidates (ms; None: did not fit the GPU)."""
    key: TuningKey
    timings: list[tuple[LaunchConfig, float | None]]
    best: LaunchConfig
    best_ms: float


def _random_inputs(key: TuningKey, queries: int, galleries: int, index: int):
    import torch

    gen = torch.Generator(device=f"cuda:{index}").manual_seed(0)
    dtype = getattr(torch, DTYPES[key.dtype])

    def maps(n: int, hw: int):
        x = torch.randn(n, hw, key.channels, device=f"cuda:{index}", generator=gen)
        return torch.nn.functional.normalize(x, dim=2).to(dtype)

    def weights(hw: int):
        return torch.randn(hw, key.p, device=f"cuda:{index}", generator=gen)

    if key.responses:
        return maps(queries, key.hwq), maps(galleries, key.hwg), None, None
    return maps(queries, key.hwq), maps(galleries, key.hwg), weights(key.hwq), weights(key.hwg)


def tune_key(key: TuningKey, index: int, queries: int = 64, galleries: int = 512,
             write: bool = True) -> TuneResult:
    """Time every candidate of `key` on CUDA device `index`; with `write`, store the fastest in
    the device's tuning cache file."""
    import triton
    from triton.runtime.errors import OutOfResources
    from triton.testing import do_bench

    from . import kernel

    name, _ = kernel.device_identity(index)
    q, g, wq, wg = _random_inputs(key, queries, galleries, index)
    tuning.log.warning("tuning the QAConvMatch kernel for %s on %s (%d configs)...", key.text(),
                       name, len(tuning.tuning_candidates(key)))
    timings: list[tuple[LaunchConfig, float | None]] = []
    for config in tuning.tuning_candidates(key):
        def run(config=config):
            return kernel.launch(q, g, wq, wg, key.responses, config=config)

        try:
            run()  # compiles
            timings.append((config, float(do_bench(run, warmup=10, rep=50))))
        except OutOfResources:
            timings.append((config, None))
    fitted = [(c, ms) for c, ms in timings if ms is not None]
    if not fitted:
        raise RuntimeError(f"no QAConvMatch launch config fits this GPU for {key.text()}")
    best, best_ms = min(fitted, key=lambda t: t[1])
    if write:
        tuning.write_cache(tuning.cache_file(name, key.arch), name, {key.text(): (best, best_ms)},
                           triton.__version__)
    return TuneResult(key, timings, best, best_ms)


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
