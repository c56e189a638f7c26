"""The one diagnostics channel of every tal-reid command: log lines and progress bars.

Library code never prints: what it did goes to `logging` (loggers under `PACKAGES`), long work
shows a bar from `progress`. A command calls `configure` once (its ``-q/-v`` options,
`cli_common.verbosity_options`): log lines go to stderr, warnings prefixed ``warning:``, and
bars are drawn only when stderr is a terminal and the command is not quiet, so piped output
and CI logs hold no bar debris. A program that uses the library gets neither lines nor bars
until it configures logging itself (or calls `configure`).

Results (rank lists, metrics, tables) are not diagnostics: commands write them to stdout.
"""
from __future__ import annotations

import logging
import sys
from typing import Any, Iterable, TypeVar

from tqdm import tqdm

PACKAGES = ("tal_infer", "tal_export", "tal_train", "tal_plugins")
QUIET, NORMAL, VERBOSE = -1, 0, 1
T = TypeVar("T")

_bars = False  # draw progress bars (set by `configure`)
_verbosity = NORMAL


class _Formatter(logging.Formatter):
    """``warning: ...`` / ``error: ...`` for problems, the bare message otherwise (``-v`` adds
    the logger name to debug lines)."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {message}"
        if record.levelno < logging.INFO:
            return f"debug ({record.name}): {message}"
        return message


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a line is emitted (a test runner or a host
    program may swap it after `configure`)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


_handler = _StderrHandler()
_handler.setFormatter(_Formatter())


def configure(verbosity: int = NORMAL) -> None:
    """Route the packages' log lines to stderr at ``verbosity`` (`QUIET`: warnings only,
    no bars; `NORMAL`: what was done; `VERBOSE`: debug lines too) and enable progress bars
    where stderr is a terminal. Idempotent: one handler, whatever the number of calls."""
    global _bars, _verbosity
    _verbosity = verbosity
    level = {QUIET: logging.WARNING, NORMAL: logging.INFO}.get(verbosity, logging.DEBUG)
    for name in PACKAGES:
        logger = logging.getLogger(name)
        logger.setLevel(level)
        if _handler not in logger.handlers:
            logger.addHandler(_handler)
    _bars = verbosity > QUIET


def verbosity_flags() -> list[str]:
    """The ``-q``/``-v`` flags that give another command this one's verbosity."""
    return {QUIET: ["--quiet"], VERBOSE: ["--verbose"]}.get(_verbosity, [])


def bars_enabled() -> bool:
    """Whether `configure` turned progress bars on."""
    return _bars


def progress(iterable: Iterable[T] | None = None, *, total: int | None = None,
             desc: str = "", unit: str = "it", **kwargs: Any) -> tqdm:
    """A tqdm bar on stderr, drawn only under `configure` and when stderr is a terminal
    (tqdm's own check, ``disable=None``); otherwise a silent counter with the same API."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, file=sys.stderr,
                disable=None if _bars else True, **kwargs)
