"""benchmarks/gpu_check.sh refuses clearly where no CUDA GPU is visible (the CPU side of the one
device check; the rest of it needs a GPU)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_refuses_without_a_gpu(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    res = subprocess.run(["bash", str(SCRIPT), str(out)], capture_output=True, text=True,
                         env=env, timeout=120)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "CUDA GPU" in lines[0]
    assert res.stdout == "" and not out.exists()  # nothing installed, run or written


def test_gpu_check_budgets_fit_eight_minutes():
    text = SCRIPT.read_text()
    budgets = {}
    for name in ("INSTALL_S", "SETUP_S", "GPU_TESTS_S", "KERNEL_S", "WARM_S", "EXTRACT_S",
                 "DEMO_S", "SUITE_S", "KILL_AFTER_S"):
        start = text.index(f'"${{{name}:=') + len(name) + 5
        budgets[name] = int(text[start:text.index("}", start)])
    steps = [v for k, v in budgets.items() if k != "KILL_AFTER_S"]
    assert sum(steps) + len(steps) * budgets["KILL_AFTER_S"] <= 8 * 60
    calls = [line for line in text.splitlines() if line.startswith("run_step ")]
    assert len(calls) == len(steps) - 1  # every step runs under its budget (install: in install)
    assert '"$INSTALL_S" "$PY" -m pip install' in text
