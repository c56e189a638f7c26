"""What the global descriptor costs at extraction: time (ONNX Runtime, the extractor with and
without the descriptor output) and FLOPs (counted), per preset; and its bytes per crop.

Target: <= 2% extra extraction time, <= 4 KiB per crop. Weights are random
(speed does not depend on them). The two graphs run alternately, many times, and the median
time per batch is compared, so drifts of a shared machine's load hit both alike.

    OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 python benchmarks/descriptor.py
    python benchmarks/descriptor.py --presets tiny --batch 32 --rounds 40
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import click
import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from tal_train.models.folded import WithDescriptor
from tal_export.extractor_export import export_program, onnx_graph
from tal_train.models.folded import fold_model
from tal_train.distill import _item_shapes
from tal_train.models import TALConfig, build_model
from tal_train.models.descriptor import DescriptorHead

DOMAINS = ("a", "b", "c")


def session(module: nn.Module, size: tuple[int, int], path: Path) -> ort.InferenceSession:
    path.write_bytes(onnx_graph(export_program(module, size, 64), module.names, 18)
                     .SerializeToString())
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def macs(module: nn.Module, images: torch.Tensor) -> int:
    """Multiply-accumulates of the Conv2d and Linear layers in one forward pass."""
    total = 0

    def count(layer, inputs, output):
        nonlocal total
        if isinstance(layer, nn.Conv2d):
            k = layer.weight[0].numel()  # C_in / groups * kh * kw
            total += output.numel() * k
        else:
            total += output.numel() * layer.in_features

    hooks = [m.register_forward_hook(count) for m in module.modules()
             if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        module(images)
    for h in hooks:
        h.remove()
    return total


@click.command()
@click.option("--presets", default="tiny,paper", show_default=True)
@click.option("--batch", default=16, show_default=True)
@click.option("--rounds", default=30, show_default=True, help="Alternating timed runs each.")
@click.option("--dim", default=256, show_default=True, help="Descriptor length.")
def main(presets: str, batch: int, rounds: int, dim: int) -> None:
    """Print extraction time and FLOPs with and without the descriptor, and bytes per crop."""
    print(f"torch {torch.__version__}, onnxruntime {ort.__version__}")
    print("| preset | batch | ms/batch without | ms/batch with | extra time | extra FLOPs "
          "| descriptor bytes (fp16) | maps bytes (fp16) |\n|---|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for preset in presets.split(","):
            model = build_model(TALConfig.preset(preset, domains=DOMAINS)).eval()
            size = model.config.image_size
            plain = fold_model(model)
            head = DescriptorHead(_item_shapes(model), dim=dim).eval()
            with_desc = WithDescriptor(fold_model(model), head)
            sessions = [session(plain, size, Path(tmp) / f"{preset}-plain.onnx"),
                        session(with_desc, size, Path(tmp) / f"{preset}-desc.onnx")]
            images = np.random.default_rng(0).integers(0, 256, (batch, *size, 3), dtype=np.uint8)
            times: list[list[float]] = [[], []]
            for s in sessions:
                s.run(None, {"images": images})  # warm-up
            for _ in range(rounds):
                for s, t in zip(sessions, times):
                    start = time.perf_counter()
                    s.run(None, {"images": images})
                    t.append(time.perf_counter() - start)
            base, extra = (statistics.median(t) * 1000 for t in times)
            x = torch.from_numpy(images[:1])
            flops = macs(with_desc, x) / macs(plain, x) - 1
            maps = sum(2 * int(np.prod(s)) for s in _item_shapes(model).values())
            print(f"| {preset} | {batch} | {base:.1f} | {extra:.1f} | {100 * (extra / base - 1):+.1f}% "
                  f"| {100 * flops:.2f}% | {2 * dim:,} | {maps:,} |", flush=True)


if __name__ == "__main__":
    main()
