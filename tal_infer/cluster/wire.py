"""The JSON forms of the HTTP API's values, shared by the service and its client.

Crops travel as base64 text of their encoded bytes (JPEG, PNG, ... as files hold them);
features as ``{"dtype": "float16", "arrays": {name: {"shape": [...], "data": base64}}}`` (raw
little-endian values in C order); hits as objects with key, score, camera, timestamp, label
and meta. Decoding checks everything a client could get wrong and says so in one line.
"""
from __future__ import annotations

import base64
import binascii
from dataclasses import asdict
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import TalError
from ..features import Features
from .routing import Hit

DTYPES = ("float16", "float32")


def encode_bytes(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def decode_bytes(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise TalError(f"{what}: expected base64 text")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise TalError(f"{what}: not valid base64") from None


def encode_features(features: Features) -> dict[str, Any]:
    dtype = next(iter(features.values())).dtype.name
    return {"dtype": dtype, "arrays": {
        name: {"shape": list(v.shape), "data": encode_bytes(
            np.ascontiguousarray(v, np.dtype(dtype).newbyteorder("<")).tobytes())}
        for name, v in features.items()}}


def decode_features(value: Any, shapes: Mapping[str, Sequence[int]]) -> Features:
    """Features sent by a client, checked against the model's item ``shapes`` (every name,
    one count of items, sizes that match)."""
    if not isinstance(value, dict) or value.get("dtype") not in DTYPES \
            or not isinstance(value.get("arrays"), dict):
        raise TalError(f"features: expected {{'dtype': one of {list(DTYPES)}, 'arrays': {{...}}}}")
    arrays = value["arrays"]
    if set(arrays) != set(shapes):
        raise TalError(f"features: names {sorted(arrays)} are not the model's {sorted(shapes)}")
    dtype = np.dtype(value["dtype"]).newbyteorder("<")
    out, counts = {}, set()
    for name, item_shape in shapes.items():
        entry = arrays[name]
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if not isinstance(shape, list) or not shape or list(shape[1:]) != list(item_shape) \
                or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise TalError(f"features: {name} must have shape [N, {', '.join(map(str, item_shape))}]")
        data = decode_bytes(entry.get("data"), f"features: {name}")
        if len(data) != int(np.prod(shape)) * dtype.itemsize:
            raise TalError(f"features: {name} holds {len(data)} bytes, its shape needs "
                           f"{int(np.prod(shape)) * dtype.itemsize}")
        array = np.frombuffer(data, dtype).reshape(shape)
        if not np.isfinite(array).all():
            raise TalError(f"features: {name} holds values that are not finite")
        out[name] = array
        counts.add(shape[0])
    if len(counts) != 1:
        raise TalError(f"features: the arrays hold different numbers of items ({sorted(counts)})")
    return out


def encode_hits(hits: Sequence[Sequence[Hit]]) -> list[list[dict[str, Any]]]:
    return [[asdict(hit) for hit in row] for row in hits]


def decode_hits(rows: Sequence[Sequence[Mapping[str, Any]]]) -> list[list[Hit]]:
    return [[Hit(**hit) for hit in row] for row in rows]
