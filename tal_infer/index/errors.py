"""Errors of the gallery index, kept apart so the catalog and the feature store can raise them."""
from __future__ import annotations

import os

from ..errors import TalError


class GalleryIndexError(TalError):
    """An index folder that cannot be used (not an index, busy, unreadable)."""


class IndexMismatchError(GalleryIndexError):
    """The index was built for another model, other feature shapes or another format."""


class IndexDamagedError(GalleryIndexError):
    """The index's files disagree with its catalog (short feature file, unreadable catalog).

    Never used silently: every open and every append checks for it. Rebuilding (``rebuild=True``,
    ``tal-infer --rebuild-index``) starts the index over from the gallery files.
    """


def damaged(folder: str | os.PathLike, what: str) -> IndexDamagedError:
    """The one-line error for a damaged index: the folder, what is wrong, what to do."""
    return IndexDamagedError(f"{folder}: index is damaged: {what}; rebuild it")
