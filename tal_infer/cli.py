"""tal-infer: rank a gallery folder for every query image with an exported TAL bundle (a thin
command over `tal_infer.search`)."""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Iterator

import click
import numpy as np

from .backends import EXTRACTOR_BACKENDS
from .candidates import SEARCH_KINDS
from .cli_common import device_option, friendly_errors, verbosity_options
from .engine import Embedded, ReIDEngine
from .errors import TalError
from .images import DEFAULT_MAX_PIXELS, list_images
from .index import GalleryIndex, IndexDamagedError, IndexMismatchError
from .matching import MATCH_BACKENDS
from .metrics import UndefinedMetricsError, evaluate_scores
from .output_paths import check_apart, check_output_file, check_output_folder, writing
from .retrieval import RetrievalOptions
from .search import (GalleryFiles, SearchResult, embed_gallery, search, vet_names,
                     write_ranks)

log = logging.getLogger("tal_infer")
EPILOG = """\b
Examples:
  tal-infer --gallery data/cam2 --queries data/cam1 --out ranks.json
  tal-infer --gallery g/ --queries q/ --model export/p2-market1501 --topk 5 --report report/
  tal-infer --gallery g/ --queries q/ --index g.index --scores scores.npz --exclude-same-camera
  tal-infer --gallery g/ --queries q/ --backend onnxruntime --matcher numpy --device cpu
  tal-infer --gallery big/ --queries q/ --index big.index --candidates 200
"""


def _prerank_width(ctx: click.Context, param: click.Parameter, value: str) -> int | None:
    """``--prerank``: None for auto, else a width >= 0."""
    if value == "auto":
        return None
    try:
        width = int(value)
    except ValueError:
        width = -1
    if width < 0:
        raise click.BadParameter(f"{value!r} is neither auto nor a whole number >= 0")
    return width


@click.command(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--gallery", "gallery_dir", required=True, type=click.Path(path_type=Path),
              help="Folder of gallery crops (searched recursively).")
@click.option("--queries", "query_dir", required=True, type=click.Path(path_type=Path),
              help="Folder of query crops (searched recursively).")
@click.option("--model", type=click.Path(path_type=Path), default=None,
              help="Export bundle folder [default: the most recent one under ./export/].")
@click.option("--topk", default=RetrievalOptions.topk, show_default=True, type=click.IntRange(1),
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
              type=click.Choice(EXTRACTOR_BACKENDS),
              help="Extractor backend (images -> features); auto picks the fastest available "
                   "and says which.")
@click.option("--matcher", default="auto", show_default=True, type=click.Choice(MATCH_BACKENDS),
              help="Matching backend (features -> scores): numpy (CPU, no torch), torch, triton "
                   "(the fused kernel), tensorrt (matcher.plan); auto: tensorrt beside the "
                   "tensorrt backend, the kernel or cuBLAS on CUDA, torch on the CPU (numpy "
                   "without torch).")
@device_option
@click.option("--index", "index_dir", type=click.Path(path_type=Path), default=None,
              help="Persistent gallery index folder (incremental; features in the bundle's "
                   "precision).")
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
@click.option("--prerank", default="auto", show_default=True, metavar="N|auto",
              callback=_prerank_width,
              help="With --candidates M: FAISS takes the top N by descriptor and the DI "
                   "stream's score (a fraction of the full score's cost) keeps the best M "
                   "of them for the full TAL score; auto = 10 x M (at most 5% of the "
                   "gallery) for models with the DI stream beside the experts, 0 = none.")
@click.option("--verify", is_flag=True, help="Check the bundle's file hashes first.")
@click.option("--max-pixels", default=DEFAULT_MAX_PIXELS, show_default=True,
              type=click.IntRange(0),
              help="Refuse image files whose header declares more pixels, before decoding "
                   "(decompression bombs); 0 = no limit.")
@click.option("--on-error", default="fail", show_default=True,
              type=click.Choice(["fail", "skip"]),
              help="On an unreadable image: stop, or skip it and list it at the end.")
@verbosity_options
@friendly_errors
def main(gallery_dir: Path, query_dir: Path, model: Path | None, topk: int, out: Path | None,
         scores_out: Path | None, report_dir: Path | None, report_queries: int, backend: str,
         matcher: str, device: str, index_dir: Path | None, rebuild_index: bool, batch: int,
         exclude_cameras: bool, rerank: bool, candidates: int, candidate_search: str,
         prerank: int | None, verify: bool, max_pixels: int, on_error: str) -> None:
    """Match every query crop against a gallery with an exported TAL model.

    Prints mAP and CMC when the file names carry identities and cameras (Market-1501 style:
    0002_c1s1_000451_03.jpg); queries whose identity the gallery lacks are left out of them
    and counted. Grayscale, BGRA and 16-bit images are converted; unreadable, empty, tiny or
    oversized images stop the run with one line naming the file (or, with --on-error skip, are
    left out and listed). Output paths and the index are checked before any work.

    With --candidates M, FAISS picks each query's best gallery entries by the global
    descriptor, the DI stream's score narrows them to M (--prerank) and only those get the
    full TAL score; everything else (camera exclusion, re-ranking, reports, metrics) works as
    without it. --scores then holds NaN for entries not scored.
    """
    if prerank and not candidates:
        raise click.UsageError("--prerank narrows the --candidates shortlist: give --candidates "
                               "M too (0, the default, matches exhaustively)")
    check_output_file(out, "--out", (".json", ".csv"))
    check_output_file(scores_out, "--scores", (".npz",))
    check_output_folder(report_dir, "--report")
    engine = ReIDEngine(model, backend=backend, device=device, batch_size=batch, verify=verify,
                        max_pixels=max_pixels or None, matcher=matcher)
    plan = engine.plan(RetrievalOptions(topk, candidates, prerank, candidate_search,
                                        exclude_cameras, rerank))
    check_apart({"--out": out, "--scores": scores_out, "--report": report_dir,
                 "--index": index_dir},
                {"model bundle": engine.bundle.path, "gallery folder": gallery_dir,
                 "query folder": query_dir})
    (query_paths, bad_queries), (gallery_paths, bad_gallery) = (
        vet_names([os.path.abspath(p) for p in list_images(d)], on_error)
        for d in (query_dir, gallery_dir))
    index = None
    if index_dir is not None:
        with _rebuild_hint():
            index = engine.open_index(index_dir, rebuild_index)

    queries = engine.embed_files(query_paths, on_error, desc="queries")
    if not queries.paths:
        raise TalError(f"{query_dir}: none of the query images could be read")
    with _rebuild_hint():
        gallery = embed_gallery(engine, gallery_paths, index, on_error)
    _echo_sync(index, gallery)
    if not gallery.paths:
        raise TalError(f"{gallery_dir}: none of the gallery images could be read")
    result = search(engine, plan, queries, gallery, keep_scores=scores_out is not None)
    _write_outputs(out, scores_out, queries.paths, gallery.paths, result.rows, result.scores)
    if result.identities is not None:
        _print_metrics(result.ranking, *result.identities)
    if out is None and scores_out is None:
        _print_top1(queries.paths, gallery.paths, result.rows)
    if report_dir is not None:
        _write_report(report_dir, engine, queries, gallery, result, report_queries)
    _log_skipped(bad_queries + queries.skipped + bad_gallery + gallery.skipped)


@contextlib.contextmanager
def _rebuild_hint() -> Iterator[None]:
    """Index errors that --rebuild-index fixes say so."""
    try:
        yield
    except IndexMismatchError as err:
        raise IndexMismatchError(f"{err} (or pass --rebuild-index)") from None
    except IndexDamagedError as err:
        raise IndexDamagedError(f"{err} with --rebuild-index") from None


def _echo_sync(index: GalleryIndex | None, gallery: GalleryFiles) -> None:
    report = gallery.sync
    if index is not None and report is not None:
        log.info("index %s: %d added, %d updated, %d removed, %d unchanged", index.directory,
                 report.added, report.updated, report.removed, report.unchanged)


def _write_outputs(out: Path | None, scores_out: Path | None, query_paths: list[str],
                   gallery_paths: list[str], rows: list, scores: np.ndarray | None) -> None:
    if out is not None:
        with writing(out, "--out"):
            write_ranks(out, query_paths, gallery_paths, rows)
        log.info("wrote %s", out)
    if scores_out is not None:
        with writing(scores_out, "--scores"):
            np.savez(scores_out, scores=scores, queries=np.array(query_paths),
                     gallery=np.array(gallery_paths))
        log.info("wrote %s", scores_out)


def _write_report(report_dir: Path, engine: ReIDEngine, queries: Embedded,
                  gallery: GalleryFiles, result: SearchResult, limit: int) -> None:
    from .report import write_report

    ids = result.identities
    pids = (None, None) if ids is None else (ids[0][0], ids[1][0])  # green / red borders
    with writing(report_dir, "--report"):
        page = write_report(report_dir, engine.bundle, queries.paths, gallery.paths,
                            result.rows, *pids, queries.features, gallery.features.take,
                            limit=limit, max_pixels=engine.max_pixels)
    log.info("report: %s", page)


def _log_skipped(skipped: list[tuple[str, str]]) -> None:
    if skipped:
        log.warning("skipped %d unreadable file(s):\n%s", len(skipped),
                    "\n".join(f"  {path}: {reason}" for path, reason in skipped))


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

