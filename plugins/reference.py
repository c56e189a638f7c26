"""Plain reference for the QAConvMatch op: einsum + two max-reductions + projections.

This is the definition every fast path is tested against (see plugins/README.md). It is
deliberately simple and materializes the full similarity tensor S [Nq, Ng, HWq, HWg]; call it
on small inputs only.

    S = Q_p G_g^T                      (HWq x HWg, per query p and gallery g)
    out[p, g] = max_cols(S) @ wq + max_rows(S) @ wg     (fp32)

max_cols(S)[i] = max_j S[i, j] is the best gallery location for query location i (length HWq);
max_rows(S)[j] = max_i S[i, j] is the best query location for gallery location j (length HWg).
"""
from __future__ import annotations

import numpy as np


def qaconv_match_reference(query, gallery, wq, wg):
    """Reference QAConvMatch on torch tensors (autograd-capable) -> fp32 [Nq, Ng, P]."""
    import torch

    q, g = query.float(), gallery.float()
    s = torch.einsum("pic,gjc->pgij", q, g)
    return s.amax(dim=3) @ wq.float() + s.amax(dim=2) @ wg.float()


def qaconv_match_reference_numpy(query: np.ndarray, gallery: np.ndarray,
                                 wq: np.ndarray, wg: np.ndarray) -> np.ndarray:
    """Reference QAConvMatch on numpy arrays -> float32 [Nq, Ng, P] (accumulates in float64)."""
    s = np.einsum("pic,gjc->pgij", query.astype(np.float64), gallery.astype(np.float64))
    out = s.max(axis=3) @ wq.astype(np.float64) + s.max(axis=2) @ wg.astype(np.float64)
    return out.astype(np.float32)
