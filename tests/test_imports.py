"""Every module imports cleanly in a fresh interpreter (warnings as errors), and the runtime
packages never import the training package or need torch at import time.

**How, and why it stays a fresh-interpreter check:** one interpreter per list of modules
(``python -W error``) imports the third-party packages named in PRELOAD and then forks one child
per module; each child imports its module as the first module of the toolkit, with the
warnings filter set to error, and reports the traceback it got. No module of the toolkit is
ever imported in the parent, so each child starts from the state a fresh interpreter reaches
after ``import torch``: import cycles, import-time side effects and warnings of every module
are seen as before. Forking saves paying torch's ~1.5 s import (CPU) once per module, ~100
times. The isolation checks (no torch, no training package) preload nothing that they block.
"""
from __future__ import annotations

import ast
import functools
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

# One worker (pytest-xdist) runs this file's tests, so the import rounds run once per suite.
pytestmark = pytest.mark.xdist_group("fresh-imports")

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"tal_train": ROOT / "tal_train", "tal_export": ROOT / "tal_export",
            "tal_infer": ROOT / "tal_infer", "tal_plugins": ROOT / "plugins"}
RUNTIME = ("tal_infer", "tal_plugins")
PRELOAD = ("torch",)  # third-party only; the costly import every training module shares

# Makes the named top-level packages unimportable, as on a machine without them.
BLOCKER = """
import sys, importlib.abc
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {blocked!r}:
            raise ModuleNotFoundError(f"blocked for this test: {{name}}")
sys.meta_path.insert(0, _Block())
"""

# argv: JSON list of modules, JSON list of packages to preload. Prints one JSON line last:
# {module: traceback or "" when the import succeeded}.
FORK_EACH = """
import json, os, sys, traceback, warnings
modules, preload = json.loads(sys.argv[1]), json.loads(sys.argv[2])
for name in preload:
    __import__(name)
results = {}
for module in modules:
    sys.stdout.flush()
    sys.stderr.flush()
    read, write = os.pipe()
    with warnings.catch_warnings():  # Python 3.12+ warns on fork() in a threaded process
        warnings.filterwarnings("ignore", ".*fork", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            __import__(module)
            error = ""
        except BaseException:
            error = traceback.format_exc()
        with os.fdopen(write, "w") as pipe:
            pipe.write(error)
        os._exit(1 if error else 0)
    os.close(write)
    with os.fdopen(read) as pipe:
        error = pipe.read()
    status = os.waitpid(pid, 0)[1]
    results[module] = error or ("" if status == 0 else f"child ended with status {status}")
print(json.dumps(results))
"""


def _modules(package: str) -> list[str]:
    found = [package]
    for info in pkgutil.walk_packages([str(PACKAGES[package])], prefix=package + "."):
        found.append(info.name)
    return found


@functools.cache
def _import_each(modules: tuple[str, ...], blocked: frozenset[str] = frozenset()) -> dict:
    """{module: "" or the traceback of importing it first in a forked fresh interpreter}."""
    code = (BLOCKER.format(blocked=set(blocked)) if blocked else "") + FORK_EACH
    preload = [name for name in PRELOAD if name not in blocked]
    res = subprocess.run([sys.executable, "-W", "error", "-c", code, json.dumps(modules),
                          json.dumps(preload)], capture_output=True, text=True, cwd=ROOT,
                         timeout=900)
    if res.returncode != 0:  # e.g. a preloaded package warned: every module fails with it
        return {module: f"the import round failed:\n{res.stderr}" for module in modules}
    return json.loads(res.stdout.strip().splitlines()[-1])


def _first_import_error(module: str, modules: list[str], blocked=frozenset()) -> str:
    """The round over all of `modules` runs once (cached); this test reads its module's line."""
    return _import_each(tuple(modules), frozenset(blocked))[module][-2000:]


ALL = [m for p in PACKAGES for m in _modules(p)]
RUNTIME_MODULES = [m for p in RUNTIME for m in _modules(p)]
PLUGIN_MODULES = _modules("tal_plugins")


@pytest.mark.parametrize("module", ALL)
def test_module_imports_in_fresh_interpreter(module):
    error = _first_import_error(module, ALL)
    assert not error, error


@pytest.mark.parametrize("module", RUNTIME_MODULES)
def test_runtime_imports_without_torch_or_training_package(module):
    error = _first_import_error(module, RUNTIME_MODULES, {"torch", "tal_train", "tal_export"})
    assert not error, error


@pytest.mark.parametrize("module", PLUGIN_MODULES)
def test_plugins_sit_below_the_runtime(module):
    """DESIGN.md's import direction tal_plugins <- tal_infer: the op package imports no other
    package of the toolkit (and, like the runtime, not torch at import time)."""
    error = _first_import_error(module, PLUGIN_MODULES,
                                {"torch", "tal_infer", "tal_train", "tal_export"})
    assert not error, error


def test_a_broken_module_is_reported_with_its_traceback(tmp_path, monkeypatch):
    """The forked check can fail, and each child is fresh: a module that warns at import, and
    an import cycle that breaks only when ``b`` is imported first (so a child that inherited
    the earlier child's ``a`` would pass it)."""
    package = tmp_path / "cyclepkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("VALUE = 1\nfrom .b import helper\n")
    (package / "b.py").write_text("from .a import VALUE\n\ndef helper():\n    return VALUE\n")
    (tmp_path / "warns.py").write_text("import warnings\nwarnings.warn('at import')\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    results = _import_each(("cyclepkg", "cyclepkg.a", "cyclepkg.b", "warns"))
    assert results["cyclepkg"] == results["cyclepkg.a"] == ""
    assert "ImportError" in results["cyclepkg.b"] and "helper" in results["cyclepkg.b"]
    assert "UserWarning: at import" in results["warns"]


# Command modules (click entry points): what they import is free, nothing imports them.
COMMANDS = {"tal_train.cli", "tal_train.__main__", "tal_train.data.cli", "tal_export.cli",
            "tal_export.distill_cli", "tal_export.demo", "tal_infer.cli", "tal_infer.index_cli",
            "tal_infer.video.cli", "tal_infer.serve_cli", "tal_plugins.tune"}
TORCH_BACKEND = "tal_infer.torch_extractor"  # the one runtime module that may use model code


def _imported(module: str) -> set[str]:
    """Every module ``module`` imports anywhere in its source (functions included), as
    absolute names."""
    package, _, _ = module.rpartition(".")
    top = module.split(".")[0]
    path = PACKAGES[top] / Path(*module.split(".")[1:])
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = (module if path.name == "__init__.py" else package).split(".")
                parent = parent[:len(parent) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("module", [m for m in ALL if m not in COMMANDS])
def test_no_package_module_imports_a_command_module(module):
    assert not _imported(module) & COMMANDS


@pytest.mark.parametrize("module", [m for m in RUNTIME_MODULES if m != TORCH_BACKEND])
def test_runtime_core_never_imports_the_training_package_even_lazily(module):
    """tal_infer and tal_plugins run without the training code: only the optional torch
    backend rebuilds the network from its model definitions."""
    found = {name for name in _imported(module) if name.split(".")[0] in ("tal_train",
                                                                         "tal_export")}
    assert not found, found
