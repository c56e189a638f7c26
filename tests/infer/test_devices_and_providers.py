"""Device and ONNX Runtime provider choices, decided once: the TensorRT execution provider only
when asked for (with its engine cache under the user's cache folder), the CUDA provider
otherwise; ``auto`` consistent between torch and ONNX Runtime, and never anything but a
one-line error."""
from __future__ import annotations

import sys

import pytest

from tal_infer import backends, devices, matching
from tal_infer.bundle import load_bundle
from tal_infer.errors import TalError
from tal_infer.precision import FLOAT16, FLOAT32

GPU_PROVIDERS = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def test_cuda_gets_the_cuda_provider_not_tensorrt_unless_asked(fake_bundle):
    bundle = load_bundle(fake_bundle)
    assert backends.ort_providers("onnxruntime", "cuda", GPU_PROVIDERS, bundle, FLOAT32) == \
        ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert backends.ort_providers("onnxruntime", "cpu", GPU_PROVIDERS, bundle, FLOAT32) == \
        ["CPUExecutionProvider"]


def test_tensorrt_provider_caches_its_engines_per_model(fake_bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("TAL_REID_CACHE", str(tmp_path / "cache"))
    bundle = load_bundle(fake_bundle)
    providers = backends.ort_providers("onnxruntime-trt", "cuda", GPU_PROVIDERS, bundle,
                                       FLOAT16)
    name, options = providers[0]
    cache = tmp_path / "cache" / "ort-tensorrt" / bundle.fingerprint.replace(":", "-")
    assert name == "TensorrtExecutionProvider" and providers[1:] == GPU_PROVIDERS[1:]
    assert options == {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache),
                       "trt_timing_cache_enable": True, "trt_timing_cache_path": str(cache),
                       "trt_fp16_enable": True}
    assert cache.is_dir()


@pytest.mark.parametrize("backend, device, available, words", [
    ("onnxruntime", "cuda", ["CPUExecutionProvider"], "no CUDA provider here"),
    ("onnxruntime-trt", "cuda", GPU_PROVIDERS[1:], "no TensorRT execution provider"),
    ("onnxruntime-trt", "cpu", GPU_PROVIDERS, "runs on CUDA only"),
])
def test_missing_providers_are_one_line(fake_bundle, backend, device, available, words):
    with pytest.raises(TalError, match=words):
        backends.ort_providers(backend, device, available, load_bundle(fake_bundle), FLOAT32)


def test_onnxruntime_gpu_beside_a_cpu_only_torch_matches_on_the_cpu(monkeypatch):
    """onnxruntime-gpu reaches the GPU but torch does not: extraction may use CUDA, matching
    stays on the CPU, and auto never reaches torch.cuda (which raises AssertionError)."""
    import onnxruntime
    import torch

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: GPU_PROVIDERS[1:])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def no_cuda(*args, **kwargs):
        raise AssertionError("Torch not compiled with CUDA enabled")
    monkeypatch.setattr(torch.cuda, "get_device_capability", no_cuda)
    assert devices.resolve_device("auto") == "cuda"
    assert matching.match_device("cuda") == "cpu"
    assert matching.choose_match_backend("auto", "cpu", FLOAT16, 128) == "torch"


def test_a_broken_cuda_install_reads_as_no_gpu(monkeypatch):
    import torch

    def broken():
        raise RuntimeError("CUDA driver initialization failed")
    monkeypatch.setattr(torch.cuda, "is_available", broken)
    assert devices.torch_cuda_available() is False


def test_cuda_asked_for_without_a_gpu_is_one_line(monkeypatch):
    monkeypatch.setattr(devices, "cuda_available", lambda: False)
    with pytest.raises(TalError, match="--device cuda: no CUDA device is usable here"):
        devices.resolve_device("cuda")
    with pytest.raises(TalError, match="device must be one of auto, cpu, cuda"):
        devices.resolve_device("gpu")


def test_auto_matcher_without_torch_is_numpy_on_the_cpu_and_an_error_on_cuda(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    assert matching.choose_match_backend("auto", "cpu", FLOAT32, 8) == "numpy"
    with pytest.raises(TalError, match="matching on CUDA needs torch"):
        matching.choose_match_backend("auto", "cuda", FLOAT32, 8)
    with pytest.raises(TalError, match="backend 'torch' needs torch installed"):
        matching.choose_match_backend("torch", "cpu", FLOAT32, 8)
