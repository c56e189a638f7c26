"""User-facing errors shared by every tal-reid command.

A `TalError` carries one readable line (what went wrong and which file); the CLIs print it and
exit non-zero without a traceback. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

from tal_plugins.errors import TalError

__all__ = ["TalError", "BundleError", "DataError", "brief"]


class BundleError(TalError):
    """A missing, corrupt or incompatible export bundle."""


class DataError(TalError):
    """A missing dataset folder, malformed file name or unreadable image."""


def brief(err: BaseException, limit: int = 300) -> str:
    """The first line of another library's error message, cut at a word boundary when longer
    than ``limit`` characters (some runtimes put a whole graph dump in one message)."""
    lines = str(err).strip().splitlines()
    line = lines[0] if lines else type(err).__name__
    if len(line) <= limit:
        return line
    return line[:limit].rsplit(" ", 1)[0] + " ..."
