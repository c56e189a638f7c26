"""Identity and camera from Market-1501-style file names (``0002_c1s1_000451_03.jpg``).

Market-1501, CUHK03-NP and users' own data in the Market layout name each crop
``<pid>_c<cam>[s<seq>]_<frame>...``; pid -1 marks junk, 0000 distractors. The training loaders
and the runtime (metrics, camera exclusion, the gallery index) all read names through this one
parser.

Cameras: ``camera`` is the number as the name writes it (``c1`` -> 1), the one users see
(the gallery index, ``tal-index --where camera=N``); ``camid`` is the same camera counted from
0 (``c1`` -> 0), the index the training code and the metrics use, as in open-reid and QAConv.

Identity and camera numbers must fit an integer column (SQLite, numpy): a name with a larger
one is a bad name (`BadNameError`), refused or skipped like an unreadable file, never a crash
further on.
"""
from __future__ import annotations

import re
from typing import NamedTuple

from .errors import DataError

MAX_NUMBER = 2**31 - 1  # largest identity or camera number a name may carry
_MARKET = re.compile(r"^(-?\d+)_c(\d+)(?:s(\d+))?(?:_(\d+))?")


class BadNameError(DataError):
    """A name in the Market layout whose numbers are out of range; ``problem`` says which."""

    def __init__(self, name: str, problem: str):
        super().__init__(f"{name}: {problem}")
        self.problem = problem


class MarketName(NamedTuple):
    pid: int
    camera: int  # as written: c1 -> 1
    sequence: int | None
    frame: int | None

    @property
    def camid(self) -> int:
        """The camera counted from 0 (c1 -> 0)."""
        return self.camera - 1


def parse_market_name(name: str) -> MarketName | None:
    """Parse a file name (no folder) in the Market layout; None when it does not match,
    `BadNameError` when its identity or camera number is out of range."""
    m = _MARKET.match(name)
    if m is None or int(m.group(2)) < 1:
        return None
    pid, camera = int(m.group(1)), int(m.group(2))
    for what, number in (("identity", pid), ("camera", camera)):
        if abs(number) > MAX_NUMBER:
            raise BadNameError(name, f"bad file name: {what} number {number} is out of range "
                                     f"(at most {MAX_NUMBER:,})")
    seq = int(m.group(3)) if m.group(3) is not None else None
    frame = int(m.group(4)) if m.group(4) is not None else None
    return MarketName(pid, camera, seq, frame)
