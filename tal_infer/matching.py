"""The matching contract (`Matcher`) and the one place a matching backend is chosen.

Retrieval (`tal_infer.retrieval`) never asks which backend it holds: the heads scorer
(`tal_infer.scoring.Scorer`: numpy, torch or triton through `tal_plugins.qaconv_match`) and
matcher.plan (`tal_infer.tensorrt_runtime.TensorRTMatcher`) both implement `Matcher`, and the
cascade's DI pre-rank asks any of them for a part of the score with `of_streams`.

`choose_match_backend` turns the user's ``--matcher`` into a concrete backend once, when the
engine opens (never "auto" afterwards, never re-decided per block):

| asked | device | chosen |
|---|---|---|
| auto | beside the ``tensorrt`` extractor | ``tensorrt`` (matcher.plan: a TensorRT deployment runs no Python kernel) |
| auto | cuda (torch sees it) | ``triton`` for fp16/bf16 features the kernel takes, else ``torch`` (cuBLAS GEMM + max) |
| auto | cpu | ``torch`` when torch is installed (blocked GEMM + max, 1.9x the numpy path: benchmarks/match.py), else ``numpy`` |
| numpy / torch / triton / tensorrt | any | that one, or one `TalError` line saying why it cannot run here |

Matching runs where torch can reach the device: with ONNX Runtime's CUDA provider but a
CPU-only torch, features are extracted on the GPU and matched on the CPU (`match_device`).
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Protocol, Sequence

import numpy as np

from tal_plugins import BACKENDS as OP_BACKENDS

from .bundle import Bundle
from .devices import torch_cuda_available
from .errors import TalError
from .features import Chunks
from .precision import Precision

if TYPE_CHECKING:
    from .scoring import Scorer

log = logging.getLogger("tal_infer")
MATCH_BACKENDS = (*OP_BACKENDS, "tensorrt")


class Matcher(Protocol):
    """Query-vs-gallery TAL scores on one backend and device (features in match layout)."""
    name: str                   # the concrete backend: numpy, torch, triton or tensorrt
    device: str                 # where the scores are computed
    keys: tuple[str, ...]       # the feature names it reads
    streams: tuple[str, ...]    # the streams whose scores it sums

    def of_streams(self, streams: Sequence[str]) -> "Matcher":
        """The part of the score of ``streams`` alone, read from their features only;
        `TalError` naming the model's streams for one it does not score."""

    def scores(self, query: Mapping[str, Any], gallery: Mapping[str, Any]) -> np.ndarray:
        """float32 ``[Nq, Ng]`` (higher = more similar) for one block of features."""

    def chunk_size(self, num_queries: int) -> int:
        """Gallery items per `iter_scores` chunk for ``num_queries`` queries (memory budget)."""

    def iter_scores(self, query: Mapping[str, Any], chunks: Chunks
                    ) -> Iterator[tuple[int, int, np.ndarray]]:
        """(start, stop, scores [Nq, stop - start]) for each gallery chunk."""


def match_device(device: str) -> str:
    """Where matching runs for extraction on ``device``: the GPU only when torch reaches it."""
    return "cuda" if device == "cuda" and torch_cuda_available() else "cpu"


def choose_match_backend(requested: str, device: str, precision: Precision, channels: int,
                         extractor_name: str = "") -> str:
    """The concrete backend for ``requested`` (table in the module doc); `TalError` for a
    choice that cannot run on ``device`` here."""
    if requested not in MATCH_BACKENDS:
        raise TalError(f"unknown matching backend {requested!r}; choose one of "
                       f"{', '.join(MATCH_BACKENDS)}")
    if requested == "tensorrt" or (requested == "auto" and extractor_name == "tensorrt"):
        return "tensorrt"
    if requested == "numpy":
        return "numpy"
    if requested == "auto" and not _torch_installed():
        if device == "cuda":
            raise TalError("matching on CUDA needs torch with CUDA (install it, or use "
                           "--device cpu)")
        return "numpy"
    if not _torch_installed():
        raise TalError(f"matching backend {requested!r} needs torch installed (backend numpy "
                       "runs without it)")
    from tal_plugins.torch_op import resolve_backend

    return resolve_backend(requested, device, precision.dtype, channels)


def open_matcher(bundle: Bundle, backend: str, device: str,
                 precision: Precision | None = None) -> "Matcher":
    """The matcher of ``bundle`` on a concrete ``backend`` (`choose_match_backend`) and
    ``device``: matcher.plan for ``tensorrt``, the heads of heads.npz otherwise."""
    if backend == "tensorrt":
        if device != "cuda":
            raise TalError("the tensorrt matcher runs on CUDA only")
        from .tensorrt_runtime import TensorRTMatcher

        matcher: Matcher = TensorRTMatcher(bundle, device, precision)
        log.debug("matching: tensorrt (matcher.plan) on %s", device)
        return matcher
    from .scoring import Scorer

    scorer: Scorer = Scorer(bundle, "cpu" if backend == "numpy" else device, precision, backend)
    log.debug("matching: %s on %s (heads.npz, %s features)", scorer.name, scorer.device,
              scorer.precision.dtype)
    return scorer


def _torch_installed() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True
