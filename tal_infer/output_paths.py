"""Output paths of a run, checked before any work so a bad one fails in seconds, not after an
hour of extraction and matching, and written without tracebacks.

An output file needs a known suffix, an existing folder to live in, and must not be a folder;
an output folder may be new (it is created with its parents) but must not be a file. In both
cases a throw-away file is created and removed where the output will go, since permission bits
do not tell (root, read-only mounts, /proc). No output may lie inside an input folder
(`check_apart`): ``--out BUNDLE/manifest.json`` would overwrite the model, and a report written
into the gallery folder would be counted as gallery images by the next run.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import TalError


def check_output_file(path: Path | None, option: str, suffixes: tuple[str, ...]) -> None:
    """Raise `TalError` (``"--out x: ..."``) unless ``path`` can be written as that output."""
    if path is None:
        return
    if path.suffix.lower() not in suffixes:
        raise TalError(f"{option} {path}: use a {' or '.join(suffixes)} file name")
    if path.is_dir():
        raise TalError(f"{option} {path}: is a folder; name a file")
    folder = path.parent
    if not folder.is_dir():
        what = f"{folder} is not a folder" if folder.exists() else f"folder {folder} does not exist"
        raise TalError(f"{option} {path}: {what}")
    if path.exists() and not path.is_file():
        raise TalError(f"{option} {path}: not a regular file")
    _probe(folder, option, path)


def check_output_folder(path: Path | None, option: str) -> None:
    """Raise `TalError` unless ``path`` is or can become a writable folder."""
    if path is None:
        return
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "" if existing == path else f" ({existing} is not a folder)"
        raise TalError(f"{option} {path}: is not a folder{where}")
    _probe(existing, option, path)


def check_apart(outputs: dict[str, Path | None], inputs: dict[str, Path | None]) -> None:
    """Raise `TalError` when an output (option -> path) is, or lies inside, an input folder
    (what -> folder), symlinks resolved."""
    for option, out in outputs.items():
        if out is None:
            continue
        target = out.resolve()
        for what, folder in inputs.items():
            if folder is None:
                continue
            base = folder.resolve()
            if target == base or base in target.parents:
                raise TalError(f"{option} {out}: lies inside the {what} {folder}; write "
                               "outputs elsewhere")


@contextlib.contextmanager
def writing(path: Path, option: str) -> Iterator[None]:
    """Turn a failed write (disk full, removed folder) into one `TalError` line."""
    try:
        yield
    except OSError as err:
        raise TalError(f"{option} {path}: cannot be written ({err.strerror or err})") from None


def _probe(folder: Path, option: str, path: Path) -> None:
    """Create and remove a file in ``folder`` (an existing output file is opened for append,
    which changes nothing)."""
    try:
        if path.is_file():
            with open(path, "ab"):
                pass
            return
        fd, name = tempfile.mkstemp(prefix=".tal-write-check-", dir=folder)
        os.close(fd)
        os.unlink(name)
    except OSError as err:
        raise TalError(f"{option} {path}: cannot write there ({err.strerror or err})") from None
