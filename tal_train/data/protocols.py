"""The paper's evaluation protocols (Sec. 4.2) as training sets split into source domains.

- ``p1`` (single-source DG): one source dataset; "as a single dataset does not naturally contain
  different domains, we split domains according to camera views", so domain i = camera i of the
  source (cameras present in its training split, in camid order). An identity keeps one label
  across camera-domains.
- ``p2`` (multi-source DG, leave-one-out): the target is held out and every other dataset under
  the data root (or the given `sources`) is one domain, in the order given (default: discovery
  order, `registry.discover_datasets`). Labels are made disjoint across datasets, since pids of
  different datasets name different people.

Labels are contiguous 0..N_ids-1 over the whole training set, in (domain, pid) order. Real
datasets and synthetic domains (Market-layout folders) are handled alike.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

from tal_infer.errors import DataError, TalError

from .records import Dataset, ImageRecord
from .registry import discover_datasets, resolve_dataset

PROTOCOLS = ("p1", "p2")


@dataclass(frozen=True, slots=True)
class TrainRecord:
    path: str
    label: int
    camid: int
    domain: int


@dataclass
class Protocol:
    """Training records split into source domains, and the datasets to evaluate on."""

    name: str
    domains: list[str]
    train: list[TrainRecord]
    targets: dict[str, Dataset] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)

    @property
    def num_domains(self) -> int:
        return len(self.domains)

    @property
    def num_ids(self) -> int:
        return len({r.label for r in self.train})


def _labelled(records: list[ImageRecord], domain_of: Callable[[ImageRecord], int],
              offset: int) -> tuple[list[TrainRecord], int]:
    """TrainRecords with pids mapped to offset.. in sorted order; returns them and the next free
    label."""
    labels = {pid: offset + i for i, pid in enumerate(sorted({r.pid for r in records}))}
    out = [TrainRecord(r.path, labels[r.pid], r.camid, domain_of(r)) for r in records]
    return out, offset + len(labels)


def _targets(data_root: str | os.PathLike, names: list[str]) -> dict[str, Dataset]:
    targets = {}
    for name in names:
        ds = resolve_dataset(data_root, name)
        if not ds.has_test:
            raise DataError(f"{ds.root}: dataset '{ds.name}' has no query/gallery split, so it "
                            "cannot be a target")
        targets[ds.name] = ds
    return targets


def _others(data_root: str | os.PathLike, exclude: set[str]) -> list[str]:
    return [f.name for f in discover_datasets(data_root) if f.name.lower() not in exclude]


def _nonempty_train(ds: Dataset) -> Dataset:
    if not ds.train:
        raise DataError(f"{ds.root}: dataset '{ds.name}' has no training images")
    return ds


def protocol_p1(data_root: str | os.PathLike, source: str,
                targets: list[str] | None = None) -> Protocol:
    src = _nonempty_train(resolve_dataset(data_root, source))
    cams = sorted({r.camid for r in src.train})
    domain_index = {cam: i for i, cam in enumerate(cams)}
    train, _ = _labelled(src.train, lambda r: domain_index[r.camid], 0)
    if targets is None:  # every other dataset that can be evaluated on
        others = (resolve_dataset(data_root, n)
                  for n in _others(data_root, {src.name.lower(), source.lower()}))
        tgt = {ds.name: ds for ds in others if ds.has_test}
    else:
        tgt = _targets(data_root, targets)
    return Protocol("p1", [f"{src.name}-c{c + 1}" for c in cams], train, tgt, [src.name])


def protocol_p2(data_root: str | os.PathLike, target: str,
                sources: list[str] | None = None) -> Protocol:
    tgt = _targets(data_root, [target])
    if sources is None:
        sources = _others(data_root, {target.lower(), *(n.lower() for n in tgt)})
    if not sources:
        raise DataError(f"{data_root}: protocol p2 needs at least one source dataset besides "
                        f"the target '{target}'")
    held_out = {target.lower(), *(n.lower() for n in tgt)}
    if any(n.lower() in held_out for n in sources):
        raise DataError(f"protocol p2: the target '{target}' cannot also be a source")
    train, offset, domains = [], 0, []
    for d, name in enumerate(sources):
        ds = _nonempty_train(resolve_dataset(data_root, name))
        records, offset = _labelled(ds.train, lambda r, d=d: d, offset)
        train += records
        domains.append(ds.name)
    if len(set(domains)) != len(domains):
        raise DataError(f"protocol p2: a source dataset is listed twice in {sources}")
    return Protocol("p2", domains, train, tgt, domains)


def build_protocol(name: str, data_root: str | os.PathLike, *, source: str | None = None,
                   targets: list[str] | None = None, target: str | None = None,
                   sources: list[str] | None = None) -> Protocol:
    """``build_protocol("p1", root, source=..., targets=[...])`` or
    ``build_protocol("p2", root, target=..., sources=None)``; see the module docstring."""
    if name == "p1":
        if source is None:
            raise TalError("protocol p1 needs a source dataset (--source)")
        return protocol_p1(data_root, source, targets)
    if name == "p2":
        if target is None:
            raise TalError("protocol p2 needs a target dataset (--target)")
        return protocol_p2(data_root, target, sources)
    raise TalError(f"unknown protocol '{name}' (valid: {', '.join(PROTOCOLS)})")
