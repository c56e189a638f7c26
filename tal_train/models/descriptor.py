"""The global descriptor head: one compact vector per crop for stage-1 retrieval (docs/scale.md).

Two-stage retrieval shortlists gallery crops by the inner product of a
global descriptor and re-scores the shortlist with the full TAL score, so the descriptor's job
is to rank like the TAL score. It reads the same L2-normalized stream maps the QAConv heads
match (every expert and the DI stream, every scale, in the extractor's output layout): per
scale, one shared linear map reduces every location's C channels to ``reduced``; the K
experts' reduced maps are averaged (so the head's size does not grow with K); the reduced maps,
flattened (the location layout is kept, as QAConv keeps it), go through a two-layer MLP
(``hidden`` ReLU units) to ``dim`` values, L2-normalized. Paper preset: 2 streams x (192 + 48)
locations x 16 = 7,680 inputs, 8.1M weights; about 20 MFLOP per crop against the backbone's
tens of GFLOP.

It is trained after TAL, by distillation from the model's own inference score
(`tal_train.distill`), with the TAL model frozen: the score, and so the accuracy of the
re-scored ranking, cannot change. **Why learned, and why this head** (measured on the demo
model, 8,181 generated gallery crops of unseen domains, 200 queries; recall of the exhaustive
top-10 inside the top 200 by descriptor): average-pooled stream maps 0.73-0.75, stripe-pooled
(2 to 8 horizontal stripes) 0.78-0.82, a random linear projection of the flattened maps 0.76;
distilled linear heads 0.98, whether every expert keeps its own inputs or they are averaged;
this MLP head 0.99 (docs/scale.md has the table).
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DESCRIPTOR_FORMAT = 1


class DescriptorHead(nn.Module):
    """Stream maps -> L2-normalized descriptor ``[N, dim]`` (see the module doc).

    ``inputs`` maps each extractor output name to its per-item shape: ``ds_<scale>``
    (K, C, h, w) and ``di_<scale>`` (C, h, w), as ``TALModel.extract`` gives them.
    """

    def __init__(self, inputs: Mapping[str, tuple[int, ...]], dim: int = 256,
                 reduced: int = 16, hidden: int = 1024):
        super().__init__()
        if min(dim, reduced, hidden) < 1 or not inputs:
            raise ValueError(f"descriptor head needs inputs and dim, reduced, hidden >= 1 (got "
                             f"{dict(inputs)}, {dim}, {reduced}, {hidden})")
        self.inputs = {name: tuple(int(d) for d in shape) for name, shape in inputs.items()}
        self.dim, self.reduced, self.hidden = dim, reduced, hidden
        channels = {_scale(name): shape[-3] for name, shape in self.inputs.items()}
        self.reduce = nn.ModuleDict({s: nn.Linear(c, reduced, bias=False)
                                     for s, c in channels.items()})
        width = sum(shape[-2] * shape[-1] * reduced for shape in self.inputs.values())
        self.project = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, dim))

    def forward(self, maps: Mapping[str, Tensor]) -> Tensor:
        parts = []
        for name, shape in self.inputs.items():
            x = maps[name].float().flatten(-2).transpose(-1, -2)  # [N, (K,) HW, C]
            # as a 2-D product: torch 2.6's ONNX exporter cannot decompose a 4-D matmul with
            # a dynamic batch
            x = self.reduce[_scale(name)](x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], -1)
            parts.append((x.mean(dim=1) if len(shape) == 4 else x).flatten(1))  # experts: mean
        return F.normalize(self.project(torch.cat(parts, dim=1)), dim=1)

    def spec(self) -> dict[str, Any]:
        """Plain-typed description (stored in checkpoints beside the weights)."""
        return {"format": DESCRIPTOR_FORMAT, "inputs": {k: list(v) for k, v in self.inputs.items()},
                "dim": self.dim, "reduced": self.reduced, "hidden": self.hidden}

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> "DescriptorHead":
        if spec.get("format") != DESCRIPTOR_FORMAT:
            raise ValueError(f"descriptor format {spec.get('format')!r} is not supported "
                             f"(this toolkit reads {DESCRIPTOR_FORMAT})")
        return cls({k: tuple(v) for k, v in spec["inputs"].items()}, int(spec["dim"]),
                   int(spec["reduced"]), int(spec["hidden"]))


def _scale(name: str) -> str:
    return name.split("_", 1)[1]
