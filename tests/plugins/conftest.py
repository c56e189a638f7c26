"""Shared inputs for the QAConvMatch tests: random feature maps (seeded from the test's id, so
every run draws the same; the seed is shown on failure) and the tolerance rule of
plugins/README.md."""
from __future__ import annotations

import zlib

import numpy as np
import pytest


class MatchInputs:
    """Random L2-normalized maps and projections; `seed` reproduces a failing draw."""

    def __init__(self, seed: int):
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    def maps(self, n: int, hw: int, c: int, sign: float = 0.0) -> np.ndarray:
        """[n, hw, c] float32, every location's C-vector of unit length; sign +1 / -1 makes
        every entry >= 0 / <= 0 (then all similarities of a (+, -) pair are negative)."""
        x = self.rng.standard_normal((n, hw, c)).astype(np.float32)
        if sign:
            x = np.abs(x) * sign
        return x / np.linalg.norm(x, axis=2, keepdims=True)

    def weights(self, hw: int, p: int) -> np.ndarray:
        return self.rng.standard_normal((hw, p)).astype(np.float32)

    @staticmethod
    def tolerance(expected, rel: float = 1e-5) -> float:
        """fp32 accumulation: |error| <= rel * (1 + max |expected|)."""
        return rel * (1.0 + float(abs(expected).max()))


@pytest.fixture
def inputs(request) -> MatchInputs:
    seed = zlib.crc32(request.node.nodeid.encode())
    request.node.user_properties.append(("seed", seed))
    print(f"random seed {seed}")  # shown by pytest for a failing test
    return MatchInputs(seed)
