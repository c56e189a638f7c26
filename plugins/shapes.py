"""Shape rules of the QAConvMatch op (plugins/README.md), shared by every backend.

One place for the checks and the output-shape function, so the numpy path, the PyTorch custom
op (real and fake implementations) and the TensorRT shape function cannot drift apart. The
functions take plain sequences of dimensions: ints, torch SymInts, or TensorRT shape
expressions, which is what lets the TensorRT shape logic be tested without TensorRT.
"""
from __future__ import annotations

from typing import Any, Sequence

from .errors import TalError


def check_match_shapes(query: Sequence[Any], gallery: Sequence[Any],
                       wq: Sequence[Any] | None, wg: Sequence[Any] | None) -> None:
    """Raise TalError unless query [Nq, HWq, C], gallery [Ng, HWg, C], wq [HWq, P], wg [HWg, P]
    agree (wq/wg None: the responses variant, which has no projections)."""
    if len(query) != 3 or len(gallery) != 3:
        raise TalError(f"qaconv_match: query and gallery must be [N, HW, C] feature maps, got "
                       f"shapes {tuple(query)} and {tuple(gallery)}")
    if query[2] != gallery[2]:
        raise TalError(f"qaconv_match: query has C = {query[2]} channels but gallery has "
                       f"C = {gallery[2]}")
    if wq is None and wg is None:
        return
    if len(wq) != 2 or len(wg) != 2:
        raise TalError(f"qaconv_match: wq and wg must be [HW, P] matrices, got shapes "
                       f"{tuple(wq)} and {tuple(wg)}")
    if wq[0] != query[1] or wg[0] != gallery[1]:
        raise TalError(f"qaconv_match: wq {tuple(wq)} / wg {tuple(wg)} do not fit HWq = {query[1]}"
                       f" / HWg = {gallery[1]} locations")
    if wq[1] != wg[1]:
        raise TalError(f"qaconv_match: wq has P = {wq[1]} columns but wg has P = {wg[1]}")


def match_output_dims(query: Sequence[Any], gallery: Sequence[Any], wq: Sequence[Any]) -> tuple:
    """[Nq, Ng, P] without checks: the formula alone, for symbolic shapes that cannot be
    compared (TensorRT's shape expressions)."""
    return (query[0], gallery[0], wq[1])


def match_output_shape(query: Sequence[Any], gallery: Sequence[Any], wq: Sequence[Any],
                       wg: Sequence[Any]) -> tuple:
    """[Nq, Ng, P]: the output shape of qaconv_match, after checking the inputs agree."""
    check_match_shapes(query, gallery, wq, wg)
    return match_output_dims(query, gallery, wq)


def responses_output_shape(query: Sequence[Any], gallery: Sequence[Any]) -> tuple:
    """[Nq, Ng, HWq + HWg]: the output shape of qaconv_responses."""
    check_match_shapes(query, gallery, None, None)
    return (query[0], gallery[0], query[1] + gallery[1])
