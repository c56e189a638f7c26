"""Special files where a user file is expected, a time bound for calls that could block on
them, and a child interpreter whose peak memory is measured (tests of `tal_infer.user_files`
and of every reader that uses it)."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

# kind -> the words the refusal uses
SPECIAL_KINDS = {
    "fifo": "a named pipe (FIFO)",
    "dev-zero": "a device",
    "folder": "a folder",
    "socket": "a socket",
}


@contextlib.contextmanager
def special_file(kind: str, path: Path) -> Iterator[Path]:
    """``path`` made a FIFO, a symlink to /dev/zero, a folder or a listening UNIX socket."""
    sock = None
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        path.symlink_to("/dev/zero")
    elif kind == "folder":
        path.mkdir()
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        sock.listen()
    else:
        raise ValueError(kind)
    try:
        yield path
    finally:
        if sock is not None:
            sock.close()


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise TimeoutError in the body after ``seconds`` and again every second after that (a
    blocking open() of a FIFO is interrupted by the signal; the repeats reach the next hang
    when code such as click's CliRunner catches the first), so a hang fails the test instead
    of stopping the suite."""
    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s (a hang)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds, 1.0)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class ChildResult:
    returncode: int
    stdout: str
    stderr: str
    peak_rss_mib: float  # the child's own peak resident memory


# VmHWM, not ru_maxrss: on Linux ru_maxrss keeps the high-water mark of the memory image
# replaced by exec, so a child forked from a large pytest worker would report the worker's size.
_MEASURED = """
import sys
try:
    exec(compile(sys.argv[1], "<test>", "exec"))
finally:
    sys.stdout.flush()
    with open("/proc/self/status") as status:
        peak = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    print(f"\\npeak_rss_kib={peak}")
"""


def run_measured(code: str, timeout: float = 60, memory_cap_mib: int = 3072) -> ChildResult:
    """Run ``code`` in a fresh interpreter (address space capped at ``memory_cap_mib``, so a
    regression fails with MemoryError instead of exhausting the machine) and measure its
    peak RSS."""
    def cap() -> None:
        import resource
        cap_bytes = memory_cap_mib << 20
        resource.setrlimit(resource.RLIMIT_AS, (cap_bytes, cap_bytes))

    proc = subprocess.run([sys.executable, "-c", _MEASURED, code], capture_output=True,
                          text=True, timeout=timeout, preexec_fn=cap)
    out, _, rss = proc.stdout.rpartition("\npeak_rss_kib=")
    assert rss, f"the child did not finish: {proc.stderr[-2000:]}"
    return ChildResult(proc.returncode, out, proc.stderr, int(rss) / 1024)
