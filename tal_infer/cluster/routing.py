"""Where an entry lives, and how the shards' answers become one ranking.

An entry's key is its path in its shard's `GalleryIndex` (absolute; crops added through the
service are stored under their shard by content hash). `shard_of` maps a routing key (the file
path, or a crop's SHA-256) to a shard with SHA-256, so the rule is the same in every process
and on every machine (Python's ``hash`` is salted per process): re-adding a crop reaches the
shard that holds it, and a shard can be rebuilt alone from the files that route to it.

`merge` keeps the global top-k of the shards' top-k lists, ordered by score (higher first),
then by key. A `GalleryIndex` lists entries sorted by path and `TopK` breaks ties by the lower
column, i.e. the smaller path: ordering by key is exactly the tie rule of one index holding
every entry, so exhaustive search over shards returns the single-index ranking.
"""
from __future__ import annotations

import hashlib
import heapq
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence


def shard_of(routing_key: str, shards: int) -> int:
    """The shard (0..shards-1) of a routing key: the first 8 bytes of its SHA-256, mod N."""
    digest = hashlib.sha256(routing_key.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") % shards


@dataclass(frozen=True)
class Hit:
    """One gallery entry found for a query, with what the index records about it."""
    key: str
    score: float
    camera: int | None = None
    timestamp: float | None = None
    label: Any = None
    meta: dict = field(default_factory=dict)

    def order(self) -> tuple[float, str]:
        """The global ranking order: score descending, then key (see the module doc)."""
        return (-self.score, self.key)


def merge(per_shard: Sequence[Sequence[Sequence[Hit]]], k: int) -> list[list[Hit]]:
    """Per query, the best ``k`` of every shard's list (each already best first)."""
    if not per_shard:
        return []
    queries = len(per_shard[0])
    return [_best(k, (lists[q] for lists in per_shard)) for q in range(queries)]


def _best(k: int, lists: Iterable[Sequence[Hit]]) -> list[Hit]:
    return heapq.nsmallest(k, (hit for hits in lists for hit in hits), key=Hit.order)
