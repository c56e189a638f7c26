"""The global descriptor as an extra output of the exported extractor (docs/scale.md).

`WithDescriptor` runs a folded extractor and the checkpoint's distilled `DescriptorHead` on its
maps in the same pass, so extractor.onnx / extractor.pt2 give ``descriptor`` [N, D] (L2-
normalized) after the feature maps. The head computes in fp32 and its output takes the graph's
dtype, like every other output. `manifest_section` is the manifest's ``descriptor`` section.
"""
from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from tal_infer.features import DESCRIPTOR
from tal_train.models.descriptor import DescriptorHead

from .fold import FoldedExtractor


class WithDescriptor(nn.Module):
    """A folded extractor plus the descriptor: outputs ``(*maps, descriptor)``."""

    def __init__(self, extractor: FoldedExtractor, head: DescriptorHead):
        super().__init__()
        self.extractor = extractor
        self.head = head.float().eval().requires_grad_(False)
        self.names = [*extractor.names, DESCRIPTOR]

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        maps = self.extractor(images)
        descriptor = self.head(dict(zip(self.extractor.names, maps)))
        return (*maps, descriptor.to(maps[0].dtype))


def manifest_section(head: DescriptorHead, distillation: dict[str, Any]) -> dict[str, Any]:
    """Manifest ``descriptor``: output shape, how it is made, the distillation report."""
    return {"shape": [-1, head.dim], "method": "distilled", "inputs": list(head.inputs),
            "reduced": head.reduced, "hidden": head.hidden, "distillation": distillation}
