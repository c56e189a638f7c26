"""Content hashes of files: bundle file lists, the gallery index's change detection."""
from __future__ import annotations

import hashlib
import os

from .user_files import open_regular


def file_sha256(path: str | os.PathLike, limit: int | None = None) -> str:
    """Hex SHA-256 of a regular file's bytes (at most ``limit``), read in 1 MiB blocks
    (bundles hold 100+ MB graphs); `UserFileError` for a FIFO, a device or an oversized file."""
    digest = hashlib.sha256()
    with open_regular(path, limit) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
