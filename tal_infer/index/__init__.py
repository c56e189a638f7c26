"""Persistent gallery index: fp16 memory-mapped features + SQLite metadata (see `gallery`)."""
from __future__ import annotations

from .catalog import IndexRecord
from .gallery import (GalleryIndex, GalleryIndexError, IndexContents, IndexMismatchError,
                      SyncReport, market_metadata)

__all__ = ["GalleryIndex", "GalleryIndexError", "IndexContents", "IndexMismatchError",
           "IndexRecord", "SyncReport", "market_metadata"]
