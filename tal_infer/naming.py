"""Identity and camera from Market-1501-style file names (``0002_c1s1_000451_03.jpg``).

Market-1501, CUHK03-NP and users' own data in the Market layout name each crop
``<pid>_c<cam>[s<seq>]_<frame>...``; pid -1 marks junk, 0000 distractors. The training loaders
and the runtime (metrics when labels are known) both read names through this one parser.
Cameras are returned 0-based (``c1`` -> 0), as in open-reid and QAConv.
"""
from __future__ import annotations

import re
from typing import NamedTuple

_MARKET = re.compile(r"^(-?\d+)_c(\d+)(?:s(\d+))?(?:_(\d+))?")


class MarketName(NamedTuple):
    pid: int
    camid: int
    sequence: int | None
    frame: int | None


def parse_market_name(name: str) -> MarketName | None:
    """Parse a file name (no folder) in the Market layout; None when it does not match."""
    m = _MARKET.match(name)
    if m is None or int(m.group(2)) < 1:
        return None
    seq = int(m.group(3)) if m.group(3) is not None else None
    frame = int(m.group(4)) if m.group(4) is not None else None
    return MarketName(int(m.group(1)), int(m.group(2)) - 1, seq, frame)
