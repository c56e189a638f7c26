"""The matching heads' score formulas in projection form: their one home (docs/bundle.md,
"Matching in projection form").

After the two max-reductions every head is linear up to the MSDA attention, so a head needs per
pair only ``r = project(Q, G, wq, wg)`` (`tal_plugins.qaconv_match`: column 0 the score
projection, columns 1.. the attention's hidden units), and per scale l:

* ``ms``:        z_l = r_l[..., 0]
* ``attention``: alpha_l = softmax_i(relu(sum_i r_{i,l}[..., 1:] + b1_l) @ w2_l^T + b2_l),
                 z_l = sum_i alpha_{l,i} r_{i,l}[..., 0]
* ``mean``:      z_l = mean_i r_{i,l}[..., 0]

and the stream score is ``A * sum_l z_l + B``. `scale_z` and `stream_score` compute exactly
this on numpy arrays or torch tensors (autograd included), so the runtime (`tal_infer.scoring`,
arrays from heads.npz) and the training package (`tal_train.models.projection`, the live heads)
run one implementation; the ONNX emitter (`tal_export.matcher`) writes the same formulas as
graph nodes and is tested against these functions. heads.npz keys come from `array_key`.

Gallery chunks: the per-pair projections of one chunk (and, in the runtime, its features) stay
within `GALLERY_BUDGET_BYTES` (`gallery_chunk`).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np

MODES = ("ms", "attention", "mean")
# The heads.npz arrays of one scale, by mode (wq/wg [HW, P] for ms, [K, HW, P] otherwise).
SCALE_ARRAYS = {"ms": ("wq", "wg"), "mean": ("wq", "wg"),
                "attention": ("wq", "wg", "b1", "w2", "b2")}
AFFINE = "affine"
GALLERY_BUDGET_BYTES = 256 * 2 ** 20  # per-pair outputs (+ features) of one gallery chunk

Project = Callable[[Any, Any, Any, Any], Any]  # (Q, G, wq, wg) -> r [Nq, Ng, P]


def array_key(stream: str, scale: str | None, name: str) -> str:
    """The heads.npz key of array ``name`` of a stream's scale (``ds/res4/wq``), or of the
    stream itself when ``scale`` is None (``ds/affine``)."""
    return f"{stream}/{name}" if scale is None else f"{stream}/{scale}/{name}"


def scale_z(mode: str, arrays: Mapping[str, Any], q: Any, g: Any, project: Project) -> Any:
    """z_l ``[Nq, Ng]`` of one scale: ``arrays`` holds the mode's `SCALE_ARRAYS`; q, g in match
    layout ([N, HW, C] for ms, [N, K, HW, C] otherwise)."""
    wq, wg = arrays["wq"], arrays["wg"]
    if mode == "ms":
        return project(q, g, wq, wg)[..., 0]
    r = [project(q[:, i], g[:, i], wq[i], wg[i]) for i in range(wq.shape[0])]
    if mode == "mean":
        return sum(ri[..., 0] for ri in r) / len(r)
    hidden = sum(ri[..., 1:] for ri in r) + arrays["b1"]
    logits = (hidden * (hidden > 0)) @ arrays["w2"].T + arrays["b2"]  # relu, then [Nq, Ng, K]
    alpha = softmax_last(logits)
    return sum(alpha[..., i] * ri[..., 0] for i, ri in enumerate(r))


def stream_score(mode: str, scales: Sequence[Mapping[str, Any]], affine: Sequence[Any],
                 qs: Sequence[Any], gs: Sequence[Any], project: Project) -> Any:
    """``A * sum_l z_l + B`` for one stream: per scale its arrays and q, g maps."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    z = sum(scale_z(mode, s, q, g, project) for s, q, g in zip(scales, qs, gs))
    return affine[0] * z + affine[1]


def softmax_last(x: Any) -> Any:
    """Softmax over the last axis (numpy: shifted by the maximum; torch: its own)."""
    if isinstance(x, np.ndarray):
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    return x.softmax(dim=-1)


def floats_per_pair(projections: Sequence[Any]) -> int:
    """Output floats one pair needs over a head's scales: K * P per wq of shape [(K,) HW, P]."""
    return sum(math.prod(w.shape[:-2]) * w.shape[-1] for w in projections)


def gallery_chunk(num_queries: int, floats_per_pair: int, item_bytes: int = 0,
                  budget_bytes: int = GALLERY_BUDGET_BYTES) -> int:
    """Gallery items per chunk: the fp32 per-pair outputs of ``num_queries`` queries plus
    ``item_bytes`` of features per item stay within ``budget_bytes``."""
    per_item = 4 * max(1, num_queries) * max(1, floats_per_pair) + item_bytes
    return max(1, budget_bytes // per_item)
