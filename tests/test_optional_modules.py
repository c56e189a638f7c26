"""A test that needs FAISS fails where FAISS is missing (it is in the test extra), and is
skipped only when TAL_TESTS_WITHOUT says so (optional_modules.py)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from optional_modules import blocking

TESTS = Path(__file__).resolve().parent
NEEDS_FAISS = """
from optional_modules import require

faiss = require("faiss")


def test_uses_faiss():
    assert faiss.IndexFlatIP(4).d == 4
"""


def run_pytest(folder: Path, block: bool, without: str | None) -> subprocess.CompletedProcess:
    (folder / "conftest.py").write_text(blocking("faiss") if block else "")
    (folder / "test_needs_faiss.py").write_text(NEEDS_FAISS)
    env = {k: v for k, v in os.environ.items() if k != "TAL_TESTS_WITHOUT"}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    if without is not None:
        env["TAL_TESTS_WITHOUT"] = without
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-o", "addopts=", "--rootdir", str(folder), str(folder)],
                          capture_output=True, text=True, env=env, cwd=folder, timeout=120)


@pytest.mark.parametrize("block, without, code, words", [
    (False, None, 0, "1 passed"),
    (True, None, 2, "faiss cannot be imported (blocked for this test: faiss) although the test "
                    "extra installs it (faiss-cpu)"),
    (True, "onnx,faiss", 5, "1 skipped"),  # 5: pytest ran no test (the file's only one)
])
def test_faiss_missing_is_an_error_unless_left_out_on_purpose(tmp_path, block, without, code,
                                                              words):
    res = run_pytest(tmp_path, block, without)
    assert res.returncode == code, res.stdout + res.stderr
    assert words in res.stdout, res.stdout
