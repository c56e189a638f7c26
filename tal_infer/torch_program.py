"""extractor.pt2 read as data: a `torch.export` archive run by a small interpreter, no pickle.

Why not ``torch.export.load``: with torch 2.13 it unpickles archive entries marked
``use_pickle`` (weights, constants, custom and opaque objects), retries example inputs with
``weights_only=False`` when the safe loader refuses them, loads AOTInductor libraries found in
the archive, parses shape expressions with ``sympy.sympify`` (``eval``), compiles the graph to
Python source from node names in the file and turns ``guards_code`` strings into a function.
Each of these runs code planted in a bundle (issue 11), so the runtime never calls it.

What this module does instead (docs/bundle.md, "Bundles are data, never code"):

- the archive is opened with ``zipfile``; every entry must be one that ``torch.export.save``
  writes for a plain program (graph JSON, payload configs, raw tensor records, version marks)
  and stored uncompressed; the sample-inputs record must be empty (the exporter writes none);
  anything else is refused with `UnsafeBundleError` naming the entry;
- weights and constants are raw little-endian tensor bytes (``use_pickle: false`` only), created
  directly on the target device: parameters, buffers and lifted constants alike (the device
  move of issue 12, item 3); device arguments of graph nodes are pointed at that device too;
- the graph is interpreted node by node: only ATen operators (``torch.ops.aten.<op>.<overload>``)
  and integer shape arithmetic are called. An ATen operator whose schema takes a string other
  than a mode or option (``aten::save``, ``aten::from_file``, ``aten::_print``...) is refused,
  as are every other namespace, higher-order operators, subgraphs and custom objects. Shape
  expression strings, node metadata and guard code are never evaluated;
- `ExtractorProgram.dry_run` runs the program on the ``meta`` device (no memory, no arithmetic),
  so the torch backend refuses a graph that cannot run, or whose outputs disagree with the
  manifest, when the bundle is opened, before any image is read.
"""
from __future__ import annotations

import json
import math
import operator
import re
import zipfile
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from .errors import BundleError, UnsafeBundleError

if TYPE_CHECKING:  # torch is imported where it is used: the runtime imports without it
    import torch

SCHEMA_MAJOR = 8  # torch.export serialization schema read here (torch 2.13 writes 8.20)

# Entries torch.export.save writes for one program named "model", below the archive's root folder.
PLAIN_ENTRIES = re.compile(r"archive_format|archive_version|byteorder|\.data/version|"
                           r"\.data/serialization_id|models/model\.json|"
                           r"data/weights/model_weights_config\.json|data/weights/weight_\d+|"
                           r"data/constants/model_constants_config\.json|"
                           r"data/constants/tensor_\d+|data/sample_inputs/model\.pt")
# String arguments that select a mode or option; any other string argument (a file name, a
# message to print) refuses the operator.
OPTION_STRINGS = frozenset({"approximate", "rounding_mode", "padding", "mode", "reduce",
                            "indexing", "equation", "interpolation", "side", "norm",
                            "assert_msg"})
# Codes of the serialization schema -> torch attribute names.
DTYPES = {1: "uint8", 2: "int8", 3: "int16", 4: "int32", 5: "int64", 6: "float16",
          7: "float32", 8: "float64", 12: "bool", 13: "bfloat16"}
LAYOUTS = {7: "strided"}
MEMORY_FORMATS = {1: "contiguous_format", 2: "channels_last", 3: "channels_last_3d",
                  4: "preserve_format"}
# Integer shape arithmetic a program may do between ATen calls.
SHAPE_FUNCTIONS: dict[str, Callable[..., Any]] = {
    **{f"_operator.{name}": getattr(operator, name) for name in (
        "add", "sub", "mul", "floordiv", "truediv", "mod", "neg", "pos",
        "eq", "ne", "lt", "le", "gt", "ge")},
    "math.trunc": math.trunc}
TORCH_SHAPE_FUNCTIONS = frozenset(f"torch.{name}" for name in (
    "sym_max", "sym_min", "sym_int", "sym_float", "sym_not"))
ATEN_TARGET = re.compile(r"torch\.ops\.aten\.([A-Za-z_]\w*)\.([A-Za-z_]\w*)")


@dataclass(frozen=True)
class _Ref:
    """A value produced by a graph input or an earlier node."""
    name: str


class _Device:
    """Placeholder for the device the program runs on (filled in per run)."""


_DEVICE = _Device()


@dataclass(frozen=True)
class _Step:
    name: str
    fn: Callable[..., Any]
    args: tuple
    kwargs: dict[str, Any]
    binder: Any           # str | None | list: where the result goes
    release: tuple[str, ...] = ()


def _resolve(template: Any, env: dict[str, Any], device: torch.device) -> Any:
    if isinstance(template, _Ref):
        return env[template.name]
    if isinstance(template, list):
        return [_resolve(t, env, device) for t in template]
    return device if template is _DEVICE else template


def _bind(binder: Any, value: Any, env: dict[str, Any]) -> None:
    if isinstance(binder, str):
        env[binder] = value
    elif isinstance(binder, list):
        if len(binder) != len(value):
            raise RuntimeError(f"expected {len(binder)} results, got {len(value)}")
        for b, v in zip(binder, value):
            _bind(b, v, env)


class ExtractorProgram:
    """An interpreted extractor graph with its tensors on one device; call it on uint8 NHWC."""

    def __init__(self, steps: list[_Step], placeholders: dict[str, str], user_input: str,
                 outputs: list[str], tensors: dict[str, torch.Tensor], device: torch.device):
        self._steps, self._placeholders, self._input = steps, placeholders, user_input
        self._outputs = outputs
        self.tensors, self.device = tensors, device  # FQN -> tensor (weights and constants)

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return _run(self, images, self.tensors, self.device)

    def dry_run(self, batch_shape: Sequence[int]) -> list[tuple[int, ...]]:
        """Output shapes for a uint8 batch of ``batch_shape``, computed on the meta device
        (no memory, no arithmetic); raises BundleError naming the node that cannot run."""
        import torch

        meta = torch.device("meta")
        tensors = {k: torch.empty_like(v, device=meta) for k, v in self.tensors.items()}
        images = torch.empty(tuple(batch_shape), dtype=torch.uint8, device=meta)
        return [tuple(o.shape) for o in _run(self, images, tensors, meta, checked=True)]


def _run(program: ExtractorProgram, images: torch.Tensor, tensors: dict[str, torch.Tensor],
         device: torch.device, checked: bool = False) -> tuple[torch.Tensor, ...]:
    env: dict[str, Any] = {name: tensors[fqn] for name, fqn in program._placeholders.items()}
    env[program._input] = images
    for step in program._steps:
        try:
            result = step.fn(*[_resolve(a, env, device) for a in step.args],
                             **{k: _resolve(v, env, device) for k, v in step.kwargs.items()})
            _bind(step.binder, result, env)
        except Exception as err:  # torch raises many types; only the dry run names the node
            if not checked:
                raise
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            raise BundleError(f"node {step.name} cannot run ({first})") from None
        for name in step.release:
            del env[name]
    return tuple(env[name] for name in program._outputs)


def load_program(path: str | Path, device: str | torch.device = "cpu") -> ExtractorProgram:
    """Read and check ``path`` (a torch.export archive), tensors placed on ``device``.
    Raises `UnsafeBundleError` for content the runtime refuses, `BundleError` for a damaged
    or foreign file; both name ``path``."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            return _Reader(archive).program(device)
    except BundleError as err:
        raise type(err)(f"{path}: {err}") from None
    except (OSError, zipfile.BadZipFile, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BundleError(f"{path}: not a readable torch.export archive ({err})") from None
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
        raise BundleError(f"{path}: malformed torch.export archive ({type(err).__name__}: "
                          f"{err})") from None


def target_device(device: str | torch.device) -> torch.device:
    """``device`` with the current CUDA index filled in: the graph's device arguments (e.g. of
    ``_assert_tensor_metadata``) then name exactly the device its tensors are on."""
    import torch

    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


class _Reader:
    """The archive checked whole (entries, payload configs, graph) before any tensor is made;
    every check raises on the spot."""

    def __init__(self, archive: zipfile.ZipFile):
        self.zip, self.names = archive, set(archive.namelist())
        self.root = self._check_entries()

    def program(self, device: str | torch.device) -> ExtractorProgram:
        model = json.loads(self._read("models/model.json"))
        version = model["schema_version"]
        if version["major"] != SCHEMA_MAJOR:
            raise BundleError(f"torch.export schema {version['major']}.{version['minor']} is "
                              f"not supported (this runtime reads {SCHEMA_MAJOR}.x)")
        if model.get("guards_code"):
            raise UnsafeBundleError("the program carries guard code; the runtime runs no code "
                                    "from a bundle")
        configs = {"weights": self._config("weights", "weight"),
                   "constants": self._config("constants", "tensor")}
        module = model["graph_module"]
        placeholders, user_input = self._inputs(module, {**configs["constants"],
                                                         **configs["weights"]})
        graph = module["graph"]
        steps = _Planner(set(placeholders) | {user_input}).plan(graph["nodes"])
        outputs = self._outputs(module, graph)
        target = target_device(device)
        tensors = {fqn: tensor for folder, config in configs.items()
                   for fqn, tensor in self._tensors(folder, config, target).items()}
        return ExtractorProgram(_with_releases(steps, outputs), placeholders, user_input,
                                outputs, tensors, target)

    def _check_entries(self) -> str:
        roots = set()
        for info in self.zip.infolist():
            root, _, name = info.filename.partition("/")
            roots.add(root)
            if not PLAIN_ENTRIES.fullmatch(name):
                raise UnsafeBundleError(f"archive entry {info.filename!r} is not part of a "
                                        "plain exported program (the runtime loads no pickles, "
                                        "libraries or code); re-export the bundle")
            if info.compress_type != zipfile.ZIP_STORED:
                raise BundleError(f"archive entry {info.filename!r} is compressed; torch.export "
                                  "stores entries uncompressed")
        if len(roots) != 1:
            raise BundleError(f"expected one top-level folder in the archive, found {len(roots)}")
        root = roots.pop()
        sample = f"{root}/data/sample_inputs/model.pt"
        if sample in self.names and self.zip.getinfo(sample).file_size:
            raise UnsafeBundleError("the archive holds pickled sample inputs; bundles from this "
                                    "toolkit have none (re-export the bundle)")
        order = self._read("byteorder", root, default=b"little").decode()
        if order != "little":
            raise BundleError(f"tensor byte order {order!r} is not supported")
        return root

    def _read(self, name: str, root: str | None = None, default: bytes | None = None) -> bytes:
        full = f"{root or self.root}/{name}"
        if full not in self.names:
            if default is not None:
                return default
            raise BundleError(f"archive entry {full!r} is missing")
        return self.zip.read(full)

    def _config(self, folder: str, prefix: str) -> dict[str, dict]:
        """FQN -> payload entry of ``data/<folder>``; refuses every pickled payload."""
        config = json.loads(self._read(f"data/{folder}/model_{folder}_config.json"))["config"]
        for fqn, meta in config.items():
            name = meta["path_name"]
            if meta.get("use_pickle") is not False or not re.fullmatch(rf"{prefix}_\d+", name):
                raise UnsafeBundleError(f"{folder} entry {fqn!r} is stored as a pickle "
                                        f"({name!r}); the runtime reads raw tensor bytes only")
        return config

    def _tensors(self, folder: str, config: dict[str, dict],
                 device: torch.device) -> dict[str, torch.Tensor]:
        records: dict[str, bytes] = {}
        tensors = {}
        for fqn, meta in config.items():
            name = meta["path_name"]
            if name not in records:
                records[name] = self._read(f"data/{folder}/{name}")
            tensors[fqn] = self._tensor(fqn, meta["tensor_meta"], records[name], device)
        return tensors

    @staticmethod
    def _tensor(fqn: str, meta: dict, data: bytes, device: torch.device) -> torch.Tensor:
        import torch

        dtype = getattr(torch, _lookup(DTYPES, meta["dtype"], f"tensor {fqn!r}: dtype"))
        _lookup(LAYOUTS, meta.get("layout", 7), f"tensor {fqn!r}: layout")
        sizes = [_literal_int(s) for s in meta["sizes"]]
        strides = [_literal_int(s) for s in meta["strides"]]
        offset = _literal_int(meta["storage_offset"])
        if len(sizes) != len(strides) or min(sizes + strides + [offset], default=0) < 0:
            raise BundleError(f"tensor {fqn!r}: invalid sizes/strides")
        itemsize = torch.empty((), dtype=dtype).element_size()
        if 0 in sizes:
            return torch.empty(sizes, dtype=dtype, device=device)
        needed = (offset + sum((n - 1) * s for n, s in zip(sizes, strides)) + 1) * itemsize
        if len(data) < needed or len(data) % itemsize:
            raise BundleError(f"tensor {fqn!r}: record holds {len(data)} bytes, the tensor "
                              f"needs {needed}; the archive is damaged")
        flat = torch.frombuffer(bytearray(data), dtype=dtype)
        return flat.as_strided(sizes, strides, offset).to(device).contiguous()

    @staticmethod
    def _inputs(module: dict, tensors: dict) -> tuple[dict[str, str], str]:
        """Placeholder name -> tensor FQN (a key of ``tensors``), and the user input's name."""
        placeholders, user = {}, []
        for spec in module["signature"]["input_specs"]:
            (kind, body), = spec.items()
            if kind == "user_input":
                user.append(body["arg"]["as_tensor"]["name"])
                continue
            key = {"parameter": "parameter_name", "buffer": "buffer_name",
                   "tensor_constant": "tensor_constant_name"}.get(kind)
            if key is None:
                raise UnsafeBundleError(f"program input of kind {kind!r} is not supported "
                                        "(tensors only)")
            if body[key] not in tensors:
                raise BundleError(f"{kind} {body[key]!r} has no stored tensor")
            placeholders[body["arg"]["name"]] = body[key]
        if len(user) != 1:
            raise BundleError(f"the program takes {len(user)} inputs; an extractor takes one")
        return placeholders, user[0]

    @staticmethod
    def _outputs(module: dict, graph: dict) -> list[str]:
        for spec in module["signature"]["output_specs"]:
            if set(spec) != {"user_output"}:
                raise UnsafeBundleError(f"program output of kind {next(iter(spec))!r} is not "
                                        "supported (an extractor returns tensors only)")
        return [out["as_tensor"]["name"] for out in graph["outputs"]]


class _Planner:
    """Serialized nodes -> `_Step`s, checking operators, arguments and that every value used
    was defined before."""

    def __init__(self, defined: set[str]):
        self.defined = set(defined)
        self.node = ""

    def plan(self, nodes: list[dict]) -> list[_Step]:
        steps = []
        for index, node in enumerate(nodes):
            self.node = str(node.get("name") or f"#{index}")
            steps.append(self._step(node))
        return steps

    def _step(self, node: dict) -> _Step:
        target = node["target"]
        inputs = node["inputs"]
        shape_function = SHAPE_FUNCTIONS.get(target) or (
            _torch_attribute(target[6:]) if target in TORCH_SHAPE_FUNCTIONS else None)
        if shape_function is not None:
            fn: Callable[..., Any] = shape_function
            args, kwargs = tuple(self._value(i["arg"]) for i in inputs), {}
        else:
            fn = self._aten(target)
            args, kwargs = self._arguments(fn, inputs)
        outputs = node["outputs"]
        binder = (None if not outputs else self._binder(outputs[0]) if len(outputs) == 1
                  else [self._binder(o) for o in outputs])
        return _Step(self.node, fn, args, kwargs, binder)

    def _aten(self, target: str) -> torch._ops.OpOverload:
        import torch

        match = ATEN_TARGET.fullmatch(target)
        if match is None:
            raise UnsafeBundleError(f"node {self.node}: operator {target!r} is not an ATen "
                                    "operator; the runtime calls ATen operators only")
        try:
            op = getattr(getattr(torch.ops.aten, match[1]), match[2])
        except (AttributeError, RuntimeError):
            op = None
        if not isinstance(op, torch._ops.OpOverload):
            raise BundleError(f"node {self.node}: unknown operator {target!r} (exported with "
                              f"another torch than {torch.__version__}?)")
        strings = [a.name for a in op._schema.arguments
                   if re.search(r"\bstr\b", str(a.type)) and a.name not in OPTION_STRINGS]
        if strings:
            raise UnsafeBundleError(f"node {self.node}: operator {target!r} takes the string "
                                    f"argument {strings[0]!r}; refused (it could name a file)")
        return op

    def _arguments(self, op: torch._ops.OpOverload, inputs: list[dict]) -> tuple[tuple, dict]:
        """Leading schema arguments positionally while none is skipped, the rest by name."""
        given = {i["name"]: i["arg"] for i in inputs}
        names = [a.name for a in op._schema.arguments]
        unknown = set(given) - set(names)
        if unknown:
            raise BundleError(f"node {self.node}: {op} has no argument {sorted(unknown)[0]!r}")
        args, kwargs = [], {}
        for a in op._schema.arguments:
            if a.name not in given:
                continue
            value = self._value(given[a.name])
            if not kwargs and not a.kwarg_only and len(args) == names.index(a.name):
                args.append(value)
            else:
                kwargs[a.name] = value
        return tuple(args), kwargs

    def _ref(self, name: str) -> _Ref:
        if name not in self.defined:
            raise BundleError(f"node {self.node} uses {name!r} before it is defined")
        return _Ref(name)

    def _symbolic(self, arg: dict) -> Any:
        (kind, value), = arg.items()
        return self._ref(value) if kind == "as_name" else value

    def _value(self, arg: dict) -> Any:
        (kind, value), = arg.items()
        if kind == "as_none":
            return None
        if kind == "as_tensor":
            return self._ref(value["name"])
        if kind == "as_tensors":
            return [self._ref(t["name"]) for t in value]
        if kind == "as_optional_tensors":
            return [self._value(t) for t in value]
        if kind == "as_optional_tensor":
            return self._value(value)
        if kind in ("as_int", "as_float", "as_bool", "as_string",
                    "as_ints", "as_floats", "as_bools", "as_strings"):
            return list(value) if isinstance(value, list) else value
        if kind in ("as_sym_int", "as_sym_float", "as_sym_bool"):
            return self._symbolic(value)
        if kind in ("as_sym_ints", "as_sym_floats", "as_sym_bools"):
            return [self._symbolic(v) for v in value]
        if kind == "as_scalar_type":
            return _torch_attribute(_lookup(DTYPES, value, f"node {self.node}: dtype"))
        if kind == "as_memory_format":
            return _torch_attribute(_lookup(MEMORY_FORMATS, value,
                                            f"node {self.node}: memory format"))
        if kind == "as_layout":
            return _torch_attribute(_lookup(LAYOUTS, value, f"node {self.node}: layout"))
        if kind == "as_device":
            return _DEVICE  # every tensor the graph creates goes to the program's device
        if kind == "as_complex":
            return complex(value["real"], value["imag"])
        raise UnsafeBundleError(f"node {self.node}: argument kind {kind!r} is not supported "
                                "(no subgraphs, custom objects or operator references)")

    def _binder(self, out: dict) -> Any:
        (kind, value), = out.items()
        if kind == "as_none":
            return None
        if kind == "as_tensor":
            name = value["name"]
        elif kind in ("as_sym_int", "as_sym_float", "as_sym_bool"):
            name = value["as_name"]
        elif kind == "as_tensors":
            return [self._binder({"as_tensor": v}) for v in value]
        elif kind == "as_optional_tensors":
            return [self._binder(v) for v in value]
        else:
            raise BundleError(f"node {self.node}: output kind {kind!r} is not supported")
        self.defined.add(name)
        return name


def _lookup(table: dict[int, str], code: int, what: str) -> str:
    if code not in table:
        raise BundleError(f"{what} code {code} is not supported")
    return table[code]


def _torch_attribute(name: str) -> Any:
    import torch

    return getattr(torch, name)


def _literal_int(value: dict) -> int:
    if set(value) != {"as_int"} or not isinstance(value["as_int"], int):
        raise BundleError(f"stored tensors need literal sizes, got {value}")
    return value["as_int"]


def _names(template: Any) -> list[str]:
    if isinstance(template, _Ref):
        return [template.name]
    if isinstance(template, list):
        return [n for t in template for n in _names(t)]
    return []


def _with_releases(steps: list[_Step], outputs: list[str]) -> list[_Step]:
    """Each step drops the values no later step needs (peak memory = live activations)."""
    last: dict[str, int] = {}
    for index, step in enumerate(steps):
        for name in _names(list(step.args)) + _names(list(step.kwargs.values())):
            last[name] = index
    released = defaultdict(list)
    for name, index in last.items():
        if name not in outputs:
            released[index].append(name)
    return [replace(step, release=tuple(released[i])) for i, step in enumerate(steps)]
