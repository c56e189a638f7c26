"""Stage 1 of two-stage retrieval: the top-M gallery candidates of each query (docs/scale.md).

Every crop carries a global descriptor (extractor output ``descriptor``, L2-normalized, see
docs/bundle.md); candidates are the gallery entries with the largest descriptor inner products,
found with FAISS. Kinds:

- ``exact`` (default): ``IndexFlatIP``, every inner product, the true top-M;
- ``ivf``: ``IndexIVFFlat`` (inner product), ``nlist`` k-means cells (default 4 sqrt(N), at
  least 39 training points per cell), ``nprobe`` cells searched per query (more for long
  shortlists: enough for `IVF_SCAN_FACTOR` x the candidates asked for);
- ``hnsw``: ``IndexHNSWFlat`` (inner product), ``hnsw_m`` links per node, ``ef_search`` nodes
  explored per query (at least the number of candidates asked for).

With ``device="cuda"`` and a FAISS build that sees GPUs (faiss-gpu), ``exact`` and ``ivf`` move
to the GPUs: one GPU holds the whole index, several hold one shard each (FAISS's own
``index_cpu_to_all_gpus`` with ``shard=True``; every query searches all shards and FAISS merges
the lists). FAISS has no GPU HNSW, so ``hnsw`` stays on the CPU.

Same-camera exclusion: a query must get M candidates from other cameras, so each search asks
for more (M plus a margin, doubled until enough are left once the query's own camera is dropped,
up to the whole gallery). FAISS's GPU search returns at most 2,048 per query; a query that
needs more is searched again in the CPU copy of the index.

FAISS is optional (``pip install faiss-cpu``, extra ``scale``); only two-stage retrieval
imports it, and its absence is one line saying how to install it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import TalError

SEARCH_KINDS = ("exact", "ivf", "hnsw")
GPU_MAX_K = 2048  # FAISS's limit on k (and nprobe) for GPU indexes
MIN_POINTS_PER_CELL = 39  # FAISS's k-means warns below this many training points per centroid
IVF_SCAN_FACTOR = 10  # IVF scans cells holding at least this x k vectors (0.9993 of the exact
                      # top 2,000 of 100,000 descriptors; 5x: 0.992; docs/scale.md)
FAISS_MISSING = ("two-stage retrieval (--candidates M > 0) needs FAISS, which is not installed: "
                 "pip install faiss-cpu (or pip install 'tal-reid[scale]'; a faiss-gpu build "
                 "for GPUs); --candidates 0 matches exhaustively without it")


def load_faiss() -> Any:
    """The faiss module, or `TalError` saying how to install it."""
    try:
        import faiss
    except ImportError:
        raise TalError(FAISS_MISSING) from None
    return faiss


@dataclass(frozen=True)
class CandidateOptions:
    """How stage 1 searches (see the module doc); defaults suit galleries up to ~10^6 crops."""
    kind: str = "exact"
    device: str = "cpu"
    nlist: int | None = None
    nprobe: int = 32
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 256

    def __post_init__(self) -> None:
        if self.kind not in SEARCH_KINDS:
            raise TalError(f"unknown candidate search {self.kind!r}; choose one of "
                           f"{', '.join(SEARCH_KINDS)}")
        if self.device not in ("cpu", "cuda"):
            raise TalError(f"candidate search device must be cpu or cuda, not {self.device!r}")
        for name in ("nprobe", "hnsw_m", "ef_construction", "ef_search"):
            if getattr(self, name) < 1:
                raise TalError(f"candidate search {name} must be >= 1")
        if self.nlist is not None and self.nlist < 1:
            raise TalError("candidate search nlist must be >= 1")


class CandidateSearch:
    """A FAISS inner-product index over the gallery descriptors ``[N, D]`` (row = column)."""

    def __init__(self, descriptors: np.ndarray, options: CandidateOptions = CandidateOptions()):
        faiss = load_faiss()
        data = np.ascontiguousarray(descriptors, dtype=np.float32)
        if data.ndim != 2 or len(data) == 0:
            raise TalError(f"candidate search needs descriptors [N, D] with N >= 1, got "
                           f"shape {data.shape}")
        self.options = options
        self.size, self.dim = data.shape
        self.cpu_index = _build(faiss, data, options)
        self.index, self.gpus, self._gpu_resources = self.cpu_index, 0, None
        if options.device == "cuda" and options.kind != "hnsw":
            self.index, self.gpus, self._gpu_resources = _to_gpus(faiss, self.cpu_index)

    @property
    def where(self) -> str:
        """Where searches run, for the log line."""
        if self.gpus == 0:
            return "cpu"
        return "1 GPU" if self.gpus == 1 else f"{self.gpus} GPUs (sharded)"

    def search(self, queries: np.ndarray, m: int,
               exclude: tuple[np.ndarray, np.ndarray] | None = None) -> list[np.ndarray]:
        """Per query, up to ``m`` gallery columns, best first (fewer only where the gallery,
        after exclusion, has fewer). ``exclude=(query cameras, gallery cameras)`` leaves out
        entries of the query's own camera (-1 = unknown, never excluded)."""
        if m < 1:
            raise TalError(f"the number of candidates must be >= 1, got {m}")
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise TalError(f"query descriptors have shape {q.shape}, the gallery's have "
                           f"dimension {self.dim}")
        wanted = np.full(len(q), min(m, self.size), np.int64)
        if exclude is not None:
            q_cams, g_cams = (np.asarray(c, np.int64) for c in exclude)
            allowed = self.size - _same_camera_counts(q_cams, g_cams)
            wanted = np.minimum(wanted, allowed)
        out: list[np.ndarray] = [np.zeros(0, np.int64)] * len(q)
        todo = np.flatnonzero(wanted > 0)
        fetch = min(self.size, m if exclude is None else m + max(16, m // 4))
        while len(todo):
            columns = self._search(q[todo], fetch)
            unfinished = []
            for row, cols in zip(todo, columns):
                cols = cols[cols >= 0]
                if exclude is not None:
                    cols = cols[(g_cams[cols] != q_cams[row]) | (q_cams[row] < 0)]
                if len(cols) >= wanted[row] or fetch >= self.size:
                    out[row] = cols[:wanted[row]]
                else:
                    unfinished.append(row)
            todo, fetch = np.array(unfinished, np.int64), min(self.size, 2 * fetch)
        return out

    def _search(self, queries: np.ndarray, k: int) -> np.ndarray:
        """FAISS search of k columns per query (-1 where the index found fewer).

        The approximate kinds widen with k: FAISS's HNSW explores ef_search nodes and its IVF
        scans nprobe cells whatever k is, so a long shortlist (the DI pre-rank's) came back
        thin (at 100,000 crops, 62% and 78% of the exact top 2,000; docs/scale.md). HNSW
        explores max(ef_search, k) nodes, IVF scans enough cells for `IVF_SCAN_FACTOR` x k
        vectors (at least nprobe). A GPU index that would need more (k or cells) than it was
        built for is searched in its CPU copy."""
        faiss, params, deeper = load_faiss(), None, False
        if self.options.kind == "hnsw":
            params = faiss.SearchParametersHNSW(efSearch=max(self.options.ef_search, k))
        elif self.options.kind == "ivf":
            nlist, nprobe = self.cpu_index.nlist, self.cpu_index.nprobe
            wide = min(nlist, max(nprobe, math.ceil(IVF_SCAN_FACTOR * k * nlist / self.size)))
            params, deeper = faiss.SearchParametersIVF(nprobe=wide), wide > nprobe
        if self.gpus and k <= GPU_MAX_K and not deeper:
            return self.index.search(queries, k)[1]
        return self.cpu_index.search(queries, k, params=params)[1]


def _same_camera_counts(q_cams: np.ndarray, g_cams: np.ndarray) -> np.ndarray:
    """Per query, how many gallery entries share its (known) camera."""
    cams, counts = np.unique(g_cams, return_counts=True)
    pos = np.clip(np.searchsorted(cams, q_cams), 0, len(cams) - 1)
    found = (cams[pos] == q_cams) & (q_cams >= 0)
    return np.where(found, counts[pos], 0)


def _build(faiss: Any, data: np.ndarray, options: CandidateOptions) -> Any:
    n, dim = data.shape
    if options.kind == "exact":
        index = faiss.IndexFlatIP(dim)
    elif options.kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, options.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = options.ef_construction
        index.hnsw.efSearch = options.ef_search
    else:
        nlist = options.nlist or max(1, int(4 * math.sqrt(n)))
        nlist = max(1, min(nlist, n // MIN_POINTS_PER_CELL))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(data)
        index.nprobe = min(options.nprobe, nlist)
    index.add(data)
    return index


def _to_gpus(faiss: Any, index: Any) -> tuple[Any, int, Any]:
    """(index, GPUs used, GPU resources to keep alive): the index on every visible GPU
    (sharded over several), or unchanged when this FAISS build has no GPU support or sees no
    GPU."""
    gpus = faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0
    if gpus == 0:
        return index, 0, None
    if gpus == 1:
        resources = faiss.StandardGpuResources()
        return faiss.index_cpu_to_gpu(resources, 0, index), 1, resources
    options = faiss.GpuMultipleClonerOptions()
    options.shard = True
    return faiss.index_cpu_to_all_gpus(index, co=options), gpus, None
