"""Timing the QAConvMatch kernel's candidate launch configs on this GPU (the opt-in tuning).

Times every candidate config of a kernel specialization (`tuning.tuning_candidates`) on random
unit-length maps and writes the fastest to this GPU's tuning cache file, which every later
process reads (plugins/tuning.py). Each candidate costs one compile (seconds), so this runs
once per machine: from ``python -m tal_plugins.tune`` (plugins/tune.py, the command line), or
at a specialization's first call in a process started with ``TAL_QACONV_AUTOTUNE=1``
(plugins/kernel.py). Needs torch with CUDA.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import tuning
from .tuning import LaunchConfig, TuningKey

DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}


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
