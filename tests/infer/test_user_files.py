"""Opening user files: regular files only, size caps, no blocking (tal_infer.user_files).

Each special file is built for real (FIFO, link to /dev/zero, folder, UNIX socket) and every
entry point is called on it under a deadline, so a regression hangs no test run.
"""
from __future__ import annotations

import hashlib
import os

import pytest

from tal_infer import user_files
from tal_infer.errors import TalError
from tal_infer.hashing import file_sha256
from tal_infer.user_files import (UserFileError, check_regular, iter_regular, open_regular,
                                  read_regular)

from special_files import SPECIAL_KINDS, deadline, run_measured, special_file


def _read_with_open(path, limit=None):
    with open_regular(path, limit) as f:
        return f.read()


READERS = {
    "read_regular": read_regular,
    "open_regular": _read_with_open,
    "iter_regular": lambda path, limit=None: b"".join(iter_regular(path, limit)),
}


@pytest.mark.parametrize("reader", READERS)
def test_regular_files_and_links_to_them_are_read_up_to_the_limit(tmp_path, reader):
    read = READERS[reader]
    path = tmp_path / "list.txt"
    path.write_bytes(b"x" * 100)
    (tmp_path / "link.txt").symlink_to(path)
    assert read(path) == read(tmp_path / "link.txt") == b"x" * 100
    assert read(path, 100) == b"x" * 100
    with pytest.raises(UserFileError) as info:
        read(path, 99)
    assert str(info.value) == (f"{path}: is 100 bytes, over the 99-byte limit for this kind "
                               "of file")
    assert check_regular(path).st_size == 100


@pytest.mark.parametrize("reader", [*READERS, "check_regular"])
@pytest.mark.parametrize("kind", SPECIAL_KINDS)
def test_special_files_are_refused_at_once(tmp_path, reader, kind):
    read = READERS.get(reader, check_regular)
    with special_file(kind, tmp_path / "x.jpg") as path, deadline(5):
        with pytest.raises(UserFileError) as info:
            read(path)
    assert str(info.value) == f"{path}: is {SPECIAL_KINDS[kind]}; only regular files are read"


@pytest.mark.parametrize("reader", [*READERS, "check_regular"])
def test_missing_file(tmp_path, reader):
    with pytest.raises(UserFileError, match=r"missing\.jpg: file not found$"):
        READERS.get(reader, check_regular)(tmp_path / "missing.jpg")


def test_the_error_is_a_tal_error_and_an_os_error(tmp_path):
    """Code that treats unreadable files (skip lists, 'cannot be read' messages) as OSError
    handles special files with the problem as its text."""
    os.mkfifo(tmp_path / "x.jpg")
    with deadline(5), pytest.raises(OSError) as info:
        read_regular(tmp_path / "x.jpg")
    err = info.value
    assert isinstance(err, TalError) and isinstance(err, UserFileError)
    assert err.strerror == err.problem == "is a named pipe (FIFO); only regular files are read"
    assert err.path == str(tmp_path / "x.jpg") and "\n" not in str(err)


def test_a_fifo_with_a_writer_is_still_refused(tmp_path):
    """With a writer attached the open would not block; the file is still not read."""
    path = tmp_path / "x.jpg"
    os.mkfifo(path)
    reader_end = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    writer = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(writer, b"\xff\xd8\xff" * 100)
        with deadline(5), pytest.raises(UserFileError, match="named pipe"):
            read_regular(path, 1 << 20)
        assert len(os.read(reader_end, 1000)) == 300  # nothing was consumed
    finally:
        os.close(writer)
        os.close(reader_end)


def test_a_file_that_grows_while_it_is_read_is_refused(tmp_path, monkeypatch):
    """The size is checked when the file is opened; a file growing past the limit after that
    is refused after reading at most limit + 1 bytes."""
    path = tmp_path / "list.txt"
    path.write_bytes(b"x" * 50)
    real_fdopen = os.fdopen

    def grow_then_open(fd, *args, **kwargs):
        with open(path, "ab") as writer:  # after the size check, before the read
            writer.write(b"y" * 1000)
        return real_fdopen(fd, *args, **kwargs)

    monkeypatch.setattr(user_files.os, "fdopen", grow_then_open)
    with pytest.raises(UserFileError, match=r"list\.txt: is over the 100-byte limit"):
        read_regular(path, 100)

    path.write_bytes(b"x" * 50)
    monkeypatch.setattr(user_files.os, "fdopen", real_fdopen)
    blocks = iter_regular(path, 100, block_size=40)
    assert next(blocks) == b"x" * 40
    with open(path, "ab") as writer:
        writer.write(b"y" * 1000)
    with pytest.raises(UserFileError, match=r"list\.txt: is over the 100-byte limit"):
        list(blocks)


def test_a_sparse_oversized_file_is_refused_unread(tmp_path):
    path = tmp_path / "huge.jpg"
    with open(path, "wb") as f:
        f.truncate(1 << 40)  # 1 TiB, no blocks on disk
    for read in READERS.values():
        with deadline(5), pytest.raises(UserFileError, match="is 1,099,511,627,776 bytes, over"):
            read(path, 1 << 30)


def test_dev_zero_costs_no_memory(tmp_path):
    """Measured in a child: reading a link to /dev/zero would grow until memory runs out."""
    (tmp_path / "zero.jpg").symlink_to("/dev/zero")
    child = run_measured(f"""
from tal_infer.user_files import UserFileError, read_regular, iter_regular
for read in (read_regular, lambda p: list(iter_regular(p))):
    try:
        read({str(tmp_path / "zero.jpg")!r})
    except UserFileError as err:
        print(err)
""", timeout=30)
    assert child.returncode == 0, child.stderr
    assert child.stdout.splitlines() == [f"{tmp_path / 'zero.jpg'}: is a device; only regular "
                                         "files are read"] * 2
    assert child.peak_rss_mib < 100, child.peak_rss_mib


def test_file_hashes_read_only_regular_files_within_their_limit(tmp_path):
    """The gallery index hashes every gallery file: a FIFO among them must not block it."""
    path = tmp_path / "a.jpg"
    path.write_bytes(b"crop" * 1000)
    want = hashlib.sha256(b"crop" * 1000).hexdigest()
    assert file_sha256(path) == file_sha256(path, 4000) == want
    with pytest.raises(UserFileError, match="over the 3,999-byte limit"):
        file_sha256(path, 3999)
    with special_file("fifo", tmp_path / "x.jpg") as fifo, deadline(5):
        with pytest.raises(OSError, match="is a named pipe"):
            file_sha256(fifo)
