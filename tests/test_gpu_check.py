"""benchmarks/gpu_check.sh on the CPU: it refuses clearly where no CUDA GPU is visible, and its
--dry-run (every step a stand-in that never ends) shows the hard cap holds: steps are cut to the
time left, the report is written within the cap, and the watchdog ends the script at the cap
even when the steps' own limits would not. Caps are scaled down to seconds here; the real one is
480 s."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"
STEPS = ["install", "setup", "gpu-tests", "kernel", "warm", "extract", "demo", "suite"]

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and timeout")


def dry_run(out: Path, **budgets) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "PYTHON": sys.executable, **{k: str(v) for k, v in budgets.items()}}
    start = time.monotonic()
    res = subprocess.run(["bash", str(SCRIPT), "--dry-run", str(out)], capture_output=True,
                         text=True, env=env, timeout=60)
    return res, time.monotonic() - start


def step_rows(report: str) -> dict[str, tuple[str, int, int]]:
    """step: (result, seconds, budget) from the report's steps table."""
    rows = re.findall(r"^\| ([\w-]+) \| ([^|]+) \| (\d+) \| (\d+) \| [\w.-]+ \|$", report, re.M)
    return {name: (result.strip(), int(sec), int(budget)) for name, result, sec, budget in rows}


def test_gpu_check_refuses_without_a_gpu(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    res = subprocess.run(["bash", str(SCRIPT), str(out)], capture_output=True, text=True,
                         env=env, timeout=120)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "CUDA GPU" in lines[0]
    assert res.stdout == "" and not out.exists()  # nothing installed, run or written


def test_a_step_that_never_ends_gets_only_the_time_left(tmp_path):
    # The first step would hang for an hour: it is cut where the cap leaves no more, the others
    # are reported as not run, and the report is written before the cap.
    res, took = dry_run(tmp_path / "out", CAP_S=6, REPORT_S=1, KILL_AFTER_S=1)
    assert res.returncode == 1 and took < 6
    report = (tmp_path / "out" / "report.md").read_text()
    rows = step_rows(report)
    assert list(rows) == STEPS
    assert rows["install"][0] == "**cut at its budget**" and rows["install"][2] <= 5
    assert all(rows[s][0] == "**not run: no time left**" for s in STEPS[1:])
    assert int(re.search(r"^total: (\d+) s of the 6-second cap$", report, re.M)[1]) < 6


def test_each_step_is_cut_at_its_own_budget_and_the_suite_takes_the_rest(tmp_path):
    budgets = dict(INSTALL_S=1, SETUP_S=1, GPU_TESTS_S=2, KERNEL_S=1, WARM_S=1, EXTRACT_S=1,
                   DEMO_S=1)
    res, took = dry_run(tmp_path / "out", CAP_S=12, REPORT_S=1, KILL_AFTER_S=1, **budgets)
    assert res.returncode == 1 and took < 12
    rows = step_rows((tmp_path / "out" / "report.md").read_text())
    assert all(result == "**cut at its budget**" for result, _, _ in rows.values())
    for step, name in zip(STEPS, budgets):
        assert rows[step][2] == budgets[name]
    assert rows["suite"][2] >= 1  # what was left


def test_the_watchdog_ends_the_script_at_the_cap(tmp_path):
    # A negative report reserve lets the steps' own limits pass the cap: the watchdog ends it.
    res, took = dry_run(tmp_path / "out", CAP_S=3, REPORT_S=-100, KILL_AFTER_S=1)
    assert res.returncode == 124 and took < 3 + 2
    assert res.stderr.strip() == ("error: gpu_check.sh reached its 3-second cap; the watchdog "
                                  "ended it")


def test_the_default_cap_is_eight_minutes():
    assert '"${CAP_S:=480}"' in SCRIPT.read_text()
