"""TensorRT engine building (against a stand-in for the tensorrt module: TensorRT cannot be
installed here) and the Triton Inference Server model repository."""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from tal_export import export_bundle
from tal_export.tensorrt_build import build_engine, extractor_profile, matcher_profile
from tal_export.triton_repo import write_triton_repo
from tal_infer.errors import TalError


class FakeTensorRT:
    """Records the TensorRT 10 builder calls that build_engine makes."""

    def __init__(self, parses: bool = True):
        self.calls, self.parses = [], parses
        self.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda s, level: None})
        self.NetworkDefinitionCreationFlag = SimpleNamespace(STRONGLY_TYPED=1)
        fake = self

        class Profile:
            def set_shape(self, name, low, opt, high):
                fake.calls.append(("set_shape", name, low, opt, high))

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                fake.calls.append(("create_network", flags))
                return "network"

            def create_builder_config(self):
                return SimpleNamespace(add_optimization_profile=lambda p: fake.calls.append(
                    ("add_optimization_profile",)))

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                fake.calls.append(("build", network))
                return b"engine-bytes"

        class OnnxParser:
            num_errors = 1

            def __init__(self, network, logger):
                pass

            def parse_from_file(self, path):
                fake.calls.append(("parse_from_file", Path(path).name))
                return fake.parses

            def get_error(self, i):
                return "In node 3 (QAConvMatch): plugin not found"

        self.Builder, self.OnnxParser = Builder, OnnxParser


def test_build_engine_calls_the_tensorrt10_builder(tmp_path):
    trt = FakeTensorRT()
    build_engine(trt, tmp_path / "extractor.onnx", tmp_path / "extractor.plan",
                 extractor_profile((128, 64), 32))
    assert (tmp_path / "extractor.plan").read_bytes() == b"engine-bytes"
    assert trt.calls == [("create_network", 2), ("parse_from_file", "extractor.onnx"),
                         ("set_shape", "images", (1, 128, 64, 3), (32, 128, 64, 3),
                          (32, 128, 64, 3)),
                         ("add_optimization_profile",), ("build", "network")]


def test_parse_failure_is_one_line(tmp_path):
    with pytest.raises(TalError, match="matcher_trt.onnx: TensorRT could not parse the graph: "
                                       r"In node 3 \(QAConvMatch\)"):
        build_engine(FakeTensorRT(parses=False), tmp_path / "matcher_trt.onnx",
                     tmp_path / "matcher.plan", {})
    assert not (tmp_path / "matcher.plan").exists()


def test_matcher_profile_covers_every_input():
    features = {"ds_res4": {"shape": [-1, 3, 64, 8, 4]}, "di_res4": {"shape": [-1, 64, 8, 4]}}
    profile = matcher_profile(features, 16, 1024)
    assert profile["query_ds_res4"] == ((1, 3, 64, 8, 4), (16, 3, 64, 8, 4), (16, 3, 64, 8, 4))
    assert profile["gallery_di_res4"] == ((1, 64, 8, 4), (1024, 64, 8, 4), (1024, 64, 8, 4))
    assert len(profile) == 4


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT installed")
def test_trt_without_tensorrt_is_a_clear_error(tmp_path, tiny_checkpoint):
    with pytest.raises(TalError, match=r"--trt needs TensorRT 10 \(pip install 'tal-reid\[trt\]'"):
        export_bundle(tiny_checkpoint, tmp_path / "out", trt=True, progress=False)
    assert not list(tmp_path.iterdir())


def test_triton_repository(tmp_path, fp32_bundle):
    bundle, _ = fp32_bundle
    manifest = json.loads((bundle / "manifest.json").read_text())
    extractor, matcher = write_triton_repo(tmp_path / "models", bundle, manifest, max_batch=32)
    assert extractor.name == "tiny-run_extractor" and (extractor / "1" / "model.onnx").is_file()
    config = (extractor / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in config and "max_batch_size: 32" in config
    assert 'name: "images"\n    data_type: TYPE_UINT8\n    dims: [ 128, 64, 3 ]' in config
    assert 'name: "ds_res4"\n    data_type: TYPE_FP32\n    dims: [ 3, 64, 8, 4 ]' in config
    assert "dynamic_batching {\n  preferred_batch_size: [ 16, 32 ]" in config
    config = (matcher / "config.pbtxt").read_text()
    assert "max_batch_size: 0" in config and "dynamic_batching" not in config
    assert 'name: "query_ds_res4"\n    data_type: TYPE_FP32\n    dims: [ -1, 3, 64, 8, 4 ]' in config
    assert 'name: "scores"\n    data_type: TYPE_FP32\n    dims: [ -1, -1 ]' in config
    # with engines in the bundle the models switch to TensorRT plans
    with_plans = tmp_path / "bundle"
    shutil.copytree(bundle, with_plans)
    for role in ("extractor", "matcher"):
        (with_plans / f"{role}.plan").write_bytes(b"engine")
    extractor, _ = write_triton_repo(tmp_path / "models", with_plans, manifest, max_batch=32)
    assert 'platform: "tensorrt_plan"' in (extractor / "config.pbtxt").read_text()
    assert [p.name for p in (extractor / "1").iterdir()] == ["model.plan"]
