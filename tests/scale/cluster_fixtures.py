"""Helpers of the scale-out tests (fixtures in conftest.py)."""
from __future__ import annotations


def gallery_names(identities: int, per_identity: int = 4, cameras: int = 4) -> list[str]:
    """Market-style names: camera 1..cameras, a frame number that orders the crops."""
    return [f"{pid:04d}_c{1 + j % cameras}s1_{pid * 10 + j:06d}_00.jpg"
            for pid in range(1, identities + 1) for j in range(per_identity)]
