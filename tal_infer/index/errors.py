"""Errors of the gallery index, kept apart so every module of the index can raise them."""
from __future__ import annotations

import errno
import os

from ..errors import TalError

# errno values that mean the file system is full (the device, or this user's quota)
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class GalleryIndexError(TalError):
    """An index folder that cannot be used (not an index, busy, unreadable, disk full)."""


class IndexMismatchError(GalleryIndexError):
    """The index was built for another model, other feature shapes or another format."""


class IndexDamagedError(GalleryIndexError):
    """The index's files disagree with its catalog (short feature file, unreadable catalog,
    non-finite feature values).

    Never used silently: every open and every append checks for it. Rebuilding (``rebuild=True``,
    ``tal-infer --rebuild-index``) starts the index over from the gallery files.
    """


def damaged(folder: str | os.PathLike, what: str) -> IndexDamagedError:
    """The one-line error for a damaged index: the folder, what is wrong, what to do."""
    return IndexDamagedError(f"{folder}: index is damaged: {what}; rebuild it")


def no_space(folder: str | os.PathLike, what: str) -> GalleryIndexError:
    """The one-line error for a full disk while writing ``what`` of the index in ``folder``.
    Every write is made durable before the catalog commit that uses it, so what was committed
    before stays as it was."""
    return GalleryIndexError(f"no space left on {folder} (writing {what}); the index keeps what "
                             "was committed before: free some space and run the command again")


def write_error(folder: str | os.PathLike, what: str, err: OSError) -> GalleryIndexError:
    """One line for a failed write of ``what`` (feature files, catalog) in the index ``folder``."""
    if err.errno in _NO_SPACE:
        return no_space(folder, what)
    return GalleryIndexError(f"{folder}: cannot write the index's {what} "
                             f"({err.strerror or err})")
