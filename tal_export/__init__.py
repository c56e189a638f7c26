"""tal_export: folds a trained TAL checkpoint into a deployable bundle (ONNX, TensorRT, Triton).

`export_bundle(checkpoint, out_dir, ...)` is the entry point (the ``tal-export`` CLI, tal-demo
and the runtime's tests call it). Modules: fold (the folded extractor), extractor_export
(torch.export + ONNX), matcher (the matcher graphs), parity (ONNX Runtime vs PyTorch),
manifest, bundle (the pipeline), tensorrt_build, triton_repo, cli. Details: docs/export.md.
"""
from .bundle import export_bundle
from .parity import ParityError

__all__ = ["export_bundle", "ParityError"]
