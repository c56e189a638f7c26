"""Uniform records that every dataset loader produces (torchreid style: loaders only parse).

A loader turns a folder in its native layout into a `Dataset` of `ImageRecord`s; everything
downstream (protocols, samplers, evaluation) sees only these records, never the layout.
Cameras are 0-based; `domain` is the name of the dataset the image came from; `timestamp` is in
seconds on that camera's clock where the format carries one (see docs/data.md), else None.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

SPLITS = ("train", "query", "gallery")


@dataclass(frozen=True, slots=True)
class ImageRecord:
    path: str
    pid: int
    camid: int
    domain: str
    timestamp: float | None = None


@dataclass
class Dataset:
    """One dataset: a training split and an evaluation split (query + gallery)."""

    name: str
    root: Path
    train: list[ImageRecord] = field(default_factory=list)
    query: list[ImageRecord] = field(default_factory=list)
    gallery: list[ImageRecord] = field(default_factory=list)

    @property
    def has_test(self) -> bool:
        """Whether the dataset can be an evaluation target (RandPerson, for one, cannot)."""
        return bool(self.query) and bool(self.gallery)

    def split(self, name: str) -> list[ImageRecord]:
        return {"train": self.train, "query": self.query, "gallery": self.gallery}[name]

    def summary(self) -> dict[str, dict[str, int]]:
        """Identities, images and cameras per split (distractor pid 0 counts as one identity,
        as in the usual Market-1501 statistics)."""
        out = {}
        for split in SPLITS:
            records = self.split(split)
            out[split] = {"ids": len({r.pid for r in records}), "images": len(records),
                          "cameras": len({r.camid for r in records})}
        return out


def format_summaries(datasets: list[Dataset]) -> str:
    """A plain-text table of `Dataset.summary()` for one or more datasets."""
    rows = [("dataset", "split", "ids", "images", "cameras")]
    for ds in datasets:
        for i, (split, s) in enumerate(ds.summary().items()):
            rows.append((ds.name if i == 0 else "", split, str(s["ids"]), str(s["images"]),
                         str(s["cameras"])))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = []
    for r in rows:
        cells = [r[0].ljust(widths[0]), r[1].ljust(widths[1])]
        cells += [r[c].rjust(widths[c]) for c in range(2, len(r))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
