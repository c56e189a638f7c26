"""User-facing errors shared by every tal-reid command.

A `TalError` carries one readable line (what went wrong and which file); the CLIs print it and
exit non-zero without a traceback. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

from tal_plugins.errors import TalError

__all__ = ["TalError", "BundleError", "UnsafeBundleError", "DataError"]


class BundleError(TalError):
    """A missing, corrupt or incompatible export bundle."""


class UnsafeBundleError(BundleError):
    """Bundle content refused because loading it could run code (a pickle, a library, an
    operator that touches files): the bundle is refused, never worked around."""


class DataError(TalError):
    """A missing dataset folder, malformed file name or unreadable image."""
