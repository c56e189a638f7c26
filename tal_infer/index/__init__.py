"""Persistent gallery index: memory-mapped features + SQLite metadata (see `gallery`)."""
from __future__ import annotations

from .catalog import IndexRecord
from .contents import IndexContents
from .errors import GalleryIndexError, IndexDamagedError, IndexMismatchError
from .gallery import GalleryIndex
from .maintenance import RemovalReport, entry_time, record_matches
from .sync import SyncReport, market_metadata

__all__ = ["GalleryIndex", "GalleryIndexError", "IndexContents", "IndexDamagedError",
           "IndexMismatchError", "IndexRecord", "RemovalReport", "SyncReport", "entry_time",
           "market_metadata", "record_matches"]
