"""TensorRT engines for a bundle (``--trt``): extractor.plan and matcher.plan.

Written against the TensorRT 10 Python API (10.9+, for the plugin's `aot_impl`): ``trt.Builder`` -> ``create_network`` with the
``STRONGLY_TYPED`` creation flag -> ``trt.OnnxParser.parse_from_file`` -> one
``create_optimization_profile`` with ``set_shape(input, min, opt, max)`` per dynamic input ->
``build_serialized_network``. Strongly typed, because the fp16 graphs already say which parts are
fp16 and which stay fp32 (tal_infer.precision.FP32_PARTS); TensorRT 10.12+ deprecates the weakly typed
``BuilderFlag.FP16`` route and TensorRT 11 removes it (there the flag is kept, ignored, and
networks are always strongly typed, so the same call works). The matcher engine needs the
``tal::QAConvMatch`` plugin, registered from tal_plugins (`tal_plugins.trt.register`) before
parsing.

TensorRT cannot be installed where the tests run; they drive `build_engine` with a stand-in
module, which checks the calls and shapes but not TensorRT itself (see docs/export.md).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from tal_infer.errors import TalError
from tal_infer.features import MATCHER_SIDES, matcher_input

Shape = tuple[int, ...]


def import_tensorrt() -> Any:
    """The tensorrt module, or a one-line TalError where TensorRT >= 10.9 is not installed."""
    try:
        import tensorrt as trt
    except ImportError:
        raise TalError("--trt needs TensorRT >= 10.9 (pip install 'tal-reid[trt]' on a machine "
                       "with an NVIDIA GPU); it is not installed here. Export without --trt, or "
                       "build the engines on the deployment machine") from None
    from tal_plugins.trt import tensorrt_version

    tensorrt_version(trt.__version__)
    return trt


def check_trt_options(ptx_isa: str | None) -> None:
    """Fail before any work: TensorRT importable and new enough, --ptx-isa well-formed."""
    import_tensorrt()
    if ptx_isa is not None:
        from tal_plugins.ptx import parse_isa

        parse_isa(ptx_isa)


def extractor_profile(image_size: tuple[int, int], max_batch: int) -> dict[str, tuple[Shape, ...]]:
    """(min, opt, max) of the extractor input: batch 1..max_batch, optimized for max_batch."""
    h, w = image_size
    return {"images": tuple((n, h, w, 3) for n in (1, max_batch, max_batch))}


def matcher_profile(features: dict[str, dict], max_query: int,
                    max_gallery: int) -> dict[str, tuple[Shape, ...]]:
    """(min, opt, max) of every matcher input: queries 1..max_query, gallery 1..max_gallery."""
    out = {}
    for name, spec in features.items():
        rest = tuple(spec["shape"][1:])
        for side, top in zip(MATCHER_SIDES, (max_query, max_gallery)):
            out[matcher_input(side, name)] = tuple((n, *rest) for n in (1, top, top))
    return out


def build_engine(trt: Any, onnx_path: Path, plan_path: Path,
                 profile: dict[str, tuple[Shape, ...]]) -> None:
    """Parse `onnx_path`, build a strongly typed engine for `profile`, write it to `plan_path`."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise TalError(f"{onnx_path.name}: TensorRT could not parse the graph: "
                       f"{errors[0] if errors else 'no reason given'}")
    config = builder.create_builder_config()
    opt_profile = builder.create_optimization_profile()
    for name, (low, opt, high) in profile.items():
        opt_profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(opt_profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TalError(f"{onnx_path.name}: TensorRT could not build an engine (see its log above)")
    plan_path.write_bytes(bytes(serialized))


def build_engines(folder: Path, extractor_onnx: Path, matcher_onnx: Path, manifest: dict,
                  max_batch: int, max_gallery: int, ptx_isa: str | None = None) -> dict:
    """extractor.plan and matcher.plan in `folder`; returns the manifest's ``tensorrt`` section.

    The engines take the bundle's precision (``manifest["dtype"]``: float16, as ``--trt``
    implies ``--fp16``). The plugin kernel is compiled for this machine's GPU with its PTX ISA capped at `ptx_isa`
    or at what this machine's driver supports; the section records both, because the engines
    run only with this TensorRT version on this GPU model, and the embedded PTX only under
    drivers that accept its ISA.
    """
    trt = import_tensorrt()
    from tal_plugins import trt as plugin
    from tal_plugins.ptx import format_isa

    registration = plugin.register(ptx_isa)
    image_size = (manifest["input"]["height"], manifest["input"]["width"])
    build_engine(trt, extractor_onnx, folder / "extractor.plan",
                 extractor_profile(image_size, max_batch))
    build_engine(trt, matcher_onnx, folder / "matcher.plan",
                 matcher_profile(manifest["features"], max_batch, max_gallery))
    target = registration.target
    isas = sorted({k["ptx_isa"] for k in registration.kernels})
    return {"version": str(trt.__version__), "precision": manifest["dtype"],
            "strongly_typed": True,
            "compute_capability": f"{target.arch // 10}.{target.arch % 10}",
            "extractor": {"file": "extractor.plan", "max_batch": max_batch},
            "matcher": {"file": "matcher.plan", "max_query": max_batch, "max_gallery": max_gallery,
                        "plugin": plugin.PLUGIN_ID, "ptx_target": target.target_name,
                        "ptx_isa": isas[-1] if isas else None,
                        "ptx_isa_limit": format_isa(target.max_isa),
                        "ptx_isa_limit_from": target.isa_source,
                        "kernels": registration.kernels}}
