"""Every module imports cleanly in a fresh interpreter (warnings as errors), and the runtime
packages never import the training package or need torch at import time."""
from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"tal_train": ROOT / "tal_train", "tal_export": ROOT / "tal_export",
            "tal_infer": ROOT / "tal_infer", "tal_plugins": ROOT / "plugins"}
RUNTIME = ("tal_infer", "tal_plugins")

# Makes the named top-level packages unimportable, as on a machine without them.
BLOCKER = """
import sys, importlib.abc
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {blocked!r}:
            raise ModuleNotFoundError(f"blocked for this test: {{name}}")
sys.meta_path.insert(0, _Block())
"""


def _modules(package: str) -> list[str]:
    found = [package]
    for info in pkgutil.walk_packages([str(PACKAGES[package])], prefix=package + "."):
        found.append(info.name)
    return found


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True,
                          text=True, cwd=ROOT)


ALL = [m for p in PACKAGES for m in _modules(p)]


@pytest.mark.parametrize("module", ALL)
def test_module_imports_in_fresh_interpreter(module):
    res = _run(f"import {module}")
    assert res.returncode == 0, res.stderr[-2000:]


@pytest.mark.parametrize("module", [m for p in RUNTIME for m in _modules(p)])
def test_runtime_imports_without_torch_or_training_package(module):
    code = BLOCKER.format(blocked={"torch", "tal_train", "tal_export"}) + f"import {module}\n"
    res = _run(code)
    assert res.returncode == 0, res.stderr[-2000:]


@pytest.mark.parametrize("module", _modules("tal_plugins"))
def test_plugins_sit_below_the_runtime(module):
    """DESIGN.md's import direction tal_plugins <- tal_infer: the op package imports no other
    package of the toolkit (and, like the runtime, not torch at import time)."""
    code = BLOCKER.format(blocked={"torch", "tal_infer", "tal_train", "tal_export"}) + \
        f"import {module}\n"
    res = _run(code)
    assert res.returncode == 0, res.stderr[-2000:]
