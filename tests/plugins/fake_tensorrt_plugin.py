"""NVIDIA's own `tensorrt.plugin` over a stand-in of TensorRT's compiled core, for CPU tests.

TensorRT's Python plugin layer (`tensorrt.plugin`: `_validate.py`, `_tensor.py`,
`_plugin_class.py`, `_autotune.py`, `_top_level.py`, `_lib.py`, ...) is plain Python that ships
in the `tensorrt-cu12-bindings` wheel, beside the compiled core (`tensorrt.so`, which needs
TensorRT's libraries and a GPU). The tests load those sources unchanged from two releases:

* the newest 10.x the `trt` extra allows, installed by the `test` extra
  (`tensorrt-cu12-bindings`, package `tensorrt_bindings`; nothing imports it as `tensorrt`);
* the oldest, 10.9.0.34, which `.ci/run` installs into `.cache/tensorrt-bindings-10.9.0.34/`
  (pip cannot install two versions of one package in an environment):
  ``pip install --no-deps --target .cache/tensorrt-bindings-10.9.0.34 tensorrt-cu12-bindings==10.9.0.34``.

What they cannot give is stood in for here, and only that:

* `core_module`: the compiled core's names the plugin layer uses. Shape arithmetic
  (`IExprBuilder`, `IDimensionExpr`) builds symbolic expressions as TensorRT's builder does,
  folding constants, so a test can evaluate the launch parameters of a built kernel for
  concrete batch sizes; the plugin base classes, enums and descriptors are plain records.
* `AotBuild`: what TensorRT's C++ builder does with an AOT plugin, in its order: the creator
  from the plugin registry (as the ONNX parser finds it), output types with placeholder shapes,
  output shapes with the expression builder, the format combinations of `autotune` (after the
  shapes), `configure_plugin`, the tactic, `get_launch_params`, `get_kernel`.
"""
from __future__ import annotations

import enum
import importlib
import importlib.util
import operator
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
OLDEST, NEWEST = "10.9.0.34", "10.16.1.11"  # the `trt` extra: tensorrt>=10.9,<11


def plugin_sources(version: str) -> Path | None:
    """The folder of NVIDIA's `tensorrt.plugin` sources of `version`, or None where they are
    not installed (the newest: the test extra; the oldest: .cache, see the module doc)."""
    cached = ROOT / ".cache" / f"tensorrt-bindings-{version}"
    roots = [cached]
    spec = importlib.util.find_spec("tensorrt_bindings")  # finds, does not import
    from importlib import metadata

    try:
        installed = metadata.version("tensorrt-cu12-bindings")
    except metadata.PackageNotFoundError:
        installed = None
    if spec is not None and installed == version:
        roots.insert(0, Path(spec.submodule_search_locations[0]).parent)
    for root in roots:
        folder = root / "tensorrt_bindings" / "plugin"
        if (folder / "_lib.py").is_file():
            return folder
    return None


# ---- the compiled core ---------------------------------------------------------------------

DimensionOperation = enum.Enum("DimensionOperation",
                               "SUM PROD MAX MIN SUB EQUAL LESS FLOOR_DIV CEIL_DIV")
_OPERATIONS = {"SUM": operator.add, "PROD": operator.mul, "MAX": max, "MIN": min,
               "SUB": operator.sub, "EQUAL": lambda a, b: int(a == b),
               "LESS": lambda a, b: int(a < b), "FLOOR_DIV": operator.floordiv,
               "CEIL_DIV": lambda a, b: -(-a // b)}


class IDimensionExpr:
    """A symbolic integer: a constant, a named run-time size, or an operation on two."""

    def __init__(self, value: int | None = None, name: str | None = None, op=None, args=()):
        self.value, self.name, self.op, self.args = value, name, op, args

    def is_constant(self) -> bool:
        return self.value is not None

    def get_constant_value(self) -> int:
        if self.value is None:
            raise RuntimeError("not a constant expression")
        return self.value

    def evaluate(self, sizes: dict[str, int]) -> int:
        """The value for concrete run-time `sizes` (test helper; TensorRT does this at run time)."""
        if self.value is not None:
            return self.value
        if self.name is not None:
            return sizes[self.name]
        return _OPERATIONS[self.op.name](*(a.evaluate(sizes) for a in self.args))

    def __repr__(self):
        return str(self.value) if self.value is not None else self.name or f"{self.op.name}{self.args}"


class IExprBuilder:
    def constant(self, value: int) -> IDimensionExpr:
        if not isinstance(value, int):
            raise TypeError(f"constant() takes an int, got {type(value)}")
        return IDimensionExpr(value)

    def operation(self, op: DimensionOperation, first: IDimensionExpr,
                  second: IDimensionExpr) -> IDimensionExpr:
        if not isinstance(first, IDimensionExpr) or not isinstance(second, IDimensionExpr):
            raise TypeError(f"operation() takes IDimensionExprs, got {type(first)}, {type(second)}")
        if first.is_constant() and second.is_constant():  # the builder folds constants
            return IDimensionExpr(_OPERATIONS[op.name](first.value, second.value))
        return IDimensionExpr(op=op, args=(first, second))


class DimsExprs(list):
    def __init__(self, length: int = 0):
        super().__init__([None] * length)


class Dims(tuple):
    MAX_DIMS = 8

    def __new__(cls, value=()):
        return super().__new__(cls, [0] * value if isinstance(value, int) else value)


class DataType(enum.Enum):
    FLOAT, HALF, INT8, INT32, BOOL, UINT8, FP8, BF16, INT64, INT4, FP4 = range(11)


class TensorFormat(enum.Enum):
    LINEAR, CHW2, HWC8, CHW4, CHW16, CHW32, DHWC8, CDHW32, HWC, DLA_LINEAR, DLA_HWC4, HWC16, \
        DHWC = range(13)


PluginFieldType = enum.Enum("PluginFieldType", "FLOAT16 FLOAT32 FLOAT64 INT8 INT16 INT32 CHAR "
                            "DIMS UNKNOWN BF16 INT64 FP8 INT4 FP4")
PluginArgType = enum.Enum("PluginArgType", "INT")
PluginArgDataType = enum.Enum("PluginArgDataType", "INT8 INT16 INT32")
QuickPluginCreationRequest = enum.Enum("QuickPluginCreationRequest",
                                       "UNKNOWN PREFER_JIT PREFER_AOT STRICT_JIT STRICT_AOT")
TensorRTPhase = enum.Enum("TensorRTPhase", "BUILD RUNTIME")


class PluginField:
    def __init__(self, name: str = "", data=None, type=PluginFieldType.UNKNOWN):
        self.name, self.data, self.type = name, data, type


class PluginFieldCollection(list):
    pass


class PluginTensorDesc:
    def __init__(self, dims=(), type=DataType.FLOAT, format=TensorFormat.LINEAR, scale=1.0):
        self.dims, self.type, self.format, self.scale = Dims(dims), type, format, scale


@dataclass
class DynamicPluginTensorDesc:
    desc: PluginTensorDesc
    min: Dims
    max: Dims


class _Interface:
    """Base classes the plugin layer derives from (nanobind classes in the compiled core)."""

    def __init__(self):
        pass


class Logger:
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

    def __init__(self, min_severity=WARNING):
        self.min_severity = min_severity

    def log(self, severity, message):
        pass


class PluginRegistry:
    """`trt.get_plugin_registry()`: creators by (name, version, namespace)."""

    def __init__(self):
        self.creators = {}

    def register_creator(self, creator, namespace: str) -> bool:
        self.creators[(creator.name, creator.plugin_version, namespace)] = creator
        return True

    def get_creator(self, name: str, version: str, namespace: str = ""):
        return self.creators.get((name, version, namespace))


def core_module(version: str) -> types.ModuleType:
    """A `tensorrt` module with the compiled core's names that `tensorrt.plugin` uses."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.__path__ = []  # a package, so that `tensorrt.plugin` can be imported below it
    for name in ("IPluginV3", "IPluginV3QuickCore", "IPluginV3QuickBuild",
                 "IPluginV3QuickRuntime", "IPluginV3QuickAOTBuild", "IPluginCreatorV3Quick",
                 "ISymExpr", "ITensor"):
        setattr(trt, name, type(name, (_Interface,), {}))
    for obj in (DimensionOperation, IDimensionExpr, IExprBuilder, DimsExprs, Dims, DataType,
                TensorFormat, PluginFieldType, PluginArgType, PluginArgDataType,
                QuickPluginCreationRequest, TensorRTPhase, PluginField, PluginFieldCollection,
                PluginTensorDesc, DynamicPluginTensorDesc, Logger):
        setattr(trt, obj.__name__, obj)
    trt.float32, trt.float16, trt.bfloat16 = DataType.FLOAT, DataType.HALF, DataType.BF16
    trt.int8, trt.int32, trt.int64 = DataType.INT8, DataType.INT32, DataType.INT64
    registry = PluginRegistry()
    trt.get_plugin_registry = lambda: registry
    trt.nptype = lambda dtype: {DataType.FLOAT: np.float32, DataType.HALF: np.float16,
                                DataType.INT32: np.int32, DataType.INT64: np.int64}[dtype]
    return trt


def load(monkeypatch, version: str, folder: Path) -> tuple[types.ModuleType, types.ModuleType]:
    """(tensorrt, tensorrt.plugin): NVIDIA's plugin sources from `folder` over `core_module`,
    in sys.modules for the test (monkeypatch undoes it)."""
    trt = core_module(version)
    for name in [n for n in sys.modules if n == "tensorrt" or n.startswith("tensorrt.")]:
        monkeypatch.delitem(sys.modules, name)
    for path in folder.glob("_*.py"):  # the submodules the package imports: gone after the test
        monkeypatch.setitem(sys.modules, f"tensorrt.plugin.{path.stem}", None)
        del sys.modules[f"tensorrt.plugin.{path.stem}"]
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    spec = importlib.util.spec_from_file_location("tensorrt.plugin", folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    trtp = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "tensorrt.plugin", trtp)
    trt.plugin = trtp
    spec.loader.exec_module(trtp)  # imports its submodules (tensorrt.plugin._lib, ...)
    return trt, trtp


# ---- what TensorRT's builder does with an AOT plugin ---------------------------------------

@dataclass
class AotKernel:
    """One kernel TensorRT would embed, with its launch evaluated for concrete sizes."""
    types: list[DataType]
    name: str
    ptx: str
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    shared_mem: int
    extra_args: list[int]
    extra_arg_types: list
    launch_arguments: int  # what the kernel is launched with: inputs, extra scalars, outputs


class _Record:
    """An attribute bag standing in for the core's launch-parameter and extra-argument setters."""

    def __init__(self):
        self.items = {}

    def __setitem__(self, index, value):
        self.items[index] = value


class AotBuild:
    """Build an AOT plugin layer as TensorRT does: `inputs` are (dtype, dims) per input, a dim
    an int (build-time constant) or a name (a run-time size)."""

    def __init__(self, trt, plugin_id: str, request="STRICT_AOT"):
        namespace, name = plugin_id.split("::")
        creator = trt.get_plugin_registry().get_creator(name, "1", namespace)
        if creator is None:
            raise ValueError(f"no plugin creator registered for {plugin_id}")
        self.trt = trt
        self.plugin = creator.create_plugin(name, namespace, trt.PluginFieldCollection([]),
                                            trt.TensorRTPhase.BUILD,
                                            getattr(trt.QuickPluginCreationRequest, request))
        self.plugin = self.plugin.get_capability_interface(None)

    def run(self, inputs: list[tuple[DataType, list]], sizes: dict[str, int],
            bounds: tuple[int, int] = (1, 4096)) -> list[AotKernel]:
        plugin, builder = self.plugin, IExprBuilder()
        types_ = [dtype for dtype, _ in inputs]
        out_types = plugin.get_output_data_types(types_, [len(d) for _, d in inputs])
        exprs = []
        for _, dims in inputs:
            expr = DimsExprs(len(dims))
            for j, d in enumerate(dims):
                expr[j] = builder.constant(d) if isinstance(d, int) else IDimensionExpr(name=d)
            exprs.append(expr)
        out_exprs = plugin.get_output_shapes(exprs, [], builder)

        def dynamic(dims_exprs, dtype):
            dims = [e.value if e.is_constant() else -1 for e in dims_exprs]
            low = [d if d >= 0 else bounds[0] for d in dims]
            high = [d if d >= 0 else bounds[1] for d in dims]
            return DynamicPluginTensorDesc(PluginTensorDesc(dims, dtype), Dims(low), Dims(high))

        in_out = [dynamic(e, t) for e, t in zip(exprs, types_)]
        in_out += [dynamic(e, t) for e, t in zip(out_exprs, out_types)]
        flat = plugin.get_supported_format_combinations(in_out, len(inputs))
        width = len(in_out)
        combos = [flat[i:i + width] for i in range(0, len(flat), width)]
        kernels = []
        for combo in combos:  # every combination the plugin offers, as a build would time
            descs = [DynamicPluginTensorDesc(PluginTensorDesc(d.desc.dims, c.type, c.format),
                                             d.min, d.max) for d, c in zip(in_out, combo)]
            plugin.configure_plugin(descs[:len(inputs)], descs[len(inputs):])
            for tactic in plugin.get_valid_tactics() or [0]:
                plugin.set_tactic(tactic)
                kernels.append(self._kernel(exprs, descs, len(inputs), builder, sizes))
        return kernels

    def _kernel(self, exprs, descs, num_inputs, builder, sizes) -> AotKernel:
        launch, extra = _Record(), _Record()
        self.plugin.get_launch_params(exprs, descs, num_inputs, launch, extra, builder)
        name, ptx = self.plugin.get_kernel([d.desc for d in descs[:num_inputs]],
                                           [d.desc for d in descs[num_inputs:]])

        def value(sym):
            return sym.expr.evaluate(sizes)

        args = [extra.items[i] for i in range(extra.nbSymExprs)]
        return AotKernel([d.desc.type for d in descs],
                         name if isinstance(name, str) else name.decode(),
                         ptx if isinstance(ptx, str) else ptx.decode(),
                         tuple(value(getattr(launch, f"grid_{a}")) for a in "xyz"),
                         tuple(value(getattr(launch, f"block_{a}")) for a in "xyz"),
                         value(launch.shared_mem), [value(a) for a in args],
                         [a.dtype for a in args], len(descs) + len(args))
