"""The online service: an HTTP API over a `ShardedGallery`, run by Ray Serve (`tal-serve`).

Endpoints (JSON in and out; docs/scale.md has ``curl`` examples, `client` a Python client):

| request | body | answer |
|---|---|---|
| ``GET /health`` | | ``{"status": "ok" or "degraded", "shards", "missing_shards"}`` |
| ``GET /stats`` | | entries and bytes per shard |
| ``POST /embed`` | ``{"images": [base64, ...]}`` | ``{"features": ...}`` (`wire`) |
| ``POST /add`` | ``images`` with ``cameras``, ``timestamps``, ``labels``, ``meta`` (one value or one per image) | ``{"keys": [...]}`` |
| ``POST /search`` | ``images``, ``keys`` (stored entries) or ``features``; ``k``, ``candidates``, ``prerank``, ``search``, ``cameras`` (allowed), ``since``, ``until``, ``where``, ``query_cameras`` (excluded per query) | ``{"results", "partial", "missing_shards"}`` |
| ``POST /remove`` | ``{"keys": [...]}`` or ``{"where": {...}, "before": time}`` | ``{"removed": [...]}`` |

Crops are decoded by the runtime's decoder (`tal_infer.images.decode_image`, the CLI's pixel
limit) and embedded through Ray Serve's request batching (crops of concurrent requests share
extractor batches). Every image of a request is decoded before anything is written, so a
refused request writes nothing.

Security (this service finds people in camera footage): it binds to 127.0.0.1 unless told
otherwise, and a non-loopback bind needs an access token (a file, or ``TAL_SERVE_TOKEN``);
with a token every request must carry ``Authorization: Bearer <token>``, compared in constant
time (`hmac.compare_digest`; the service keeps only its SHA-256), else 401. Request bodies are
capped (``Content-Length`` checked first, the stream counted as it is read: 413), as are the
images per request and their pixels. Errors a client causes are a 4xx with one line; the log
never holds image bytes or tokens. TLS: a reverse proxy in front (docs/scale.md).
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import os
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Mapping

import numpy as np

from ..candidates import SEARCH_KINDS
from ..engine import ReIDEngine
from ..errors import TalError
from ..features import Features, stack_features
from ..images import DEFAULT_MAX_PIXELS, decode_image
from ..lifecycle import EntryFilter
from ..retrieval import RetrievalOptions
from ..user_files import read_regular
from . import wire
from .ray_support import connect, require_ray
from .scope import Scope
from .sharded import ShardedGallery

TOKEN_ENV = "TAL_SERVE_TOKEN"
APP_NAME = "tal-reid"
_TOKEN_FILE_LIMIT = 4096
_SUFFIXES = ((b"\xff\xd8", ".jpg"), (b"\x89PNG", ".png"), (b"BM", ".bmp"),
             (b"II*\x00", ".tif"), (b"MM\x00*", ".tif"))


class HttpError(Exception):
    """A request refused: its status and one line for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ServiceConfig:
    """What `tal-serve` starts: the gallery, the bundle and the limits."""
    gallery: str
    bundle: str
    shards: int | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    token_sha256: str | None = None
    max_request_bytes: int = 16 * 2**20
    max_images: int = 64
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_batch: int = 16
    batch_wait_s: float = 0.01
    search_timeout_s: float = 10.0


def read_token(token_file: str | os.PathLike | None) -> str | None:
    """The access token from ``token_file`` (a regular file of at most 4 KiB) or the
    ``TAL_SERVE_TOKEN`` environment variable; None without either."""
    if token_file is not None:
        try:
            token = read_regular(token_file, _TOKEN_FILE_LIMIT).decode("utf-8").strip()
        except (OSError, UnicodeDecodeError) as err:
            raise TalError(f"{token_file}: cannot read the access token ({err})") from None
    else:
        token = os.environ.get(TOKEN_ENV, "").strip() or None
        if token is None:
            return None
    if len(token) < 16:
        raise TalError("the access token must be at least 16 characters")
    return token


def token_digest(token: str | None) -> str | None:
    return None if token is None else hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_bind(host: str, token_sha256: str | None) -> None:
    """Refuse a non-loopback address without an access token."""
    if token_sha256 is None and not _loopback(host):
        raise TalError(f"refusing to serve on {host} without an access token: give "
                       f"--token-file or set {TOKEN_ENV} (or bind to 127.0.0.1)")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ServiceCore:
    """The API's logic on one replica: checks, decoding, and the gallery calls; the Ray Serve
    deployment (`deployment`) feeds it requests."""

    def __init__(self, config: ServiceConfig):
        self.config = config
        self.engine = ReIDEngine(config.bundle, max_pixels=config.max_pixels)
        self.gallery = ShardedGallery(config.gallery, config.bundle, config.shards,
                                      search_timeout_s=config.search_timeout_s)
        self.shapes = self.engine.bundle.output_shapes

    def authorized(self, header: str | None) -> bool:
        """Whether a request may proceed: always without a token, else a matching bearer
        token (constant-time comparison of the SHA-256 digests)."""
        if self.config.token_sha256 is None:
            return True
        scheme, _, token = (header or "").partition(" ")
        given = hashlib.sha256(token.strip().encode("utf-8")).hexdigest()
        ok = hmac.compare_digest(given, self.config.token_sha256)
        return ok and scheme.lower() == "bearer"

    def check_length(self, header: str | None) -> None:
        if header is None:
            return
        try:
            length = int(header)
        except ValueError:
            raise HttpError(400, "Content-Length is not a number") from None
        if length > self.config.max_request_bytes:
            raise self._too_large()

    def _too_large(self) -> HttpError:
        return HttpError(413, f"request body larger than {self.config.max_request_bytes} bytes")

    async def read_body(self, chunks: Any) -> dict[str, Any]:
        """The JSON object of a body read chunk by chunk, at most the cap."""
        body = bytearray()
        async for chunk in chunks:
            body += chunk
            if len(body) > self.config.max_request_bytes:
                raise self._too_large()
        if not body:
            return {}
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise HttpError(400, "the body is not valid JSON") from None
        if not isinstance(payload, dict):
            raise HttpError(400, "the body must be a JSON object")
        return payload

    def crops(self, payload: Mapping[str, Any]) -> tuple[list[bytes], list[np.ndarray]]:
        """(encoded bytes, decoded crops) of ``payload["images"]``, every one checked."""
        images = payload.get("images")
        if not isinstance(images, list) or not images:
            raise HttpError(400, "images: expected a non-empty list of base64 images")
        if len(images) > self.config.max_images:
            raise HttpError(413, f"images: {len(images)} images, at most "
                                 f"{self.config.max_images} per request")
        raw = [wire.decode_bytes(text, f"image {i}") for i, text in enumerate(images)]
        return raw, [decode_image(data, f"image {i}", self.config.max_pixels)
                     for i, data in enumerate(raw)]

    def add(self, payload: Mapping[str, Any], raw: list[bytes], features: Features) -> dict:
        n = len(raw)
        metadata = [{k: v for k, v in (("camera", c), ("timestamp", t), ("label", l))
                     if v is not None} | dict(m or {})
                    for c, t, l, m in zip(_each(payload, "cameras", n),
                                          _each(payload, "timestamps", n),
                                          _each(payload, "labels", n), _each(payload, "meta", n))]
        for i, meta in enumerate(metadata):
            _check_metadata(meta, i)
        keys = self.gallery.add_crops(raw, [_suffix(d) for d in raw], features, metadata)
        return {"keys": keys}

    def queries(self, payload: Mapping[str, Any]) -> Features | None:
        """Query features given as stored entries or as features (None: images are)."""
        if "keys" in payload:
            keys = payload["keys"]
            if not isinstance(keys, list) or not keys or not all(isinstance(k, str)
                                                                 for k in keys):
                raise HttpError(400, "keys: expected a non-empty list of entry keys")
            return self.gallery.features(keys)
        if "features" in payload:
            return wire.decode_features(payload["features"], self.shapes)
        return None

    def search(self, payload: Mapping[str, Any], queries: Features) -> dict:
        options = RetrievalOptions(
            topk=_int(payload, "k", 10), candidates=_int(payload, "candidates", 0),
            prerank=None if payload.get("prerank") is None else _int(payload, "prerank", 0),
            candidate_search=_choice(payload, "search"),
            exclude_same_camera=payload.get("query_cameras") is not None)
        where = payload.get("where") or {}
        if not isinstance(where, dict):
            raise HttpError(400, "where: expected an object of field values")
        cameras = payload.get("cameras")
        if cameras is not None and not (isinstance(cameras, list)
                                        and all(_whole(c) for c in cameras)):
            raise HttpError(400, "cameras: expected a list of camera numbers")
        scope = Scope.of(cameras, _time(payload, "since"), _time(payload, "until"), where)
        found = self.gallery.search(queries, options, payload.get("query_cameras"), scope)
        return {"results": wire.encode_hits(found.hits), "partial": found.partial,
                "missing_shards": found.missing}

    def remove(self, payload: Mapping[str, Any]) -> dict:
        if "keys" in payload:
            keys = payload["keys"]
            if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
                raise HttpError(400, "keys: expected a list of entry keys")
            return {"removed": self.gallery.remove(keys)}
        where = payload.get("where") or {}
        if not isinstance(where, dict):
            raise HttpError(400, "where: expected an object of field values")
        return {"removed": self.gallery.remove_where(EntryFilter(where,
                                                                 _time(payload, "before")))}

    def health(self) -> dict:
        missing = self.gallery.unanswered(timeout_s=2.0)
        return {"status": "degraded" if missing else "ok", "shards": self.gallery.count,
                "missing_shards": missing}

    async def respond(self, method: str, route: str, headers: Mapping[str, str], chunks: Any,
                      embed: Callable[[list[np.ndarray]], Awaitable[Features]]
                      ) -> tuple[int, dict]:
        """(status, JSON answer) of one request; every refusal is one line."""
        try:
            if not self.authorized(headers.get("authorization")):
                raise HttpError(401, "missing or wrong access token")
            self.check_length(headers.get("content-length"))
            endpoint = (method, route.rstrip("/") or "/")
            if endpoint == ("GET", "/health"):
                return 200, await asyncio.to_thread(self.health)
            if endpoint == ("GET", "/stats"):
                return 200, await asyncio.to_thread(self.gallery.stats)
            if endpoint not in {("POST", r) for r in ("/embed", "/add", "/search", "/remove")}:
                raise HttpError(404, f"no endpoint {method} {route}")
            payload = await self.read_body(chunks)
            if route.startswith("/remove"):
                return 200, await asyncio.to_thread(self.remove, payload)
            queries = self.queries(payload) if route.startswith("/search") else None
            raw: list[bytes] = []
            if queries is None:
                raw, crops = self.crops(payload)
                queries = await embed(crops)
            if route.startswith("/embed"):
                return 200, {"features": wire.encode_features(queries)}
            if route.startswith("/add"):
                return 200, await asyncio.to_thread(self.add, payload, raw, queries)
            return 200, await asyncio.to_thread(self.search, payload, queries)
        except HttpError as err:
            return err.status, {"error": str(err)}
        except TalError as err:
            return 400, {"error": str(err)}


def _each(payload: Mapping[str, Any], name: str, n: int) -> list:
    """One value per image: a list of n, or one value (or nothing) for all."""
    value = payload.get(name)
    if isinstance(value, list):
        if len(value) != n:
            raise HttpError(400, f"{name}: {len(value)} values for {n} images")
        return value
    return [value] * n


def _check_metadata(meta: Mapping[str, Any], i: int) -> None:
    if "camera" in meta and not _whole(meta["camera"]):
        raise HttpError(400, f"image {i}: camera must be a whole number >= 0")
    if "timestamp" in meta and not (isinstance(meta["timestamp"], (int, float))
                                    and not isinstance(meta["timestamp"], bool)
                                    and np.isfinite(meta["timestamp"])):
        raise HttpError(400, f"image {i}: timestamp must be a finite number (seconds)")


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**62


def _int(payload: Mapping[str, Any], name: str, default: int) -> int:
    value = payload.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 100_000:
        raise HttpError(400, f"{name}: expected a whole number from 0 to 100000")
    return value


def _choice(payload: Mapping[str, Any], name: str) -> str:
    value = payload.get(name, "exact")
    if value not in SEARCH_KINDS:
        raise HttpError(400, f"{name}: one of {', '.join(SEARCH_KINDS)}")
    return value


def _time(payload: Mapping[str, Any], name: str) -> float | None:
    value = payload.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise HttpError(400, f"{name}: expected seconds since the epoch")
    return float(value)


def _suffix(data: bytes) -> str:
    """The file suffix of an encoded image (its stored crop is named so)."""
    for magic, suffix in _SUFFIXES:
        if data.startswith(magic):
            return suffix
    return ".webp" if data[:4] == b"RIFF" and data[8:12] == b"WEBP" else ".img"


def deployment(config: ServiceConfig) -> Any:
    """The Ray Serve application of ``config``: one replica holding a `ServiceCore`, its
    extractor behind ``serve.batch`` (``max_batch`` crops, ``batch_wait_s``)."""
    serve = require_ray("serve")

    @serve.deployment(name="ReIDService", max_ongoing_requests=64)
    class ReIDService:
        def __init__(self, config: ServiceConfig):
            self.core = ServiceCore(config)

        @serve.batch(max_batch_size=config.max_batch, batch_wait_timeout_s=config.batch_wait_s)
        async def embed_one(self, crops: list[np.ndarray]) -> list[Features]:
            features = await asyncio.to_thread(self.core.engine.embed, crops)
            return [{k: v[i:i + 1] for k, v in features.items()} for i in range(len(crops))]

        async def embed(self, crops: list[np.ndarray]) -> Features:
            return stack_features(await asyncio.gather(*(self.embed_one(c) for c in crops)))

        async def __call__(self, request: Any) -> Any:
            from starlette.responses import JSONResponse

            status, answer = await self.core.respond(
                request.method, request.url.path, request.headers, request.stream(),
                self.embed)
            return JSONResponse(answer, status_code=status)

    return ReIDService.bind(config)


def start(config: ServiceConfig, address: str | None = None) -> str:
    """Start (or replace) the service on Ray Serve; returns its URL."""
    check_bind(config.host, config.token_sha256)
    connect(address)
    serve = require_ray("serve")
    serve.start(http_options={"host": config.host, "port": config.port})
    serve.run(deployment(config), name=APP_NAME, route_prefix="/", blocking=False)
    host = f"[{config.host}]" if ":" in config.host else config.host
    return f"http://{host}:{config.port}"


def stop() -> None:
    """Shut the Serve application and its proxies down (the gallery stays on disk)."""
    require_ray("serve").shutdown()
