"""Peak memory of k-reciprocal re-ranking over a gallery index: streamed vs a dense matrix.

Re-ranking needs the gallery-gallery distances. The runtime streams them through the matcher
block by block (`tal_infer.retrieval.Retriever`, `tal_infer.reranking.GalleryColumns`); the
alternative it replaced read every gallery feature into memory and built the dense Ng x Ng
matrix. This script builds a gallery index of N crops (random features in the layout of a
small contract bundle, so the run is about memory, not model quality), then re-ranks Q queries
against it in a fresh process per method and prints each one's peak RSS (``ru_maxrss``) and
time. The index and bundle are cached under --workdir.

Re-ranking needs N^2 gallery-gallery scores whatever the method, which the TAL heads on two CPU
cores compute far too slowly for N = 20,000 (hours). ``--matcher dot`` (the default) scores
with the inner product of the stored global descriptors instead, through the same `Matcher`
contract, the same index and the same retriever, so the memory of both methods is measured as
it is with the TAL heads (the arrays held do not depend on how a score is computed);
``--matcher tal`` uses the bundle's heads (for small N).

    python benchmarks/rerank_memory.py --gallery 20000 --queries 20
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "infer"))

from machine import describe  # noqa: E402


def build(workdir: Path, n: int) -> tuple[Path, Path]:
    """A contract bundle and an index of ``n`` entries with random unit-norm features."""
    from runtime_fixtures import write_fake_bundle

    from tal_infer.bundle import load_bundle
    from tal_infer.engine import bundle_index

    bundle_dir = workdir / "bundle"
    if not (bundle_dir / "manifest.json").is_file():
        write_fake_bundle(bundle_dir, descriptor=True)
    bundle = load_bundle(bundle_dir)
    index_dir = workdir / f"index-{n}"
    files = workdir / f"files-{n}"
    files.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = files / f"{i:06d}_c{i % 6 + 1}s1_{i:06d}_00.jpg"
        if not path.is_file():
            path.write_bytes(i.to_bytes(4, "little"))  # distinct content per entry
        paths.append(path)
    rng = np.random.default_rng(0)

    def embed(batch):
        out = {}
        for key, shape in bundle.output_shapes.items():
            x = rng.standard_normal((len(batch), *shape)).astype(bundle.precision.numpy_dtype)
            out[key] = x / np.linalg.norm(x, axis=-1, keepdims=True)
        return out

    index = bundle_index(bundle, index_dir)
    index.sync(paths, embed, batch_size=2048)
    return bundle_dir, index_dir


class DotMatcher:
    """A `Matcher` scoring with the inner product of the global descriptors (x 8, a score
    range like the heads'), for measuring re-ranking memory at sizes the heads cannot reach
    on a CPU in reasonable time (module doc)."""
    name, device, keys, streams = "descriptor-dot", "cpu", ("descriptor",), ("ds", "di")

    def of_streams(self, streams):
        return self

    def scores(self, query, gallery):
        q = np.asarray(query["descriptor"], np.float32)
        return 8.0 * q @ np.asarray(gallery["descriptor"], np.float32).T

    def chunk_size(self, num_queries: int) -> int:
        return max(1, (64 << 20) // (4 * max(1, num_queries)))

    def iter_scores(self, query, chunks):
        for start, stop, g in chunks:
            yield start, stop, self.scores(query, g)


def run_one(method: str, matcher_kind: str, bundle_dir: Path, index_dir: Path,
            queries: int) -> dict:
    """Re-rank in this process; returns peak RSS (MiB) and seconds."""
    from tal_infer.engine import ReIDEngine
    from tal_infer.features import FeatureArrays
    from tal_infer.reranking import k_reciprocal
    from tal_infer.retrieval import RetrievalOptions, Retriever

    engine = ReIDEngine(bundle_dir, backend="onnxruntime", device="cpu", matcher="numpy")
    matcher = DotMatcher() if matcher_kind == "dot" else engine.matcher
    contents = engine.open_index(index_dir).load()
    q = contents.take(np.arange(queries))
    plan = engine.plan(RetrievalOptions(topk=10, rerank=True))
    retriever = Retriever(matcher, plan)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    if method == "streamed":
        rows = [[c for c, _ in row] for row in retriever.retrieve(q, contents).rows]
    else:  # the replaced implementation: every feature in RAM, dense g_g
        g_all = contents.take(np.arange(len(contents)))
        dist = lambda s: 1.0 / (1.0 + np.exp(s.astype(np.float64)))  # noqa: E731
        q_g = retriever.scores(q, contents)
        d = k_reciprocal(dist(q_g), dist(retriever.scores(q, FeatureArrays(q))),
                         dist(retriever.scores(g_all, FeatureArrays(g_all))))
        rows = np.argsort(d, axis=1, kind="stable")[:, :10].tolist()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"method": method, "peak_mib": peak, "before_mib": before, "seconds": seconds,
            "first": [r[0] for r in rows]}


@click.command()
@click.option("--gallery", "n", default=20000, show_default=True, help="Gallery entries.")
@click.option("--queries", default=20, show_default=True, help="Queries re-ranked.")
@click.option("--workdir", type=click.Path(path_type=Path), default=Path(".cache/rerank"),
              show_default=True)
@click.option("--methods", default="streamed,dense", show_default=True)
@click.option("--matcher", "matcher_kind", type=click.Choice(["dot", "tal"]), default="dot",
              show_default=True, help="Scores: descriptor inner product, or the TAL heads.")
@click.option("--child", hidden=True, default=None)
def main(n: int, queries: int, workdir: Path, methods: str, matcher_kind: str,
         child: str | None) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    if child is not None:
        bundle_dir, index_dir = workdir / "bundle", workdir / f"index-{n}"
        print(json.dumps(run_one(child, matcher_kind, bundle_dir, index_dir, queries)))
        return
    build(workdir, n)
    print(f"machine: {describe()}")
    print(f"gallery {n:,} entries, {queries} queries, k1=20, k2=6, lambda=0.3, scores: "
          f"{matcher_kind}\n")
    print("| method | peak RSS (MiB) | RSS before re-ranking (MiB) | seconds |")
    print("|---|---:|---:|---:|")
    results = []
    for method in methods.split(","):
        out = subprocess.run([sys.executable, __file__, "--gallery", str(n), "--queries",
                              str(queries), "--workdir", str(workdir), "--matcher",
                              matcher_kind, "--child", method],
                             capture_output=True, text=True, env=os.environ)
        if out.returncode:
            print(f"| {method} | failed: {out.stderr.strip().splitlines()[-1]} | | |")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(r)
        print(f"| {method} | {r['peak_mib']:.0f} | {r['before_mib']:.0f} | {r['seconds']:.1f} |",
              flush=True)
    if len(results) == 2:
        same = results[0]["first"] == results[1]["first"]
        print(f"\nsame top-1 for every query: {same}")


if __name__ == "__main__":
    main()
