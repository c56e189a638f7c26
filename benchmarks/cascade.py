"""Two-stage retrieval at scale: the cascade (FAISS candidates by the global descriptor, then the
TAL score on them) against exhaustive matching, on generated galleries (docs/scale.md).

For each gallery size, each M and each DI pre-rank width N (0: the descriptor's top M get the
TAL score; auto: its top 10 x M (at most 5% of the gallery), narrowed to M by the DI stream's
score; `tal_infer.cascade`): recall of the exhaustive top-10 inside the M candidates
(and of the same-identity entries among that top-10 alone: with a weak model most of the
exhaustive top-10 are other people, near-ties that no cheaper descriptor reproduces exactly),
mAP and top-1 of both rankings (the cascade ranks its candidates by TAL score, then the rest by
descriptor), seconds per query of both (same queries, same CPU matching path, the gallery read
from a gallery index), and the index's bytes per crop. Last line:
``cascade: M=<m> recall@10=<r> mAP_exhaustive=<a> mAP_cascade=<b> speedup=<s>x`` for the
largest gallery and ``--headline-m``.

The model (unless ``--bundle``): the tal-demo recipe (tiny preset, p2 on generated domains
a-c, 3 x 60 iterations), its descriptor distilled on unlabelled crops of the source domains and
of 16 further generated domains (seed 3; distilling on many domains generalizes better to
unseen cameras: at 10,000 crops recall at M = 200 went from 0.977 to 0.987) for 24 blocks (3x
tal-distill's default; `DISTILL`), then exported.
Galleries: generated domains never seen in training or distillation (seed 7),
all identities' crops (train-split identities act as distractors), subsampled to the size;
queries: a fixed sample of the query crops. Everything is cached under ``--workdir``: the
model, the crops, the gallery indexes and the exhaustive results (their timing is from the run
that computed them, and the table says when), so a re-run only repeats the cascade. The last
line is for the first search kind and the last pre-rank width given.

    python benchmarks/cascade.py                                   # 10,000 and 100,000 crops
    python benchmarks/cascade.py --sizes 10000 --candidates 50,200 --queries 100
    python benchmarks/cascade.py --sizes 100000 --search exact,hnsw   # + approximate stage 1
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import time
from pathlib import Path

import click
import numpy as np

from machine import describe

from tal_infer.bundle import load_bundle
from tal_infer.candidates import CandidateOptions, CandidateSearch
from tal_infer.cascade import descriptors, shortlist
from tal_infer.engine import ReIDEngine
from tal_infer.features import DESCRIPTOR
from tal_infer.images import list_images, read_image
from tal_infer.index import GalleryIndex, market_metadata
from tal_infer.metrics import evaluate_scores
from tal_infer.naming import parse_market_name
from tal_infer.retrieval import RetrievalOptions
from tal_infer.scoring import rank_gallery
from tal_train.distill import DistillOptions

IMAGES_PER_IDENTITY = 8  # the generator's default 6..10
# 3x tal-distill's default blocks: recall at M = 200 of 100,000 crops 0.78 -> 0.83 (docs/scale.md)
DISTILL = DistillOptions(blocks=24)
STORED_DTYPE = "float16"  # of the gallery indexes
DOMAINS = 4


def prepare_model(workdir: Path, progress: bool) -> Path:
    """The demo model with a distilled descriptor, exported (each step reused when done)."""
    from tal_export import export_bundle
    from tal_export.bundle import load_model
    from tal_export.demo import make_data, train_model
    from tal_train.data.synthetic import SyntheticConfig, synthesize
    from tal_train.distill import add_descriptor, distill_descriptor

    bundle = workdir / "model" / "bundle"
    if (bundle / "manifest.json").is_file() and load_bundle(bundle).descriptor_dim:
        return bundle
    data, runs = workdir / "model" / "data", workdir / "model" / "runs"
    make_data(data, identities=40, seed=0, progress=progress)
    ckpt = runs / "ckpt.pth"
    if not ckpt.is_file():
        ckpt = train_model(data, runs, epochs=3, iters=60, batch_size=32, image_size=None,
                           seed=0, progress=progress)
    extra, diverse = workdir / "model" / "distill-crops", workdir / "model" / "diverse-crops"
    for folder, config in ((extra, SyntheticConfig(identities=200, domains=DOMAINS, seed=0)),
                           (diverse, SyntheticConfig(identities=60, domains=16, seed=3))):
        if not (folder / "synthesis.json").is_file():  # unlabelled crops for distillation
            synthesize(folder, config, overwrite=True, progress=progress)
    sources = [f"domain-{c}" for c in "abc"]
    paths = [p for root in (data, extra) for d in sources for p in list_images(root / d)]
    paths += list_images(diverse)
    model, stored = load_model(ckpt)
    report = stored.get("descriptor", {}).get("distillation", {})
    if report.get("options") != dataclasses.asdict(DISTILL) or report.get("images") != len(paths):
        head, report = distill_descriptor(model, paths, DISTILL, progress=progress)
        add_descriptor(ckpt, head, report)
    print(f"descriptor distilled on {len(paths)} crops, {DISTILL.blocks} blocks: held-out "
          f"recall {report['holdout_recall']['recall']:.3f}", flush=True)
    return export_bundle(ckpt, bundle, progress=progress)


def prepare_gallery(workdir: Path, size: int, num_queries: int, seed: int,
                    progress: bool, shift: str = "photometric") -> tuple[list[str], list[str]]:
    """(gallery paths, exactly ``size``; query paths) of generated unseen domains."""
    from tal_train.data.synthetic import SyntheticConfig, synthesize

    folder = workdir / f"crops-{size}"
    recorded = folder / "synthesis.json"
    if not recorded.is_file():
        per_domain = math.ceil(1.3 * size / IMAGES_PER_IDENTITY / DOMAINS)
        synthesize(folder, SyntheticConfig(identities=per_domain, domains=DOMAINS, seed=seed,
                                           shift=shift), overwrite=True, progress=progress)
    made = json.loads(recorded.read_text())["config"].get("shift", "photometric")
    if made != shift:
        raise click.ClickException(f"{folder} holds crops of the {made} shift, not {shift}; "
                                   "use another --workdir")
    domains = sorted(d for d in folder.iterdir() if d.is_dir())
    gallery = sorted(p for d in domains for sub in ("bounding_box_test", "bounding_box_train")
                     for p in list_images(d / sub))
    queries = sorted(p for d in domains for p in list_images(d / "query"))
    if len(gallery) < size:
        raise click.ClickException(f"{folder} holds {len(gallery)} gallery crops, fewer than "
                                   f"{size}; delete it to regenerate")
    rng = np.random.default_rng(seed)
    gallery = [gallery[i] for i in sorted(rng.choice(len(gallery), size, replace=False))]
    queries = [queries[i] for i in sorted(rng.choice(len(queries), num_queries, replace=False))]
    return [os.path.abspath(p) for p in gallery], [os.path.abspath(p) for p in queries]


def labels(paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
    parsed = [parse_market_name(Path(p).name) for p in paths]
    return np.array([p.pid for p in parsed]), np.array([p.camid for p in parsed])


def exhaustive(engine: ReIDEngine, contents, queries: dict, cache: Path, query_paths: list[str],
               progress: bool) -> tuple[np.ndarray, float, str]:
    """(scores [Nq, Ng], seconds, when measured): computed once, then read from ``cache``."""
    key = {"queries": query_paths, "gallery": len(contents), "model": engine.bundle.fingerprint}
    if cache.is_file():
        with np.load(cache) as stored:
            if json.loads(str(stored["key"])) == key:
                return stored["scores"], float(stored["seconds"]), str(stored["when"])
    matcher = engine.matcher
    start = time.perf_counter()
    ranking = rank_gallery(matcher, queries, contents.iter_chunks(matcher.chunk_size(
        len(query_paths))), len(contents), k=10, keep_scores=True)
    seconds = time.perf_counter() - start
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    np.savez(cache, scores=ranking.scores, seconds=seconds, when=when, key=json.dumps(key))
    return ranking.scores, seconds, when


@dataclasses.dataclass
class Reference:
    """What every cascade row is compared with: the exhaustive ranking of one gallery."""
    best10: np.ndarray          # [Nq, 10] exhaustive top-10 columns
    same: list[set]             # per query: the top-10 columns of its own identity
    stage1_sims: np.ndarray     # [Nq, Ng] descriptor similarities (the ranking's tail)
    labels: tuple               # (query labels, gallery labels) as `labels` gives them
    map_top1: tuple[float, float]
    seconds_per_query: float


def measure(engine: ReIDEngine, queries: dict, contents, stage1: CandidateSearch, kind: str,
            built: float, m: int, width: int, ref: Reference) -> tuple:
    """Run the cascade for one (M, pre-rank width), print its table row, return the last
    line's numbers."""
    start = time.perf_counter()
    lists = shortlist(engine.matcher, queries, contents.take, stage1, m, prerank=width)
    per_query = (time.perf_counter() - start) / len(ref.best10)
    recall = np.mean([len(set(b) & set(c)) / 10 for b, c in zip(ref.best10, lists.columns)])
    n_same = sum(map(len, ref.same))
    same_found = sum(len(t & set(c.tolist())) for t, c in zip(ref.same, lists.columns))
    cas_map, cas_top1 = metrics(lists.rank_keys(ref.stage1_sims), *ref.labels)
    speedup = ref.seconds_per_query / per_query
    print(f"| {kind} (built in {built:.1f} s) | {m} | {width or '-'} | {recall:.4f} "
          f"| {same_found / max(1, n_same):.4f} | {ref.map_top1[0]:.2f} | {cas_map:.2f} "
          f"| {ref.map_top1[1]:.1f} | {cas_top1:.1f} | {ref.seconds_per_query:.4f} "
          f"| {per_query:.4f} | {speedup:.0f}x |", flush=True)
    return m, width, kind, recall, ref.map_top1[0], cas_map, speedup


def metrics(matrix: np.ndarray, q_labels, g_labels) -> tuple[float, float]:
    m = evaluate_scores(matrix, q_labels[0], g_labels[0], q_labels[1], g_labels[1])
    return 100 * m["mAP"], 100 * float(m["cmc"][0])


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


@click.command()
@click.option("--workdir", type=click.Path(path_type=Path), default=Path(".cache/cascade"),
              show_default=True, help="Cache of the model, crops, indexes, exhaustive results.")
@click.option("--bundle", type=click.Path(path_type=Path), default=None,
              help="Use this bundle (it needs a descriptor) instead of building the demo model.")
@click.option("--sizes", default="10000,100000", show_default=True, help="Gallery sizes.")
@click.option("--candidates", default="50,100,200,500", show_default=True, help="Values of M.")
@click.option("--headline-m", default=200, show_default=True, help="M of the last line.")
@click.option("--queries", "num_queries", default=200, show_default=True, type=int)
@click.option("--prerank", default="0,auto", show_default=True,
              help="DI pre-rank widths N, comma-separated: 0 (none), auto (10 x M, at most 5% "
                   "of the gallery) or a number (used where >= M); the last line uses the last.")
@click.option("--search", default="exact", show_default=True,
              help="Stage-1 FAISS index kinds, comma-separated (exact, ivf, hnsw); the last "
                   "line uses the first.")
@click.option("--seed", default=7, show_default=True, type=int,
              help="Seed of the gallery domains (the model's are seed 0).")
@click.option("--shift", default="photometric", show_default=True,
              type=click.Choice(["photometric", "structural"]),
              help="The generator's domain shift for the galleries (tal-data synthesize "
                   "--shift); match the model's training data.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def main(workdir: Path, bundle: Path | None, sizes: str, candidates: str, headline_m: int,
         num_queries: int, prerank: str, search: str, seed: int, shift: str,
         quiet: bool) -> None:
    """Print recall@10, mAP, top-1 and seconds per query of the cascade and of exhaustive
    matching, for galleries of the given sizes."""
    started, progress = time.time(), not quiet
    workdir.mkdir(parents=True, exist_ok=True)
    bundle = bundle or prepare_model(workdir, progress)
    engine = ReIDEngine(bundle, backend="onnxruntime", device="cpu", batch_size=64)
    ms = sorted(int(m) for m in candidates.split(","))
    kinds = [CandidateOptions(k).kind for k in search.split(",")]
    preranks = [None if w == "auto" else int(w) for w in prerank.split(",")]
    print(f"machine: {describe()}; load average at start {load()}; threads: "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print(f"model: {bundle} ({engine.bundle.descriptor_dim}-value descriptor); stage 1: "
          f"FAISS {', '.join(kinds)}; stage 2 and exhaustive: the numpy CPU path", flush=True)
    headline = None
    for size in (int(s) for s in sizes.split(",")):
        gallery_paths, query_paths = prepare_gallery(workdir, size, num_queries, seed, progress,
                                                     shift)
        # fp16 storage whatever the bundle's precision (the compact index; scores are computed
        # in the bundle's precision); another model: rebuilt
        index = GalleryIndex(workdir / f"index-{size}", engine.bundle.fingerprint,
                             engine.bundle.output_shapes, dtype=STORED_DTYPE, rebuild=True)
        index.sync(gallery_paths, lambda batch: engine.embed([read_image(p) for p in batch]),
                   market_metadata, batch_size=64)
        contents = index.load()
        queries = engine.embed_files(query_paths).features
        q_labels, g_labels = labels(query_paths), labels(contents.paths)
        full, exhaustive_s, when = exhaustive(engine, contents, queries,
                                              workdir / f"exhaustive-{size}.npz", query_paths,
                                              progress)
        best10 = np.argsort(-full, axis=1, kind="stable")[:, :10]
        same = [set(b[g_labels[0][b] == pid].tolist()) for b, pid in zip(best10, q_labels[0])]
        g_desc = contents.take(np.arange(len(contents)), [DESCRIPTOR])[DESCRIPTOR]
        reference = Reference(best10, same, descriptors(queries) @ g_desc.T,
                              (q_labels, g_labels), metrics(full, q_labels, g_labels),
                              exhaustive_s / len(query_paths))
        per_crop = sum(index.store.row_bytes.values())
        print(f"\n## {size:,} gallery crops, {len(query_paths)} queries "
              f"(exhaustive measured {when})")
        print(f"index: {index.feature_bytes() / len(contents):,.0f} bytes per crop on disk "
              f"({per_crop - index.store.row_bytes[DESCRIPTOR]:,} maps + "
              f"{index.store.row_bytes[DESCRIPTOR]:,} descriptor, fp16)")
        print(f"exhaustive top-10: {sum(map(len, same))} of {10 * len(same)} entries show the query's own "
              "identity; the rest are other people")
        print("| stage 1 | M | pre-rank N | recall@10 | recall@10, same identity | mAP exhaustive "
              "| mAP cascade | top-1 exhaustive | top-1 cascade | s/query exhaustive "
              "| s/query cascade | speedup |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for kind in kinds:
            built = time.perf_counter()
            stage1 = CandidateSearch(g_desc, CandidateOptions(kind))
            built = time.perf_counter() - built
            rows: dict[tuple[int, int], tuple] = {}  # (M, width) -> the last line's numbers
            for m, asked in ((m, w) for m in ms for w in preranks):
                plan = engine.plan(RetrievalOptions(candidates=m, prerank=asked if asked is None
                                                    or asked == 0 else max(m, asked)))
                width = plan.prerank_width(len(contents))
                width = width if width > m else 0
                if (m, width) not in rows:  # auto, or N <= M, may mean no pre-rank: one row
                    rows[m, width] = measure(engine, queries, contents, stage1, kind, built, m,
                                             width, reference)
                if m == headline_m and kind == kinds[0] and asked == preranks[-1]:
                    headline = rows[m, width]
    print(f"\nwall time {time.time() - started:.0f} s; load average at the end {load()}")
    if headline is not None:
        m, width, kind, recall, a, b, s = headline
        print(f"stage 1 of the last line: FAISS {kind}, "
              + (f"the top {width} by descriptor narrowed to {m} by the DI stream's score"
                 if width else f"the top {m} by descriptor"))
        print(f"cascade: M={m} recall@10={recall:.4f} mAP_exhaustive={a:.2f} "
              f"mAP_cascade={b:.2f} speedup={s:.0f}x")


if __name__ == "__main__":
    main()
