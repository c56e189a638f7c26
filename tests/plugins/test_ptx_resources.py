"""The kernel's resource budget, checked ahead of time without a GPU (plugins/README.md,
"Resources"): the launch table's kernels, compiled as the TensorRT plan compiles them and
assembled by every ptxas the triton wheel ships, use no local stack and spill nothing, fit the
48 KiB of shared memory a TensorRT plugin launch allows, and on Hopper run both query parts of
the model's 24x8 maps on wgmma.

One compile per table row, at the largest channel count and projection width the runtime and
the plan use (C 256, P 65): C and P only set loop trip counts, and
`python benchmarks/ptx_resources.py` prints all 32 specializations (registers equal across C
and P). About 6-15 s of CPU per compile on a 2-core machine, less with a warm Triton cache.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import ptx_resources as pr  # noqa: E402

from tal_plugins import kernel, tuning  # noqa: E402

# One spec per row of tuning.TABLE the runtime and the plan use; fp32 is held to the same
# bound (no stack, no spills).
BUDGET = [pr.Spec("fp16", 192, 256, 65, 90), pr.Spec("fp16", 48, 256, 65, 90),
          pr.Spec("fp16", 192, 256, 65, 80), pr.Spec("fp16", 48, 256, 65, 80),
          pr.Spec("fp32", 192, 256, 65, 90)]


@pytest.fixture(scope="module")
def binaries() -> list:
    found = pr.ptxas_binaries()
    if not found:
        pytest.skip("this triton wheel ships no ptxas")
    return found


@pytest.mark.parametrize("spec", BUDGET, ids=lambda s: s.text().replace(" ", "-"))
def test_table_kernels_never_spill_and_fit_a_plugin_launch(spec, binaries):
    key = tuning.TuningKey(f"sm{spec.arch}", spec.hw, spec.hw, spec.channels, spec.p, spec.dtype)
    config = tuning.table_config(key)
    for ptxas in binaries:
        used = pr.measure(spec, ptxas)
        where = f"{spec.text()}, ptxas of CUDA {ptxas.cuda}: {used}"
        assert used.stack == used.spill_stores == used.spill_loads == 0, where
        assert used.shared <= kernel.PORTABLE_SHARED_BYTES, where
        assert used.registers <= (config.maxnreg or 255), where
        assert used.config == str(config)
        if key.shape_class == "wgmma" and spec.arch == 90:
            # both query parts (128 + 64 rows) on wgmma; only the projection uses mma.sync
            assert used.wgmma > 0, where
        else:
            assert used.wgmma == 0 and used.mma_sync > 0, where


def test_ptxas_verbose_output_is_read_exactly():
    text = """ptxas info    : Compiling entry function 'qaconv_match_tile' for 'sm_90a'
ptxas info    : Function properties for qaconv_match_tile
    1912 bytes stack frame, 1884 bytes spill stores, 2200 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 1912 bytes cumulative stack size"""
    assert pr.parse_ptxas_verbose(text) == (255, 1912, 1884, 2200)
    with pytest.raises(ValueError, match="expected one kernel"):
        pr.parse_ptxas_verbose(text + "\n" + text)
