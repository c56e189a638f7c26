"""tal_infer: the tal-reid runtime (extraction backends, gallery index, matching, metrics, reports).

Runs with numpy, opencv-python-headless and onnxruntime alone; torch is used only when present
(GPU matching, torch extractor backend). Never imports the training package.
"""
from __future__ import annotations

__version__ = "0.1.0"
