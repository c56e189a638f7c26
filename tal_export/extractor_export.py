"""The folded extractor as a torch.export program and as an ONNX graph.

Exporter: ``torch.export`` then the torch.export-based ONNX exporter (``torch.onnx.export(...,
dynamo=True)``, which needs ``onnxscript``). It is the exporter PyTorch maintains (the
TorchScript one is deprecated and warns on every call); it takes the same ExportedProgram that
is saved as extractor.pt2, so both artifacts come from one trace. The batch dimension is
symbolic in both; the ONNX graph gets the names of docs/bundle.md (input ``images``, outputs
``<stream>_<scale>``). extractor.pt2 is saved without example inputs (``torch.export.save``
pickles them) and read back with the runtime's reader, `tal_infer.torch_program`, so an export
never writes a program that the torch backend would refuse.
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path
from typing import Iterator

import torch
from onnx import ModelProto

from tal_infer.torch_program import load_program

from .fold import FoldedExtractor

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


def export_program(extractor: FoldedExtractor, image_size: tuple[int, int],
                   max_batch: int) -> torch.export.ExportedProgram:
    """torch.export of the folded extractor with a dynamic batch dimension (1..max_batch+)."""
    height, width = image_size
    example = torch.zeros(EXAMPLE_BATCH, height, width, 3, dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1, max=max(max_batch, 2 ** 16))
    with _quiet_exporter():
        return torch.export.export(extractor, (example,), dynamic_shapes=({0: batch},))


def save_program(program: torch.export.ExportedProgram, path: Path,
                 image_size: tuple[int, int]) -> None:
    """Write ``program`` as extractor.pt2 with no pickled entry, then check that the runtime's
    reader accepts it and that it runs (on the meta device: no arithmetic)."""
    example = program.example_inputs
    program.example_inputs = None
    try:
        torch.export.save(program, str(path))
    finally:
        program.example_inputs = example
    load_program(path, "cpu").dry_run((EXAMPLE_BATCH, *image_size, 3))


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
