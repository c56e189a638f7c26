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
    from tal_plugins import kernel, tuning

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
    assert "mma.sync" in ptx  # tensor-core MMA for the S blocks on sm_80
    # the table's config, as the run-time launcher would take it on this architecture
    assert config == tuning.table_config(tuning.TuningKey("sm80", 48, 48, 64, 3, "fp16"))
    assert config.block_j == 16  # 48 = 3 x 16: no padded gallery columns


def test_kernel_compiles_responses_variant():
    from tal_plugins import kernel

    compiled, _ = kernel.compile_ptx("bf16", 20, 33, 24, 1, arch=90, responses=True)
    assert "mma" in compiled.asm["ptx"]


def test_plan_refuses_a_kernel_over_its_shared_memory_cap():
    from tal_infer.errors import TalError
    from tal_plugins import kernel

    with pytest.raises(TalError, match=r"needs \d+ bytes of shared memory, over the 1024 a "
                                       r"TensorRT plugin launch allows"):
        kernel.compile_ptx("fp16", 48, 48, 64, 3, arch=80, max_shared=1024)


def test_sizes_beyond_the_kernel_are_refused_in_one_line():
    from tal_infer.errors import TalError
    from tal_plugins import kernel

    with pytest.raises(TalError, match=r"at most 512 locations per map, got C = 128, HW = 768 x "
                                       r"192; use the torch backend"):
        kernel.shape_constants(768, 192, 128, 1, "fp16", False, 64)
    assert kernel.grid_size(5, 17) == 5 * 2  # 16 galleries per program


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
