"""Fixtures of the video tests: the runtime tests' fake bundle with a global descriptor (built
with onnx.helper in well under a second, see tests/infer/runtime_fixtures.py) and a tiny
synthetic two-camera network from `tal-data synthesize-video`."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "infer"))  # runtime_fixtures

from runtime_fixtures import write_fake_bundle  # noqa: E402

TINY_NETWORK = dict(cameras=2, identities=3, frames=40, frame_size=(120, 160), visit_frames=16)


@pytest.fixture(scope="session")
def video_bundle(tmp_path_factory) -> Path:
    return write_fake_bundle(tmp_path_factory.mktemp("video-bundle") / "fake-desc",
                             descriptor=True)


@pytest.fixture(scope="session")
def engine(video_bundle):
    from tal_infer import ReIDEngine

    return ReIDEngine(video_bundle, backend="onnxruntime", device="cpu", batch_size=4)


@pytest.fixture(scope="session")
def tiny_network(tmp_path_factory) -> Path:
    from tal_train.data.synthetic import VideoConfig, synthesize_video

    out = tmp_path_factory.mktemp("network")
    synthesize_video(out, VideoConfig(**TINY_NETWORK), progress=False)
    return out
