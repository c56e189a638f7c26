"""One registry of datasets by name, and finding datasets under a ``--data-root``.

`build_dataset(name, root)` parses one dataset folder; `resolve_dataset(data_root, name)` finds
it first by the folder names the datasets ship with (table `FOLDER_NAMES`, matched
case-insensitively, first hit wins), or, for any other name, as the folder ``data_root/<name>``
in the Market-1501 layout (users' own data and synthetic domains).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, NamedTuple

from tal_infer.errors import DataError

from .market import is_market_layout, load_cuhk03, load_custom, load_market1501
from .msmt17 import load_msmt17, msmt17_version
from .randperson import load_randperson, parse_randperson_name, randperson_image_dir
from .records import Dataset

LOADERS: dict[str, Callable[[str | os.PathLike], Dataset]] = {
    "market1501": load_market1501,
    "msmt17": load_msmt17,
    "cuhk03": load_cuhk03,
    "randperson": load_randperson,
    "custom": load_custom,
}

# Folder names under --data-root, most specific first (torchreid / QAConv conventions included).
FOLDER_NAMES: dict[str, tuple[str, ...]] = {
    "market1501": ("Market-1501-v15.09.15", "market1501/Market-1501-v15.09.15", "Market-1501",
                   "market1501"),
    "msmt17": ("MSMT17_V2", "MSMT17_V1", "msmt17/MSMT17_V2", "msmt17/MSMT17_V1", "msmt17"),
    "cuhk03": ("cuhk03-np/detected", "cuhk03_np/detected", "cuhk03/cuhk03-np/detected",
               "cuhk03/detected"),
    "randperson": ("randperson_subset", "randperson/randperson_subset", "randperson"),
}


class FoundDataset(NamedTuple):
    name: str
    loader: str
    path: Path


def build_dataset(name: str, root: str | os.PathLike) -> Dataset:
    """Parse the dataset folder `root` with the loader registered as `name`."""
    loader = LOADERS.get(name.lower())
    if loader is None:
        raise DataError(f"unknown dataset '{name}' (valid: {', '.join(LOADERS)}; 'custom' reads "
                        "any folder in the Market-1501 layout)")
    return loader(root)


def _looks_like(name: str, folder: Path) -> bool:
    if name == "msmt17":
        return msmt17_version(folder) is not None and (folder / "list_train.txt").is_file()
    if name == "randperson":
        image_dir = randperson_image_dir(folder)
        with os.scandir(image_dir) as it:
            return any(parse_randperson_name(e.name) is not None for e in it)
    return is_market_layout(folder)


def _child(parent: Path, name: str) -> Path | None:
    """`parent/name` matching the name case-insensitively (exact match preferred)."""
    exact = parent / name
    if exact.is_dir():
        return exact
    if not parent.is_dir():
        return None
    for entry in sorted(parent.iterdir()):
        if entry.name.lower() == name.lower() and entry.is_dir():
            return entry
    return None


def find_known(data_root: Path, name: str) -> Path | None:
    """The folder of the registered dataset `name` under `data_root`, or None."""
    for rel in FOLDER_NAMES[name]:
        path: Path | None = data_root
        for part in rel.split("/"):
            path = _child(path, part) if path is not None else None
        if path is not None and _looks_like(name, path):
            return path
    return None


def discover_datasets(data_root: str | os.PathLike) -> list[FoundDataset]:
    """Every dataset under `data_root`: the registered ones by their folder names, then every
    other top-level folder in the Market-1501 layout (named after the folder)."""
    root = Path(data_root)
    if not root.is_dir():
        raise DataError(f"{root}: data root folder not found")
    found, claimed = [], set()
    for name in FOLDER_NAMES:
        path = find_known(root, name)
        if path is not None:
            found.append(FoundDataset(name, name, path))
            claimed.add(path.relative_to(root).parts[0])
    for child in sorted(root.iterdir()):
        if child.name not in claimed and child.is_dir() and is_market_layout(child):
            found.append(FoundDataset(child.name, "custom", child))
    return found


def resolve_dataset(data_root: str | os.PathLike, name: str) -> Dataset:
    """Find and parse the dataset `name` under `data_root` (see `FOLDER_NAMES`)."""
    root = Path(data_root)
    key = name.lower()
    if key in FOLDER_NAMES:
        path = find_known(root, key) if root.is_dir() else None
    else:
        path = _child(root, name)
    if path is None:
        listed = ", ".join(f.name for f in discover_datasets(root)) or "no datasets"
        looked = ", ".join(f + "/" for f in FOLDER_NAMES.get(key, (name,)))
        raise DataError(f"dataset '{name}' not found under {root} (looked for {looked}; found: "
                        f"{listed})")
    return build_dataset(key if key in FOLDER_NAMES else "custom", path)


def detect_loader(folder: Path) -> str | None:
    """The loader for a folder that is itself a dataset, None when it is not one."""
    if _looks_like("msmt17", folder):
        return "msmt17"
    if is_market_layout(folder):
        if folder.name.lower() in {r.split("/")[-1].lower() for r in FOLDER_NAMES["market1501"]}:
            return "market1501"
        if folder.name.lower() in ("detected", "labeled") and "cuhk03" in folder.parent.name.lower():
            return "cuhk03"
        return "custom"
    if folder.is_dir() and _looks_like("randperson", folder):
        return "randperson"
    return None
