"""The Triton kernel against the reference, run by Triton's CPU interpreter (how CI tests it),
and its ahead-of-time compilation by the real Triton compiler (catches what the interpreter
accepts but the compiler would not; Triton ships ptxas, so no GPU is needed)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

from interpreter_cases import CASES, CONFIG_CASES  # noqa: E402

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def interpreter_results() -> dict:
    """Run every case once, in one fresh interpreter with TRITON_INTERPRET=1."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    res = subprocess.run([sys.executable, str(HERE / "interpreter_cases.py")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    results = {}
    for line in res.stdout.splitlines():
        results.update(json.loads(line))
    return results


@pytest.mark.parametrize("case", sorted(CASES) + sorted(CONFIG_CASES))
def test_kernel_matches_reference_in_interpreter(case, interpreter_results):
    result = interpreter_results[case]
    assert result["err"] <= result["tol"], f"{case}: {result}"


def test_kernel_aot_compiles_to_ptx_for_tensorrt():
    from tal_plugins import kernel

    compiled, config = kernel.compile_ptx("fp16", 48, 48, 64, 3, arch=80)
    ptx = compiled.asm["ptx"]
    entry = re.search(r"\.entry (\w+)\(([^)]*)\)", ptx)
    assert entry and entry.group(1) == compiled.metadata.name
    params = entry.group(2)
    # (q, g, wq, wg) pointers, then the (n_q, n_g) scalars, then the output pointer: the order
    # TensorRT's AOT launcher passes (inputs, extra scalars, outputs).
    kinds = re.findall(r"\.param \.(u64|u32)", params)
    assert kinds[:7] == ["u64"] * 4 + ["u32"] * 2 + ["u64"]
    assert compiled.metadata.shared <= kernel.PORTABLE_SHARED_BYTES
    assert "mma.sync" in ptx  # tensor-core MMA for the S tiles on sm_80
    assert config["BLOCK_I"] == config["BLOCK_J"] == 16  # 48 = 3 x 16: no padded tile rows


def test_kernel_compiles_responses_variant():
    from tal_plugins import kernel

    compiled, _ = kernel.compile_ptx("bf16", 20, 33, 24, 1, arch=90, responses=True)
    assert "wgmma" in compiled.asm["ptx"] or "mma" in compiled.asm["ptx"]


@pytest.mark.parametrize("hw", [32, 48, 128, 192])
def test_default_tiles_leave_no_padding_for_model_sizes(hw):
    from tal_plugins import tuning

    tiles = tuning.tile_candidates(hw, hw)
    assert tiles
    assert all(tuning.padding_waste(hw, hw, bi, bj) == 0 for bi, bj in tiles)
    key = tuning.TuningKey("sm90", hw, hw, 128, 1, "fp16")
    assert {(c.block_i, c.block_j) for c in tuning.tuning_candidates(key)} == set(tiles)
    first = tuning.default_config(key)
    assert (first.block_i, first.block_j) in tiles


def test_tile_candidates_for_sizes_without_exact_tiles():
    from tal_plugins import kernel, tuning

    # 20 and 35 have no power-of-two divisor >= 16: the least padded tiles are kept.
    tiles = tuning.tile_candidates(20, 35)
    assert tiles == [(16, 16)]
    assert kernel.grid_size(5, 17, 8) == 5 * 3


def test_compiles_go_through_tritons_on_disk_cache_in_its_configured_folder(tmp_path):
    """A second process compiling the same specialization finds it in TRITON_CACHE_DIR and
    writes nothing (the launch path compiles through the same `triton.compile`)."""
    env = {**os.environ, "TRITON_CACHE_DIR": str(tmp_path / "triton")}
    env.pop("TRITON_INTERPRET", None)
    code = "from tal_plugins import kernel; kernel.compile_ptx('fp16', 20, 20, 16, 1, arch=90)"

    def compile_in_a_new_process() -> dict:
        res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
        return {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}

    first = compile_in_a_new_process()
    assert any(p.suffix in (".ptx", ".cubin") for p in first)
    assert compile_in_a_new_process() == first  # same files, none rewritten
