"""Which gallery entries leave: metadata filters and retention cut-offs (docs/scale.md).

One `EntryFilter` serves the in-memory `Gallery` and the persistent `GalleryIndex`: every
condition it names must hold (camera, label, any extra metadata key, a timestamp before a
cut-off). An empty filter is refused, so a typo can never erase a whole gallery. The CLI
builds filters from ``--where KEY=VALUE`` (values read as JSON where they parse, else as
text: ``camera=3`` is the number 3, ``name=ann`` the text "ann") and ``--before TIME``; a key
given twice with different values can never hold and is refused.

Values compare with their type: ``true`` is not the number 1 (Python's ``True == 1`` would
erase label 1), while 17 and 17.0 are the same number. `require_keys` refuses a key no entry
has, which would otherwise select nothing without a word (``lable=17``).

Times and durations must be finite: every comparison with NaN is false, so a cut-off of NaN
(or infinity) would select every entry ("older than NaN") and erase the whole gallery.
"""
from __future__ import annotations

import datetime
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from .errors import TalError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


@dataclass(frozen=True)
class EntryFilter:
    """Entries whose metadata equals every item of ``fields`` and, with ``before``, whose
    timestamp is earlier (entries without a timestamp never match ``before``)."""
    fields: Mapping[str, Any] = field(default_factory=dict)
    before: float | None = None

    def __post_init__(self) -> None:
        if not self.fields and self.before is None:
            raise TalError("a removal filter needs at least one condition (a field value or a "
                           "time); refusing to select every entry")
        if self.before is not None and not math.isfinite(self.before):
            raise TalError(f"a removal cut-off must be a finite time, not {self.before}")

    def matches(self, metadata: Mapping[str, Any], timestamp: float | None) -> bool:
        if self.before is not None and (timestamp is None or math.isnan(timestamp)
                                        or timestamp >= self.before):
            return False
        return all(key in metadata and _same(metadata[key], value)
                   for key, value in self.fields.items())

    def require_keys(self, known: Iterable[str]) -> None:
        """`TalError` for a field that is none of the ``known`` keys (the entries' fields)."""
        known = sorted(set(known))
        for key in self.fields:
            if key not in known:
                raise TalError(f"unknown filter key {key!r} (the entries have "
                               f"{', '.join(known) or 'no fields'})")

    @classmethod
    def parse(cls, where: Iterable[str], before: str | None = None) -> "EntryFilter":
        """From ``KEY=VALUE`` strings and a time (`parse_time`); `TalError` on bad syntax or a
        key given twice with different values."""
        fields: dict[str, Any] = {}
        for item in where:
            key, sep, text = item.partition("=")
            key, value = key.strip(), _value(text)
            if not sep or not key:
                raise TalError(f"--where {item!r}: expected KEY=VALUE, e.g. camera=3")
            if key in fields and not _same(fields[key], value):
                raise TalError(f"--where {key}={json.dumps(fields[key])} and "
                               f"{key}={json.dumps(value)}: an entry has one {key}, so both "
                               "cannot hold (every --where must hold); run one command per "
                               "value")
            fields[key] = value
        return cls(fields, None if before is None else parse_time(before))


def _same(a: Any, b: Any) -> bool:
    """Equal as metadata values: a boolean equals only a boolean."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_time(text: str) -> float:
    """Seconds since the epoch from a finite number or an ISO 8601 date/time (UTC unless it
    says)."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = _iso_time(text)
    if seconds is None or not math.isfinite(seconds):
        raise TalError(f"{text!r} is not a time: give seconds since the epoch or an ISO 8601 "
                       "date, e.g. 2026-11-30 or 2026-11-30T08:00:00+01:00")
    return seconds


def _iso_time(text: str) -> float | None:
    try:
        moment = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.timestamp()


def parse_duration(text: str) -> float:
    """Seconds from ``90``, ``90s``, ``15m``, ``12h``, ``30d`` or ``2w`` (finite)."""
    m = _DURATION.match(text)
    seconds = None if m is None else float(m.group(1)) * _SECONDS[m.group(2)]
    if seconds is None or not math.isfinite(seconds):
        raise TalError(f"{text!r} is not a duration: a number with s, m, h, d or w, e.g. 30d")
    return seconds
