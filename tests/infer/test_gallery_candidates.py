"""The in-memory `Gallery` keeps its stage-1 FAISS index between `ReIDEngine.match(...,
candidates=M)` calls; every change of the gallery (`add` as well as `remove`) must reach it."""
from __future__ import annotations

import numpy as np
import pytest

from tal_infer import Gallery, ReIDEngine

from optional_modules import require
from runtime_fixtures import person_crop

require("faiss")


@pytest.fixture(scope="module")
def engine(fake_bundle_v2):
    return ReIDEngine(fake_bundle_v2, backend="onnxruntime", device="cpu", batch_size=8)


def test_entries_added_after_a_search_are_candidates(engine):
    rng = np.random.default_rng(23)
    gallery = Gallery()
    old = gallery.add(engine.embed([person_crop(i % 5, rng) for i in range(12)]))
    queries = engine.embed([person_crop(i, rng) for i in (7, 8, 9)])
    before = engine.match(queries, gallery, k=20, candidates=20, prerank=0)  # index cached
    assert all(sorted(m.id for m in row) == old for row in before)

    copies = gallery.add(queries)  # each query's own features: its best descriptor match
    for q, row in enumerate(engine.match(queries, gallery, k=1, candidates=1, prerank=0)):
        assert [m.id for m in row] == [copies[q]], q
    everything = engine.match(queries, gallery, k=20, candidates=20, prerank=0)
    assert all(sorted(m.id for m in row) == old + copies for row in everything)
    assert engine.match(queries, gallery, k=20, candidates=20, search="hnsw", prerank=0) \
        == everything  # another search kind: its own index over the same entries
