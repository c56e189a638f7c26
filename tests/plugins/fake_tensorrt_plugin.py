"""A strict stand-in for `tensorrt` + `tensorrt.plugin` (TensorRT 10.9-11.x), for CPU tests.

TensorRT cannot be installed here. This stand-in applies the rules TensorRT's Python plugin
layer applies (its `_validate.py`, `_lib.py`, `_tensor.py`, `_plugin_class.py` and the
quickly-deployable-plugins sample, read at tags v10.9.0 to v11.1) so that a plugin definition
it accepts would also be accepted by TensorRT:

* `register(id)`: "namespace::name" without dots, not a reserved namespace, not defined twice
  ("already has a defintion", TensorRT's spelling); every argument annotated with a real class
  (a string annotation is no class), tensor arguments first, no defaults; the return annotated
  `TensorDesc` or `tuple[TensorDesc, ...]`.
* `autotune(id)`: arguments = the registered inputs, then `outputs`; annotations, where given,
  consistent; return annotation `AutoTuneCombination` or `list[...]` if given.
* `aot_impl(id)`: arguments = the registered inputs, `outputs`, `tactic`; the return annotation
  is mandatory: `tuple[str | bytes, str | bytes, KernelLaunchParams, SymExprs subclass]`.
* Values: `KernelLaunchParams` has only grid/block/shared_mem fields, `SymIntExprs` a fixed
  length, `cdiv` refuses two ints, a symbolic dimension refuses `bool()` (TensorRT 11).

`FakeAotBuild` then does what an engine build does with a registered AOT plugin: shape and type
inference through the `register` function (first with placeholder dimensions), `autotune`,
`aot_impl` per type combination with type checks of what it returns, and it evaluates the
launch parameters for concrete batch sizes. `launch_arguments` says how many arguments TensorRT
passes to the kernel: the input tensors, the extra scalars, the outputs.
"""
from __future__ import annotations

import inspect
import re
import sys
import types
import typing
from dataclasses import dataclass

RESERVED_NAMESPACES = {"", "trt", "tensorrt", "std"}
TYPE_NAMES = {"FP32", "FP16", "BF16", "INT8", "INT32", "INT64", "BOOL", "UINT8", "FP8", "INT4",
              "FP4"}


class DataType:
    def __init__(self, name: str):
        self.name = name

    def __repr__(self):
        return f"DataType.{self.name}"


class ShapeExpr:
    """A shape dimension: a build-time constant, a dynamic one (carrying the value the test
    evaluates it with), or a placeholder (dtype inference, no value at all)."""

    def __init__(self, value: int | None = None, constant: bool = True):
        self.value, self._constant = value, constant and value is not None

    @property
    def is_fake(self) -> bool:
        return self.value is None

    @property
    def is_constant(self) -> bool:
        if self.is_fake:
            raise RuntimeError("Not accessible for fake 'ShapeExpr's")
        return self._constant

    def constant_value(self) -> int:
        if not self.is_constant:
            raise RuntimeError("Not accessible for non-constant integer expressions")
        return self.value

    def _op(self, other, fn):
        if isinstance(other, float):
            raise ValueError("Float symbolic expressions are not supported")
        other = other if isinstance(other, ShapeExpr) else ShapeExpr(other)
        if self.is_fake or other.is_fake:
            return ShapeExpr()
        return ShapeExpr(fn(self.value, other.value), self._constant and other._constant)

    def __add__(self, other):
        return self._op(other, lambda a, b: a + b)

    def __mul__(self, other):
        return self._op(other, lambda a, b: a * b)

    def __floordiv__(self, other):
        return self._op(other, lambda a, b: a // b)

    def __bool__(self):
        raise RuntimeError("Cannot evaluate symbolic expression as boolean")


class SymInt32(ShapeExpr):
    def __init__(self, value=1):
        if isinstance(value, ShapeExpr):
            super().__init__(value.value, value._constant)
        elif isinstance(value, int):
            super().__init__(value)
        else:
            raise ValueError(f"Unsupported type: '{type(value)}'")


class SymExprs:
    def __init__(self, length: int):
        self._exprs = [None] * length

    def __len__(self):
        return len(self._exprs)

    def __getitem__(self, i):
        return self._exprs[i]

    def __iter__(self):
        return iter(self._exprs)

    def __setitem__(self, i, value):
        if i >= len(self._exprs):
            raise IndexError("Index out of range")
        if not isinstance(value, (ShapeExpr, int)):
            raise ValueError(f"Value should be int or SymIntExpr. Got '{type(value)}'")
        self._exprs[i] = value if isinstance(value, ShapeExpr) else SymInt32(value)


class ShapeExprs(SymExprs):
    @classmethod
    def from_tuple(cls, dims):
        out = cls(len(dims))
        for i, d in enumerate(dims):
            out[i] = d
        return out


class SymIntExprs(SymExprs):
    pass


class TensorDesc:
    def __init__(self, shape_expr: ShapeExprs | None = None, dtype: DataType | None = None):
        self.shape_expr, self.dtype = shape_expr, dtype


class KernelLaunchParams:
    FIELDS = ("grid_x", "grid_y", "grid_z", "block_x", "block_y", "block_z", "shared_mem")

    def __init__(self):
        for name in self.FIELDS:
            self.__dict__[name] = SymInt32(0 if name == "shared_mem" else 1)

    def __setattr__(self, name, value):
        if name not in self.FIELDS:
            raise AttributeError(f"KernelLaunchParams object has no attribute '{name}'")
        self.__dict__[name] = SymInt32(value)


class AutoTuneCombination:
    def __init__(self, io_types: str, layouts: str = "LINEAR", tactics=None):
        self.io_types = [s.strip() for s in io_types.split(",")]
        self.layouts = [s.strip() for s in layouts.split(",")]
        if len(self.layouts) not in (1, len(self.io_types)):
            raise AssertionError("layouts must be one for all I/O or one per I/O")
        alternatives = {len(t.split("|")) for t in self.io_types if "|" in t}
        if len(alternatives) > 1 or any("|" in t and "*" in t for t in self.io_types):
            raise ValueError(f"Type/Format combinations {self.io_types} contain illegal "
                             "dependent lengths")
        for name in re.split(r"[|*]", "|".join(self.io_types)):
            if name not in TYPE_NAMES:
                raise ValueError(f"unknown TensorRT data type {name!r}")

    def type_combinations(self) -> list[list[str]]:
        """The dependent ('|') alternatives, position by position."""
        count = max(len(t.split("|")) for t in self.io_types)
        return [[t.split("|")[i] if "|" in t else t for t in self.io_types]
                for i in range(count)]


def cdiv(first, second):
    if isinstance(first, int) and isinstance(second, int):
        raise ValueError("Both arguments cannot be 'int's")
    first = first if isinstance(first, ShapeExpr) else ShapeExpr(first)
    return first._op(second, lambda a, b: -(-a // b))


def from_shape_expr(shape_expr, dtype: DataType) -> TensorDesc:
    if isinstance(shape_expr, tuple):
        shape_expr = ShapeExprs.from_tuple(shape_expr)
    if not isinstance(shape_expr, ShapeExprs):
        raise TypeError(f"shape_expr must be a tuple or ShapeExprs, got {type(shape_expr)}")
    return TensorDesc(shape_expr, dtype)


@dataclass
class PluginDef:
    plugin_id: str
    register_func: typing.Callable
    inputs: list[str]
    num_outputs: int
    autotune_func: typing.Callable | None = None
    aot_impl_func: typing.Callable | None = None


def _is_class(annotation, base) -> bool:
    return inspect.isclass(annotation) and issubclass(annotation, base)


def _check_schema(kind: str, func, expected: list[str]) -> inspect.Signature:
    sig = inspect.signature(func)
    if list(sig.parameters) != expected:
        raise ValueError(f"Signature of the {kind} function '{sig}' does not match the expected "
                         f"input arg schema: ({', '.join(expected)})")
    return sig


def _check_outputs_annotation(sig: inspect.Signature) -> None:
    annotation = sig.parameters["outputs"].annotation
    if annotation is inspect.Parameter.empty:
        return
    if typing.get_origin(annotation) is not tuple or not all(
            _is_class(a, TensorDesc) for a in typing.get_args(annotation) if a is not Ellipsis):
        raise ValueError(f"'outputs' should be of type Tuple[TensorDesc]. Received {annotation}.")


def _check_str_or_bytes(annotation, index: int) -> None:
    options = (typing.get_args(annotation)
               if typing.get_origin(annotation) in (typing.Union, types.UnionType)
               else (annotation,))
    if any(a not in (str, bytes) for a in options):
        raise ValueError(f"Return annotation for argument at {index} is '{annotation}'. "
                         "Expected 'str' or 'bytes'.")


class PluginModule(types.ModuleType):
    """`tensorrt.plugin` with the decorators' checks; `registry` maps ids to PluginDefs.
    `fail_next` = a stage name whose next decoration raises (as a TensorRT error would)."""

    def __init__(self):
        super().__init__("tensorrt.plugin")
        self.registry: dict[str, PluginDef] = {}
        self.fail_next: str | None = None
        for obj in (TensorDesc, KernelLaunchParams, SymExprs, SymIntExprs, ShapeExprs, SymInt32,
                    ShapeExpr, AutoTuneCombination, cdiv, from_shape_expr):
            setattr(self, obj.__name__, obj)

    def _maybe_fail(self, stage: str) -> None:
        if self.fail_next == stage:
            self.fail_next = None
            raise ValueError(f"injected failure in {stage}")

    def _registered(self, plugin_id: str) -> PluginDef:
        if plugin_id not in self.registry:
            raise ValueError(f"Plugin {plugin_id} is not registered. Did you register it with "
                             "tensorrt.plugin.register API?")
        return self.registry[plugin_id]

    def register(self, plugin_id: str, lazy_register: bool = False):
        def decorator(func):
            namespace, name = plugin_id.split("::")
            if "." in namespace or "." in name or namespace in RESERVED_NAMESPACES:
                raise ValueError(f"invalid plugin id {plugin_id!r}")
            if plugin_id in self.registry:
                raise ValueError(f"'_Op' already has a defintion for '{name}'")
            sig = inspect.signature(func)
            inputs = []
            for arg, param in sig.parameters.items():
                if param.annotation is inspect.Parameter.empty:
                    raise ValueError(f"Argument {arg} does not have a type annotation.")
                if param.default is not inspect.Parameter.empty:
                    raise ValueError(f"Argument {arg} has a default value.")
                if not inspect.isclass(param.annotation):  # e.g. a postponed string annotation
                    raise TypeError("issubclass() arg 1 must be a class")
                if not issubclass(param.annotation, TensorDesc):
                    raise ValueError(f"attribute {arg} is not supported by this stand-in")
                inputs.append(arg)
            ret = sig.return_annotation
            if ret is inspect.Parameter.empty:
                raise ValueError("No return annotation found for register function.")
            outputs = typing.get_args(ret) if typing.get_origin(ret) is tuple else (ret,)
            if not all(_is_class(o, TensorDesc) for o in outputs):
                raise ValueError(f"Return argument is of type {ret}. Return types can only be "
                                 "TensorDesc or Tuple[TensorDesc].")
            self._maybe_fail("register")
            self.registry[plugin_id] = PluginDef(plugin_id, func, inputs, len(outputs))
            return func
        return decorator

    def autotune(self, plugin_id: str):
        def decorator(func):
            plugin = self._registered(plugin_id)
            sig = _check_schema("autotune", func, [*plugin.inputs, "outputs"])
            _check_outputs_annotation(sig)
            ret = sig.return_annotation
            if ret is not inspect.Parameter.empty:
                items = typing.get_args(ret) if typing.get_origin(ret) is list else (ret,)
                if not all(_is_class(a, AutoTuneCombination) for a in items):
                    raise ValueError(f"Return argument is of type {ret}.")
            self._maybe_fail("autotune")
            plugin.autotune_func = func
            return func
        return decorator

    def aot_impl(self, plugin_id: str):
        def decorator(func):
            plugin = self._registered(plugin_id)
            sig = _check_schema("aot_impl", func, [*plugin.inputs, "outputs", "tactic"])
            _check_outputs_annotation(sig)
            ret = sig.return_annotation
            if ret is inspect.Parameter.empty:
                raise ValueError(f"No return annotation found for aot_impl function. Received "
                                 f"signature {sig}.")
            args = typing.get_args(ret)
            if typing.get_origin(ret) is not tuple or len(args) != 4:
                raise ValueError(f"Return annotation is {ret}. Expected tuple[str | bytes, "
                                 "str | bytes, KernelLaunchParams, SymIntExprs].")
            _check_str_or_bytes(args[0], 0)
            _check_str_or_bytes(args[1], 1)
            if not _is_class(args[2], KernelLaunchParams):
                raise ValueError(f"Argument at index 2 of return annotation is '{args[2]}'.")
            if not _is_class(args[3], SymExprs):
                raise ValueError(f"Argument at index 3 of return annotation is '{args[3]}'.")
            self._maybe_fail("aot_impl")
            plugin.aot_impl_func = func
            return func
        return decorator


def fake_tensorrt(version: str = "10.13.0.35") -> tuple[types.ModuleType, PluginModule]:
    """(tensorrt, tensorrt.plugin) stand-ins; `install` puts them in sys.modules."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.float32, trt.float16 = DataType("FLOAT"), DataType("HALF")
    trtp = PluginModule()
    trt.plugin = trtp
    return trt, trtp


def install(monkeypatch, trt, trtp) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "tensorrt.plugin", trtp)


DTYPES = {"FP16": "HALF", "FP32": "FLOAT"}


@dataclass
class AotKernel:
    """What TensorRT keeps of one aot_impl call: the kernel and its evaluated launch."""
    types: list[str]
    name: str
    ptx: str
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    shared_mem: int
    extra_args: list[int]
    launch_arguments: int


class FakeAotBuild:
    """Run a registered AOT plugin as an engine build does, for input shapes whose dynamic
    dimensions are ShapeExpr(value, constant=False)."""

    def __init__(self, trtp: PluginModule, plugin_id: str):
        self.plugin = trtp._registered(plugin_id)
        if self.plugin.aot_impl_func is None:
            raise ValueError(f"Plugin '{plugin_id}' does not have either a AOT or JIT "
                             "implementation.")

    def run(self, shapes: list[list[ShapeExpr | int]], tactic: int = 0) -> list[AotKernel]:
        plugin = self.plugin
        placeholders = [TensorDesc(ShapeExprs.from_tuple([ShapeExpr()] * len(s)), None)
                        for s in shapes]
        outputs = plugin.register_func(*placeholders)  # output dtype inference
        if not isinstance(outputs, tuple):
            outputs = (outputs,)
        combos = [c for combo in (plugin.autotune_func(*placeholders, outputs)
                                  if plugin.autotune_func else [])
                  for c in combo.type_combinations()]
        kernels = []
        for types_ in combos:
            inputs = [TensorDesc(ShapeExprs.from_tuple(s), DataType(DTYPES[t]))
                      for s, t in zip(shapes, types_)]
            outs = plugin.register_func(*inputs)
            outs = outs if isinstance(outs, tuple) else (outs,)
            for out, t in zip(outs, types_[len(inputs):]):
                if out.dtype.name != DTYPES[t]:
                    raise ValueError(f"output type {out.dtype} is not the combination's {t}")
            kernels.append(self._aot(inputs, outs, types_, tactic))
        return kernels

    def _aot(self, inputs, outputs, types_, tactic) -> AotKernel:
        name, ptx, launch, extra = self.plugin.aot_impl_func(*inputs, outputs, tactic)
        if not isinstance(name, (str, bytes)) or not isinstance(ptx, (str, bytes)):
            raise TypeError("Kernel name and PTX must be a 'str' or 'bytes'")
        if not isinstance(launch, KernelLaunchParams):
            raise TypeError(f"Launch params must be a 'tensorrt.plugin.KernelLaunchParams'. "
                            f"Got: {type(launch)}.")
        if not isinstance(extra, SymExprs) or not all(isinstance(a, SymInt32) for a in extra):
            raise TypeError("Extra args must be a 'tensorrt.plugin.SymIntExprs' of SymInt32")
        value = (lambda e: e.value)
        return AotKernel(list(types_), name if isinstance(name, str) else name.decode(),
                         ptx if isinstance(ptx, str) else ptx.decode(),
                         tuple(value(getattr(launch, f"grid_{a}")) for a in "xyz"),
                         tuple(value(getattr(launch, f"block_{a}")) for a in "xyz"),
                         value(launch.shared_mem), [value(a) for a in extra],
                         len(inputs) + len(extra) + len(outputs))


def dims(*values) -> list[ShapeExpr]:
    """Shape dimensions: ints are build-time constants, ("dyn", n) dynamic with run-time n."""
    return [ShapeExpr(v[1], constant=False) if isinstance(v, tuple) else ShapeExpr(v)
            for v in values]

