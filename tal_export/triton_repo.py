"""A Triton Inference Server model repository from a bundle (``--triton-repo DIR``).

Two models, ``<run>_extractor`` and ``<run>_matcher``, each ``<name>/config.pbtxt`` plus
``<name>/1/model.onnx`` (platform ``onnxruntime_onnx``) or ``<name>/1/model.plan`` (platform
``tensorrt_plan``, where the bundle has TensorRT engines).

* extractor: ``max_batch_size`` = the export's max batch, so dims leave out the batch dimension
  (Triton batches along the first dimension); dynamic batching on, preferring full batches.
* matcher: queries and gallery are two independent batch dimensions, which Triton's batching
  cannot express, so ``max_batch_size: 0`` and explicit dims with ``-1`` for Nq and Ng.

A TensorRT plan loads only in a server with the same TensorRT version, on the GPU model it was
built for, and the matcher plan's embedded PTX only under drivers that accept its ISA; the
matcher plan also takes at most ``max_gallery`` gallery items per request. Triton reports a
mismatch only as a failed load or request, so every config records it in ``parameters`` (``tal_*`` keys, string
values) and the repository's README.md, regenerated from those parameters, says it in words.
The runtime compares the same facts when it loads the plans itself (tal_infer, "tensorrt"
backend). The configs use only fields of Triton's ModelConfig message (model_config.proto); the
tests parse them into it. The matcher plan needs the ``tal::QAConvMatch`` kernel only as the PTX
embedded in it (an AOT plugin), not Python in the server; that has not been run in a server.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

from tal_infer.errors import TalError
from tal_infer.features import DESCRIPTOR, MATCHER_SIDES, matcher_input

TRITON_TYPES = {"uint8": "TYPE_UINT8", "float32": "TYPE_FP32", "float16": "TYPE_FP16"}
QUEUE_DELAY_US = 2000
README = "README.md"
_PARAMETER = re.compile(r'parameters \{\s*key: "(tal_\w+)"\s*value \{\s*string_value: "([^"]*)"')


def _string(text: str) -> str:
    """A protobuf text-format string literal."""
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _tensor(name: str, dtype: str, dims: list[int]) -> str:
    return (f'  {{\n    name: {_string(name)}\n    data_type: {TRITON_TYPES[dtype]}\n'
            f'    dims: [ {", ".join(str(d) for d in dims)} ]\n  }}')


def _parameters(values: dict[str, object]) -> str:
    return "".join(f"parameters {{\n  key: {_string(key)}\n  value {{ string_value: "
                   f"{_string(value)} }}\n}}\n" for key, value in values.items())


def _config(name: str, platform: str, max_batch: int, inputs: list[str], outputs: list[str],
            parameters: dict[str, object], extra: str = "") -> str:
    return (f'name: {_string(name)}\nplatform: {_string(platform)}\nmax_batch_size: {max_batch}\n'
            f'input [\n{",".join(inputs)}\n]\noutput [\n{",".join(outputs)}\n]\n{extra}'
            + _parameters(parameters))


def model_parameters(role: str, manifest: dict, platform: str) -> dict[str, object]:
    """The ``tal_*`` parameters of one model: its bundle, and for a plan what it needs to load."""
    values: dict[str, object] = {"tal_bundle": manifest["run_name"],
                                 "tal_toolkit_version": manifest["toolkit_version"]}
    if platform != "tensorrt_plan":
        return values
    engines = manifest.get("tensorrt")
    if not engines:
        raise TalError("the bundle has TensorRT plans but its manifest has no tensorrt section "
                       "(re-export with --trt)")
    values.update(tal_tensorrt_version=engines["version"],
                  tal_compute_capability=engines.get("compute_capability", "unknown"))
    if role == "extractor":
        values["tal_max_batch"] = engines["extractor"]["max_batch"]
    else:
        matcher = engines["matcher"]
        values.update(tal_max_query=matcher["max_query"], tal_max_gallery=matcher["max_gallery"],
                      tal_ptx_target=matcher.get("ptx_target", "unknown"),
                      tal_ptx_isa=matcher.get("ptx_isa") or "unknown")
    return values


def extractor_config(name: str, manifest: dict, platform: str, max_batch: int) -> str:
    """config.pbtxt of the extractor (batch dimension implicit)."""
    inp = manifest["input"]
    inputs = [_tensor(inp["name"], inp["dtype"], [inp["height"], inp["width"], 3])]
    specs = {**manifest["features"], **({DESCRIPTOR: manifest["descriptor"]}
                                         if "descriptor" in manifest else {})}
    outputs = [_tensor(n, manifest["dtype"], spec["shape"][1:]) for n, spec in specs.items()]
    preferred = sorted({max(1, max_batch // 2), max_batch})
    batching = (f"dynamic_batching {{\n  preferred_batch_size: [ {', '.join(map(str, preferred))} ]"
                f"\n  max_queue_delay_microseconds: {QUEUE_DELAY_US}\n}}\n")
    return _config(name, platform, max_batch, inputs, outputs,
                   model_parameters("extractor", manifest, platform), batching)


def matcher_config(name: str, manifest: dict, platform: str) -> str:
    """config.pbtxt of the matcher (max_batch_size 0, explicit -1 dims)."""
    inputs = [_tensor(matcher_input(side, n), manifest["dtype"], spec["shape"])
              for n, spec in manifest["features"].items() for side in MATCHER_SIDES]
    return _config(name, platform, 0, inputs, [_tensor("scores", "float32", [-1, -1])],
                   model_parameters("matcher", manifest, platform))


def write_triton_repo(repo: Path, bundle: Path, manifest: dict, max_batch: int) -> list[Path]:
    """Add the bundle's two models to the repository `repo` and rewrite its README; returns the
    model folders."""
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
        config = (extractor_config(name, manifest, platform, max_batch) if role == "extractor"
                  else matcher_config(name, manifest, platform))
        (folder / "1").mkdir(parents=True, exist_ok=True)
        for stale in (folder / "1").glob("model.*"):  # an earlier export's other platform
            stale.unlink()
        shutil.copyfile(source, folder / "1" / f"model{source.suffix}")
        (folder / "config.pbtxt").write_text(config)
        folders.append(folder)
    (repo / README).write_text(repository_readme(repo))
    return folders


def repository_readme(repo: Path) -> str:
    """README.md of the repository: what each tal-export model needs, from its parameters."""
    lines = ["# Triton model repository (tal-export)", "",
             "Written by `tal-export --triton-repo`; regenerated on every export. Each model's",
             "`config.pbtxt` carries the same facts as `tal_*` parameters.", ""]
    for config in sorted(repo.glob("*/config.pbtxt")):
        params = dict(_PARAMETER.findall(config.read_text()))
        if "tal_bundle" not in params:
            continue
        platform = "TensorRT plan" if "tal_tensorrt_version" in params else "ONNX Runtime"
        lines += [f"## {config.parent.name}", "",
                  f"- bundle `{params['tal_bundle']}` (tal-reid {params['tal_toolkit_version']}),"
                  f" {platform}"]
        if "tal_tensorrt_version" in params:
            lines.append(f"- needs TensorRT {params['tal_tensorrt_version']} in the server and "
                         f"a GPU of compute capability {params['tal_compute_capability']} (the "
                         "plan was built there; other versions or GPUs refuse to load it)")
        if "tal_max_batch" in params:
            lines.append(f"- up to {params['tal_max_batch']} images per request")
        if "tal_max_gallery" in params:
            lines.append(f"- up to {params['tal_max_query']} queries x "
                         f"{params['tal_max_gallery']} gallery items per request: send larger "
                         "galleries in chunks")
            lines.append(f"- embeds the tal::QAConvMatch kernel as PTX for "
                         f"{params['tal_ptx_target']}, ISA {params['tal_ptx_isa']}: the server's "
                         "driver must accept that PTX ISA (it refuses newer PTX)")
        lines.append("")
    return "\n".join(lines)
