"""Extraction speed: PyTorch eager (`TALModel.extract`) vs the exported extractor, in images/s.

CPU (default): the exported graph in ONNX Runtime (CPU, fp32 and fp16) vs PyTorch eager fp32,
for the tiny and paper presets at a few batch sizes; target on CPU: ONNX
Runtime >= 1.2x PyTorch eager.

``--runtime``: the runtime's own backends (`tal_infer.backends.open_extractor`: onnxruntime,
torch, tensorrt) on an fp32 bundle exported from the same model, each where it opens here, on
``--device`` (CUDA: the GPU paths; target there: >= 3x eager fp32 at batch 128); eager fp16
autocast is listed too on CUDA. A backend that cannot open here is listed with the reason.

Every method does the same work: a uint8 BGR batch in host memory in, every stream's maps as
float32 in host memory out (PyTorch eager preprocesses on the device, as the graph does).
Models have random weights (speed does not depend on them). Prints a markdown table.

    python benchmarks/extract.py                       # tiny + paper, batches 1, 8, 32
    python benchmarks/extract.py --presets tiny --batches 1,64
    python benchmarks/extract.py --device cuda --runtime --presets paper --batches 128
"""
from __future__ import annotations

import contextlib
import tempfile
import time
from pathlib import Path
from typing import Callable

import click
import numpy as np
import onnxruntime as ort
import torch

from tal_export import export_bundle
from tal_export.extractor_export import export_program, onnx_graph
from tal_train.models.folded import fold_model, output_names
from tal_export.parity import reference_input
from tal_infer.backends import open_extractor
from tal_infer.bundle import load_bundle
from tal_infer.errors import TalError
from tal_infer.precision import FLOAT16, FLOAT32
from tal_train.checkpoint import save_checkpoint
from tal_train.models import TALConfig, TALModel, build_model

DOMAINS = ("a", "b", "c")
# (backend, device) pairs timed by --runtime: the GPU paths, and ONNX Runtime on the CPU.
RUNTIME_BACKENDS = {"cuda": (("tensorrt", "cuda"), ("torch", "cuda"), ("onnxruntime", "cuda"),
                             ("onnxruntime", "cpu")),
                    "cpu": (("onnxruntime", "cpu"), ("torch", "cpu"))}


def seconds_per_call(fn, min_time: float, min_calls: int = 3) -> float:
    fn()  # warm-up
    calls, start = 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - start < min_time:
        fn()
        calls += 1
    return (time.perf_counter() - start) / calls


def ort_session(model, fp16: bool, folder: Path) -> ort.InferenceSession:
    program = export_program(fold_model(model, FLOAT16 if fp16 else FLOAT32),
                             model.config.image_size, 64)
    path = folder / f"extractor-{'fp16' if fp16 else 'fp32'}.onnx"
    path.write_bytes(onnx_graph(program, output_names(model), 18).SerializeToString())
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def eager(model: TALModel, device: str, fp16: bool = False) -> Callable[[np.ndarray], dict]:
    """PyTorch eager extraction of a uint8 host batch -> float32 host maps."""
    cfg = model.config
    autocast = (torch.autocast("cuda", dtype=torch.float16) if fp16
                else contextlib.nullcontext())

    def run(images: np.ndarray) -> dict:
        with autocast:
            maps = model.extract(reference_input(images, cfg.mean, cfg.std, device))
        return {k: v.float().cpu() for k, v in maps.items()}
    return run


def runtime_extractors(model: TALModel, device: str, max_batch: int, folder: Path
                       ) -> dict[str, Callable | str]:
    """{label: extractor, or why it does not open here} of the runtime's backends on an fp32
    bundle of `model` (exported without the parity check)."""
    state = {k: v.cpu() for k, v in model.state_dict().items()}
    checkpoint = save_checkpoint(folder / "ckpt.pth", model_state=state,
                                 config=model.config.to_dict(), epoch=1, run_name="bench")
    bundle = load_bundle(export_bundle(checkpoint, folder / "bundle", verify=False,
                                       max_batch=max_batch, progress=False))
    found: dict[str, Callable | str] = {}
    for backend, where in RUNTIME_BACKENDS[device]:
        label = f"runtime {backend} on {where}"
        try:
            extractor = open_extractor(bundle, backend, where)
            found[f"{label} ({extractor.name})"] = extractor
        except TalError as err:
            found[label] = str(err)
    return found


@click.command()
@click.option("--presets", default="tiny,paper", show_default=True)
@click.option("--batches", default="1,8,32", show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--runtime", is_flag=True,
              help="Time the runtime's extractor backends on an exported bundle.")
@click.option("--min-time", default=1.0, show_default=True, help="Seconds per measurement.")
@click.option("--min-calls", default=3, show_default=True, type=click.IntRange(1),
              help="Timed calls per measurement, at least (after one warm-up call).")
def main(presets: str, batches: str, device: str, runtime: bool, min_time: float,
         min_calls: int) -> None:
    """Print images/s of PyTorch eager and the exported extractor."""
    if device == "cuda" and not torch.cuda.is_available():
        raise click.UsageError("--device cuda: no CUDA device is visible")
    where = torch.cuda.get_device_name() if device == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, onnxruntime {ort.__version__} "
          f"({', '.join(ort.get_available_providers())}); {where}")
    print("| preset | batch | method | images/s | x eager fp32 |\n|---|---|---|---|---|", flush=True)
    sizes = [int(b) for b in batches.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        for preset in presets.split(","):
            model = build_model(TALConfig.preset(preset, domains=DOMAINS)).eval().to(device)
            methods: dict[str, Callable | str] = {"torch eager fp32": eager(model, device)}
            if device == "cuda":
                methods["torch eager fp16 autocast"] = eager(model, device, fp16=True)
            if device == "cpu" and not runtime:
                sessions = {name: ort_session(model, fp16, Path(tmp))
                            for name, fp16 in (("ort fp32", False), ("ort fp16", True))}
                methods.update({name: (lambda images, s=s: s.run(None, {"images": images}))
                                for name, s in sessions.items()})
            # Eager rows first: they print even if the export for --runtime runs out of time.
            eager_seconds = time_methods(preset, model.config.image_size, sizes, methods,
                                         min_time, min_calls)
            if runtime:
                backends = runtime_extractors(model, device, max(sizes), Path(tmp) / preset)
                time_methods(preset, model.config.image_size, sizes, backends, min_time,
                             min_calls, eager_seconds)


def time_methods(preset: str, image_size: tuple[int, int], sizes: list[int],
                 methods: dict[str, Callable | str], min_time: float, min_calls: int,
                 base: dict[int, float] | None = None) -> dict[int, float]:
    """Print a row per (batch, method); ratios against `base` seconds per batch (default: those
    of the first method that ran). Returns the first method's seconds per batch."""
    first: dict[int, float] = {}
    for batch in sizes:
        images = np.random.default_rng(0).integers(0, 256, (batch, *image_size, 3), dtype=np.uint8)
        for name, run in methods.items():
            if not callable(run):
                print(f"| {preset} | {batch} | {name} | not available: {run} | - |", flush=True)
                continue
            try:
                t = seconds_per_call(lambda: run(images), min_time, min_calls)
            except Exception as err:  # a backend that opens but fails to run: say so, go on
                message = (str(err).splitlines() or [""])[0][:160].replace("|", "/")
                print(f"| {preset} | {batch} | {name} | failed: {type(err).__name__}: {message} "
                      f"| - |", flush=True)
                continue
            first.setdefault(batch, t)
            reference = (base or first).get(batch)
            ratio = f"{reference / t:.2f}" if reference else "-"
            print(f"| {preset} | {batch} | {name} | {batch / t:.1f} | {ratio} |", flush=True)
    return first


if __name__ == "__main__":
    main()
