"""tal-infer: rank a gallery folder for every query image with an exported TAL bundle."""
from __future__ import annotations

import contextlib
import csv
import json
import os
from pathlib import Path
from typing import Iterator

import click
import numpy as np

from .bundle import DESCRIPTOR
from .candidates import SEARCH_KINDS, CandidateSearch, SearchOptions, load_faiss
from .cascade import Shortlists, descriptors, require_descriptor, shortlist
from .cli_common import device_option, friendly_errors
from .engine import ReIDEngine
from .errors import TalError
from .images import DEFAULT_MAX_PIXELS, list_images, read_image
from .index import GalleryIndex, IndexDamagedError, IndexMismatchError, market_metadata
from .metrics import UndefinedMetricsError, evaluate_scores
from .naming import parse_market_name
from .output_paths import check_output_file, check_output_folder, writing
from .reranking import k_reciprocal
from .scoring import TopK, exclude_same_camera, feature_chunks, rank_gallery

EPILOG = """\b
Examples:
  tal-infer --gallery data/cam2 --queries data/cam1 --out ranks.json
  tal-infer --gallery g/ --queries q/ --model export/p2-market1501 --topk 5 --report report/
  tal-infer --gallery g/ --queries q/ --index g.index --scores scores.npz --exclude-same-camera
  tal-infer --gallery g/ --queries q/ --backend onnxruntime --device cpu --on-error skip
  tal-infer --gallery big/ --queries q/ --index big.index --candidates 200
"""


@click.command(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--gallery", "gallery_dir", required=True, type=click.Path(path_type=Path),
              help="Folder of gallery crops (searched recursively).")
@click.option("--queries", "query_dir", required=True, type=click.Path(path_type=Path),
              help="Folder of query crops (searched recursively).")
@click.option("--model", type=click.Path(path_type=Path), default=None,
              help="Export bundle folder [default: the most recent one under ./export/].")
@click.option("--topk", default=10, show_default=True, type=click.IntRange(1),
              help="Matches kept per query.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Write the ranked matches to FILE.json or FILE.csv.")
@click.option("--scores", "scores_out", type=click.Path(path_type=Path), default=None,
              help="Write the full score matrix to FILE.npz (scores, queries, gallery).")
@click.option("--report", "report_dir", type=click.Path(path_type=Path), default=None,
              help="Write PNG/HTML rank lists and QAConv correspondences to DIR.")
@click.option("--report-queries", default=20, show_default=True, type=click.IntRange(1),
              help="Queries shown in the report.")
@click.option("--backend", default="auto", show_default=True,
              type=click.Choice(["auto", "onnxruntime", "tensorrt", "torch"]),
              help="Extractor backend; auto picks the fastest available and says which.")
@device_option
@click.option("--index", "index_dir", type=click.Path(path_type=Path), default=None,
              help="Persistent gallery index folder (incremental; fp16 features).")
@click.option("--rebuild-index", is_flag=True,
              help="Start over an index that is damaged or built for another model (a folder "
                   "holding other files is never touched).")
@click.option("--batch", default=32, show_default=True, type=click.IntRange(1),
              help="Images per extractor call.")
@click.option("--exclude-same-camera", "exclude_cameras", is_flag=True,
              help="Leave gallery crops from the query's camera out of the rank lists.")
@click.option("--rerank", is_flag=True, help="k-reciprocal re-ranking (Zhong et al. 2017).")
@click.option("--candidates", default=0, show_default=True, type=click.IntRange(0),
              help="Two-stage retrieval: the TAL score only on each query's top M gallery "
                   "entries by global descriptor (FAISS); 0 scores every entry.")
@click.option("--candidate-search", default="exact", show_default=True,
              type=click.Choice(SEARCH_KINDS),
              help="Stage-1 index with --candidates: exact inner product, or approximate "
                   "(ivf, hnsw) for very large galleries.")
@click.option("--verify", is_flag=True, help="Check the bundle's file hashes first.")
@click.option("--max-pixels", default=DEFAULT_MAX_PIXELS, show_default=True,
              type=click.IntRange(0),
              help="Refuse image files whose header declares more pixels, before decoding "
                   "(decompression bombs); 0 = no limit.")
@click.option("--on-error", default="fail", show_default=True,
              type=click.Choice(["fail", "skip"]),
              help="On an unreadable image: stop, or skip it and list it at the end.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@friendly_errors
def main(gallery_dir, query_dir, model, topk, out, scores_out, report_dir, report_queries,
         backend, device, index_dir, rebuild_index, batch, exclude_cameras, rerank, candidates,
         candidate_search, verify, max_pixels, on_error, quiet):
    """Match every query crop against a gallery with an exported TAL model.

    Prints mAP and CMC when the file names carry identities and cameras (Market-1501 style:
    0002_c1s1_000451_03.jpg); queries whose identity the gallery lacks are left out of them
    and counted. Grayscale, BGRA and 16-bit images are converted; unreadable, empty, tiny or
    oversized images stop the run with one line naming the file (or, with --on-error skip, are
    left out and listed). Output paths and the index are checked before any work.

    With --candidates M, FAISS picks each query's M best gallery entries by the global
    descriptor and only those are scored; everything else (camera exclusion, re-ranking,
    reports, metrics) works as without it. --scores then holds NaN for entries not scored.
    """
    check_output_file(out, "--out", (".json", ".csv"))
    check_output_file(scores_out, "--scores", (".npz",))
    check_output_folder(report_dir, "--report")
    progress = not quiet
    engine = ReIDEngine(model, backend=backend, device=device, batch_size=batch, verify=verify,
                        max_pixels=max_pixels or None)
    click.echo(f"model: {engine.bundle.path}; extractor: {engine.extractor.name} on "
               f"{engine.extractor.device}; matching on {engine.device}", err=True)
    if candidates:
        load_faiss()  # missing FAISS or descriptor: one line now, not after the extraction
        require_descriptor(engine.bundle.output_shapes)
    query_paths, gallery_paths = ([os.path.abspath(p) for p in list_images(d)]
                                  for d in (query_dir, gallery_dir))
    index = None if index_dir is None else _open_index(engine, index_dir, rebuild_index)

    queries = engine.embed_files(query_paths, on_error, progress, desc="queries")
    if not queries.paths:
        raise TalError(f"{query_dir}: none of the query images could be read")
    gallery, skipped = _gallery(engine, gallery_paths, index, on_error, progress)
    skipped = queries.skipped + skipped
    if gallery.size == 0:
        raise TalError(f"{gallery_dir}: none of the gallery images could be read")

    q_ids = _identities(queries.paths)
    g_ids = _identities(gallery.paths)
    labelled = q_ids is not None and g_ids is not None
    cameras = None
    if exclude_cameras:
        cameras = (_cameras(queries.paths), _cameras(gallery.paths))
        if (cameras[0] < 0).all() or (cameras[1] < 0).all():
            click.echo("warning: --exclude-same-camera: file names carry no cameras; nothing "
                       "excluded", err=True)
    if candidates:
        lists, ranked = _two_stage(engine, queries.features, gallery, candidates,
                                   candidate_search, cameras, rerank, labelled, progress)
        rows = lists.rows(topk)
        scores = lists.dense(gallery.size) if scores_out is not None else None
    else:
        keep = scores_out is not None or labelled or rerank
        ranking = rank_gallery(engine.scorer, queries.features,
                               gallery.chunks(engine.scorer.chunk_size(len(queries.paths))),
                               gallery.size, topk, cameras, keep_scores=keep,
                               progress=progress)
        scores, top = ranking.scores, ranking.topk
        if rerank:
            scores = _reranked(engine, queries.features,
                               gallery.features_of(np.arange(gallery.size)), scores, progress)
            top = TopK(len(queries.paths), topk)
            masked = scores.copy()
            if cameras is not None:
                exclude_same_camera(masked, *cameras)
            top.update(0, masked)
        rows, ranked = top.rows(), scores

    if out is not None:
        with writing(out, "--out"):
            _write_ranks(out, queries.paths, gallery.paths, rows)
        click.echo(f"wrote {out}", err=True)
    if scores_out is not None:
        with writing(scores_out, "--scores"):
            np.savez(scores_out, scores=scores, queries=np.array(queries.paths),
                     gallery=np.array(gallery.paths))
        click.echo(f"wrote {scores_out}", err=True)
    if labelled:
        _print_metrics(ranked, q_ids, g_ids)
    if out is None and scores_out is None:
        _print_top1(queries.paths, gallery.paths, rows)
    if report_dir is not None:
        from .report import write_report

        with writing(report_dir, "--report"):
            page = write_report(report_dir, engine.bundle, queries.paths, gallery.paths, rows,
                                q_ids[0] if labelled else None, g_ids[0] if labelled else None,
                                queries.features, gallery.features_of, limit=report_queries)
        click.echo(f"report: {page}", err=True)
    if skipped:
        click.echo(f"skipped {len(skipped)} unreadable file(s):", err=True)
        for path, reason in skipped:
            click.echo(f"  {path}: {reason}", err=True)


class _GallerySet:
    """Gallery features for matching: in memory, or a gallery index snapshot (fp16 memmaps)."""

    def __init__(self, paths, features=None, contents=None):
        self.paths, self.features, self.contents = list(paths), features, contents
        self.size = len(self.paths)

    def chunks(self, size):
        if self.contents is not None:
            return self.contents.iter_chunks(size)
        return feature_chunks(self.features, size)

    def features_of(self, columns, keys=None):
        """Features of the given gallery columns (all outputs, or ``keys``), as float32."""
        columns = np.asarray(columns, np.int64)
        if self.contents is not None:
            return self.contents.gather(columns, keys)
        return {k: v[columns] for k, v in self.features.items() if keys is None or k in keys}

    def descriptors(self):
        """Global descriptors of every gallery column, float32 [N, D]."""
        if self.contents is not None:
            return self.contents.gather(np.arange(self.size), [DESCRIPTOR])[DESCRIPTOR]
        return descriptors(self.features)


@contextlib.contextmanager
def _rebuild_hint() -> Iterator[None]:
    """Index errors that --rebuild-index fixes say so."""
    try:
        yield
    except IndexMismatchError as err:
        raise IndexMismatchError(f"{err} (or pass --rebuild-index)") from None
    except IndexDamagedError as err:
        raise IndexDamagedError(f"{err} with --rebuild-index") from None


def _open_index(engine, index_dir, rebuild) -> GalleryIndex:
    shapes = engine.bundle.output_shapes  # the descriptor too, when the bundle has one
    with _rebuild_hint():
        return GalleryIndex(index_dir, engine.bundle.fingerprint, shapes, rebuild=rebuild)


def _gallery(engine, paths, index, on_error, progress):
    if index is None:
        embedded = engine.embed_files(paths, on_error, progress, desc="gallery")
        return _GallerySet(embedded.paths, features=embedded.features), embedded.skipped
    with _rebuild_hint():
        report = index.sync(paths, lambda batch: engine.embed(
                                [read_image(p, engine.max_pixels) for p in batch]),
                            market_metadata, batch_size=engine.batch_size, on_error=on_error,
                            progress=progress)
        contents = index.load()
    click.echo(f"index {index.directory}: {report.added} added, {report.updated} updated, "
               f"{report.removed} removed, {report.unchanged} unchanged", err=True)
    return _GallerySet(contents.paths, contents=contents), report.skipped


def _parsed(paths) -> list:
    return [parse_market_name(Path(p).name) for p in paths]


def _identities(paths):
    """(pids, camids) from Market-style names, or None unless every name carries them."""
    parsed = _parsed(paths)
    if any(p is None for p in parsed):
        return None
    return np.array([p.pid for p in parsed]), np.array([p.camid for p in parsed])


def _cameras(paths) -> np.ndarray:
    """Camera per path from Market-style names; -1 where a name carries none."""
    return np.array([-1 if p is None else p.camid for p in _parsed(paths)], np.int64)


def _reranked(engine, query, g_feats, scores, progress):
    """k-reciprocal re-ranking of the gallery items ``g_feats`` (``scores`` = query x those)
    on 1 - sigmoid(score) distances; returned as scores (1 - d)."""
    to_dist = lambda s: 1.0 / (1.0 + np.exp(s.astype(np.float64)))  # noqa: E731  1 - sigmoid
    dist = k_reciprocal(to_dist(scores), to_dist(engine.scores(query, query)),
                        to_dist(engine.scores(g_feats, g_feats)), progress=progress)
    return (1.0 - dist).astype(np.float32)


def _two_stage(engine, queries, gallery, m, kind, cameras, rerank, labelled, progress):
    """(`Shortlists`, the ranking matrix for the metrics when ``labelled``) of two-stage
    retrieval. Re-ranking works on the union of the queries' candidate lists (its neighbour
    sets need gallery-gallery scores; with camera exclusion, the union of the lists with and
    without it, as exhaustive re-ranking sees every camera), then orders each query's own
    list. As in exhaustive matching, camera exclusion shapes the rank lists, not the metrics:
    with both, the metrics come from a second shortlist that excludes nothing."""
    g_desc = gallery.descriptors()
    search = CandidateSearch(g_desc, SearchOptions(kind, device=engine.device))
    click.echo(f"stage 1: {kind} search over {gallery.size} descriptors on {search.where}; "
               f"stage 2: TAL score on {min(m, gallery.size)} candidates per query", err=True)
    keys = engine.scorer.keys

    def ranked(exclude) -> Shortlists:
        lists = shortlist(engine.scorer, queries, lambda cols: gallery.features_of(cols, keys),
                          search, m, exclude, progress)
        if not rerank:
            return lists
        near = lists.columns if exclude is None else lists.columns + search.search(
            descriptors(queries), m)
        union = np.unique(np.concatenate(near))
        g_union = gallery.features_of(union, keys)
        rescored = _reranked(engine, queries, g_union, engine.scores(queries, g_union), progress)
        return Shortlists.ordered(lists.columns, [
            rescored[i, np.searchsorted(union, cols)] for i, cols in enumerate(lists.columns)])

    lists = ranked(cameras)
    if not labelled:
        return lists, None
    for_metrics = lists if cameras is None else ranked(None)
    return lists, for_metrics.rank_keys(descriptors(queries) @ g_desc.T)


def _write_ranks(out: Path, q_paths, g_paths, rows) -> None:
    if out.suffix.lower() == ".json":
        data = [{"query": q, "matches": [{"rank": r + 1, "gallery": g_paths[c], "score": s}
                                         for r, (c, s) in enumerate(row)]}
                for q, row in zip(q_paths, rows)]
        out.write_text(json.dumps(data, indent=1), encoding="utf-8")
        return
    with open(out, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["query", "rank", "gallery", "score"])
        for q, row in zip(q_paths, rows):
            writer.writerows([q, r + 1, g_paths[c], f"{s:.6g}"] for r, (c, s) in enumerate(row))


def _print_metrics(scores, q_ids, g_ids) -> None:
    """mAP and CMC over the queries whose identity the gallery holds (under another camera);
    the others, people the gallery has not seen, are counted, not errors."""
    try:
        m = evaluate_scores(scores, q_ids[0], g_ids[0], q_ids[1], g_ids[1])
    except UndefinedMetricsError:
        click.echo(f"mAP / CMC: not computable: none of the {len(q_ids[0])} queries has its "
                   "identity in the gallery (under another camera)")
        return
    cmc = m["cmc"]
    tops = "  ".join(f"top-{k} {100 * cmc[min(k, len(cmc)) - 1]:.1f}%" for k in (1, 5, 10))
    unmatched = m["num_queries"] - m["num_valid_queries"]
    skipped = f"; {unmatched} without a match in the gallery skipped" if unmatched else ""
    click.echo(f"mAP {100 * m['mAP']:.1f}%  {tops}  ({m['num_valid_queries']} of "
               f"{m['num_queries']} queries scored{skipped})")


def _print_top1(q_paths, g_paths, rows, limit: int = 10) -> None:
    for q, row in list(zip(q_paths, rows))[:limit]:
        best = f"{Path(g_paths[row[0][0]]).name} ({row[0][1]:.3f})" if row else "-"
        click.echo(f"{Path(q).name} -> {best}")
    if len(q_paths) > limit:
        click.echo(f"... {len(q_paths) - limit} more queries (use --out FILE.json|.csv)")

