"""Runtime test inputs: a contract-conforming bundle built with onnx.helper, and crop folders.

The bundle follows docs/bundle.md without the export code: a small conv graph turns uint8 BGR
images into L2-normalized maps ``ds_<scale>`` [N, K, C, h, w] / ``di_<scale>`` [N, C, h, w] at
two scales, and heads.npz holds random projections (MSDA attention for DS, ms for DI). With
``descriptor=True`` (format version 2) the graph also gives ``descriptor`` [N, DESCRIPTOR_DIM],
the L2-normalized channel means of the res4 conv. The runtime must work for any such bundle,
so this is an independent check of the reader side.
``dtype="float16"`` makes an fp16 bundle: the same maps cast to fp16, the manifest saying so.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np

K, C, HIDDEN = 2, 8, 3
DESCRIPTOR_DIM = (K + 1) * C
HEIGHT, WIDTH = 32, 16
SCALES = {"res4": (4, 2, 8), "res5": (2, 1, 16)}  # (h, w, stride)


def _extractor(rng: np.random.Generator, dtype: str, descriptor: bool = False):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    out_c = (K + 1) * C
    inits = [numpy_helper.from_array(a, n) for n, a in [
        ("w4", rng.standard_normal((out_c, 3, 8, 8)).astype(np.float32) * 0.1),
        ("b4", rng.standard_normal(out_c).astype(np.float32) * 0.1),
        ("w5", rng.standard_normal((out_c, out_c, 2, 2)).astype(np.float32) * 0.3),
        ("scale", np.array(1 / 255, np.float32)),
        ("ds_idx", np.arange(K, dtype=np.int64)),
        ("di_idx", np.array(K, np.int64)),
    ]]
    nodes = [helper.make_node("Cast", ["images"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Transpose", ["f"], ["nchw"], perm=[0, 3, 1, 2]),
             helper.make_node("Mul", ["nchw", "scale"], ["x"]),
             helper.make_node("Conv", ["x", "w4", "b4"], ["c4"], strides=[8, 8],
                              kernel_shape=[8, 8]),
             helper.make_node("Tanh", ["c4"], ["raw_res4"]),
             helper.make_node("Conv", ["raw_res4", "w5"], ["raw_res5"], strides=[2, 2],
                              kernel_shape=[2, 2])]
    outputs = []
    out_type = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16}[dtype]
    for scale, (h, w, _) in SCALES.items():
        shape = numpy_helper.from_array(np.array([-1, K + 1, C, h, w], np.int64), f"shape_{scale}")
        inits.append(shape)
        nodes += [helper.make_node("Reshape", [f"raw_{scale}", f"shape_{scale}"], [f"s_{scale}"]),
                  helper.make_node("LpNormalization", [f"s_{scale}"], [f"n_{scale}"], axis=2, p=2),
                  helper.make_node("Gather", [f"n_{scale}", "ds_idx"], [f"g_ds_{scale}"], axis=1),
                  helper.make_node("Gather", [f"n_{scale}", "di_idx"], [f"g_di_{scale}"], axis=1),
                  helper.make_node("Cast", [f"g_ds_{scale}"], [f"ds_{scale}"], to=out_type),
                  helper.make_node("Cast", [f"g_di_{scale}"], [f"di_{scale}"], to=out_type)]
        outputs += [helper.make_tensor_value_info(f"ds_{scale}", out_type, ["N", K, C, h, w]),
                    helper.make_tensor_value_info(f"di_{scale}", out_type, ["N", C, h, w])]
    if descriptor:
        inits.append(numpy_helper.from_array(np.array([2, 3], np.int64), "pool_axes"))
        nodes += [helper.make_node("ReduceMean", ["raw_res4", "pool_axes"], ["pooled"],
                                   keepdims=0),
                  helper.make_node("LpNormalization", ["pooled"], ["g_descriptor"], axis=1, p=2),
                  helper.make_node("Cast", ["g_descriptor"], ["descriptor"], to=out_type)]
        outputs.append(helper.make_tensor_value_info("descriptor", out_type,
                                                     ["N", DESCRIPTOR_DIM]))
    graph = helper.make_graph(nodes, "fake_extractor", [helper.make_tensor_value_info(
        "images", TensorProto.UINT8, ["N", HEIGHT, WIDTH, 3])], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _heads(rng: np.random.Generator) -> dict[str, np.ndarray]:
    arrays = {"ds/affine": np.array([0.7, -0.2], np.float32),
              "di/affine": np.array([1.3, 0.1], np.float32)}
    for scale, (h, w, _) in SCALES.items():
        hw = h * w
        arrays[f"ds/{scale}/wq"] = rng.standard_normal((K, hw, 1 + HIDDEN)).astype(np.float32)
        arrays[f"ds/{scale}/wg"] = rng.standard_normal((K, hw, 1 + HIDDEN)).astype(np.float32)
        arrays[f"ds/{scale}/b1"] = rng.standard_normal(HIDDEN).astype(np.float32)
        arrays[f"ds/{scale}/w2"] = rng.standard_normal((K, HIDDEN)).astype(np.float32)
        arrays[f"ds/{scale}/b2"] = rng.standard_normal(K).astype(np.float32)
        arrays[f"di/{scale}/wq"] = rng.standard_normal((hw, 1)).astype(np.float32)
        arrays[f"di/{scale}/wg"] = rng.standard_normal((hw, 1)).astype(np.float32)
    return arrays


def write_fake_bundle(folder: Path, seed: int = 0, dtype: str = "float32",
                      descriptor: bool = False) -> Path:
    """A bundle per docs/bundle.md with a random conv extractor and random heads (format
    version 2 with a global descriptor output when ``descriptor``, else version 1)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "extractor.onnx").write_bytes(_extractor(rng, dtype, descriptor))
    np.savez(folder / "heads.npz", **_heads(rng))
    features = {}
    for scale, (h, w, _) in SCALES.items():
        features[f"ds_{scale}"] = {"shape": [-1, K, C, h, w], "hw": [h, w]}
        features[f"di_{scale}"] = {"shape": [-1, C, h, w], "hw": [h, w]}
    files = {name: {"sha256": hashlib.sha256((folder / name).read_bytes()).hexdigest(),
                    "bytes": (folder / name).stat().st_size}
             for name in ("extractor.onnx", "heads.npz")}
    manifest = {
        "format": "tal-reid-bundle", "format_version": 2 if descriptor else 1,
        "toolkit_version": "0.1.0",
        "run_name": f"fake-{seed}",
        "input": {"name": "images", "dtype": "uint8", "layout": "NHWC", "color": "BGR",
                  "height": HEIGHT, "width": WIDTH, "resize": "bilinear",
                  "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
        "domains": {"names": ["a", "b"], "count": K}, "streams": ["ds", "di"],
        "scales": list(SCALES), "features": features, "dtype": dtype, "opset": 18,
        "matching": {"score": ["ds", "di"], "scales": list(SCALES),
                     "streams": {"ds": {"mode": "attention"}, "di": {"mode": "ms"}}},
        "files": files}
    if descriptor:
        manifest["descriptor"] = {"shape": [-1, DESCRIPTOR_DIM], "method": "pooled (test)"}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return folder


def random_features(bundle, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """n random feature items per key of a loaded bundle, match layout, unit-length C-vectors."""
    out = {}
    for key, spec in bundle.features.items():
        x = rng.standard_normal((n, *spec.match_shape)).astype(np.float32)
        out[key] = x / np.linalg.norm(x, axis=-1, keepdims=True)
    return out


def person_crop(pid: int, rng: np.random.Generator, size=(48, 24)) -> np.ndarray:
    """A crop whose colours depend on the identity (so ranks are not pure noise) plus noise."""
    base = np.random.default_rng(pid).integers(0, 255, (4, 1, 3))
    img = np.repeat(np.repeat(base, size[0] // 4, axis=0), size[1], axis=1).astype(np.int16)
    img = img + rng.integers(-20, 20, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_crops(folder: Path, names: list[str], seed: int = 0) -> list[Path]:
    """Market-named crops (pid from the name) as JPEG/PNG files."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        pid = int(name.split("_")[0])
        path = folder / name
        ok, data = cv2.imencode(path.suffix, person_crop(abs(pid), rng))
        assert ok
        path.write_bytes(data.tobytes())
        paths.append(path)
    return paths


QUERY_NAMES = [f"{pid:04d}_c1s1_{pid * 10:06d}_00.jpg" for pid in (1, 2, 3, 4)]
GALLERY_NAMES = ([f"{pid:04d}_c2s1_{pid * 10 + 1:06d}_0{j}.jpg" for pid in (1, 2, 3, 4, 5)
                  for j in range(2)] + ["0000_c3s1_000001_00.jpg", "0001_c1s1_000002_00.jpg"])


_ISOLATED = """
import sys, importlib.abc
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {{"torch", "tal_train", "tal_export"}}:
            raise ModuleNotFoundError(f"blocked for this test: {{name}}")
sys.meta_path.insert(0, _Block())
from {module} import main
try:
    main(sys.argv[1:])
except SystemExit as exit:
    assert not exit.code, exit.code
leaked = sorted(m for m in sys.modules if m.split('.')[0] in {{"torch", "tal_train", "tal_export"}})
assert not leaked, leaked
print("isolated run ok")
"""


def isolated_cli(module: str) -> str:
    """A ``python -c`` script that runs ``module``'s click ``main`` with argv where torch,
    tal_train and tal_export cannot be imported, fails if any of them got loaded, and prints
    "isolated run ok": the runtime on a machine without torch or the training code."""
    return _ISOLATED.format(module=module)
