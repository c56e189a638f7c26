"""Matching heads in projection form (DESIGN.md "Key fact for speed"; docs/bundle.md
"Matching in projection form").

After the two max-reductions every head is linear up to the MSDA attention nonlinearity: BN1d(1)
in eval is a scalar affine, FC is linear and shared by both halves, and FC1 of a concatenation of
per-expert vectors is a sum of per-expert products. So a head needs, per pair, only
``r = qaconv_match(Q, G, wq, wg)`` with a few columns (column 0: score, columns 1..: MSDA
attention hidden units), and the score follows from r with the formulas of docs/bundle.md:

* ``ms``:        z = sum_l r_l[..., 0]
* ``attention``: alpha_l = softmax_i(relu(sum_i r_{i,l}[..., 1:] + b1_l) @ w2_l^T + b2_l),
                 z = sum_l sum_i alpha_{l,i} r_{i,l}[..., 0]
* ``mean``:      z = sum_l mean_i r_{i,l}[..., 0]

and the head score is ``A * z + B``. `projection_scores` is the one implementation of these
formulas on the PyTorch side; `HeadProjection.arrays` writes the same numbers as heads.npz.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from tal_plugins import qaconv_match

MODES = ("ms", "attention", "mean")
DEFAULT_BUDGET_BYTES = 256 * 2 ** 20


@dataclass(frozen=True)
class ScaleProjection:
    """One scale: wq/wg [HW, P] (DI, mode ms) or [K, HW, P] (DS); MSDA attention b1, w2, b2."""
    wq: Tensor
    wg: Tensor
    b1: Tensor | None = None
    w2: Tensor | None = None
    b2: Tensor | None = None


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
        out = {f"{stream}/affine": self.affine}
        for name, s in zip(scale_names, self.scales):
            for key in ("wq", "wg", "b1", "w2", "b2"):
                value = getattr(s, key)
                if value is not None:
                    out[f"{stream}/{name}/{key}"] = value
        return {k: v.detach().to("cpu", torch.float32).numpy().copy() for k, v in out.items()}


def gallery_chunk(num_query: int, floats_per_pair: int,
                  budget_bytes: int = DEFAULT_BUDGET_BYTES) -> int:
    """Gallery items per chunk so that the per-pair fp32 outputs stay within `budget_bytes`.

    This bounds what the heads hold (responses or projections); the similarity maps inside the
    matching op are bounded by the op itself (tal_plugins).
    """
    return max(1, budget_bytes // max(1, 4 * num_query * floats_per_pair))


def over_gallery_chunks(fn: Callable[[Sequence[Tensor], Sequence[Tensor]], Tensor],
                        q_maps: Sequence[Tensor], g_maps: Sequence[Tensor],
                        floats_per_pair: int, budget_bytes: int = DEFAULT_BUDGET_BYTES) -> Tensor:
    """fn(q_maps, g_maps) -> [Nq, Ng], evaluated on gallery chunks and concatenated.

    Exact only when fn treats pairs independently (eval-mode heads, projection form).
    """
    num_gallery = g_maps[0].shape[0]
    chunk = gallery_chunk(q_maps[0].shape[0], floats_per_pair, budget_bytes)
    if chunk >= num_gallery:
        return fn(q_maps, g_maps)
    return torch.cat([fn(q_maps, [g[start:start + chunk] for g in g_maps])
                      for start in range(0, num_gallery, chunk)], dim=1)


def _scale_z(mode: str, s: ScaleProjection, q: Tensor, g: Tensor) -> Tensor:
    if mode == "ms":
        return qaconv_match(q, g, s.wq, s.wg)[..., 0]
    r = torch.stack([qaconv_match(q[:, i], g[:, i], s.wq[i], s.wg[i])
                     for i in range(s.wq.shape[0])], dim=-1)  # [Nq, Ng, P, K]
    if mode == "mean":
        return r[:, :, 0].mean(dim=-1)
    hidden = torch.relu(r[:, :, 1:].sum(dim=-1) + s.b1)
    alpha = torch.softmax(hidden @ s.w2.t() + s.b2, dim=-1)
    return (alpha * r[:, :, 0]).sum(dim=-1)


def projection_scores(proj: HeadProjection, q_maps: Sequence[Tensor], g_maps: Sequence[Tensor],
                      budget_bytes: int = DEFAULT_BUDGET_BYTES) -> Tensor:
    """Scores [Nq, Ng] of a head in projection form, over gallery chunks.

    Maps are in match layout, one per scale: [N, HW, C] (mode ms) or [N, K, HW, C].
    """
    if proj.mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {proj.mode!r}")

    def scores(qs: Sequence[Tensor], gs: Sequence[Tensor]) -> Tensor:
        z = sum(_scale_z(proj.mode, s, q, g) for s, q, g in zip(proj.scales, qs, gs))
        return proj.affine[0] * z + proj.affine[1]

    floats = sum(s.wq.shape[0] * s.wq.shape[-1] if s.wq.dim() == 3 else s.wq.shape[-1]
                 for s in proj.scales)
    return over_gallery_chunks(scores, q_maps, g_maps, floats, budget_bytes)
