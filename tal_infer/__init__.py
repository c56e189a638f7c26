"""tal_infer: the tal-reid runtime (extraction backends, gallery index, matching, metrics, reports).

Runs with numpy, opencv-python-headless and onnxruntime alone; torch is used only when present
(GPU matching, torch extractor backend). Never imports the training package.

    from tal_infer import ReIDEngine, Gallery      # docs/runtime.md

The API names load on first access (PEP 562), so that code needing only `tal_infer.errors` or
`tal_infer.metrics` (the training package, say) does not load ONNX Runtime and OpenCV.
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Gallery", "Match", "ReIDEngine", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("Match", "ReIDEngine"):
        from . import engine

        return getattr(engine, name)
    if name == "Gallery":
        from .index.in_memory import Gallery

        return Gallery
    raise AttributeError(f"module 'tal_infer' has no attribute {name!r}")
