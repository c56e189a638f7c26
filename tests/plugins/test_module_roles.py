"""No module of tal_plugins imports one of its command-line modules (those run as
``python -m tal_plugins.NAME``): a package module that needs what a command does imports the
module the command is built on (the kernel's autotuning imports plugins/timing.py, not the
tune command)."""
from __future__ import annotations

import ast
from pathlib import Path

PLUGINS = Path(__file__).resolve().parents[2] / "plugins"


def _is_command(tree: ast.Module) -> bool:
    return any(isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)
               for node in tree.body)


def _imported(tree: ast.Module) -> set[str]:
    """Names of tal_plugins modules imported anywhere in the module (also inside functions)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif node.level == 1:
                found.update(alias.name for alias in node.names)
            elif node.module and node.module.startswith("tal_plugins."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names
                         if a.name.startswith("tal_plugins."))
    return found


def test_no_package_module_imports_a_command_module():
    trees = {path.stem: ast.parse(path.read_text()) for path in PLUGINS.glob("*.py")}
    commands = {name for name, tree in trees.items() if _is_command(tree)}
    assert "tune" in commands  # the check sees the command it guards
    importers = {name: sorted(_imported(tree) & commands) for name, tree in trees.items()
                 if name not in commands and _imported(tree) & commands}
    assert importers == {}
