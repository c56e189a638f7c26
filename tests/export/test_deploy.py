"""TensorRT engine building (against a stand-in for the tensorrt module: TensorRT cannot be
installed here) and the Triton Inference Server model repository (every config.pbtxt parsed into
Triton's ModelConfig message, triton_config.py)."""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from tal_export import export_bundle, tensorrt_build
from tal_export.tensorrt_build import build_engine, extractor_profile, matcher_profile
from tal_export.triton_repo import write_triton_repo
from tal_infer.errors import TalError
from tal_infer.precision import FLOAT16
from tal_plugins import trt as plugin

from tiny_models import stand_in_graphs
from triton_config import check_model_folder, parse_config


class FakeTensorRT:
    """Records the TensorRT 10 builder calls that build_engine makes."""

    def __init__(self, parses: bool = True, version: str = "10.13.0.35"):
        self.calls, self.parses, self.__version__ = [], parses, version
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
    with pytest.raises(TalError, match=r"--trt needs TensorRT >= 10.9 \(pip install "
                                       r"'tal-reid\[trt\]'"):
        export_bundle(tiny_checkpoint, tmp_path / "out", trt=True, progress=False)
    assert not list(tmp_path.iterdir())


def test_bad_ptx_isa_option_fails_before_any_work(tmp_path, tiny_checkpoint, monkeypatch):
    monkeypatch.setattr(tensorrt_build, "import_tensorrt", lambda: FakeTensorRT())
    with pytest.raises(TalError, match="PTX ISA version '8' is not of the form MAJOR.MINOR"):
        export_bundle(tiny_checkpoint, tmp_path / "out", trt=True, ptx_isa="8", progress=False)
    assert not list(tmp_path.iterdir())


def test_ptx_isa_without_trt_is_a_usage_error(tiny_checkpoint, tmp_path):
    from click.testing import CliRunner

    from tal_export.cli import main

    result = CliRunner().invoke(main, [str(tiny_checkpoint), "--out", str(tmp_path / "b"),
                                       "--ptx-isa", "8.4"])
    assert result.exit_code == 2 and "--ptx-isa applies to the TensorRT engines: add --trt" \
        in result.output
    assert "--ptx-isa X.Y" in CliRunner().invoke(main, ["--help"]).output


def test_engines_record_tensorrt_gpu_and_ptx_in_the_manifest(tmp_path, monkeypatch):
    """build_engines writes what the engines are tied to: TensorRT version, the build GPU's
    compute capability, the PTX target and ISA of the plugin kernels TensorRT compiled."""
    fake = FakeTensorRT()
    monkeypatch.setattr(tensorrt_build, "import_tensorrt", lambda: fake)
    registration = plugin.Registration(plugin.AotTarget(90, (8, 4), "driver (CUDA 12.4)"))
    registered = []

    def register(ptx_isa=None):
        registered.append(ptx_isa)
        registration.record({"dtype": "fp16", "hw": [32, 32], "channels": 64, "projections": 1,
                             "ptx_isa": "8.4"})
        return registration

    monkeypatch.setattr(plugin, "register", register)
    manifest = {"input": {"height": 128, "width": 64}, "dtype": "float16",
                "features": {"di_res4": {"shape": [-1, 64, 8, 4]}}}
    section = tensorrt_build.build_engines(tmp_path, tmp_path / "extractor.onnx",
                                           tmp_path / "matcher_trt.onnx", manifest, 16, 1024,
                                           ptx_isa="8.4")
    assert registered == ["8.4"]
    assert section["version"] == "10.13.0.35" and section["compute_capability"] == "9.0"
    assert section["precision"] == "float16"  # the bundle's, as the manifest records it
    assert section["matcher"] == {
        "file": "matcher.plan", "max_query": 16, "max_gallery": 1024, "plugin": "tal::QAConvMatch",
        "ptx_target": "sm_90a", "ptx_isa": "8.4", "ptx_isa_limit": "8.4",
        "ptx_isa_limit_from": "driver (CUDA 12.4)", "kernels": registration.kernels}
    assert (tmp_path / "matcher.plan").is_file() and (tmp_path / "extractor.plan").is_file()


def test_triton_config_parser_rejects_what_triton_rejects():
    with pytest.raises(Exception, match='has no field named "max_batch"'):
        parse_config('name: "m"\nmax_batch: 4\n')
    with pytest.raises(Exception, match="has no value named TYPE_FLOAT"):
        parse_config('input [ { name: "x" data_type: TYPE_FLOAT dims: [ 3 ] } ]')


def parameters(config) -> dict[str, str]:
    return {k: v.string_value for k, v in config.parameters.items()}


def test_triton_repository(tmp_path, fp32_bundle):
    bundle, _ = fp32_bundle
    manifest = json.loads((bundle / "manifest.json").read_text())
    extractor, matcher = write_triton_repo(tmp_path / "models", bundle, manifest, max_batch=32)
    assert extractor.name == "tiny-run_extractor" and (extractor / "1" / "model.onnx").is_file()
    config = check_model_folder(extractor)
    assert (config.platform, config.max_batch_size) == ("onnxruntime_onnx", 32)
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [("images", 2,
                                                                           [128, 64, 3])]
    outputs = {t.name: (t.data_type, list(t.dims)) for t in config.output}
    assert outputs["ds_res4"] == (11, [3, 64, 8, 4])  # TYPE_FP32
    assert list(config.dynamic_batching.preferred_batch_size) == [16, 32]
    assert parameters(config) == {"tal_bundle": "tiny-run",
                                  "tal_toolkit_version": manifest["toolkit_version"]}
    config = check_model_folder(matcher)
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    dims = {t.name: list(t.dims) for t in config.input}
    assert dims["query_ds_res4"] == [-1, 3, 64, 8, 4]
    assert [(t.name, list(t.dims)) for t in config.output] == [("scores", [-1, -1])]

    # with engines in the bundle the models switch to TensorRT plans, and say what they need
    with_plans = tmp_path / "bundle"
    shutil.copytree(bundle, with_plans)
    for role in ("extractor", "matcher"):
        (with_plans / f"{role}.plan").write_bytes(b"engine")
    with pytest.raises(TalError, match="TensorRT plans but its manifest has no tensorrt section"):
        write_triton_repo(tmp_path / "models", with_plans, manifest, max_batch=32)
    manifest["tensorrt"] = {
        "version": "10.13.0.35", "compute_capability": "9.0",
        "extractor": {"file": "extractor.plan", "max_batch": 32},
        "matcher": {"file": "matcher.plan", "max_query": 32, "max_gallery": 1024,
                    "ptx_target": "sm_90a", "ptx_isa": "8.4"}}
    extractor, matcher = write_triton_repo(tmp_path / "models", with_plans, manifest,
                                           max_batch=32)
    config = check_model_folder(extractor)
    assert config.platform == "tensorrt_plan"
    assert [p.name for p in (extractor / "1").iterdir()] == ["model.plan"]
    assert parameters(config)["tal_tensorrt_version"] == "10.13.0.35"
    assert parameters(config)["tal_compute_capability"] == "9.0"
    assert parameters(config)["tal_max_batch"] == "32"
    params = parameters(check_model_folder(matcher))
    assert {k: params[k] for k in ("tal_max_gallery", "tal_max_query", "tal_ptx_target",
                                   "tal_ptx_isa")} == {
        "tal_max_gallery": "1024", "tal_max_query": "32", "tal_ptx_target": "sm_90a",
        "tal_ptx_isa": "8.4"}
    readme = (tmp_path / "models" / "README.md").read_text()
    assert "## tiny-run_extractor" in readme and "## tiny-run_matcher" in readme
    assert "needs TensorRT 10.13.0.35 in the server and a GPU of compute capability 9.0" in readme
    assert "32 queries x 1024 gallery items per request" in readme
    assert "PTX for sm_90a, ISA 8.4" in readme


def test_trt_without_fp16_gives_an_fp16_bundle(tmp_path, tiny_checkpoint, monkeypatch):
    """--trt implies --fp16 (its help says so): the graph writer, the manifest and the engines'
    build all get float16, with the TensorRT build itself stood in (TensorRT cannot be
    installed here) and so is the graph export (what fp16 makes of the graphs is
    test_bundle.py's fp16 bundle)."""
    built, graphs = [], []

    def fake_graphs(model, folder, precision, *args, **kwargs):
        graphs.append(precision)
        return stand_in_graphs(model, folder)

    def fake_build(folder, extractor_onnx, matcher_onnx, manifest, max_batch, max_gallery,
                   ptx_isa=None):
        built.append(manifest["dtype"])
        for plan in ("extractor.plan", "matcher.plan"):
            (folder / plan).write_bytes(b"stand-in plan")
        return {"version": "stand-in", "precision": manifest["dtype"]}

    monkeypatch.setattr("tal_export.bundle._write_graphs", fake_graphs)
    monkeypatch.setattr(tensorrt_build, "check_trt_options", lambda ptx_isa: None)
    monkeypatch.setattr(tensorrt_build, "build_engines", fake_build)
    out = export_bundle(tiny_checkpoint, tmp_path / "out", trt=True, verify=False,
                        progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert graphs == [FLOAT16] and built == ["float16"] and manifest["dtype"] == "float16"
    assert manifest["precision"]["weights"] == "float16"
    assert manifest["tensorrt"] == {"version": "stand-in", "precision": "float16"}
