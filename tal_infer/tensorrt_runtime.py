"""The ``tensorrt`` backend: a bundle's extractor.plan and matcher.plan (docs/runtime.md).

A TensorRT deployment runs both halves in TensorRT: `TensorRTExtractor` turns uint8 batches into
feature maps, `TensorRTMatcher` scores query and gallery features through matcher.plan, whose
`tal::QAConvMatch` kernel is the PTX the export embedded; no Python kernel runs. TensorRT 10
runtime API (name-based I/O, ``execute_async_v3``); device buffers are torch tensors (no
pycuda).

Each plan has one optimization profile (tal_export/tensorrt_build.py: batch 1..max-batch for
the extractor, 1..max-batch queries x 1..1024 gallery items for the matcher). The profile range
is read from the engine, and larger inputs are cut into chunks within it, so ``--batch 32``
with an engine built for 16 runs as two calls, and a gallery of any size is scored 1,024 items
at a time; an input outside the profile in any other dimension is one clear error.

Loading compares the manifest's ``tensorrt`` section with this machine (TensorRT version, GPU
compute capability, the PTX ISA the driver accepts) and logs a warning naming each difference,
because TensorRT's own refusal does not say what the plan was built for.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from tal_plugins import ptx as ptx_text

from .bundle import Bundle
from .errors import BundleError, TalError
from .features import matcher_input
from .precision import Precision
from .scoring import check_streams

if TYPE_CHECKING:
    from .matching import Matcher

log = logging.getLogger("tal_infer")


def torch_device(device: str):
    """The torch device of the engine buffers (a seam: the tests point it at CPU memory, which
    a stand-in engine reads through the buffer addresses)."""
    import torch

    return torch.device(device)


def build_mismatches(recorded: Mapping[str, Any], tensorrt_version: str,
                     capability: tuple[int, int] | None,
                     driver_cuda: tuple[int, int] | None) -> list[str]:
    """What differs between the machine the plans were built on (manifest ``tensorrt``
    section) and this one; unknown facts (None) are not compared."""
    found = []
    if recorded.get("version") and recorded["version"] != tensorrt_version:
        found.append(f"the plans were built with TensorRT {recorded['version']}, this is "
                     f"TensorRT {tensorrt_version}")
    built_on = recorded.get("compute_capability")
    if built_on and capability is not None and built_on != f"{capability[0]}.{capability[1]}":
        found.append(f"the plans were built on a GPU of compute capability {built_on}, this "
                     f"GPU has {capability[0]}.{capability[1]}")
    ptx_isa = (recorded.get("matcher") or {}).get("ptx_isa")
    if ptx_isa and driver_cuda is not None:
        accepted = ptx_text.isa_for_cuda(driver_cuda)
        if ptx_text.parse_isa(ptx_isa) > accepted:
            found.append(f"matcher.plan embeds PTX ISA {ptx_isa}, this driver (CUDA "
                         f"{driver_cuda[0]}.{driver_cuda[1]}) accepts up to "
                         f"{ptx_text.format_isa(accepted)}; re-export with --ptx-isa "
                         f"{ptx_text.format_isa(accepted)}")
    return found


def _this_machine(device) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
    """(compute capability, driver CUDA version) where a CUDA device is in use."""
    if device.type != "cuda":
        return None, None
    import torch

    return tuple(torch.cuda.get_device_capability(device)), ptx_text.driver_cuda_version()


class TensorRTEngine:
    """One deserialized plan with its execution context; runs dicts of torch tensors."""

    def __init__(self, bundle: Bundle, file: str, device: str):
        try:
            import tensorrt as trt
            import torch
        except ImportError as err:
            raise TalError(f"the tensorrt backend needs tensorrt and torch ({err})") from None
        self._trt, self.torch = trt, torch
        self.path, self.device = bundle.file(file), torch_device(device)
        recorded = bundle.manifest.tensorrt or {}
        problems = build_mismatches(recorded, str(trt.__version__), *_this_machine(self.device))
        for problem in problems:
            log.warning("%s: %s", self.path, problem)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(bundle.read(file))
        if self.engine is None:
            raise BundleError(f"{self.path}: TensorRT cannot deserialize it ("
                              + ("; ".join(problems) or "built for another TensorRT version or "
                                 "GPU?") + ")")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names
                       if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.profile = {n: tuple(tuple(s) for s in self.engine.get_tensor_profile_shape(n, 0))
                        for n in self.inputs}
        # Its own CUDA stream: on the legacy default stream TensorRT warns and adds
        # synchronizations of its own (None on the CPU memory of the tests' stand-in).
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    def output_shapes(self) -> dict[str, list[int | None]]:
        """The engine's output shapes, None for a dynamic dimension (TensorRT says -1)."""
        return {n: [None if d < 0 else int(d) for d in self.engine.get_tensor_shape(n)]
                for n in self.outputs}

    def max_batch(self, name: str) -> int:
        """The largest first dimension the profile allows for input `name`."""
        return int(self.profile[name][-1][0])

    def dtype(self, name: str):
        """The torch dtype of tensor `name`."""
        nptype = self._trt.nptype(self.engine.get_tensor_dtype(name))
        return self.torch.from_numpy(np.empty(0, nptype)).dtype

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Outputs (torch tensors on the engine's device) for one set of inputs within the
        profile; inputs are converted to the engine's dtypes and made contiguous."""
        torch = self.torch
        keep = {}
        for name in self.inputs:
            x = inputs[name] if torch.is_tensor(inputs[name]) else torch.tensor(inputs[name])
            x = x.to(self.device, self.dtype(name)).contiguous()
            low, _, high = self.profile[name]
            shape = tuple(x.shape)
            inside = len(shape) == len(low) and all(a <= s <= b for a, s, b in
                                                    zip(low, shape, high))
            if not inside or not self.context.set_input_shape(name, shape):
                raise TalError(f"{self.path.name}: input {name} of shape {shape} is outside the "
                               f"engine's profile {low} .. {high}")
            self.context.set_tensor_address(name, x.data_ptr())
            keep[name] = x
        outs = {}
        for name in self.outputs:
            outs[name] = torch.empty(tuple(self.context.get_tensor_shape(name)),
                                     dtype=self.dtype(name), device=self.device)
            self.context.set_tensor_address(name, outs[name].data_ptr())
        if self.stream is not None:  # after the copies above, queued on the current stream
            self.stream.wait_stream(torch.cuda.current_stream(self.device))
        if not self.context.execute_async_v3(self.stream.cuda_stream if self.stream else 0):
            raise TalError(f"TensorRT failed to run {self.path.name}")
        if self.stream is not None:
            self.stream.synchronize()  # `keep` holds the inputs until here
        return outs


def _batches(total: int, size: int) -> Iterator[slice]:
    return (slice(start, min(start + size, total)) for start in range(0, total, size))


class TensorRTExtractor:
    """extractor.plan; batches above the profile's maximum run in chunks. Its outputs are
    checked against the manifest's features when it opens, and returned in ``precision``."""

    def __init__(self, bundle: Bundle, device: str, precision: Precision | None = None):
        self.engine = TensorRTEngine(bundle, "extractor.plan", device)
        bundle.check_outputs(self.engine.output_shapes(), self.engine.path)
        self.input = self.engine.inputs[0]
        self.dtype = (precision or bundle.precision).torch_dtype
        self.name, self.device = "tensorrt", device

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        parts = [self.engine.run({self.input: np.ascontiguousarray(images[part])})
                 for part in _batches(len(images), self.engine.max_batch(self.input))]
        return {k: np.concatenate([p[k].to(self.dtype).cpu().numpy() for p in parts])
                for k in self.engine.outputs}


class TensorRTMatcher:
    """matcher.plan as a `tal_infer.matching.Matcher`: query and gallery features in match
    layout in, float32 scores out, in blocks within the engine's profile. The plan computes
    the whole score; a part of it (`of_streams`, the cascade's DI pre-rank) is computed from
    the bundle's heads on the torch path on the same device."""

    def __init__(self, bundle: Bundle, device: str, precision: Precision | None = None):
        self.bundle, self.precision = bundle, precision or bundle.precision
        self.streams = tuple(bundle.matching.score)
        self.engine = TensorRTEngine(bundle, "matcher.plan", device)
        prefix = matcher_input("query", "")
        self.keys = tuple(n[len(prefix):] for n in self.engine.inputs if n.startswith(prefix))
        missing = [k for k in self.keys if k not in bundle.features]
        if missing or not self.keys:
            raise BundleError(f"{self.engine.path}: inputs {self.engine.inputs} do not match the "
                              f"manifest's features {sorted(bundle.features)}")
        self.shapes = {k: bundle.features[k].shape for k in self.keys}
        self.max_query = self.engine.max_batch(matcher_input("query", self.keys[0]))
        self.max_gallery = self.engine.max_batch(matcher_input("gallery", self.keys[0]))
        self.name, self.device = "tensorrt", device

    def of_streams(self, streams: Sequence[str]) -> Matcher:
        """Itself for every stream it scores; the heads of ``streams`` otherwise (module
        doc of the class)."""
        check_streams(streams, self.streams)
        if set(streams) == set(self.streams):
            return self
        from .scoring import Scorer

        return Scorer(self.bundle, self.engine.device.type, self.precision,
                      "torch").of_streams(streams)

    def chunk_size(self, num_queries: int) -> int:
        """Gallery items per chunk: the engine's gallery maximum."""
        return self.max_gallery

    def scores(self, query: Mapping[str, Any], gallery: Mapping[str, Any]) -> np.ndarray:
        """float32 ``[Nq, Ng]`` for features in match layout (any float dtype)."""
        q, g = self._engine_layout(query), self._engine_layout(gallery)
        n_q, n_g = len(q[self.keys[0]]), len(g[self.keys[0]])
        out = np.empty((n_q, n_g), np.float32)
        for rows in _batches(n_q, self.max_query):
            for cols in _batches(n_g, self.max_gallery):
                feed = {matcher_input("query", k): q[k][rows] for k in self.keys}
                feed.update({matcher_input("gallery", k): g[k][cols] for k in self.keys})
                out[rows, cols] = self.engine.run(feed)["scores"].float().cpu().numpy()
        return out

    def iter_scores(self, query: Mapping[str, Any],
                    chunks: Iterable[tuple[int, int, Mapping[str, Any]]]
                    ) -> Iterator[tuple[int, int, np.ndarray]]:
        """(start, stop, scores [Nq, stop - start]) for each gallery chunk."""
        for start, stop, g in chunks:
            yield start, stop, self.scores(query, g)

    def _engine_layout(self, feats: Mapping[str, Any]) -> dict[str, Any]:
        """Match layout ([N, K, HW, C] / [N, HW, C]) -> the matcher's inputs ([N, K, C, h, w] /
        [N, C, h, w]) as torch tensors on the engine's device, in the engine's dtype."""
        torch = self.engine.torch
        out = {}
        for k in self.keys:
            x = feats[k] if torch.is_tensor(feats[k]) else torch.tensor(np.asarray(feats[k]))
            x = x.to(self.engine.device, self.engine.dtype(matcher_input("query", k)))
            out[k] = x.transpose(-1, -2).reshape(len(x), *self.shapes[k]).contiguous()
        return out
