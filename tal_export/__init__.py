"""tal_export: folds a trained TAL checkpoint into a deployable bundle (ONNX, TensorRT, Triton)."""
