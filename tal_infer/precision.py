"""A bundle's precision: decided once by the export, written to the manifest, read once at run time.

A `Precision` names the dtype of a bundle's weights, activations and features (float32 or
float16), the parts an fp16 graph keeps in fp32, and what the export's parity check requires
of it. `tal_export` resolves one at the top of an export (`FLOAT16` for ``--fp16`` and
``--trt``, else `FLOAT32`), folds, converts and judges with it, and writes it to the manifest
(`Precision.to_manifest`); the runtime reads it back once (`precision_of_manifest`, as
`Bundle.precision`) and `ReIDEngine` hands it to the extractor, the gallery index and the
scorer. So an fp16 bundle's features stay fp16 from the extractor through the index to the
matching kernel (which accumulates in fp32), and an fp32 bundle's stay fp32: its index stores
fp32, twice the disk of fp16, and index scores are exactly the in-memory ones (export with
``--fp16`` for a compact index).

Imports neither torch nor onnx: the dtype objects of those libraries are made on request.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

# What an fp16 graph keeps in fp32 (tal_train.models.folded): statistics and attention are sensitive to
# fp16 rounding, and the pixel shift is applied before the first conversion.
FP32_PARTS = ("instance_norm", "dabn_attention", "dabn_mixing", "l2_normalize", "preprocess_shift")
# onnx.TensorProto.FLOAT / FLOAT16: element types fixed by the ONNX specification.
_ONNX_TYPES = {"float32": 1, "float16": 10}
_COMPARISONS = {"<": operator.lt, ">=": operator.ge}


@dataclass(frozen=True)
class ParityCriterion:
    """What the export's parity report must show: ``<metric> <comparison> <bound>``, where
    ``metric`` is a dotted path into the report (``scores.max_rel``)."""
    metric: str
    comparison: str
    bound: float

    def passed(self, report: Mapping[str, Any]) -> bool:
        value: Any = report
        for key in self.metric.split("."):
            value = value[key]
        return bool(_COMPARISONS[self.comparison](value, self.bound))

    def __str__(self) -> str:
        return f"{self.metric} {self.comparison} {self.bound:g}"


@dataclass(frozen=True)
class Precision:
    """The dtype of a bundle's weights, activations and features, and what follows from it."""
    dtype: str                       # "float32" or "float16"
    kept_float32: tuple[str, ...]    # parts an fp16 graph computes in fp32 (`FP32_PARTS`)
    parity: ParityCriterion          # the export fails unless its parity report meets this
    descriptor_parity: ParityCriterion  # and this too, for a bundle with the global descriptor

    @property
    def is_half(self) -> bool:
        return self.dtype == "float16"

    @property
    def short_name(self) -> str:
        """``fp32`` / ``fp16``."""
        return f"fp{8 * self.numpy_dtype.itemsize}"

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    @property
    def torch_dtype(self) -> Any:
        import torch

        return getattr(torch, self.dtype)

    @property
    def onnx_type(self) -> int:
        """The ONNX element type (``onnx.TensorProto.FLOAT`` / ``FLOAT16``)."""
        return _ONNX_TYPES[self.dtype]

    def to_manifest(self) -> dict[str, Any]:
        """The manifest's ``precision`` section (docs/bundle.md)."""
        section: dict[str, Any] = {
            "weights": self.dtype, "activations": self.dtype, "features": self.dtype,
            "kept_float32": list(self.kept_float32), "parity_criterion": str(self.parity)}
        if self.is_half:
            section["folding"] = "float64, rounded once to float16"
            section["scores"] = ("float32: matching accumulates in float32 (the fused kernel "
                                 "reads float16 features; matcher.onnx casts them first)")
        return section


# The descriptor is a unit vector, so its bound is absolute; fp16 maps carry about 1e-3
# relative error into its head.
FLOAT32 = Precision("float32", (), ParityCriterion("scores.max_rel", "<", 1e-4),
                    ParityCriterion("descriptor.max_abs", "<", 1e-5))
FLOAT16 = Precision("float16", FP32_PARTS,
                    ParityCriterion("top1_agreement_beyond_ties", ">=", 0.99),
                    ParityCriterion("descriptor.max_abs", "<", 5e-3))
PRECISIONS = {p.dtype: p for p in (FLOAT32, FLOAT16)}


def precision_of_manifest(manifest: Mapping[str, Any]) -> Precision:
    """The precision a manifest records; ValueError naming the field when it is not one of
    `PRECISIONS` or its ``dtype`` and ``precision.features`` disagree. Manifests written before
    ``precision.features`` existed have only ``dtype`` (absent: float32)."""
    section = manifest.get("precision") or {}
    if not isinstance(section, Mapping):
        raise ValueError(f"precision must be an object, not {type(section).__name__}")
    dtype = manifest.get("dtype", "float32")
    features = section.get("features", dtype)
    if features != dtype:
        raise ValueError(f"precision.features {features!r} disagrees with dtype {dtype!r}")
    if dtype not in PRECISIONS:
        raise ValueError(f"dtype {dtype!r} is not one of {', '.join(PRECISIONS)}")
    return PRECISIONS[dtype]
