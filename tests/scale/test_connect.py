"""`connect`: a local Ray started here gets the patience of LOCAL_RAY_ENV (Ray Serve's proxy
readiness check, which fails `serve.start` on a busy machine), unless the caller's environment
sets it; a cluster joined by address is left as it is. Ray itself is stood in."""
from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from tal_infer.cluster import ray_support

NAME = "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S"


def fake_ray(seen: list) -> SimpleNamespace:
    """Records the environment and arguments each ``ray.init`` call saw."""
    return SimpleNamespace(is_initialized=lambda: False,
                           init=lambda **kwargs: seen.append((os.environ.get(NAME), kwargs)))


@pytest.mark.parametrize("preset, address, want", [
    (None, None, ray_support.LOCAL_RAY_ENV[NAME]),  # a local Ray: the project's patience
    ("7", None, "7"),                                # the caller's setting wins
    (None, "head:6379", None),                       # a cluster keeps its own
])
def test_a_local_ray_gets_the_proxy_patience(monkeypatch, preset, address, want):
    seen: list = []
    monkeypatch.setattr(ray_support, "require_ray", lambda part="": fake_ray(seen))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv(NAME, preset or "")  # recorded, so that teardown restores it
    if preset is None:
        monkeypatch.delenv(NAME)
    ray_support.connect(address, num_cpus=2)
    assert [value for value, _ in seen] == [want]
    assert ("address" in seen[0][1]) == (address is not None)
