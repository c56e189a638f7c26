"""The root error of the toolkit, defined here because tal_plugins is the bottom of the import
graph (tal_plugins <- tal_infer <- tal_export; tal_train -> tal_infer), so every package can
raise it without importing upward. `tal_infer.errors` re-exports it with its subclasses.
"""
from __future__ import annotations


class TalError(Exception):
    """An error caused by the user's input (bad file, wrong option, missing data): one readable
    line that the CLIs print without a traceback."""
