"""The two kinds of backend: extractor backends (images -> feature maps) and matching backends.

Extractor backends (`EXTRACTOR_BACKENDS`, ``--backend``) run a bundle's extractor on uint8 BGR
batches and return numpy maps:

| backend | file | needs |
|---|---|---|
| ``onnxruntime`` | extractor.onnx | onnxruntime (CPU; CUDA / TensorRT execution providers when onnxruntime-gpu is installed) |
| ``tensorrt`` | extractor.plan (+ matcher.plan for matching) | tensorrt >= 10.9 + torch with CUDA (device buffers are torch tensors, no pycuda; tensorrt_runtime.py) |
| ``torch`` | extractor.pt2 | torch (read as data by `torch_program`, never `torch.export.load`); fp16 bundles: fp16 autocast on CUDA |

``auto`` takes, on CUDA, the TensorRT engine, then the torch program, then ONNX Runtime's CUDA
provider; on the CPU, ONNX Runtime (faster than PyTorch eager on CPU, DESIGN.md Sec. 7). It says
which it chose in one log line; a backend that cannot open is skipped, but a bundle file refused
as unsafe (`UnsafeBundleError`) refuses the bundle. Every backend returns ``{output name:
array}`` in the extractor's own layout (docs/bundle.md) and in the bundle's precision
(`tal_infer.precision`: fp16 bundles give fp16 features, fp32 bundles fp32), and checks its
graph's outputs against the manifest when it opens; heavy imports happen only when a backend is
opened.

Matching backends (`MATCH_BACKENDS`, ``--matcher``; `open_matcher`): ``numpy``, ``torch``,
``triton`` and ``auto`` run the heads of heads.npz through `tal_plugins.qaconv_match` on that
op backend (`tal_infer.scoring.Scorer`); ``tensorrt`` runs matcher.plan
(`tal_infer.tensorrt_runtime.TensorRTMatcher`). ``auto`` pairs matcher.plan with the TensorRT
extractor (a TensorRT deployment runs no Python kernel), and otherwise lets the op choose.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable, Protocol

import numpy as np

from tal_plugins import BACKENDS as OP_BACKENDS

from .bundle import Bundle
from .errors import BundleError, TalError, UnsafeBundleError
from .precision import Precision
from .scoring import Scorer

if TYPE_CHECKING:
    from .tensorrt_runtime import TensorRTMatcher

log = logging.getLogger("tal_infer")
DEVICES = ("auto", "cpu", "cuda")
EXTRACTOR_BACKENDS = ("auto", "onnxruntime", "tensorrt", "torch")
MATCH_BACKENDS = (*OP_BACKENDS, "tensorrt")


class Extractor(Protocol):
    name: str
    device: str

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]: ...


def cuda_available() -> bool:
    """True when torch sees a CUDA device, or ONNX Runtime has its CUDA provider."""
    try:
        import torch

        if torch.cuda.is_available():
            return True
    except ImportError:
        pass
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def resolve_device(device: str) -> str:
    """"auto" -> "cuda" when a GPU is usable, else "cpu"; "cuda" without a GPU is an error."""
    if device not in DEVICES:
        raise TalError(f"device must be one of {', '.join(DEVICES)}, not {device!r}")
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    if device == "cuda" and not cuda_available():
        raise TalError("--device cuda: no CUDA device is usable here (install a CUDA build of "
                       "torch or onnxruntime-gpu, or use --device cpu)")
    return device


def open_extractor(bundle: Bundle, backend: str = "auto", device: str = "auto",
                   precision: Precision | None = None) -> Extractor:
    """The extractor of ``bundle`` on the chosen backend and device, giving features in
    ``precision`` (default: the bundle's); see the module doc."""
    if backend not in EXTRACTOR_BACKENDS:
        raise TalError(f"unknown extractor backend {backend!r}; choose one of "
                       f"{', '.join(EXTRACTOR_BACKENDS)}")
    device = resolve_device(device)
    if backend != "auto":
        extractor = _OPENERS[backend](bundle, device, precision)
    else:
        extractor, reasons = None, []
        for name in (("tensorrt", "torch", "onnxruntime") if device == "cuda"
                     else ("onnxruntime",)):
            try:
                extractor = _OPENERS[name](bundle, device, precision)
                break
            except UnsafeBundleError:
                raise
            except TalError as err:
                reasons.append(f"{name}: {err}")
        if extractor is None:
            raise TalError("no extractor backend could be opened (" + "; ".join(reasons) + ")")
    log.info("extractor: %s on %s (%s)", extractor.name, extractor.device, bundle.name)
    return extractor


class OnnxRuntimeExtractor:
    """extractor.onnx through ONNX Runtime."""

    def __init__(self, bundle: Bundle, device: str, precision: Precision | None = None):
        import onnxruntime as ort

        available = ort.get_available_providers()
        providers = ["CPUExecutionProvider"]
        if device == "cuda":
            gpu = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider")
                   if p in available]
            if not gpu:
                raise TalError("ONNX Runtime has no CUDA provider here (install onnxruntime-gpu)")
            providers = gpu + providers
        options = ort.SessionOptions()
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(bundle.file("extractor.onnx")), options,
                                                providers=providers)
        except Exception as err:  # onnxruntime raises its own exception types
            raise BundleError(f"{bundle.file('extractor.onnx')}: ONNX Runtime cannot load it "
                              f"({str(err).splitlines()[0][:200]})") from None
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.input = self.session.get_inputs()[0].name
        bundle.check_outputs({o.name: [d if isinstance(d, int) else None for d in o.shape]
                              for o in self.session.get_outputs()}, bundle.file("extractor.onnx"))
        self.name, self.device = f"onnxruntime[{self.session.get_providers()[0]}]", device
        self.dtype = (precision or bundle.precision).numpy_dtype

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        values = self.session.run(self.outputs, {self.input: images})
        return {k: np.asarray(v, dtype=self.dtype) for k, v in zip(self.outputs, values)}


class TorchExtractor:
    """extractor.pt2 interpreted by `tal_infer.torch_program` (no unpickling, no code from the
    bundle), weights created on the device. extractor.pt2 is the fp32 program; an fp16 bundle
    runs it under fp16 autocast on CUDA (on the CPU in fp32, its features rounded to fp16)."""

    def __init__(self, bundle: Bundle, device: str, precision: Precision | None = None):
        if not bundle.has("extractor.pt2"):
            raise TalError(f"{bundle.file('extractor.pt2')} is not in the bundle")
        try:
            from .torch_program import load_program
        except ImportError:
            raise TalError("the torch backend needs torch installed") from None
        path = bundle.file("extractor.pt2")
        self.program = load_program(path, device)
        try:
            shapes = self.program.dry_run((2, bundle.height, bundle.width, 3))
        except BundleError as err:
            raise BundleError(f"{path}: {err}") from None
        self.names = list(bundle.output_shapes)  # graph order: maps, then the descriptor
        if len(shapes) != len(self.names):
            raise BundleError(f"{path}: the program has {len(shapes)} outputs, the manifest "
                              f"lists {len(self.names)}")
        bundle.check_outputs(dict(zip(self.names, shapes)), path)
        self.precision, self.device = precision or bundle.precision, device
        self.autocast = self.precision.is_half and device == "cuda"
        self.name = "torch" + ("[fp16]" if self.autocast else "")

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        import torch

        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
        with torch.no_grad(), torch.autocast("cuda", torch.float16, enabled=self.autocast):
            out = self.program(x)
        dtype = self.precision.torch_dtype
        return {k: v.to(dtype).cpu().numpy() for k, v in zip(self.names, out)}


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


def open_matcher(bundle: Bundle, extractor: Extractor, device: str, backend: str = "auto",
                 precision: Precision | None = None) -> Scorer | TensorRTMatcher:
    """The matching backend ``backend`` on ``device`` for features of ``extractor`` in
    ``precision`` (default: the bundle's): matcher.plan for ``tensorrt`` (and for ``auto``
    beside a TensorRT extractor: a TensorRT deployment runs no Python kernel), otherwise the
    bundle's heads (`Scorer`)."""
    if backend not in MATCH_BACKENDS:
        raise TalError(f"unknown matching backend {backend!r}; choose one of "
                       f"{', '.join(MATCH_BACKENDS)}")
    if backend == "tensorrt" or (backend == "auto" and extractor.name == "tensorrt"):
        _check_tensorrt(bundle, device, ("matcher.plan",))
        from .tensorrt_runtime import TensorRTMatcher

        matcher: Scorer | TensorRTMatcher = TensorRTMatcher(bundle, device)
        log.info("matching: tensorrt (matcher.plan) on %s", device)
        return matcher
    matcher = Scorer(bundle, device, precision, backend)
    log.info("matching: %s on %s (heads.npz, %s features)", matcher.name, matcher.device,
             matcher.precision.dtype)
    return matcher


_OPENERS: dict[str, Callable[[Bundle, str, Precision | None], Extractor]] = {
    "onnxruntime": OnnxRuntimeExtractor, "tensorrt": open_tensorrt, "torch": TorchExtractor}
