"""Extractor backends: a bundle's extractor on one runtime (images -> feature maps).

Extractor backends (`EXTRACTOR_BACKENDS`, ``--backend``) run a bundle's extractor on uint8 BGR
batches and return numpy maps:

| backend | file | needs |
|---|---|---|
| ``onnxruntime`` | extractor.onnx | onnxruntime (CPU); on CUDA its CUDA execution provider (onnxruntime-gpu) |
| ``onnxruntime-trt`` | extractor.onnx | onnxruntime-gpu built with TensorRT: its TensorRT execution provider, engines cached under `ort_tensorrt_cache` |
| ``tensorrt`` | extractor.plan (+ matcher.plan for matching) | tensorrt >= 10.9 + torch with CUDA (device buffers are torch tensors, no pycuda; tensorrt_runtime.py) |
| ``torch`` | extractor.safetensors + manifest ``model_config`` | torch and safetensors: the network rebuilt from the package's own model code, the weights loaded as data (torch_extractor.py) |

``auto`` takes, on CUDA, the TensorRT engine, then the torch network, then ONNX Runtime's CUDA
provider; on the CPU, ONNX Runtime (faster than PyTorch eager on CPU, README). ONNX Runtime's
TensorRT provider is used only when asked for (``onnxruntime-trt``): it builds engines for
every new input shape, minutes on a first run, which the cache under a folder of the user's
keeps to once per machine. The choice is made once, when the engine opens, and logged once; a
backend that cannot run here is skipped by ``auto``, but a damaged or refused bundle file
(`BundleError`) refuses the bundle: it is named, never worked around. Every backend returns ``{output name: array}`` in
the extractor's own layout (docs/bundle.md) and in the bundle's precision
(`tal_infer.precision`), and checks its graph's outputs against the manifest when it opens;
heavy imports happen only when a backend is opened. Matching backends are chosen in
`tal_infer.matching`.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from .bundle import Bundle
from .bundle_schema import EXTRACTOR
from .devices import resolve_device
from .errors import BundleError, TalError, brief
from .precision import Precision

log = logging.getLogger("tal_infer")
EXTRACTOR_BACKENDS = ("auto", "onnxruntime", "onnxruntime-trt", "tensorrt", "torch")
CUDA_AUTO_ORDER = ("tensorrt", "torch", "onnxruntime")


class Extractor(Protocol):
    name: str
    device: str

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]: ...


def open_extractor(bundle: Bundle, backend: str = "auto", device: str = "auto",
                   precision: Precision | None = None) -> Extractor:
    """The extractor of ``bundle`` on the chosen backend and device, giving features in
    ``precision`` (default: the bundle's); see the module doc."""
    if backend not in EXTRACTOR_BACKENDS:
        raise TalError(f"unknown extractor backend {backend!r}; choose one of "
                       f"{', '.join(EXTRACTOR_BACKENDS)}")
    device = resolve_device(device)
    if backend != "auto":
        return _OPENERS[backend](bundle, device, precision)
    reasons = []
    for name in CUDA_AUTO_ORDER if device == "cuda" else ("onnxruntime",):
        try:
            return _OPENERS[name](bundle, device, precision)
        except BundleError:
            raise  # a damaged bundle is refused, not worked around
        except TalError as err:
            reasons.append(f"{name}: {err}")
    raise TalError("no extractor backend could be opened (" + "; ".join(reasons) + ")")


def ort_tensorrt_cache(bundle: Bundle) -> Path:
    """Where ONNX Runtime's TensorRT provider keeps the engines it builds for ``bundle``:
    ``$TAL_REID_CACHE`` (default ``~/.cache/tal-reid``) ``/ort-tensorrt/<fingerprint>``, one
    folder per model, so a changed model never reuses another's engines."""
    root = Path(os.environ.get("TAL_REID_CACHE") or Path.home() / ".cache" / "tal-reid")
    return root / "ort-tensorrt" / bundle.fingerprint.replace(":", "-")


def ort_providers(backend: str, device: str, available: list[str], bundle: Bundle,
                  precision: Precision) -> list:
    """ONNX Runtime's provider list for ``backend`` on ``device`` (module doc); TalError where
    the provider asked for is not in this onnxruntime build."""
    if device == "cpu":
        if backend == "onnxruntime-trt":
            raise TalError("the onnxruntime-trt backend runs on CUDA only")
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in available:
        raise TalError("ONNX Runtime has no CUDA provider here (install onnxruntime-gpu)")
    providers: list = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if backend == "onnxruntime-trt":
        if "TensorrtExecutionProvider" not in available:
            raise TalError("this onnxruntime build has no TensorRT execution provider "
                           "(onnxruntime-gpu with TensorRT's libraries installed)")
        cache = ort_tensorrt_cache(bundle)
        cache.mkdir(parents=True, exist_ok=True)
        providers.insert(0, ("TensorrtExecutionProvider", {
            "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": True, "trt_timing_cache_path": str(cache),
            "trt_fp16_enable": precision.is_half}))
    return providers


class OnnxRuntimeExtractor:
    """extractor.onnx through ONNX Runtime (providers: `ort_providers`). The graph's bytes are
    read and scanned for external data (`Bundle.graph`) before ONNX Runtime sees them, and
    its image input and outputs are checked against the manifest."""

    def __init__(self, bundle: Bundle, device: str, precision: Precision | None = None,
                 backend: str = "onnxruntime"):
        import onnxruntime as ort

        precision = precision or bundle.precision
        providers = ort_providers(backend, device, ort.get_available_providers(), bundle,
                                  precision)
        path = bundle.file(EXTRACTOR)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(bundle.graph(EXTRACTOR), options,
                                                providers=providers)
        except TalError:
            raise
        except Exception as err:  # onnxruntime raises its own exception types
            raise BundleError(f"{path}: ONNX Runtime cannot load it ({brief(err)})") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise BundleError(f"{path}: takes {len(inputs)} inputs, the bundle contract one "
                              "(images)")
        bundle.check_input(inputs[0].shape, path)
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.input = inputs[0].name
        bundle.check_outputs({o.name: [d if isinstance(d, int) else None for d in o.shape]
                              for o in self.session.get_outputs()}, path)
        self.name, self.device = f"{backend}[{self.session.get_providers()[0]}]", device
        self.dtype = precision.numpy_dtype

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        values = self.session.run(self.outputs, {self.input: images})
        return {k: np.asarray(v, dtype=self.dtype) for k, v in zip(self.outputs, values)}


def open_torch(bundle: Bundle, device: str, precision: Precision | None = None) -> Extractor:
    """The folded network rebuilt from the bundle's config and weights (torch_extractor.py)."""
    try:
        from .torch_extractor import TorchExtractor
    except ImportError as err:
        raise TalError(f"the torch backend needs torch installed ({err})") from None
    return TorchExtractor(bundle, device, precision)


def open_tensorrt(bundle: Bundle, device: str, precision: Precision | None = None) -> Extractor:
    """extractor.plan; the bundle must also have matcher.plan, which matching then uses."""
    _check_tensorrt(bundle, device, ("extractor.plan", "matcher.plan"))
    from .tensorrt_runtime import TensorRTExtractor

    return TensorRTExtractor(bundle, device, precision)


def _check_tensorrt(bundle: Bundle, device: str, plans: tuple[str, ...]) -> None:
    if device != "cuda":
        raise TalError("the tensorrt backend runs on CUDA only")
    for plan in plans:
        if not bundle.has(plan):
            raise TalError(f"{bundle.file(plan)} is not in the bundle (export with --trt)")


def _ort_trt(bundle: Bundle, device: str, precision: Precision | None = None) -> Extractor:
    return OnnxRuntimeExtractor(bundle, device, precision, backend="onnxruntime-trt")


_OPENERS: dict[str, Callable[[Bundle, str, Precision | None], Extractor]] = {
    "onnxruntime": OnnxRuntimeExtractor, "onnxruntime-trt": _ort_trt, "tensorrt": open_tensorrt,
    "torch": open_torch}
