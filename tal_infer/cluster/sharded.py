"""`ShardedGallery`: a gallery split over N shards, each a `Shard` run by one Ray actor.

    gallery = ShardedGallery("galleries/city", "export/demo", shards=4)   # local Ray, or
    gallery = ShardedGallery(root, bundle, address="ray://head:10001")   # a cluster
    gallery.add_files(paths)                                # routed by path (`routing`)
    found = gallery.search(engine.embed(crops), RetrievalOptions(topk=10, candidates=200),
                           scope=Scope.of(cameras=range(3, 8), since=t1, until=t2))
    found.hits[0][0].key, found.missing                     # missing: shards that did not answer

Layout: ``<root>/cluster.json`` (the shard count, fixed when the root is made: changing it
would move entries between shards, so a root with another count is refused) and
``<root>/shard-<i>/`` per shard (`shard`). Each actor runs where Ray places it (``placement``:
CPUs, GPUs, custom resources that pin a shard to the node holding its disk); every node that
may run a shard must see its folder and the bundle at the same path.

Faults: the actors restart without limit (``max_restarts=-1``) and reopen their index; their
calls are retried after a restart (``max_task_retries=-1``), which is safe because every write
is idempotent (`Shard.add` is a sync to a set of files, removals by key or filter). A write
waits at most ``write_timeout_s`` for its acknowledgement, or raises: acknowledged writes are
committed, unacknowledged ones may or may not be (a retry is safe). A search waits at most
``search_timeout_s`` for every shard, then returns what the others found with the missing
shards named in `ShardedResult.missing` (``strict=True``: raises instead), never silently
fewer.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..atomic import atomic_file
from ..errors import TalError
from ..features import Features, num_items, stack_features
from ..index import market_metadata
from ..lifecycle import EntryFilter
from ..retrieval import RetrievalOptions, query_cameras
from .ray_support import connect
from .routing import Hit, merge, shard_of
from .scope import Scope
from .shard import AddReport, Shard, ShardSearch

LAYOUT = "cluster.json"


@dataclass(frozen=True)
class Placement:
    """Ray resources of each shard actor. CPUs default to 0 (a shard mostly waits on its
    disk; on one machine every shard fits); give a GPU per shard where matching runs there."""
    num_cpus: float = 0
    num_gpus: float = 0
    resources: Mapping[str, float] = field(default_factory=dict)


@dataclass
class ShardedResult:
    """Per query, the global top-k; ``missing`` names the shards that did not answer in time
    (their entries are absent from ``hits``)."""
    hits: list[list[Hit]]
    missing: list[str] = field(default_factory=list)

    @property
    def partial(self) -> bool:
        return bool(self.missing)


class ShardedGallery:
    """A gallery of ``shards`` shards under ``root`` for the bundle ``bundle`` (module doc)."""

    def __init__(self, root: str | os.PathLike, bundle: str | os.PathLike,
                 shards: int | None = None, *, address: str | None = None,
                 placement: Placement = Placement(), backend: str = "auto",
                 device: str = "auto", search_timeout_s: float = 30.0,
                 write_timeout_s: float = 600.0):
        self.ray = connect(address)
        self.root = Path(root).absolute()
        self.bundle = str(Path(bundle).absolute())
        self.count = _layout(self.root, shards)
        self.search_timeout_s, self.write_timeout_s = search_timeout_s, write_timeout_s
        actor = self.ray.remote(Shard).options(
            max_restarts=-1, max_task_retries=-1, num_cpus=placement.num_cpus,
            num_gpus=placement.num_gpus, resources=dict(placement.resources))
        self.names = [f"shard-{i}" for i in range(self.count)]
        self.actors = [actor.remote(str(self.root / name), self.bundle, backend=backend,
                                    device=device) for name in self.names]
        self.check()  # each shard opened its index (or one line says why not)

    # -- writes ---------------------------------------------------------------------------

    def add_files(self, paths: Sequence[str | os.PathLike], features: Features | None = None,
                  metadata: Sequence[Mapping[str, Any]] | None = None) -> AddReport:
        """Index image files, each on the shard its absolute path routes to, with ``features``
        (rows in ``paths`` order; None: each shard extracts) and metadata (None: camera and
        label from Market-1501-style names)."""
        keys = [os.path.abspath(os.fspath(p)) for p in paths]
        metadata = [market_metadata(k) for k in keys] if metadata is None else list(metadata)
        return self.add_routed(keys, [shard_of(k, self.count) for k in keys], features,
                               metadata)

    def add_routed(self, keys: Sequence[str], shards: Sequence[int],
                   features: Features | None, metadata: Sequence[Mapping[str, Any]]
                   ) -> AddReport:
        """Add entries whose shard is already decided (``shards[i]`` for ``keys[i]``)."""
        calls = []
        for i, actor in enumerate(self.actors):
            rows = [j for j, s in enumerate(shards) if s == i]
            if rows:
                part = None if features is None else {k: v[rows] for k, v in features.items()}
                calls.append((self.names[i], actor.add.remote(
                    [keys[j] for j in rows], part, [metadata[j] for j in rows])))
        report = AddReport()
        for one in self._acknowledged(calls, "add"):
            report.added += one.added
            report.updated += one.updated
            report.unchanged += one.unchanged
            report.skipped += one.skipped
        return report

    def add_crops(self, crops: Sequence[bytes], suffixes: Sequence[str], features: Features,
                  metadata: Sequence[Mapping[str, Any]]) -> list[str]:
        """Store encoded crops on the shards their SHA-256 routes to and index them with their
        ``features`` (rows in order); returns their keys. The same bytes again are the same
        entry (idempotent; new metadata replaces the old)."""
        shards = [shard_of(hashlib.sha256(c).hexdigest(), self.count) for c in crops]
        stored = [self.actors[s].store_crop.remote(c, x) for c, x, s in
                  zip(crops, suffixes, shards)]
        keys = self._get(stored, self.write_timeout_s, "store crops",
                         [self.names[s] for s in shards])
        self.add_routed(keys, shards, features, metadata)
        return keys

    def remove(self, keys: Iterable[str]) -> list[str]:
        """Erase entries by key on every shard (unknown keys ignored); the keys erased."""
        keys = list(keys)
        return self._everywhere("remove", lambda actor: actor.remove.remote(keys))

    def remove_where(self, entries: EntryFilter) -> list[str]:
        """Erase the entries a filter selects, on every shard (`GalleryIndex.remove_where`).
        A key that no entry of any shard has is refused, as one index refuses it; shards
        whose entries lack one of the keys hold nothing it selects and are left alone."""
        fields = self._get([a.fields.remote() for a in self.actors], self.write_timeout_s,
                           "list fields")
        entries.require_keys(set().union(*fields))
        concerned = [a for a, known in zip(self.actors, fields) if set(entries.fields) <= known]
        done = self._get([a.remove_where.remote(entries) for a in concerned],
                         self.write_timeout_s, "remove",
                         [n for n, known in zip(self.names, fields)
                          if set(entries.fields) <= known])
        return sorted(k for part in done for k in part)

    def drop_older_than(self, cutoff: float) -> list[str]:
        """Retention on every shard: erase entries seen before ``cutoff``."""
        return self.remove_where(EntryFilter(before=cutoff))

    # -- reads ----------------------------------------------------------------------------

    def check(self) -> dict[str, int]:
        """{shard: entries} after every shard's integrity checks (`IndexDamagedError` names
        the damaged shard's folder)."""
        return dict(zip(self.names, self._get([a.check.remote() for a in self.actors],
                                              self.write_timeout_s, "check")))

    def indexed(self) -> dict[str, tuple[int, int]]:
        """{key: (size, mtime_ns)} over all shards."""
        found: dict[str, tuple[int, int]] = {}
        for part in self._get([a.indexed.remote() for a in self.actors], self.write_timeout_s,
                              "list entries"):
            found.update(part)
        return found

    def stats(self) -> dict[str, Any]:
        shards = self._get([a.stats.remote() for a in self.actors], self.search_timeout_s,
                           "stats")
        return {"shards": dict(zip(self.names, shards)),
                "entries": sum(s["entries"] for s in shards)}

    def unanswered(self, timeout_s: float) -> list[str]:
        """The shards that do not answer within ``timeout_s`` (restarting, or on a lost
        node)."""
        return self._gather([a.stats.remote() for a in self.actors], timeout_s, self.names)[1]

    def features(self, keys: Sequence[str]) -> Features:
        """Features of stored entries, in ``keys`` order (to search with them as queries);
        `TalError` naming a key no shard holds."""
        parts = self._get([a.features.remote(list(keys)) for a in self.actors],
                          self.search_timeout_s, "read entries")
        rows: dict[str, tuple[Features, int]] = {}
        for found, feats in parts:
            rows.update({k: (feats, i) for i, k in enumerate(found)})
        absent = [k for k in keys if k not in rows]
        if absent:
            raise TalError(f"no shard holds the entry {absent[0]!r}")
        return stack_features([{n: v[rows[k][1]:rows[k][1] + 1] for n, v in rows[k][0].items()}
                               for k in keys])

    def search(self, queries: Features, options: RetrievalOptions = RetrievalOptions(),
               query_cams: Iterable[int] | int | None = None, scope: Scope | None = None,
               timeout_s: float | None = None, strict: bool = False) -> ShardedResult:
        """Per query, the global top ``options.topk`` (module doc). ``query_cams`` with
        ``options.exclude_same_camera`` leaves out each query's own camera."""
        if options.rerank:
            raise TalError("k-reciprocal re-ranking needs the whole gallery's neighbourhoods "
                           "and is not offered on a sharded gallery")
        n = num_items(queries)
        if n == 0:
            return ShardedResult([])
        cams = None if query_cams is None else query_cameras(query_cams, n)
        # pair-stable scores: a shard's matching blocks hold other entries than one index's
        request = ShardSearch(replace(options, stable_scores=True), cams, scope)
        shared = self.ray.put(queries)
        refs = [a.search.remote(shared, request) for a in self.actors]
        answers, missing = self._gather(refs, self.search_timeout_s if timeout_s is None
                                        else timeout_s, self.names)
        if missing and strict:
            raise TalError(f"no answer from {', '.join(missing)} within the time allowed")
        return ShardedResult(merge([a for a in answers if a is not None], options.topk)
                             if any(a is not None for a in answers) else [[] for _ in range(n)],
                             missing)

    # -- Ray plumbing ---------------------------------------------------------------------

    def _gather(self, refs: list, timeout_s: float, names: list[str]
                ) -> tuple[list, list[str]]:
        """(answers, None where a shard did not answer), and the names (``names[i]`` is the
        shard of ``refs[i]``) of those shards."""
        ready, _ = self.ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        ready = set(ready)
        answers, missing = [], []
        for name, ref in zip(names, refs):
            answer = None
            if ref in ready:
                try:
                    answer = self.ray.get(ref)
                except self.ray.exceptions.RayTaskError as err:
                    if isinstance(err.cause, TalError):  # a user's error: one line here
                        raise TalError(str(err.cause)) from None
                    raise
                except self.ray.exceptions.RayActorError as err:
                    if getattr(err, "actor_init_failed", False):
                        raise TalError(f"{name} cannot start: {_first_line(err)}") from None
                    answer = None
            answers.append(answer)
            if answer is None:
                missing.append(name)
        return answers, missing

    def _acknowledged(self, calls: list[tuple[str, Any]], what: str) -> list:
        return self._get([ref for _, ref in calls], self.write_timeout_s, what,
                         [name for name, _ in calls])

    def _get(self, refs: list, timeout_s: float, what: str,
             names: list[str] | None = None) -> list:
        """Every answer, or one `TalError` line naming the shards that gave none in time."""
        names = names or self.names
        answers, missing = self._gather(refs, timeout_s, names)
        if missing:
            raise TalError(f"{what}: no acknowledgement from {', '.join(missing)} within "
                           f"{timeout_s:g} s (writes are idempotent: retrying is safe)")
        return answers

    def _everywhere(self, what: str, call) -> list[str]:
        done = self._get([call(a) for a in self.actors], self.write_timeout_s, what)
        return sorted(k for part in done for k in part)


def _layout(root: Path, shards: int | None) -> int:
    """The shard count of ``root``: recorded when the root is made, checked after."""
    layout = root / LAYOUT
    if layout.is_file():
        try:
            recorded = int(json.loads(layout.read_text())["shards"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise TalError(f"{layout}: unreadable ({err})") from None
        if shards is not None and shards != recorded:
            raise TalError(f"{root} holds a gallery of {recorded} shards, not {shards} (entries "
                           "are placed by the count: build a new gallery to change it)")
        return recorded
    if shards is None or shards < 1:
        raise TalError(f"{root}: no sharded gallery there yet; give the number of shards (>= 1)")
    root.mkdir(parents=True, exist_ok=True)
    with atomic_file(layout, "w") as f:
        f.write(json.dumps({"shards": shards}) + "\n")
    return shards


def _first_line(err: Exception) -> str:
    """The last line of a remote error's message that names an error (Ray wraps the shard's
    exception with its traceback)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    named = [line for line in lines if "Error:" in line]
    return (named or lines or [type(err).__name__])[-1]
