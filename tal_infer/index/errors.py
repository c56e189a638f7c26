"""Errors of the gallery index, kept apart so the catalog and the feature store can raise them."""
from __future__ import annotations

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
