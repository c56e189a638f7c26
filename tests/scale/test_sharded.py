"""A sharded gallery on a local Ray against one gallery index holding the same entries:
exhaustive search returns exactly its ranking (scores and ties), two-stage search finds at
least as much of the exhaustive top-10, filters apply before the top-k, and writes (adds,
idempotent re-adds, removals, erasure, retention) reach every shard."""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tal_infer.cluster.routing import shard_of
from tal_infer.cluster.scope import Scope
from tal_infer.cluster.sharded import ShardedGallery
from tal_infer.engine import ReIDEngine
from tal_infer.errors import TalError
from tal_infer.features import FeatureSubset, stack_features
from tal_infer.images import read_image
from tal_infer.index import entry_time, market_metadata
from tal_infer.lifecycle import EntryFilter
from tal_infer.retrieval import RetrievalOptions

EXHAUSTIVE = RetrievalOptions(topk=12)
LOADED_MACHINE_S = 300  # a bound on every search, far above its time on a busy 2-core CI machine


@pytest.fixture(scope="module")
def single(bundle, crops, tmp_path_factory):
    """(engine, one index's snapshot, query features) of the same crops."""
    engine = ReIDEngine(bundle, backend="onnxruntime", device="cpu")
    gallery, queries = crops
    index = engine.open_index(tmp_path_factory.mktemp("single") / "index")

    def one_by_one(paths):  # a crop's features alone: byte copies get identical rows
        return stack_features([engine.embed([read_image(p)]) for p in paths])

    index.sync(gallery, one_by_one, market_metadata)
    return engine, index.load(), engine.embed_files(queries).features


@pytest.fixture(scope="module")
def sharded(ray_cluster, bundle, single, tmp_path_factory):
    """The same entries (the single index's features, so both hold identical bytes) in 3
    shards."""
    _, contents, _ = single
    gallery = ShardedGallery(tmp_path_factory.mktemp("sharded") / "g", bundle, shards=3,
                             search_timeout_s=LOADED_MACHINE_S)
    gallery.add_files(contents.paths, contents.take(np.arange(len(contents))))
    return gallery


def reference(single, options, scope=None, query_cams=None):
    """The single index's answer as (key, score) lists, with the same plan."""
    engine, contents, queries = single
    columns = np.arange(len(contents)) if scope is None else np.flatnonzero(
        [scope.selects(r) for r in contents.records])
    source = contents if scope is None else FeatureSubset(contents, columns)
    cameras = None
    if query_cams is not None:
        cameras = (np.asarray(query_cams), np.array([contents.records[c].camera
                                                     for c in columns]))
    plan = engine.plan(replace(options, stable_scores=True))
    found = engine.retriever(plan).retrieve(queries, source, cameras)
    return [[(contents.records[columns[c]].path, s) for c, s in row] for row in found.rows]


def listed(result):
    return [[(h.key, h.score) for h in hits] for hits in result.hits]


def test_entries_are_spread_by_the_routing_rule(sharded, single):
    counts = sharded.check()
    _, contents, _ = single
    assert sum(counts.values()) == len(contents)
    want = np.bincount([shard_of(p, 3) for p in contents.paths], minlength=3)
    assert list(counts.values()) == want.tolist() and min(want) > 0


def test_exhaustive_search_is_exactly_the_single_index_ranking(sharded, single):
    found = sharded.search(single[2], EXHAUSTIVE)
    assert not found.partial
    assert listed(found) == reference(single, EXHAUSTIVE)   # keys and scores, bit for bit


def test_ties_break_by_key_as_one_index_does(sharded, single):
    """Three gallery crops are byte copies of others (identical features): each ties exactly
    with its original, and both orders list the smaller key (the original) first, wherever
    the two live."""
    engine, contents, queries = single
    everything = RetrievalOptions(topk=len(contents))
    found = sharded.search(queries, everything)
    assert listed(found) == reference(single, everything)
    for i, copy in enumerate(p for p in contents.paths if "_c4s9_" in p):
        original = contents.paths[np.flatnonzero([open(p, "rb").read() == open(copy, "rb").read()
                                                  for p in contents.paths])[0]]
        for hits in found.hits:
            keys = [h.key for h in hits]
            at = keys.index(original)
            assert keys[at + 1] == copy and hits[at].score == hits[at + 1].score


def test_same_camera_exclusion_on_the_shards(sharded, single):
    options = replace(EXHAUSTIVE, exclude_same_camera=True)
    cams = [1, 2, 3, 4, 1]
    found = sharded.search(single[2], options, query_cams=cams)
    assert listed(found) == reference(single, options, query_cams=cams)
    assert all(h.camera != c for hits, c in zip(found.hits, cams) for h in hits)


def test_filters_and_time_window_apply_before_the_top_k(sharded, single):
    _, contents, _ = single
    times = sorted(entry_time(r) for r in contents.records)
    scope = Scope.of(cameras=[2, 3], since=times[10], until=times[-10])
    found = sharded.search(single[2], EXHAUSTIVE, scope=scope)
    assert listed(found) == reference(single, EXHAUSTIVE, scope)
    eligible = sum(scope.selects(r) for r in contents.records)
    assert all(len(h) == min(EXHAUSTIVE.topk, eligible) for h in found.hits)
    assert all(h.camera in (2, 3) for hits in found.hits for h in hits)
    person = Scope.of(fields={"label": 7})
    found = sharded.search(single[2], EXHAUSTIVE, scope=person)
    assert [len(h) for h in found.hits] == [4] * 5   # all four crops of person 7, every query
    assert listed(found) == reference(single, EXHAUSTIVE, person)


def test_two_stage_on_shards_recalls_at_least_as_much_as_one_index(sharded, single):
    engine, contents, queries = single
    best = [{k for k, _ in row[:10]} for row in reference(single, RetrievalOptions(topk=10))]
    for m in (10, 20):
        options = RetrievalOptions(topk=10, candidates=m, prerank=0)
        one = reference(single, options)
        found = sharded.search(queries, options)
        recall_one = np.mean([len(b & {k for k, _ in r}) / 10 for b, r in zip(best, one)])
        recall_sharded = np.mean([len(b & {h.key for h in hits}) / 10
                                  for b, hits in zip(best, found.hits)])
        assert recall_sharded >= recall_one
    everything = RetrievalOptions(topk=12, candidates=len(contents))
    assert listed(sharded.search(queries, everything)) == reference(single, EXHAUSTIVE)


def test_rerank_and_another_shard_count_are_refused(sharded, bundle):
    with pytest.raises(TalError, match="re-ranking"):
        sharded.search({"x": np.zeros((1, 1))}, RetrievalOptions(rerank=True))
    with pytest.raises(TalError, match="3 shards, not 2"):
        ShardedGallery(sharded.root, bundle, shards=2)


def test_adds_removals_and_retention_across_shards(ray_cluster, bundle, crops, tmp_path):
    gallery_files, _ = crops
    files = [str(p) for p in gallery_files[:40]]
    gallery = ShardedGallery(tmp_path / "g", bundle, shards=2, search_timeout_s=LOADED_MACHINE_S)
    first = gallery.add_files(files)
    assert first.added == 40 and not first.skipped
    again = gallery.add_files(files[:10])                       # idempotent: no duplicate
    assert (again.added, again.unchanged) == (0, 40)
    assert sum(gallery.check().values()) == 40
    assert gallery.add_files(files[:10], metadata=[{"label": 99}] * 10).updated == 0
    assert sorted(gallery.remove_where(EntryFilter({"label": 99}))) == sorted(files[:10])
    with pytest.raises(TalError, match="unknown filter key 'site'"):
        gallery.remove_where(EntryFilter({"site": "north"}))      # no shard's entries have it
    assert gallery.remove([files[10], "/nowhere.jpg"]) == [files[10]]
    assert sum(gallery.check().values()) == 29
    # crops stored by the gallery: erased with their entries, files included
    data = [Path(f).read_bytes() for f in files[20:23]]
    feats = ReIDEngine(bundle).embed_files(files[20:23]).features
    seen = [{"camera": 5, "timestamp": 100.0 + i} for i in range(3)]
    keys = gallery.add_crops(data, [".jpg"] * 3, feats, seen)
    assert len(set(keys)) == 3 and all(os.path.isfile(k) for k in keys)
    assert gallery.add_crops(data, [".jpg"] * 3, feats, seen) == keys      # the same entries
    assert sum(gallery.check().values()) == 32
    assert sorted(gallery.drop_older_than(101.5)) == sorted(keys[:2])
    assert not any(os.path.exists(k) for k in keys[:2]) and os.path.isfile(keys[2])
    assert sum(gallery.check().values()) == 30
    reopened = ShardedGallery(tmp_path / "g", bundle)            # the count from the layout
    assert reopened.count == 2 and sum(reopened.check().values()) == 30
