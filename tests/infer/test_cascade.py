"""Two-stage retrieval: FAISS stage 1 (exact, IVF, HNSW, GPU sharding, camera exclusion),
stage 2 on the candidates only, equality with exhaustive matching when M covers the gallery,
and the CLI / Python API around it (tal_infer.candidates, tal_infer.cascade)."""
from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tal_infer import Gallery, ReIDEngine
from tal_infer import candidates as stage1
from tal_infer.candidates import GPU_MAX_K, CandidateOptions, CandidateSearch
from tal_infer.cascade import Shortlists, rescore, shortlist
from tal_infer.retrieval import RetrievalOptions, plan_retrieval
from tal_infer.cli import main
from tal_infer.errors import TalError
from tal_infer.index import IndexContents, IndexRecord

from optional_modules import blocking, require
from runtime_fixtures import GALLERY_NAMES, QUERY_NAMES, person_crop, write_crops

faiss = require("faiss")
ROOT = Path(__file__).resolve().parents[2]


def unit_rows(n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clustered(n: int, d: int, rng: np.random.Generator, clusters: int = 40) -> np.ndarray:
    """Unit vectors around a few centres, as descriptors of people seen many times are."""
    centres = unit_rows(clusters, d, rng)
    x = centres[rng.integers(clusters, size=n)] + 0.3 * unit_rows(n, d, rng)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def engine(fake_bundle_v2):
    return ReIDEngine(fake_bundle_v2, backend="onnxruntime", device="cpu", batch_size=8)


@pytest.fixture(scope="module")
def embedded(engine):
    """40 gallery crops of 10 people over 3 cameras, 6 query crops (features, cameras)."""
    rng = np.random.default_rng(3)
    gallery = engine.embed([person_crop(i % 10, rng) for i in range(40)])
    queries = engine.embed([person_crop(i, rng) for i in range(6)])
    return gallery, np.arange(40) % 3, queries


# -- stage 1 -------------------------------------------------------------------------------

def test_exact_search_gives_the_top_inner_products():
    rng = np.random.default_rng(1)
    gallery, queries = unit_rows(500, 32, rng), unit_rows(20, 32, rng)
    got = CandidateSearch(gallery).search(queries, 25)
    want = np.argsort(-(queries @ gallery.T), axis=1)[:, :25]
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_camera_exclusion_fills_the_shortlist_from_other_cameras():
    rng = np.random.default_rng(2)
    gallery, queries = unit_rows(300, 16, rng), unit_rows(4, 16, rng)
    g_cams = np.where(np.arange(300) < 280, 0, 1 + np.arange(300) % 3)  # camera 0 holds 280
    q_cams = np.array([0, 1, -1, 0])
    got = CandidateSearch(gallery).search(queries, 12, exclude=(q_cams, g_cams))
    sims = queries @ gallery.T
    for row, cols in enumerate(got):
        allowed = np.flatnonzero((g_cams != q_cams[row]) | (q_cams[row] < 0))
        want = allowed[np.argsort(-sims[row, allowed])][:12]
        np.testing.assert_array_equal(cols, want)
    small = CandidateSearch(gallery).search(queries[:1], 50, exclude=(q_cams[:1], g_cams))
    assert len(small[0]) == 20 and (g_cams[small[0]] != 0).all()  # all the other cameras hold


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_searches_find_most_of_the_exact_shortlist(kind):
    rng = np.random.default_rng(0)
    gallery, queries = clustered(4000, 32, rng), clustered(50, 32, rng)
    exact = CandidateSearch(gallery).search(queries, 20)
    approx = CandidateSearch(gallery, CandidateOptions(kind)).search(queries, 20)
    overlap = np.mean([len(set(a) & set(e)) / 20 for a, e in zip(approx, exact)])
    assert overlap > 0.9, overlap
    assert all(len(a) == 20 and len(set(a)) == 20 and a.min() >= 0 for a in approx)


@pytest.mark.parametrize("options", [CandidateOptions("hnsw", ef_search=16),
                                     CandidateOptions("ivf", nprobe=4)])
def test_approximate_searches_widen_for_long_shortlists(options):
    """FAISS's HNSW explores efSearch nodes, its IVF scans nprobe cells, whatever k is asked:
    a shortlist longer than they reach (the DI pre-rank's 10 x M) must widen the search, not
    come back thin."""
    rng = np.random.default_rng(1)
    gallery, queries = clustered(4000, 32, rng), clustered(20, 32, rng)
    exact = CandidateSearch(gallery).search(queries, 400)
    approx = CandidateSearch(gallery, options).search(queries, 400)
    overlap = np.mean([len(set(a) & set(e)) / 400 for a, e in zip(approx, exact)])
    assert overlap > 0.95, overlap


def test_bad_search_requests_are_one_line_errors():
    rng = np.random.default_rng(3)
    search = CandidateSearch(unit_rows(10, 8, rng))
    with pytest.raises(TalError, match="dimension 8"):
        search.search(unit_rows(2, 4, rng), 3)
    with pytest.raises(TalError, match=">= 1"):
        search.search(unit_rows(2, 8, rng), 0)
    with pytest.raises(TalError, match="unknown candidate search 'lsh'"):
        CandidateOptions("lsh")


class _FakeGpuIndex:
    """Stands for a FAISS GPU index: searches the CPU index, refuses k above GPU_MAX_K."""

    def __init__(self, cpu_index):
        self.cpu_index, self.ks = cpu_index, []

    def search(self, queries, k):
        self.ks.append(k)
        assert k <= GPU_MAX_K, "FAISS GPU indexes refuse k > 2048"
        return self.cpu_index.search(queries, k)


@pytest.mark.parametrize("gpus", [1, 2])
def test_cuda_search_goes_to_every_gpu_and_shards_over_several(monkeypatch, gpus):
    calls = {}

    def to_all(index, co):
        calls["shard"] = co.shard
        return _FakeGpuIndex(index)

    def to_one(resources, device, index):
        calls["device"] = device
        return _FakeGpuIndex(index)

    fake = types.SimpleNamespace(
        **{name: getattr(faiss, name) for name in dir(faiss) if not name.startswith("_")})
    fake.StandardGpuResources = object
    fake.GpuMultipleClonerOptions = lambda: types.SimpleNamespace(shard=False)
    fake.get_num_gpus = lambda: gpus
    fake.index_cpu_to_all_gpus, fake.index_cpu_to_gpu = to_all, to_one
    monkeypatch.setattr(stage1, "load_faiss", lambda: fake)

    rng = np.random.default_rng(4)
    gallery, queries = unit_rows(3000, 8, rng), unit_rows(3, 8, rng)
    search = CandidateSearch(gallery, CandidateOptions("exact", device="cuda"))
    assert search.where == ("1 GPU" if gpus == 1 else "2 GPUs (sharded)")
    assert calls == ({"device": 0} if gpus == 1 else {"shard": True})
    want = np.argsort(-(queries @ gallery.T), axis=1)
    for got, w in zip(search.search(queries, 30), want):
        np.testing.assert_array_equal(got, w[:30])
    big = search.search(queries, 2500)  # beyond the GPU limit: the CPU copy answers
    assert all(len(b) == 2500 for b in big) and max(search.index.ks) <= GPU_MAX_K
    hnsw = CandidateSearch(gallery, CandidateOptions("hnsw", device="cuda"))
    assert hnsw.where == "cpu"  # FAISS has no GPU HNSW
    ivf = CandidateSearch(gallery, CandidateOptions("ivf", device="cuda"))  # 76 cells, 32 probed
    ivf.search(queries, 30)
    assert ivf.index.ks == [30]  # 32 cells hold 10 x 30 vectors: the GPU index answers
    assert all(len(c) == 300 for c in ivf.search(queries, 300))
    assert ivf.index.ks == [30]  # more cells than the GPU index probes: the CPU copy answers


# -- stage 2 and the result -----------------------------------------------------------------

def test_shortlists_order_ties_by_column_and_rank_the_rest_by_stage_one():
    lists = Shortlists.ordered([np.array([7, 2, 5])], [np.array([1.0, 3.0, 1.0], np.float32)])
    assert lists.rows(3) == [[(2, 3.0), (5, 1.0), (7, 1.0)]]
    dense = lists.dense(9)
    assert np.isnan(dense).sum() == 6 and dense[0, 2] == 3.0
    stage1_scores = np.linspace(0.9, 0.1, 9)[None].astype(np.float32)  # column 0 best
    keys = lists.rank_keys(stage1_scores)
    order = np.argsort(-keys[0], kind="stable")
    assert order.tolist() == [2, 5, 7, 0, 1, 3, 4, 6, 8]


class _Recording:
    """An array whose row reads are recorded (a feature file that knows what was read)."""

    def __init__(self, array):
        self.array, self.read = array, []

    def __getitem__(self, rows):
        self.read.extend(np.atleast_1d(np.arange(len(self.array))[rows]).tolist())
        return self.array[rows]

    def __len__(self):
        return len(self.array)


def test_stage_two_reads_and_scores_only_each_querys_candidates(engine, embedded):
    gallery, _, queries = embedded
    stored = {k: _Recording(v.astype(np.float16)) for k, v in gallery.items()}
    contents = IndexContents([IndexRecord(f"/g/{i:03d}", 1, 1, "x", None, None, None, {})
                              for i in range(40)], np.arange(40)[::-1].copy(), stored)
    scored = []

    class CountingScorer:
        keys = engine.matcher.keys

        def scores(self, query, gallery_feats):
            scored.append(len(next(iter(gallery_feats.values()))))
            return engine.matcher.scores(query, gallery_feats)

    cand = [np.array([3, 17, 9]), np.array([0, 39]), np.array([], np.int64),
            np.array([5]), np.array([22, 21, 20]), np.array([1, 2])]
    lists = rescore(CountingScorer(), queries, contents.take, cand)
    assert scored == [3, 2, 1, 3, 2]  # the empty list is not scored
    for key in engine.matcher.keys:
        assert sorted(stored[key].read) == sorted(contents.rows[np.concatenate(cand)].tolist())
    assert "descriptor" not in engine.matcher.keys and stored["descriptor"].read == []
    want = engine.scores(queries, {k: v.astype(np.float16).astype(np.float32)  # stored rows
                                   for k, v in gallery.items()})
    for q, (cols, sc) in enumerate(zip(lists.columns, lists.scores)):
        assert sorted(cols.tolist()) == sorted(cand[q].tolist())
        np.testing.assert_allclose(sc, want[q, contents.rows[cols]], rtol=1e-5, atol=1e-6)
        assert (np.diff(sc) <= 0).all()


@pytest.mark.parametrize("cameras", [False, True])
def test_engine_cascade_equals_exhaustive_when_m_covers_the_gallery(engine, embedded, cameras):
    features, cams, queries = embedded
    gallery = Gallery()
    gallery.add(features, camera=cams)
    q_cams = [0, 1, 2, 0, 1, 2] if cameras else None
    exhaustive = engine.match(queries, gallery, k=15, query_cameras=q_cams)
    for m in (40, 100):
        cascade = engine.match(queries, gallery, k=15, query_cameras=q_cams, candidates=m)
        for a, b in zip(exhaustive, cascade):
            assert [x.id for x in a] == [x.id for x in b]
            np.testing.assert_allclose([x.score for x in a], [x.score for x in b], rtol=1e-5)
            assert [x.camera for x in a] == [x.camera for x in b]


def test_engine_cascade_ranks_stage_one_candidates_by_tal_score(engine, embedded):
    features, cams, queries = embedded
    gallery = Gallery()
    ids = gallery.add(features, camera=cams, meta=[{"n": i} for i in range(40)])
    hits = engine.match(queries, gallery, k=5, candidates=7, prerank=0)
    top7 = np.argsort(-(queries["descriptor"] @ features["descriptor"].T), axis=1)[:, :7]
    full = engine.scores(queries, features)
    for q, row in enumerate(hits):
        cols = [ids.index(m.id) for m in row]
        assert set(cols) <= set(top7[q].tolist())
        best = top7[q][np.argsort(-full[q, top7[q]], kind="stable")][:5]
        assert cols == best.tolist() and [m.meta["n"] for m in row] == cols
    gallery.remove(ids[:20])  # the cached stage-1 index follows the gallery
    later = engine.match(queries, gallery, k=40, candidates=40)
    assert all(m.id >= 20 for row in later for m in row) and len(later[0]) == 20


# -- the DI pre-rank -----------------------------------------------------------------------

@pytest.mark.parametrize("matcher", ["numpy", "torch"])
def test_stream_parts_of_the_scorer_add_up_to_the_score(fake_bundle_v2, embedded, matcher):
    if matcher == "torch":
        pytest.importorskip("torch")
    gallery, _, queries = embedded
    scorer = ReIDEngine(fake_bundle_v2, backend="onnxruntime", device="cpu",
                        matcher=matcher).matcher
    assert scorer.name == matcher
    di, ds = scorer.of_streams(["di"]), scorer.of_streams(["ds"])
    assert di.keys == ("di_res4", "di_res5") and di.streams == ("di",)
    assert di.item_bytes < scorer.item_bytes and scorer.keys == ("ds_res4", "ds_res5") + di.keys
    np.testing.assert_allclose(di.scores(queries, gallery) + ds.scores(queries, gallery),
                               scorer.scores(queries, gallery), rtol=1e-5, atol=1e-5)
    with pytest.raises(TalError, match=r"scores no \['xx'\] stream .*\['ds', 'di'\]"):
        scorer.of_streams(["xx"])


def test_prerank_width_rules(engine):
    scorer = engine.matcher

    def width(matcher, m, prerank, gallery):
        plan = plan_retrieval(RetrievalOptions(candidates=m, prerank=prerank), matcher,
                              engine.bundle.descriptor_dim, "cpu")
        return plan.prerank_width(gallery)

    assert width(scorer, 200, None, 100_000) == 2000  # 10 x M
    assert width(scorer, 200, None, 10_000) == 500    # at most 5% of the gallery
    assert width(scorer, 200, None, 3_000) == 0       # 150 <= M: none
    assert width(scorer.of_streams(["di"]), 200, None, 100_000) == 0  # DI alone
    assert width(scorer, 200, 0, 100_000) == 0
    assert width(scorer, 200, 700, 100) == 700
    with pytest.raises(TalError, match="0 .none. or at least the 200 candidates, got 50"):
        width(scorer, 200, 50, 100_000)
    with pytest.raises(TalError, match=r"scores no \['di'\] stream"):
        width(scorer.of_streams(["ds"]), 200, 700, 100_000)


def test_prerank_narrows_by_di_score_and_reads_ds_maps_of_the_candidates_only(engine,
                                                                               embedded):
    gallery, _, queries = embedded
    stored = {k: _Recording(v) for k, v in gallery.items()}
    contents = IndexContents([IndexRecord(f"/g/{i:03d}", 1, 1, "x", None, None, None, {})
                              for i in range(40)], np.arange(40), stored)
    search = CandidateSearch(gallery["descriptor"])
    lists = shortlist(engine.matcher, queries, contents.take, search, 4, prerank=12)
    sims = queries["descriptor"] @ gallery["descriptor"].T
    di = engine.matcher.of_streams(["di"]).scores(queries, gallery)
    full = engine.scores(queries, gallery)
    for q in range(len(sims)):
        wide = np.argsort(-sims[q], kind="stable")[:12]
        assert sorted(lists.prerank.columns[q].tolist()) == sorted(wide.tolist())
        narrow = wide[np.argsort(-di[q, wide], kind="stable")[:4]]
        assert sorted(lists.columns[q].tolist()) == sorted(narrow.tolist())
        np.testing.assert_allclose(lists.scores[q], np.sort(full[q, narrow])[::-1], rtol=1e-5)
    n = len(sims)
    assert len(stored["di_res4"].read) == n * 12 + n * 4  # pre-rank, then the full score
    assert len(stored["ds_res4"].read) == n * 4           # the experts' maps: candidates only
    # the full ranking: candidates by TAL score, the other pre-ranked by DI, then descriptor
    order = np.argsort(-lists.rank_keys(sims)[0], kind="stable")
    pre = lists.prerank.columns[0]
    rest_pre = [c for c in pre.tolist() if c not in set(lists.columns[0].tolist())]
    assert order[:4].tolist() == lists.columns[0].tolist()
    assert order[4:12].tolist() == rest_pre
    outside = np.setdiff1d(np.arange(40), pre)
    assert order[12:].tolist() == outside[np.argsort(-sims[0, outside], kind="stable")].tolist()


def test_engine_prerank_default_and_choices(engine, embedded):
    features, cams, queries = embedded
    gallery = Gallery()
    ids = gallery.add(features, camera=cams)
    full = engine.scores(queries, features)
    di = engine.matcher.of_streams(["di"]).scores(queries, features)
    # 40 entries: auto pre-ranks nothing (5% of 40 < M), as prerank=0
    assert engine.match(queries, gallery, k=3, candidates=3) == engine.match(
        queries, gallery, k=3, candidates=3, prerank=0)
    hits = engine.match(queries, gallery, k=3, candidates=3, prerank=40)  # DI ranks everything
    for q, row in enumerate(hits):
        narrow = np.argsort(-di[q], kind="stable")[:3]
        want = narrow[np.argsort(-full[q, narrow], kind="stable")]
        assert [ids.index(m.id) for m in row] == want.tolist()
    with pytest.raises(TalError, match="at least the 3 candidates"):
        engine.match(queries, gallery, k=3, candidates=3, prerank=2)
    with pytest.raises(TalError, match="give candidates=M too"):
        engine.match(queries, gallery, k=3, prerank=30)


def test_engine_cascade_needs_a_descriptor(fake_bundle):
    engine = ReIDEngine(fake_bundle, backend="onnxruntime", device="cpu")
    rng = np.random.default_rng(0)
    gallery = Gallery()
    gallery.add(engine.embed([person_crop(1, rng), person_crop(2, rng)]))
    with pytest.raises(TalError, match="global descriptor"):
        engine.match(engine.embed([person_crop(1, rng)]), gallery, candidates=1)
    with pytest.raises(TalError, match="candidates must be >= 0"):
        engine.match(engine.embed([person_crop(1, rng)]), gallery, candidates=-1)


# -- tal-infer --candidates ----------------------------------------------------------------

@pytest.fixture()
def folders(tmp_path):
    names = GALLERY_NAMES + [f"{p:04d}_c{c}s1_{p * 100 + c:06d}_00.jpg" for p in (6, 7, 8)
                             for c in (1, 2, 3)]
    write_crops(tmp_path / "q", QUERY_NAMES, seed=1)
    write_crops(tmp_path / "g", names, seed=2)
    return tmp_path / "q", tmp_path / "g", len(names)


def infer(bundle, folders, *extra):
    q, g, _ = folders
    return CliRunner().invoke(main, [str(a) for a in ("--gallery", g, "--queries", q, "--model",
                                                      bundle, "--device", "cpu",
                                                      *extra)])


def _ranks(path: Path) -> list:
    return [[(m["gallery"], round(m["score"], 4)) for m in q["matches"]]
            for q in json.loads(path.read_text())]


@pytest.mark.parametrize("extra", [[], ["--exclude-same-camera", "--rerank"]])
def test_cli_cascade_equals_exhaustive_when_m_covers_the_gallery(fake_bundle_v2, folders,
                                                                 tmp_path, extra):
    n = folders[2]
    runs = {}
    for m in (0, n, 5):
        out = tmp_path / f"r{m}.json"
        res = infer(fake_bundle_v2, folders, "--index", tmp_path / "idx", "--candidates", m,
                    "--topk", 5, "--out", out, "--scores", tmp_path / f"s{m}.npz",
                    "--report", tmp_path / f"rep{m}", *extra)
        assert res.exit_code == 0, res.output
        runs[m] = (_ranks(out), [line for line in res.stdout.splitlines() if "mAP" in line])
    assert runs[n] == runs[0]
    assert runs[0][1] and runs[5][1]  # metrics printed in both modes
    nan = np.isnan(np.load(tmp_path / "s5.npz")["scores"])
    assert (nan.sum(axis=1) == n - 5).all()
    scored = np.load(tmp_path / f"s{n}.npz")
    same_camera = np.array([[_camera(q) == _camera(g) for g in scored["gallery"]]
                            for q in scored["queries"]])
    # every entry is scored, except (with exclusion) the query's own camera, never a candidate
    assert (np.isnan(scored["scores"]) == (same_camera & bool(extra))).all()
    assert all(len(r) == 5 for r in runs[5][0])
    assert (tmp_path / "rep5" / "index.html").is_file()


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_cli_approximate_stage_one(fake_bundle_v2, folders, tmp_path, kind):
    n = folders[2]
    res = infer(fake_bundle_v2, folders, "--candidates", n, "--candidate-search", kind,
                "--out", tmp_path / "a.json")
    assert res.exit_code == 0, res.output
    assert f"stage 1: {kind} search over {n} descriptors on cpu" in res.stderr
    exhaustive = infer(fake_bundle_v2, folders, "--out", tmp_path / "e.json")
    assert exhaustive.exit_code == 0, exhaustive.output
    assert _ranks(tmp_path / "a.json") == _ranks(tmp_path / "e.json")  # M covers the gallery


@pytest.mark.parametrize("extra", [[], ["--exclude-same-camera", "--rerank"]])
def test_cli_prerank_narrows_to_m_by_the_di_stream(fake_bundle_v2, folders, tmp_path, extra):
    n = folders[2]
    res = infer(fake_bundle_v2, folders, "--candidates", 3, "--prerank", n, "--topk", 3,
                "--scores", tmp_path / "s.npz", "--out", tmp_path / "r.json",
                "--report", tmp_path / "rep", *extra)
    assert res.exit_code == 0, res.output
    assert "the top" in res.stderr and "narrowed by the DI stream's score; stage 2: TAL " \
        "score on 3 candidates" in res.stderr
    assert "mAP" in res.stdout and (tmp_path / "rep" / "index.html").is_file()
    saved = np.load(tmp_path / "s.npz")
    assert (np.isfinite(saved["scores"]).sum(axis=1) == 3).all()
    engine = ReIDEngine(fake_bundle_v2, backend="onnxruntime", device="cpu")
    q = engine.embed_files(list(saved["queries"])).features
    g = engine.embed_files(list(saved["gallery"])).features
    di = engine.matcher.of_streams(["di"]).scores(q, g)
    if extra:  # the pre-rank sees other cameras only
        di[np.array([[_camera(a) == _camera(b) for b in saved["gallery"]]
                     for a in saved["queries"]])] = -np.inf
    for row, scored in zip(di, np.isfinite(saved["scores"])):
        assert set(np.flatnonzero(scored)) == set(np.argsort(-row, kind="stable")[:3].tolist())


@pytest.mark.parametrize("value, m, message", [
    ("x", 5, "neither auto nor a whole number"), ("-3", 5, "neither auto nor a whole number"),
    ("2", 5, "at least the 5 candidates, got 2"), ("50", 0, "give --candidates M too")])
def test_cli_bad_prerank_is_one_line_before_any_work(fake_bundle_v2, folders, tmp_path, value,
                                                     m, message):
    res = infer(fake_bundle_v2, folders, "--candidates", m, "--prerank", value,
                "--index", tmp_path / "idx")
    assert res.exit_code == 2 and message in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "idx").exists()  # refused before the index (and any extraction)


def _camera(path: str) -> str:
    return Path(path).name.split("_")[1][:2]


def test_cli_candidates_with_a_bundle_without_descriptor_is_one_line(fake_bundle, folders):
    res = infer(fake_bundle, folders, "--candidates", 5)
    assert res.exit_code == 2
    assert "no global descriptor" in res.stderr and "Traceback" not in res.stderr


BLOCK_FAISS = blocking("faiss") + """
from tal_infer.cli import main
main(sys.argv[1:])
"""


def test_without_faiss_candidates_say_how_to_install_and_exhaustive_runs(fake_bundle_v2,
                                                                         folders):
    q, g, _ = folders
    args = ["--gallery", str(g), "--queries", str(q), "--model", str(fake_bundle_v2),
            "--device", "cpu"]
    run = lambda *extra: subprocess.run(  # noqa: E731
        [sys.executable, "-c", BLOCK_FAISS, *args, *extra], capture_output=True, text=True,
        cwd=ROOT)
    refused = run("--candidates", "5")
    assert refused.returncode == 2, refused.stderr
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "pip install faiss-cpu" in errors[0]
    assert "Traceback" not in refused.stderr and "queries" not in refused.stderr
    exhaustive = run("--candidates", "0")
    assert exhaustive.returncode == 0, exhaustive.stderr
    assert "mAP" in exhaustive.stdout


def test_a_checkpoint_without_descriptor_exports_a_bundle_without_one(exported, folders):
    _, folder = exported
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["format_version"] == 3 and "descriptor" not in manifest
    assert "descriptor" not in ReIDEngine(folder, device="cpu").bundle.output_shapes
    res = infer(folder, folders, "--candidates", 3)
    assert res.exit_code == 2 and "re-export it" in res.stderr
