"""Optional modules that the test extra installs (``pip install -e '.[test]'``): a test that
needs one fails where it is missing instead of skipping, so a broken install cannot pass with
tests silently left out (CI runs the README's install and test command). To leave such tests
out on purpose (a runtime-only machine), name the modules in ``TAL_TESTS_WITHOUT``
(comma-separated, e.g. ``TAL_TESTS_WITHOUT=faiss``); they are then skipped, saying why.
"""
from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

# module -> what installs it
TEST_EXTRA = {"faiss": "faiss-cpu"}


def require(module: str) -> ModuleType:
    """``module`` imported; at module level in a test file, a collection error (or a skip,
    when ``TAL_TESTS_WITHOUT`` names it) where it cannot be imported."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        if module in os.environ.get("TAL_TESTS_WITHOUT", "").replace(" ", "").split(","):
            pytest.skip(f"{module} left out on purpose (TAL_TESTS_WITHOUT)",
                        allow_module_level=True)
        pytest.fail(f"{module} cannot be imported ({err}) although the test extra installs "
                    f"it ({TEST_EXTRA.get(module, module)}): pip install -e '.[test]', or set "
                    f"TAL_TESTS_WITHOUT={module} to leave its tests out on purpose",
                    pytrace=False)


def blocking(module: str) -> str:
    """Python code that, run first in a fresh interpreter, makes ``import module`` fail as
    it does where the module is not installed (for tests of that case)."""
    return f"""
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] == {module!r}:
            raise ModuleNotFoundError('blocked for this test: {module}')
sys.meta_path.insert(0, _Block())
"""
