"""`ServiceClient`: the Python client of the HTTP API (`service`), standard library only.

    client = ServiceClient("http://127.0.0.1:8000", token=os.environ.get("TAL_SERVE_TOKEN"))
    keys = client.add([open("crop.jpg", "rb").read()], cameras=3, timestamps=1764480000.0)
    found = client.search(images=[query_bytes], k=10, cameras=[3, 4, 5, 6, 7],
                          since=t1, until=t2)
    found.hits[0][0].key, found.partial

Errors the service reports (4xx/5xx) are a `TalError` with its one line.
"""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any, Iterable, Mapping, Sequence

from ..errors import TalError
from ..features import Features
from . import wire
from .sharded import ShardedResult


class ServiceClient:
    """Calls of the tal-serve HTTP API at ``url`` (with ``token`` when it asks for one)."""

    def __init__(self, url: str = "http://127.0.0.1:8000", token: str | None = None,
                 timeout_s: float = 60.0):
        self.url, self.token, self.timeout_s = url.rstrip("/"), token, timeout_s

    def health(self) -> dict[str, Any]:
        return self._call("GET", "/health")

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "/stats")

    def embed(self, images: Sequence[bytes]) -> Features:
        answer = self._call("POST", "/embed", {"images": _encoded(images)})
        features = answer["features"]
        shapes = {k: v["shape"][1:] for k, v in features["arrays"].items()}
        return wire.decode_features(features, shapes)

    def add(self, images: Sequence[bytes], cameras: Any = None, timestamps: Any = None,
            labels: Any = None, meta: Any = None) -> list[str]:
        """Store and index encoded crops; each metadata argument is one value for all or one
        per image. Returns the entries' keys."""
        body = {"images": _encoded(images), "cameras": cameras, "timestamps": timestamps,
                "labels": labels, "meta": meta}
        return self._call("POST", "/add", body)["keys"]

    def search(self, images: Sequence[bytes] | None = None, keys: Sequence[str] | None = None,
               features: Features | None = None, k: int = 10, candidates: int = 0,
               cameras: Iterable[int] | None = None, since: float | None = None,
               until: float | None = None, where: Mapping[str, Any] | None = None,
               query_cameras: Any = None, prerank: int | None = None,
               search: str = "exact") -> ShardedResult:
        """The top ``k`` per query (crops, stored entries or features), within the cameras,
        time window and metadata given; ``query_cameras`` leaves each query's own camera
        out."""
        body: dict[str, Any] = {"k": k, "candidates": candidates, "search": search,
                                "cameras": None if cameras is None else list(cameras),
                                "since": since, "until": until, "where": dict(where or {}),
                                "query_cameras": query_cameras, "prerank": prerank}
        if images is not None:
            body["images"] = _encoded(images)
        elif keys is not None:
            body["keys"] = list(keys)
        elif features is not None:
            body["features"] = wire.encode_features(features)
        answer = self._call("POST", "/search", body)
        return ShardedResult(wire.decode_hits(answer["results"]), answer["missing_shards"])

    def remove(self, keys: Sequence[str] | None = None, where: Mapping[str, Any] | None = None,
               before: float | None = None) -> list[str]:
        """Erase entries by key, or those a filter selects; returns the keys erased."""
        body = {"keys": list(keys)} if keys is not None else {"where": dict(where or {}),
                                                               "before": before}
        return self._call("POST", "/remove", body)["removed"]

    def _call(self, method: str, route: str, body: Mapping[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(self.url + route, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as err:
            try:
                line = json.loads(err.read()).get("error", err.reason)
            except ValueError:
                line = err.reason
            raise TalError(f"{method} {route}: {err.code} {line}") from None
        except urllib.error.URLError as err:
            raise TalError(f"{self.url}: cannot reach the service ({err.reason})") from None


def _encoded(images: Sequence[bytes]) -> list[str]:
    return [wire.encode_bytes(bytes(i)) for i in images]
