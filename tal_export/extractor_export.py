"""The folded extractor as an ONNX graph, and its weights as extractor.safetensors.

Exporter: ``torch.export`` then the torch.export-based ONNX exporter (``torch.onnx.export(...,
dynamo=True)``, which needs ``onnxscript``). It is the exporter PyTorch maintains (the
TorchScript one is deprecated and warns on every call). The batch dimension is symbolic; the
ONNX graph gets the names of docs/bundle.md (input ``images``, outputs ``<stream>_<scale>``).

The torch backend gets no program at all: extractor.safetensors holds the folded network's
state dict (data only, no code, loadable straight onto a device), from which the runtime
rebuilds the network with the package's own model code (`tal_infer.torch_extractor`).
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path
from typing import Iterator

import torch
from onnx import ModelProto

from safetensors.torch import save

EXAMPLE_BATCH = 2  # > 1, so the traced batch dimension stays symbolic


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's own chatter (status lines, notices about optional packages,
    deprecation notices raised inside torch), which says nothing about our graph."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)


def export_program(extractor: torch.nn.Module, image_size: tuple[int, int],
                   max_batch: int) -> torch.export.ExportedProgram:
    """torch.export of the folded extractor with a dynamic batch dimension (1..max_batch+)."""
    height, width = image_size
    example = torch.zeros(EXAMPLE_BATCH, height, width, 3, dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1, max=max(max_batch, 2 ** 16))
    with _quiet_exporter():
        return torch.export.export(extractor, (example,), dynamic_shapes=({0: batch},))


def save_weights(extractor: torch.nn.Module, path: Path) -> None:
    """The extractor's state dict as safetensors (contiguous copies: the format stores each
    tensor on its own), written with ``open`` so the file's mode follows the umask like every
    other bundle file (the library's own writer creates 0600 files)."""
    data = save({k: v.detach().contiguous().clone() for k, v in extractor.state_dict().items()},
                metadata={"format": "tal-reid-folded-extractor"})
    path.write_bytes(data)


def onnx_graph(program: torch.export.ExportedProgram, output_names: list[str],
               opset: int) -> ModelProto:
    """The ONNX graph of an exported extractor program (input ``images``)."""
    with _quiet_exporter():
        onnx_program = torch.onnx.export(program, dynamo=True, opset_version=opset,
                                         input_names=["images"], output_names=output_names,
                                         optimize=True, verbose=False)
    model = onnx_program.model_proto
    model.producer_name = "tal-reid"
    return model
