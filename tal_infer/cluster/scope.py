"""Which gallery entries a search may return: "cameras 3-7, between t1 and t2, track 12".

A `Scope` is applied on each shard before its top-k (`Shard.search`), so a filtered search
returns the best k entries that pass, never fewer because better ones elsewhere were cut. Its
time is `tal_infer.index.entry_time` (an entry's timestamp, or its file's modification time),
the clock of retention; its fields compare like `tal_infer.lifecycle.EntryFilter` (camera,
label and extra metadata keys, by equality).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from ..errors import TalError
from ..index import IndexRecord, entry_time


@dataclass(frozen=True)
class Scope:
    """Entries from ``cameras`` (None: any), seen in ``[since, until]`` (None: open), whose
    metadata equals every item of ``fields``."""
    cameras: frozenset[int] | None = None
    since: float | None = None
    until: float | None = None
    fields: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.since is not None and self.until is not None and self.since > self.until:
            raise TalError(f"time window: since ({self.since}) is after until ({self.until})")

    @classmethod
    def of(cls, cameras: Iterable[int] | None = None, since: float | None = None,
           until: float | None = None, fields: Mapping[str, Any] | None = None
           ) -> "Scope | None":
        """A scope, or None when nothing restricts the search."""
        if cameras is None and since is None and until is None and not fields:
            return None
        return cls(None if cameras is None else frozenset(int(c) for c in cameras),
                   since, until, dict(fields or {}))

    def selects(self, record: IndexRecord) -> bool:
        if self.cameras is not None and record.camera not in self.cameras:
            return False
        if self.since is not None or self.until is not None:
            seen = entry_time(record)
            if (self.since is not None and seen < self.since) or (
                    self.until is not None and seen > self.until):
                return False
        values = {**record.extra, "camera": record.camera, "label": record.label}
        return all(key in values and values[key] == value for key, value in self.fields.items())
