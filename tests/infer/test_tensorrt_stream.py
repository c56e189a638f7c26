"""TensorRTEngine.run launches on the engine's own CUDA stream, after the input copies queued
on the current stream, and waits for it: never on the legacy default stream (handle 0), where
TensorRT warns and synchronizes. Checked with the runtime stand-in (fake_tensorrt_runtime.py)
and a recording stream, as no GPU is here."""
from __future__ import annotations

import numpy as np
import pytest

from tal_infer import tensorrt_runtime

from test_tensorrt_backend import fake_trt, make_trt_bundle  # noqa: F401  (fixture)


class RecordingStream:
    cuda_stream = 0x5EED

    def __init__(self):
        self.events = []

    def wait_stream(self, other):
        self.events.append(("wait", other))

    def synchronize(self):
        self.events.append(("synchronize",))


def test_engine_runs_on_its_own_stream_after_the_input_copies(exported, tmp_path, fake_trt,
                                                             monkeypatch):
    torch = pytest.importorskip("torch")
    bundle = make_trt_bundle(exported[1], tmp_path / "bundle", "FLOAT")
    monkeypatch.setattr(tensorrt_runtime, "torch_device", lambda device: torch.device("cpu"))
    engine = tensorrt_runtime.TensorRTEngine(bundle, "extractor.plan", "cuda")
    assert engine.stream is None  # CPU memory: no stream to make
    engine.stream = stream = RecordingStream()
    current = object()
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: current)
    launched = []
    execute = engine.context.execute_async_v3

    def record(handle):
        launched.append((handle, list(stream.events)))
        return execute(handle)

    monkeypatch.setattr(engine.context, "execute_async_v3", record)
    smallest = engine.profile[engine.inputs[0]][0]  # (1, height, width, 3)
    engine.run({engine.inputs[0]: np.zeros((2, *smallest[1:]), np.uint8)})
    assert launched == [(0x5EED, [("wait", current)])]  # its stream, after the copies
    assert stream.events == [("wait", current), ("synchronize",)]
