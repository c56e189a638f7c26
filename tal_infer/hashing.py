"""Content hashes of files: bundle file lists, the gallery index's change detection."""
from __future__ import annotations

import hashlib
import os

from .user_files import iter_regular


def file_sha256(path: str | os.PathLike, limit: int | None = None) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks (bundles hold 100+ MB graphs).

    Only regular files of at most ``limit`` bytes (None: any size) are hashed
    (`user_files.iter_regular`): a FIFO in a gallery would block the read for ever and a link
    to /dev/zero would never end. Raises `UserFileError`, which is an `OSError`.
    """
    digest = hashlib.sha256()
    for block in iter_regular(path, limit):
        digest.update(block)
    return digest.hexdigest()
