"""A stand-in for the TensorRT 10 runtime API that tal_infer.tensorrt_runtime uses, for CPU tests.

A "plan" here is JSON naming an ONNX graph, the engine's I/O dtypes, one optimization profile
and, optionally, I/O shapes that differ from the graph's (an engine built from another graph). The stand-in behaves as TensorRT does where the runtime depends on it:
`set_input_shape` returns False outside the profile (it does not raise), output shapes are known
only after every input shape is set, `execute_async_v3` reads the inputs from and writes the
outputs to the device addresses it was given (here CPU memory, read through ctypes) and returns
False when a shape or address is missing. The graph runs in ONNX Runtime, in float32 where the
engine's tensors are fp16 (as an fp16 engine's fp32 accumulation would). Every execution's input
shapes are recorded in `calls`.
"""
from __future__ import annotations

import ctypes
import json
import importlib.machinery
import types
from pathlib import Path

import numpy as np
import onnxruntime as ort


class DataType:
    def __init__(self, name: str, nptype):
        self.name, self.nptype = name, np.dtype(nptype)


DTYPES = {name: DataType(name, t) for name, t in (("FLOAT", np.float32), ("HALF", np.float16),
                                                 ("UINT8", np.uint8))}


def _memory(address: int, dtype: np.dtype, shape) -> np.ndarray:
    count = int(np.prod(shape)) * dtype.itemsize
    return np.frombuffer((ctypes.c_char * count).from_address(address), dtype).reshape(shape)


class Engine:
    def __init__(self, spec: dict, calls: list):
        self.session = ort.InferenceSession(spec["onnx"], providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.dtypes = {n: DTYPES[spec["dtypes"].get(n, "FLOAT")] for n in self.inputs + self.outputs}
        self.profile = {n: [tuple(s) for s in shapes] for n, shapes in spec["profile"].items()}
        self.shapes = {t.name: tuple(d if isinstance(d, int) else -1 for d in t.shape)
                       for t in self.session.get_inputs() + self.session.get_outputs()}
        self.shapes.update({n: tuple(s) for n, s in spec.get("shapes", {}).items()})
        self.calls = calls

    @property
    def num_io_tensors(self) -> int:
        return len(self.inputs) + len(self.outputs)

    def get_tensor_name(self, i: int) -> str:
        return (self.inputs + self.outputs)[i]

    def get_tensor_mode(self, name: str):
        return TensorIOMode.INPUT if name in self.inputs else TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name: str) -> DataType:
        return self.dtypes[name]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        """The built shape, -1 for a dynamic dimension (as TensorRT's engine reports it)."""
        return self.shapes[name]

    def get_tensor_profile_shape(self, name: str, profile: int):
        assert profile == 0
        return self.profile[name]

    def create_execution_context(self):
        return Context(self)


class Context:
    def __init__(self, engine: Engine):
        self.engine, self.shapes, self.addresses = engine, {}, {}

    def set_input_shape(self, name: str, shape) -> bool:
        low, _, high = self.engine.profile[name]
        if len(shape) != len(low) or not all(a <= s <= b for a, s, b in zip(low, shape, high)):
            return False
        self.shapes[name] = tuple(shape)
        return True

    def set_tensor_address(self, name: str, address: int) -> bool:
        self.addresses[name] = address
        return True

    def _feed(self, read: bool) -> dict[str, np.ndarray]:
        feed = {}
        for name in self.engine.inputs:
            dtype = self.engine.dtypes[name].nptype
            data = (_memory(self.addresses[name], dtype, self.shapes[name]) if read
                    else np.zeros(self.shapes[name], dtype))
            want = self.engine.session.get_inputs()[self.engine.inputs.index(name)].type
            feed[name] = data.astype(np.uint8 if "uint8" in want else np.float32)
        return feed

    def get_tensor_shape(self, name: str):
        if set(self.shapes) != set(self.engine.inputs):
            return (-1,)
        out = self.engine.session.run([name], self._feed(read=False))[0]
        return out.shape

    def execute_async_v3(self, stream: int) -> bool:
        engine = self.engine
        if set(self.shapes) != set(engine.inputs) or set(self.addresses) != set(
                engine.inputs + engine.outputs):
            return False
        engine.calls.append({n: self.shapes[n] for n in engine.inputs})
        results = engine.session.run(engine.outputs, self._feed(read=True))
        for name, value in zip(engine.outputs, results):
            dtype = engine.dtypes[name].nptype
            target = _memory(self.addresses[name], dtype, value.shape)
            target[...] = value.astype(dtype)
        return True


TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")


class Runtime:
    def __init__(self, logger):
        pass

    def deserialize_cuda_engine(self, data: bytes):
        try:
            spec = json.loads(data)
        except ValueError:
            return None  # what TensorRT does with a plan it cannot read
        return Engine(spec, CALLS.setdefault(spec["onnx"], []))


CALLS: dict[str, list] = {}


def fake_tensorrt_runtime(version: str = "10.13.0.35") -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)  # find_spec() reads it
    trt.__version__ = version
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    trt.Runtime, trt.TensorIOMode = Runtime, TensorIOMode
    trt.nptype = lambda dtype: dtype.nptype
    return trt


def write_plan(path: Path, onnx: Path, profile: dict, dtypes: dict | None = None,
               shapes: dict | None = None) -> Path:
    """A stand-in plan: the graph to run, (min, opt, max) per input, I/O dtypes by name, and
    I/O shapes to report instead of the graph's."""
    path.write_text(json.dumps({"onnx": str(onnx), "profile": profile, "dtypes": dtypes or {},
                                "shapes": shapes or {}}))
    CALLS.pop(str(onnx), None)
    return path


def calls_of(onnx: Path) -> list[dict]:
    return CALLS.setdefault(str(onnx), [])
