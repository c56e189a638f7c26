"""Extraction speed: the exported graph in ONNX Runtime (CPU, fp32 and fp16) vs PyTorch eager
fp32 (`TALModel.extract`), for the tiny and paper presets at a few batch sizes.

DESIGN.md section 7 target on CPU: ONNX Runtime >= 1.2x PyTorch eager. Models have random
weights (speed does not depend on them); the PyTorch side includes the same preprocessing
(uint8 BGR -> normalized RGB) that the graph does. Prints a table of images/s and ratios.

    python benchmarks/extract.py                       # tiny + paper, batches 1, 8, 32
    python benchmarks/extract.py --presets tiny --batches 1,64
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import click
import numpy as np
import onnxruntime as ort
import torch

from tal_export.extractor_export import export_program, onnx_graph
from tal_export.fold import fold_model, output_names
from tal_export.parity import reference_input
from tal_train.models import TALConfig, build_model

DOMAINS = ("a", "b", "c")


def seconds_per_call(fn, min_time: float, min_calls: int = 3) -> float:
    fn()  # warm-up
    calls, start = 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - start < min_time:
        fn()
        calls += 1
    return (time.perf_counter() - start) / calls


def ort_session(model, fp16: bool, folder: Path) -> ort.InferenceSession:
    program = export_program(fold_model(model, fp16=fp16), model.config.image_size, 64)
    path = folder / f"extractor-{'fp16' if fp16 else 'fp32'}.onnx"
    path.write_bytes(onnx_graph(program, output_names(model), 18).SerializeToString())
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@click.command()
@click.option("--presets", default="tiny,paper", show_default=True)
@click.option("--batches", default="1,8,32", show_default=True)
@click.option("--min-time", default=1.0, show_default=True, help="Seconds per measurement.")
def main(presets: str, batches: str, min_time: float) -> None:
    """Print images/s of PyTorch eager fp32 and ONNX Runtime fp32/fp16 on this CPU."""
    print(f"torch {torch.__version__}, onnxruntime {ort.__version__}, "
          f"{torch.get_num_threads()} threads")
    print("| preset | batch | method | images/s | x eager |\n|---|---|---|---|---|", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for preset in presets.split(","):
            model = build_model(TALConfig.preset(preset, domains=DOMAINS)).eval()
            cfg = model.config
            sessions = {"ort fp32": ort_session(model, False, Path(tmp)),
                        "ort fp16": ort_session(model, True, Path(tmp))}
            for batch in (int(b) for b in batches.split(",")):
                images = np.random.default_rng(0).integers(0, 256, (batch, *cfg.image_size, 3),
                                                           dtype=np.uint8)
                eager = seconds_per_call(lambda: model.extract(
                    reference_input(images, cfg.mean, cfg.std)), min_time)
                _row(preset, batch, "torch eager fp32", batch / eager, 1.0)
                for name, session in sessions.items():
                    t = seconds_per_call(lambda: session.run(None, {"images": images}), min_time)
                    _row(preset, batch, name, batch / t, eager / t)


def _row(preset: str, batch: int, name: str, rate: float, ratio: float) -> None:
    print(f"| {preset} | {batch} | {name} | {rate:.1f} | {ratio:.2f} |", flush=True)


if __name__ == "__main__":
    main()
