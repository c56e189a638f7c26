"""Query-vs-gallery scores from a bundle's heads in projection form (docs/bundle.md), streamed.

`Scorer` is the `tal_infer.matching.Matcher` of heads.npz: it computes scores with the head
formulas of `tal_infer.heads`, calling `tal_plugins.qaconv_match` on one concrete op backend
chosen when the engine opened (`tal_infer.matching.choose_match_backend`): ``numpy`` (the
blocked CPU path on numpy arrays, no torch needed), ``torch`` (blocked GEMM + max on torch
tensors, any device) or ``triton`` (the fused kernel). Features enter in the bundle's precision
(`tal_infer.precision`), so fp16 features reach the kernel as fp16; the heads' arrays and the
scores are fp32. The gallery is walked in chunks sized so the per-pair projections and features
of one chunk fit a memory budget (on CUDA: a share of the free device memory), and `TopK` keeps
each query's best entries as chunks arrive, so huge galleries never need a full score matrix
unless the caller asks for one.

Features travel in match layout: DS ``[N, K, HW, C]``, DI ``[N, HW, C]``
(`tal_infer.features.match_layout`); the global descriptor ``[N, D]`` travels beside them and
is not used here (`tal_infer.cascade`).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import numpy as np

from tal_plugins import qaconv_match

from .bundle import Bundle
from .console import progress
from .errors import TalError
from .features import Chunks, feature_names, num_items
from .heads import (AFFINE, GALLERY_BUDGET_BYTES, SCALE_ARRAYS, array_key, floats_per_pair,
                    gallery_chunk, stream_score)
from .precision import Precision

if TYPE_CHECKING:
    from .matching import Matcher

CONCRETE_BACKENDS = ("numpy", "torch", "triton")
CUDA_MEMORY_SHARE = 0.25  # of the free device memory, for one chunk (features + outputs)


@dataclass(frozen=True)
class StreamHead:
    """One stream's head: mode, per-scale arrays (wq, wg[, b1, w2, b2]) and the affine (A, B)."""
    stream: str
    mode: str
    scales: tuple[dict[str, Any], ...]
    affine: tuple[float, float]

    @property
    def floats_per_pair(self) -> int:
        return floats_per_pair([s["wq"] for s in self.scales])


class Scorer:
    """The matching heads of a bundle on one concrete op backend and device (see module doc).

    ``device`` is where the features are matched ("cpu" or "cuda"); ``backend`` one of
    numpy/torch/triton, as `tal_infer.matching.choose_match_backend` chose it.
    """

    def __init__(self, bundle: Bundle, device: str = "cpu", precision: Precision | None = None,
                 backend: str = "numpy"):
        if backend not in CONCRETE_BACKENDS:
            raise ValueError(f"Scorer takes a concrete backend ({', '.join(CONCRETE_BACKENDS)}), "
                             f"not {backend!r}: choose it with choose_match_backend")
        if backend == "numpy" and device != "cpu":
            raise ValueError("the numpy backend runs on the CPU")
        self.precision = precision or bundle.precision
        self.scale_names = tuple(bundle.matching.scales)
        self.heads = tuple(_stream_head(bundle, s) for s in bundle.matching.score)
        self.keys = tuple(feature_names([h.stream for h in self.heads], self.scale_names))
        self.key_bytes = {k: self.precision.numpy_dtype.itemsize
                          * int(np.prod(bundle.features[k].match_shape)) for k in self.keys}
        self.name = self.backend = backend
        self.device = device
        if backend == "numpy":
            return
        import torch

        self.heads = tuple(
            StreamHead(h.stream, h.mode,
                       tuple({k: torch.as_tensor(v, device=device) for k, v in s.items()}
                             for s in h.scales), h.affine) for h in self.heads)

    @property
    def floats_per_pair(self) -> int:
        return sum(h.floats_per_pair for h in self.heads)

    @property
    def item_bytes(self) -> int:
        """Bytes of one gallery item's features that this scorer reads."""
        return sum(self.key_bytes[k] for k in self.keys)

    @property
    def streams(self) -> tuple[str, ...]:
        return tuple(h.stream for h in self.heads)

    def of_streams(self, streams: Sequence[str]) -> "Scorer":
        """This scorer restricted to the heads of ``streams``: their part of the score, read
        from their features only (the cascade's pre-rank scores the DI stream alone)."""
        check_streams(streams, self.streams)
        part = copy.copy(self)
        part.heads = tuple(h for h in self.heads if h.stream in streams)
        part.keys = tuple(feature_names(part.streams, self.scale_names))
        return part

    def scores(self, query: Mapping[str, Any], gallery: Mapping[str, Any]) -> np.ndarray:
        """float32 ``[Nq, Ng]`` for one block of features (match layout, any float dtype)."""
        q, g = self._on_device(query), self._on_device(gallery)
        total = None
        for head in self.heads:
            names = feature_names([head.stream], self.scale_names)
            score = stream_score(head.mode, head.scales, head.affine, [q[n] for n in names],
                                 [g[n] for n in names], self._project)
            total = score if total is None else total + score
        if self.backend != "numpy":
            total = total.float().cpu().numpy()
        return np.asarray(total, dtype=np.float32)

    def chunk_size(self, num_queries: int) -> int:
        """Gallery items per chunk: outputs + features within the device's budget."""
        budget = GALLERY_BUDGET_BYTES
        if self.device == "cuda":
            import torch

            free, _ = torch.cuda.mem_get_info()
            budget = int(free * CUDA_MEMORY_SHARE)
        return gallery_chunk(num_queries, self.floats_per_pair, self.item_bytes, budget)

    def iter_scores(self, query: Mapping[str, Any], chunks: Chunks
                    ) -> Iterator[tuple[int, int, np.ndarray]]:
        """(start, stop, scores [Nq, stop - start]) for each gallery chunk."""
        q = self._on_device(query)
        for start, stop, g in chunks:
            yield start, stop, self.scores(q, g)

    def _project(self, q: Any, g: Any, wq: Any, wg: Any) -> Any:
        return qaconv_match(q, g, wq, wg, backend=self.backend)

    def _on_device(self, feats: Mapping[str, Any]) -> dict[str, Any]:
        """The features this scorer matches, in the bundle's precision on its device."""
        dtype = self.precision.numpy_dtype
        if self.backend == "numpy":
            return {k: np.asarray(feats[k], dtype=dtype) for k in self.keys}
        import torch

        out = {}
        for k in self.keys:
            x = feats[k]
            if not torch.is_tensor(x):
                x = np.asarray(x, dtype=dtype)
                x = torch.from_numpy(x if x.flags.writeable else x.copy())
            out[k] = x.to(self.device, self.precision.torch_dtype)
        return out


class TopK:
    """The k best gallery columns per query, merged chunk by chunk (ties: lower column first)."""

    def __init__(self, num_queries: int, k: int):
        self.k = k
        self.scores = np.full((num_queries, 0), -np.inf, dtype=np.float32)
        self.indices = np.zeros((num_queries, 0), dtype=np.int64)

    def update(self, start: int, scores: np.ndarray) -> None:
        if self.k == 0:
            return
        cols = np.broadcast_to(np.arange(start, start + scores.shape[1]), scores.shape)
        all_scores = np.concatenate([self.scores, scores.astype(np.float32)], axis=1)
        all_cols = np.concatenate([self.indices, cols], axis=1)
        order = np.lexsort((all_cols, -all_scores), axis=1)[:, :self.k]
        self.scores = np.take_along_axis(all_scores, order, axis=1)
        self.indices = np.take_along_axis(all_cols, order, axis=1)

    def rows(self) -> list[list[tuple[int, float]]]:
        """Per query: (gallery column, score), best first; excluded (-inf) entries dropped."""
        return [[(int(i), float(s)) for i, s in zip(idx, sc) if np.isfinite(s)]
                for idx, sc in zip(self.indices, self.scores)]


@dataclass
class Ranking:
    """What `rank_gallery` found: per-query top-k, and the full matrix when it was kept."""
    topk: TopK
    scores: np.ndarray | None


def check_streams(wanted: Sequence[str], scored: Sequence[str]) -> None:
    """`TalError` unless every stream of ``wanted`` is one the model scores."""
    missing = set(wanted) - set(scored)
    if missing:
        raise TalError(f"this model scores no {sorted(missing)} stream "
                       f"(it scores {list(scored)})")


def rank_gallery(scorer: "Matcher", query: Mapping[str, Any], chunks: Chunks, num_gallery: int,
                 k: int, cameras: tuple[np.ndarray, np.ndarray] | None = None,
                 keep_scores: bool = False) -> Ranking:
    """Score every gallery chunk against the queries and keep the top ``k`` per query.

    ``cameras=(query cameras, gallery cameras)`` excludes same-camera pairs (-1 = unknown).
    ``keep_scores`` also returns the full ``[Nq, Ng]`` float32 matrix (before exclusion).
    """
    num_queries = num_items(query)
    topk = TopK(num_queries, k)
    full = np.empty((num_queries, num_gallery), np.float32) if keep_scores else None
    with progress(total=num_gallery, desc="matching", unit="img") as bar:
        for start, stop, scores in scorer.iter_scores(query, chunks):
            if full is not None:
                full[:, start:stop] = scores
            if cameras is not None:
                exclude_same_camera(scores, cameras[0], cameras[1][start:stop])
            topk.update(start, scores)
            bar.update(stop - start)
    return Ranking(topk, full)


def exclude_same_camera(scores: np.ndarray, q_cams: np.ndarray, g_cams: np.ndarray) -> None:
    """Set scores of same-camera pairs to -inf in place (unknown cameras, -1, never match)."""
    q_cams, g_cams = np.asarray(q_cams), np.asarray(g_cams)
    same = (q_cams[:, None] == g_cams[None, :]) & (q_cams[:, None] >= 0)
    scores[same] = -np.inf


def top_k(scores: np.ndarray, k: int,
          cameras: tuple[np.ndarray, np.ndarray] | None = None) -> TopK:
    """The top ``k`` per query of a full score matrix (same-camera pairs excluded as in
    `rank_gallery`; ``scores`` itself is left as it is)."""
    topk = TopK(scores.shape[0], k)
    if cameras is not None:
        scores = scores.copy()
        exclude_same_camera(scores, *cameras)
    topk.update(0, scores)
    return topk


def _stream_head(bundle: Bundle, stream: str) -> StreamHead:
    """One stream's head from heads.npz (whose shapes `Bundle.heads` checked on reading)."""
    heads, mode, scales = bundle.heads, bundle.matching.modes[stream], bundle.matching.scales
    arrays = tuple({k: heads[array_key(stream, scale, k)] for k in SCALE_ARRAYS[mode]}
                   for scale in scales)
    a, b = (float(v) for v in heads[array_key(stream, None, AFFINE)])
    return StreamHead(stream, mode, arrays, (a, b))
