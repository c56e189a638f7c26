"""The HTTP service on Ray Serve, driven by a real HTTP client on 127.0.0.1: the access token
(required off the loopback, 401 without it), request caps (413), bad images (400 with one
line), nothing written on a refused request, and answers equal to the Python API's."""
from __future__ import annotations

import base64
import json
import socket
import time
import urllib.error
import urllib.request

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from runtime_fixtures import person_crop
from tal_infer.cluster import service
from tal_infer.cluster.client import ServiceClient
from tal_infer.cluster.routing import shard_of
from tal_infer.cluster.sharded import ShardedGallery
from tal_infer.engine import ReIDEngine
from tal_infer.errors import TalError
from tal_infer.retrieval import RetrievalOptions
from tal_infer.serve_cli import main as serve_main

TOKEN = "test-token-0123456789abcdef"
CAP = 256 * 1024
PATIENT_S = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def jpeg(pid: int, seed: int) -> bytes:
    ok, data = cv2.imencode(".jpg", person_crop(pid, np.random.default_rng(seed)))
    assert ok
    return data.tobytes()


@pytest.fixture(scope="module")
def served(ray_cluster, bundle, tmp_path_factory):
    """(client, gallery root, config) of a running service with a token and small caps."""
    root = tmp_path_factory.mktemp("served") / "g"
    config = service.ServiceConfig(str(root), str(bundle), shards=2, port=free_port(),
                                   token_sha256=service.token_digest(TOKEN),
                                   max_request_bytes=CAP, max_images=8, max_batch=4,
                                   search_timeout_s=PATIENT_S)
    url = service.start(config)
    client = ServiceClient(url, TOKEN, timeout_s=PATIENT_S)
    deadline = time.monotonic() + PATIENT_S
    while True:
        try:
            assert client.health()["status"] == "ok"
            break
        except TalError:
            assert time.monotonic() < deadline, "the service did not come up"
            time.sleep(0.5)
    yield client, root, config
    service.stop()


def raw_request(url: str, route: str, body: bytes | None = None,
                headers: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url + route, data=body, method="POST" if body else "GET",
                                     headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=PATIENT_S) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def stored(root) -> int:
    return sum(1 for _ in root.rglob("crops/*/*"))


def test_a_non_loopback_bind_needs_a_token(monkeypatch, bundle, tmp_path):
    monkeypatch.delenv(service.TOKEN_ENV, raising=False)
    with pytest.raises(TalError, match="without an access token"):
        service.check_bind("0.0.0.0", None)
    service.check_bind("127.0.0.1", None)
    service.check_bind("::1", None)
    service.check_bind("0.0.0.0", service.token_digest(TOKEN))
    result = CliRunner().invoke(serve_main, [str(bundle), "--gallery", str(tmp_path / "g"),
                                             "--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and "access token" in result.output
    (tmp_path / "short").write_text("abc\n")
    with pytest.raises(TalError, match="at least 16"):
        service.read_token(tmp_path / "short")
    monkeypatch.setenv(service.TOKEN_ENV, TOKEN)
    assert service.read_token(None) == TOKEN


def test_every_request_needs_the_token(served):
    client, _, _ = served
    assert raw_request(client.url, "/health")[0] == 401
    status, answer = raw_request(client.url, "/stats",
                                 headers={"Authorization": "Bearer " + TOKEN[:-1] + "x"})
    assert (status, answer) == (401, {"error": "missing or wrong access token"})
    assert raw_request(client.url, "/health",
                       headers={"Authorization": "Bearer " + TOKEN})[0] == 200


def test_refused_requests_write_nothing(served):
    client, root, _ = served
    entries = client.stats()["entries"]
    files = stored(root)
    auth = {"Authorization": "Bearer " + TOKEN, "Content-Type": "application/json"}
    big = json.dumps({"images": [base64.b64encode(b"\xff" * CAP).decode()]}).encode()
    status, answer = raw_request(client.url, "/add", big, auth)
    assert status == 413 and "larger than" in answer["error"]
    good, bad = jpeg(3, 0), b"\xff\xd8 not a jpeg at all, only words"
    body = json.dumps({"images": [base64.b64encode(x).decode() for x in (good, bad)],
                       "cameras": 2}).encode()
    status, answer = raw_request(client.url, "/add", body, auth)
    assert status == 400 and answer["error"].startswith("image 1: not a readable image")
    assert "\n" not in answer["error"]
    status, answer = raw_request(client.url, "/add", b"{not json", auth)
    assert (status, answer) == (400, {"error": "the body is not valid JSON"})
    with pytest.raises(TalError, match="413 images: 9 images, at most 8"):
        client.add([good] * 9)
    with pytest.raises(TalError, match="camera must be a whole number"):
        client.add([good], cameras=-1)
    assert client.stats()["entries"] == entries and stored(root) == files


def test_answers_equal_the_python_api(served, bundle):
    client, root, config = served
    crops = [jpeg(pid, seed) for pid in range(1, 9) for seed in (0, 1)]
    keys = client.add(crops[:8], cameras=[1, 2] * 4, timestamps=[100.0 + i for i in range(8)])
    keys += client.add(crops[8:], cameras=3, timestamps=200.0, meta={"site": "north"})
    assert len(set(keys)) == 16 and client.stats()["entries"] == 16
    assert client.add(crops[:2], cameras=[1, 2], timestamps=[100.0, 101.0]) == keys[:2]
    assert client.stats()["entries"] == 16                       # the same bytes: same entry
    engine = ReIDEngine(bundle)
    local = engine.embed([cv2.imdecode(np.frombuffer(c, np.uint8), cv2.IMREAD_COLOR)
                          for c in crops[:3]])
    sent = client.embed(crops[:3])
    for name, value in local.items():
        np.testing.assert_allclose(sent[name], value, atol=1e-5)
    api = ShardedGallery(root, bundle, search_timeout_s=PATIENT_S)  # the same shard folders
    by_key = client.search(keys=keys[:3], k=5)
    want = api.search(api.features(keys[:3]), RetrievalOptions(topk=5))
    assert not by_key.partial and by_key.hits == want.hits
    windowed = client.search(keys=keys[:3], k=5, cameras=[1, 3], since=101.0, until=300.0)
    for hits in windowed.hits:
        assert hits and all(h.camera in (1, 3) and 101.0 <= h.timestamp for h in hits)
    north = client.search(images=crops[:1], k=16, where={"site": "north"})
    assert sorted(h.key for h in north.hits[0]) == sorted(keys[8:])
    assert all(shard_of(k.split("/")[-1].split(".")[0], 2) == int(k.split("shard-")[1][0])
               for k in keys)                                   # routed by content hash
    assert client.remove(keys=[keys[0]]) == [keys[0]]
    assert sorted(client.remove(where={"site": "north"})) == sorted(keys[8:])
    assert client.stats()["entries"] == 7 and stored(root) == 7
