"""Crash-safe creation of user output (checkpoints, run logs, bundle folders) under the umask.

`tempfile.mkstemp` / `mkdtemp` create 0600 files and 0700 folders whatever the umask, and a
rename keeps those modes, so checkpoints and bundles written through them could not be served
or shared like files written with ``open()``. These helpers create the temporary sibling the
same way ``open()`` and ``mkdir`` do (mode 0666 / 0777 minus the umask), then rename it.
"""
from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import IO, Iterator


def _sibling(target: Path, tag: str) -> Path:
    return target.with_name(f".{target.name}.{tag}-{secrets.token_hex(4)}")


def make_sibling_dir(target: str | os.PathLike, tag: str) -> Path:
    """A new empty hidden folder ``.<name>.<tag>-<random>`` beside ``target`` (umask modes)."""
    target = Path(target)
    while True:
        folder = _sibling(target, tag)
        try:
            folder.mkdir(0o777)
            return folder
        except FileExistsError:
            continue


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Write ``path`` through a temporary sibling that replaces it only when the block ends
    without an exception (after fsync), so a kill leaves the old file or the new one."""
    path = Path(path)
    while True:
        tmp = _sibling(path, "tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
