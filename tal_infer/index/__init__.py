"""Persistent gallery index: fp16 memory-mapped features + SQLite metadata (see `gallery`)."""
from __future__ import annotations

from .catalog import IndexRecord
from .errors import GalleryIndexError, IndexDamagedError, IndexMismatchError
from .gallery import (GalleryIndex, IndexContents, RemovalReport, SyncReport, entry_time,
                      market_metadata, record_matches)

__all__ = ["GalleryIndex", "GalleryIndexError", "IndexContents", "IndexDamagedError",
           "IndexMismatchError", "IndexRecord", "RemovalReport", "SyncReport", "entry_time",
           "market_metadata", "record_matches"]
