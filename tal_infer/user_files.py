"""Opening files that users hand us (images, bundle files, lists, checkpoints): regular files
only, read with a size cap.

A FIFO named ``x.jpg`` blocks ``open()`` until a writer appears (a hang for ever), and a
symlink to ``/dev/zero`` reads until memory runs out. So every user file is opened here with
``O_NONBLOCK`` (an open that returns at once whatever the file is; it changes nothing for a
regular file), checked on the open descriptor with ``fstat`` (no race with a rename between a
check and the open), and read with a cap one byte past the limit, so an oversized file is
named without being read whole. Callers turn `UserFileError` into their own error type
(`ImageError`, `BundleError`) with the problem text; it is also an `OSError` whose ``strerror``
is the problem, so code that already treats unreadable files (skip lists, "cannot be read"
messages) handles special and oversized files the same way.

Size caps, one per kind of file, are the callers' constants: image files
(`images.MAX_IMAGE_BYTES`), dataset list files (`tal_train.data.msmt17.MAX_LIST_BYTES`),
checkpoints (`tal_train.checkpoint.MAX_CHECKPOINT_BYTES`).
"""
from __future__ import annotations

import contextlib
import os
import stat
from typing import BinaryIO, Iterator

from .errors import TalError


class UserFileError(TalError, OSError):
    """A user file that is missing, not a regular file, unreadable or over its size cap;
    ``problem`` (also ``strerror``) is the reason without the path."""

    def __init__(self, path: str | os.PathLike, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path, self.problem, self.strerror = str(path), problem, problem


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


@contextlib.contextmanager
def open_regular(path: str | os.PathLike, limit: int | None = None) -> Iterator[BinaryIO]:
    """``path`` opened for binary reading when it is a regular file (symlinks followed) of at
    most ``limit`` bytes (None: no cap); `UserFileError` otherwise, without blocking."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0)
                     | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise UserFileError(path, "file not found") from None
    except OSError as err:  # a folder (on some systems), a socket (ENXIO), no permission
        check_regular(path)
        raise UserFileError(path, f"cannot be read ({err.strerror or err})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UserFileError(path, f"is {_kind(info.st_mode)}; only regular files are read")
        if limit is not None and info.st_size > limit:
            raise UserFileError(path, f"is {info.st_size:,} bytes, over the {limit:,}-byte "
                                      "limit for this kind of file")
        os.set_blocking(fd, True)
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        yield f


def read_regular(path: str | os.PathLike, limit: int | None = None) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (see `open_regular`); a file
    that grows past the limit while it is read is refused too."""
    with open_regular(path, limit) as f:
        try:
            data = f.read() if limit is None else f.read(limit + 1)
        except OSError as err:
            raise UserFileError(path, f"cannot be read ({err.strerror or err})") from None
    if limit is not None and len(data) > limit:
        raise _over_limit(path, limit)
    return data


def iter_regular(path: str | os.PathLike, limit: int | None = None,
                 block_size: int = 1 << 20) -> Iterator[bytes]:
    """The bytes of a regular file of at most ``limit`` bytes in blocks (for hashing large
    files in bounded memory); a file that grows past the limit while it is read is refused."""
    with open_regular(path, limit) as f:
        total = 0
        while True:
            try:
                block = f.read(block_size)
            except OSError as err:
                raise UserFileError(path, f"cannot be read ({err.strerror or err})") from None
            if not block:
                return
            total += len(block)
            if limit is not None and total > limit:
                raise _over_limit(path, limit)
            yield block


def _over_limit(path: str | os.PathLike, limit: int) -> UserFileError:
    return UserFileError(path, f"is over the {limit:,}-byte limit for this kind of file")


def check_regular(path: str | os.PathLike) -> os.stat_result:
    """``stat`` of ``path`` (symlinks followed) when it is a regular file; `UserFileError`
    otherwise. For files opened by other libraries (ONNX Runtime, SQLite, numpy memory maps),
    which must never be handed a FIFO or a device."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise UserFileError(path, "file not found") from None
    except OSError as err:
        raise UserFileError(path, f"cannot be read ({err.strerror or err})") from None
    if not stat.S_ISREG(info.st_mode):
        raise UserFileError(path, f"is {_kind(info.st_mode)}; only regular files are read")
    return info
