"""tal_plugins: the fused QAConv matching op (QAConvMatch) and its deployment plugins.

The op contract is in plugins/README.md. `qaconv_match` is the one entry point every QAConv head
(training, export parity, runtime) calls; heavy optional imports (torch, triton, tensorrt) happen
lazily inside it, so `import tal_plugins` works with numpy alone.
"""
from __future__ import annotations

import numpy as np

from .reference import qaconv_match_reference, qaconv_match_reference_numpy

__all__ = ["qaconv_match", "qaconv_responses", "qaconv_match_reference", "qaconv_match_reference_numpy"]


def qaconv_match(query, gallery, wq, wg, backend: str = "auto"):
    """out[p, g] = max_cols(Q_p G_g^T) @ wq + max_rows(Q_p G_g^T) @ wg, fp32 [Nq, Ng, P].

    query [Nq, HWq, C], gallery [Ng, HWg, C], wq [HWq, P], wg [HWg, P]: torch tensors (autograd
    flows to all four) or numpy arrays.
    """
    if isinstance(query, np.ndarray):
        return qaconv_match_reference_numpy(query, gallery, wq, wg)
    return qaconv_match_reference(query, gallery, wq, wg)



def qaconv_responses(query, gallery, backend: str = "auto"):
    """Full response vectors [Nq, Ng, HWq + HWg] = [max_cols(S), max_rows(S)] (training heads).

    The same op with identity projections; the training heads need whole vectors because their
    BatchNorm layers use batch statistics, which are not linear in the responses.
    """
    import torch

    hwq, hwg = query.shape[1], gallery.shape[1]
    eye = torch.eye(hwq + hwg, device=query.device)
    return qaconv_match(query, gallery, eye[:hwq], eye[hwq:], backend=backend)
