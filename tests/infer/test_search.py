"""`tal_infer.search`, the library under tal-infer: the one gallery interface (`FeatureSource`)
gives the same ranking, re-ranking and features whether the gallery is in memory or in a
gallery index, and `search` agrees with scoring the whole matrix by hand."""
from __future__ import annotations

import os

import numpy as np

from tal_infer import ReIDEngine
from tal_infer.features import FeatureArrays
from tal_infer.images import list_images
from tal_infer.retrieval import RetrievalOptions
from tal_infer.search import embed_gallery, file_cameras, search
from tal_infer.scoring import exclude_same_camera


def _paths(folder) -> list[str]:
    return [os.path.abspath(p) for p in list_images(folder)]


def test_index_and_memory_galleries_search_alike(fake_bundle, crop_folders, tmp_path):
    engine = ReIDEngine(fake_bundle, backend="onnxruntime", device="cpu")
    queries = engine.embed_files(_paths(crop_folders[0]))
    memory = embed_gallery(engine, _paths(crop_folders[1]))
    indexed = embed_gallery(engine, _paths(crop_folders[1]), engine.open_index(tmp_path / "i"))
    assert isinstance(memory.features, FeatureArrays) and indexed.sync.added == 12
    assert indexed.paths == memory.paths  # both sorted by path
    columns = np.array([11, 0, 5])
    for key, value in memory.features.take(columns).items():
        np.testing.assert_array_equal(indexed.features.take(columns)[key], value)
    plan = engine.plan(RetrievalOptions(topk=4, exclude_same_camera=True, rerank=True))
    a, b = (search(engine, plan, queries, g, keep_scores=True) for g in (memory, indexed))
    assert a.rows == b.rows and a.identities is not None
    np.testing.assert_array_equal(a.scores, b.scores)


def test_search_ranks_as_the_full_matrix_says(fake_bundle, crop_folders):
    engine = ReIDEngine(fake_bundle, backend="onnxruntime", device="cpu")
    queries = engine.embed_files(_paths(crop_folders[0]))
    gallery = embed_gallery(engine, _paths(crop_folders[1]))
    result = search(engine, engine.plan(RetrievalOptions(topk=3, exclude_same_camera=True)),
                    queries, gallery, keep_scores=True)
    full = engine.scores(queries.features, gallery.features)
    np.testing.assert_array_equal(result.scores, full)  # kept: the names carry identities
    masked = full.copy()
    exclude_same_camera(masked, file_cameras(queries.paths), file_cameras(gallery.paths))
    for row, got in zip(masked, result.rows):
        assert [c for c, _ in got] == list(np.argsort(-row, kind="stable")[:3])
