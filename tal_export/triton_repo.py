"""A Triton Inference Server model repository from a bundle (``--triton-repo DIR``).

Two models, ``<run>_extractor`` and ``<run>_matcher``, each ``<name>/config.pbtxt`` plus
``<name>/1/model.onnx`` (platform ``onnxruntime_onnx``) or ``<name>/1/model.plan`` (platform
``tensorrt_plan``, where the bundle has TensorRT engines).

* extractor: ``max_batch_size`` = the export's max batch, so dims leave out the batch dimension
  (Triton batches along the first dimension); dynamic batching on, preferring full batches.
* matcher: queries and gallery are two independent batch dimensions, which Triton's batching
  cannot express, so ``max_batch_size: 0`` and explicit dims with ``-1`` for Nq and Ng.

The matcher engine needs the ``tal::QAConvMatch`` plugin inside the Triton server process; that
wiring is not verified (docs/export.md), the ONNX matcher needs nothing.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

from tal_infer.errors import TalError

TRITON_TYPES = {"uint8": "TYPE_UINT8", "float32": "TYPE_FP32", "float16": "TYPE_FP16"}
QUEUE_DELAY_US = 2000


def _tensor(name: str, dtype: str, dims: list[int]) -> str:
    return (f'  {{\n    name: "{name}"\n    data_type: {TRITON_TYPES[dtype]}\n'
            f'    dims: [ {", ".join(str(d) for d in dims)} ]\n  }}')


def _config(name: str, platform: str, max_batch: int, inputs: list[str], outputs: list[str],
            extra: str = "") -> str:
    return (f'name: "{name}"\nplatform: "{platform}"\nmax_batch_size: {max_batch}\n'
            f'input [\n{",".join(inputs)}\n]\noutput [\n{",".join(outputs)}\n]\n{extra}')


def extractor_config(name: str, manifest: dict, platform: str, max_batch: int) -> str:
    """config.pbtxt of the extractor (batch dimension implicit)."""
    inp = manifest["input"]
    inputs = [_tensor(inp["name"], inp["dtype"], [inp["height"], inp["width"], 3])]
    outputs = [_tensor(n, manifest["dtype"], spec["shape"][1:])
               for n, spec in manifest["features"].items()]
    preferred = sorted({max(1, max_batch // 2), max_batch})
    batching = (f"dynamic_batching {{\n  preferred_batch_size: [ {', '.join(map(str, preferred))} ]"
                f"\n  max_queue_delay_microseconds: {QUEUE_DELAY_US}\n}}\n")
    return _config(name, platform, max_batch, inputs, outputs, batching)


def matcher_config(name: str, manifest: dict, platform: str) -> str:
    """config.pbtxt of the matcher (max_batch_size 0, explicit -1 dims)."""
    inputs = [_tensor(f"{side}_{n}", manifest["dtype"], spec["shape"])
              for n, spec in manifest["features"].items() for side in ("query", "gallery")]
    return _config(name, platform, 0, inputs, [_tensor("scores", "float32", [-1, -1])])


def write_triton_repo(repo: Path, bundle: Path, manifest: dict, max_batch: int) -> list[Path]:
    """Add the bundle's two models to the repository `repo`; returns the model folders."""
    prefix = re.sub(r"[^A-Za-z0-9_-]", "_", manifest["run_name"]) or "tal"
    folders = []
    for role in ("extractor", "matcher"):
        plan = bundle / f"{role}.plan"
        platform, source = (("tensorrt_plan", plan) if plan.is_file()
                            else ("onnxruntime_onnx", bundle / f"{role}.onnx"))
        name = f"{prefix}_{role}"
        folder = repo / name
        if folder.exists() and not (folder / "config.pbtxt").is_file():
            raise TalError(f"{folder}: exists and is not a Triton model folder; refusing to "
                           "overwrite it")
        (folder / "1").mkdir(parents=True, exist_ok=True)
        for stale in (folder / "1").glob("model.*"):  # an earlier export's other platform
            stale.unlink()
        shutil.copyfile(source, folder / "1" / f"model{source.suffix}")
        config = (extractor_config(name, manifest, platform, max_batch) if role == "extractor"
                  else matcher_config(name, manifest, platform))
        (folder / "config.pbtxt").write_text(config)
        folders.append(folder)
    return folders
