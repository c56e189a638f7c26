"""Query-vs-gallery scores from a bundle's heads in projection form (docs/bundle.md), streamed.

Scores come from `tal_plugins.qaconv_match` and the head formulas of docs/bundle.md
("Matching in projection form"): on numpy arrays (the blocked CPU path, no torch needed) or on
CUDA tensors (the fused Triton kernel). The gallery is walked in chunks sized so the per-pair
projections of one chunk fit a memory budget (on CUDA: a share of the free device memory), and
`TopK` keeps each query's best entries as chunks arrive, so huge galleries never need a full
score matrix unless the caller asks for one.

Features travel in match layout: DS ``[N, K, HW, C]``, DI ``[N, HW, C]`` (`match_layout`);
the global descriptor ``[N, D]`` travels beside them and is not used here (`tal_infer.cascade`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping

import numpy as np
from tqdm import tqdm

from tal_plugins import qaconv_match

from .bundle import DESCRIPTOR, Bundle
from .errors import BundleError

Features = dict[str, np.ndarray]
CPU_BUDGET_BYTES = 256 * 2 ** 20  # per-pair projections of one gallery chunk on the CPU
CUDA_MEMORY_SHARE = 0.25          # of the free device memory, for one chunk (features + outputs)


def match_layout(name: str, maps: np.ndarray) -> np.ndarray:
    """Extractor output -> match layout: ds [N, K, C, h, w] -> [N, K, HW, C]; di [N, C, h, w]
    -> [N, HW, C] (a view; `np.ascontiguousarray` it where contiguity matters); the descriptor
    [N, D] as it is."""
    if name == DESCRIPTOR:
        return maps
    if name.startswith("ds_"):
        n, k, c = maps.shape[:3]
        return maps.reshape(n, k, c, -1).swapaxes(2, 3)
    n, c = maps.shape[:2]
    return maps.reshape(n, c, -1).swapaxes(1, 2)


@dataclass(frozen=True)
class StreamHead:
    """One stream's head: mode, per-scale arrays (wq, wg[, b1, w2, b2]) and the affine (A, B)."""
    stream: str
    mode: str
    scales: tuple[dict[str, Any], ...]
    affine: tuple[float, float]

    @property
    def floats_per_pair(self) -> int:
        return sum(int(np.prod(s["wq"].shape[:-2] or (1,))) * s["wq"].shape[-1]
                   for s in self.scales)


class Scorer:
    """The matching heads of a bundle on one device ("cpu": numpy; "cuda": torch tensors)."""

    def __init__(self, bundle: Bundle, device: str = "cpu"):
        self.device = device
        self.scale_names = tuple(bundle.matching["scales"])
        self.heads = tuple(_stream_head(bundle, s) for s in bundle.matching["score"])
        self.keys = tuple(f"{h.stream}_{s}" for h in self.heads for s in self.scale_names)
        self.item_bytes = sum(4 * int(np.prod(bundle.features[k].match_shape)) for k in self.keys)
        if device == "cuda":
            import torch

            self.heads = tuple(
                StreamHead(h.stream, h.mode,
                           tuple({k: torch.as_tensor(v, device="cuda") for k, v in s.items()}
                                 for s in h.scales), h.affine) for h in self.heads)

    @property
    def floats_per_pair(self) -> int:
        return sum(h.floats_per_pair for h in self.heads)

    def scores(self, query: Mapping[str, Any], gallery: Mapping[str, Any]) -> np.ndarray:
        """float32 ``[Nq, Ng]`` for one block of features (match layout, any float dtype)."""
        q, g = self._on_device(query), self._on_device(gallery)
        total = None
        for head in self.heads:
            z = sum(_scale_z(head.mode, s, q[f"{head.stream}_{name}"], g[f"{head.stream}_{name}"])
                    for s, name in zip(head.scales, self.scale_names))
            score = head.affine[0] * z + head.affine[1]
            total = score if total is None else total + score
        if self.device == "cuda":
            total = total.float().cpu().numpy()
        return np.asarray(total, dtype=np.float32)

    def chunk_size(self, num_queries: int) -> int:
        """Gallery items per chunk: outputs + features within the device's budget."""
        per_item = 4 * max(1, num_queries) * self.floats_per_pair + self.item_bytes
        if self.device == "cuda":
            import torch

            free, _ = torch.cuda.mem_get_info()
            budget = int(free * CUDA_MEMORY_SHARE)
        else:
            budget = CPU_BUDGET_BYTES
        return max(1, budget // per_item)

    def iter_scores(self, query: Mapping[str, Any],
                    chunks: Iterable[tuple[int, int, Mapping[str, Any]]]
                    ) -> Iterator[tuple[int, int, np.ndarray]]:
        """(start, stop, scores [Nq, stop - start]) for each gallery chunk."""
        q = self._on_device(query)
        for start, stop, g in chunks:
            yield start, stop, self.scores(q, g)

    def _on_device(self, feats: Mapping[str, Any]) -> dict[str, Any]:
        if self.device != "cuda":
            return {k: feats[k] for k in self.keys}
        import torch

        return {k: torch.as_tensor(np.asarray(feats[k]) if isinstance(feats[k], np.memmap)
                                   else feats[k], device="cuda") for k in self.keys}


def feature_chunks(features: Mapping[str, np.ndarray], size: int
                   ) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
    """(start, stop, features) over in-memory features, as `IndexContents.iter_chunks` does."""
    total = len(next(iter(features.values())))
    for start in range(0, total, size):
        stop = min(start + size, total)
        yield start, stop, {k: v[start:stop] for k, v in features.items()}


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


def rank_gallery(scorer: Scorer, query: Mapping[str, Any],
                 chunks: Iterable[tuple[int, int, Mapping[str, Any]]], num_gallery: int, k: int,
                 cameras: tuple[np.ndarray, np.ndarray] | None = None, keep_scores: bool = False,
                 progress: bool = False) -> Ranking:
    """Score every gallery chunk against the queries and keep the top ``k`` per query.

    ``cameras=(query cameras, gallery cameras)`` excludes same-camera pairs (-1 = unknown).
    ``keep_scores`` also returns the full ``[Nq, Ng]`` float32 matrix (before exclusion).
    """
    num_queries = len(next(iter(query.values())))
    topk = TopK(num_queries, k)
    full = np.empty((num_queries, num_gallery), np.float32) if keep_scores else None
    with tqdm(total=num_gallery, desc="matching", unit="img", disable=not progress) as bar:
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


def _stream_head(bundle: Bundle, stream: str) -> StreamHead:
    heads, mode = bundle.heads, bundle.matching["streams"][stream]["mode"]
    if mode not in ("ms", "attention", "mean"):
        raise BundleError(f"{bundle.file('heads.npz')}: unknown matching mode {mode!r} for "
                          f"stream {stream!r}")
    keys = ("wq", "wg", "b1", "w2", "b2") if mode == "attention" else ("wq", "wg")
    try:
        scales = tuple({k: heads[f"{stream}/{scale}/{k}"] for k in keys}
                       for scale in bundle.matching["scales"])
        a, b = (float(v) for v in heads[f"{stream}/affine"])
    except KeyError as err:
        raise BundleError(f"{bundle.file('heads.npz')}: missing array {err.args[0]}") from None
    for scale, s in zip(bundle.matching["scales"], scales):
        want = bundle.features[f"{stream}_{scale}"].match_shape[:-1]  # (K, HW) or (HW,)
        if s["wq"].shape[:-1] != want or s["wg"].shape[:-1] != want:
            raise BundleError(f"{bundle.file('heads.npz')}: {stream}/{scale} projections have "
                              f"shape {s['wq'].shape}, the features need {want} x P")
    return StreamHead(stream, mode, scales, (a, b))


def _scale_z(mode: str, s: Mapping[str, Any], q, g):
    """One scale's contribution z_l (docs/bundle.md); numpy arrays or torch tensors alike."""
    if mode == "ms":
        return qaconv_match(q, g, s["wq"], s["wg"])[..., 0]
    r = [qaconv_match(q[:, i], g[:, i], s["wq"][i], s["wg"][i]) for i in range(q.shape[1])]
    if mode == "mean":
        return sum(ri[..., 0] for ri in r) / len(r)
    pre = sum(ri[..., 1:] for ri in r) + s["b1"]
    logits = (pre * (pre > 0)) @ s["w2"].T + s["b2"]  # relu, then [Nq, Ng, K]
    alpha = _softmax_last(logits)
    return sum(alpha[..., i] * ri[..., 0] for i, ri in enumerate(r))


def _softmax_last(x):
    if isinstance(x, np.ndarray):
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    return x.softmax(dim=-1)
