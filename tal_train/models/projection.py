"""Matching heads in projection form (docs/bundle.md
"Matching in projection form").

After the two max-reductions every head is linear up to the MSDA attention nonlinearity: BN1d(1)
in eval is a scalar affine, FC is linear and shared by both halves, and FC1 of a concatenation of
per-expert vectors is a sum of per-expert products. So a head needs, per pair, only
``r = qaconv_match(Q, G, wq, wg)`` with a few columns (column 0: score, columns 1..: MSDA
attention hidden units). `HeadProjection` holds a live head's projections; the score formulas
themselves have one home, `tal_infer.heads`, which `projection_scores` calls on these tensors
(as the runtime does on heads.npz), and `HeadProjection.arrays` writes the same numbers as
heads.npz.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from tal_infer.heads import (AFFINE, GALLERY_BUDGET_BYTES, array_key, floats_per_pair,
                             gallery_chunk, stream_score)
from tal_plugins import qaconv_match


@dataclass(frozen=True)
class ScaleProjection:
    """One scale: wq/wg [HW, P] (DI, mode ms) or [K, HW, P] (DS); MSDA attention b1, w2, b2."""
    wq: Tensor
    wg: Tensor
    b1: Tensor | None = None
    w2: Tensor | None = None
    b2: Tensor | None = None

    def as_dict(self) -> dict[str, Tensor]:
        """The arrays that are set, by their heads.npz names (wq, wg[, b1, w2, b2])."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if getattr(self, f.name) is not None}


@dataclass(frozen=True)
class HeadProjection:
    """A whole head in eval form: per-scale projections and the score affine (A, B)."""
    mode: str
    scales: tuple[ScaleProjection, ...]
    affine: Tensor  # [2] = (A, B)

    def per_expert_mean(self, num_domains: int) -> "HeadProjection":
        """This single-stream (``ms``) head applied to each of K experts and averaged (voting)."""
        if self.mode != "ms":
            raise ValueError(f"only an 'ms' head can vote over experts, not {self.mode!r}")
        scales = tuple(ScaleProjection(s.wq.expand(num_domains, *s.wq.shape),
                                       s.wg.expand(num_domains, *s.wg.shape)) for s in self.scales)
        return replace(self, mode="mean", scales=scales)

    def arrays(self, stream: str, scale_names: Sequence[str]) -> dict[str, np.ndarray]:
        """The heads.npz entries of this head as stream `stream` (float32 numpy copies)."""
        out = {array_key(stream, None, AFFINE): self.affine}
        for name, s in zip(scale_names, self.scales):
            out.update((array_key(stream, name, key), value)
                       for key, value in s.as_dict().items())
        return {k: v.detach().to("cpu", torch.float32).numpy().copy() for k, v in out.items()}


def over_gallery_chunks(fn: Callable[[Sequence[Tensor], Sequence[Tensor]], Tensor],
                        q_maps: Sequence[Tensor], g_maps: Sequence[Tensor],
                        floats_per_pair: int, budget_bytes: int = GALLERY_BUDGET_BYTES) -> Tensor:
    """fn(q_maps, g_maps) -> [Nq, Ng], evaluated on gallery chunks and concatenated, each
    chunk's per-pair fp32 outputs within `budget_bytes` (`tal_infer.heads.gallery_chunk`; the
    similarity maps inside the matching op are bounded by the op itself).

    Exact only when fn treats pairs independently (eval-mode heads, projection form).
    """
    num_gallery = g_maps[0].shape[0]
    chunk = gallery_chunk(q_maps[0].shape[0], floats_per_pair, budget_bytes=budget_bytes)
    if chunk >= num_gallery:
        return fn(q_maps, g_maps)
    return torch.cat([fn(q_maps, [g[start:start + chunk] for g in g_maps])
                      for start in range(0, num_gallery, chunk)], dim=1)


def projection_scores(proj: HeadProjection, q_maps: Sequence[Tensor], g_maps: Sequence[Tensor],
                      budget_bytes: int = GALLERY_BUDGET_BYTES) -> Tensor:
    """Scores [Nq, Ng] of a head in projection form (`tal_infer.heads.stream_score`), over
    gallery chunks. Maps are in match layout, one per scale: [N, HW, C] (mode ms) or
    [N, K, HW, C]."""
    scales = [s.as_dict() for s in proj.scales]

    def scores(qs: Sequence[Tensor], gs: Sequence[Tensor]) -> Tensor:
        return stream_score(proj.mode, scales, proj.affine, qs, gs, qaconv_match)

    floats = floats_per_pair([s.wq for s in proj.scales])
    return over_gallery_chunks(scores, q_maps, g_maps, floats, budget_bytes)
