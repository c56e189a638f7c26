"""Which device the runtime runs on: decided once (`resolve_device`), the same way for every part.

Two libraries can reach a GPU here: torch (the torch extractor, the matching kernels, TensorRT's
buffers) and ONNX Runtime (its CUDA provider, from onnxruntime-gpu). ``auto`` picks CUDA when
either can use it; each part then checks the library it needs (`torch_cuda_available`,
`ort_cuda_available`) and says in one line what is missing, so a machine with onnxruntime-gpu
and a CPU-only torch extracts on the GPU and matches on the CPU instead of failing deep inside
torch.
"""
from __future__ import annotations

from .errors import TalError

DEVICES = ("auto", "cpu", "cuda")


def torch_cuda_available() -> bool:
    """torch is installed and sees a CUDA device."""
    try:
        import torch
    except ImportError:
        return False
    try:
        return bool(torch.cuda.is_available())
    except Exception:  # a broken CUDA install must read as "no GPU", not a traceback
        return False


def ort_cuda_available() -> bool:
    """ONNX Runtime has its CUDA execution provider (onnxruntime-gpu)."""
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def cuda_available() -> bool:
    """True when torch or ONNX Runtime can use a CUDA device."""
    return torch_cuda_available() or ort_cuda_available()


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
