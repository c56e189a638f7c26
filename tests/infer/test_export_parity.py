"""The runtime on a bundle written by `export_bundle`: tal-infer's scores equal the PyTorch
model's `model.match` and the bundle's matcher.onnx; every installed backend agrees."""
from __future__ import annotations

import cv2
import numpy as np
import onnxruntime as ort
from click.testing import CliRunner

from tal_infer import ReIDEngine
from tal_infer.devices import cuda_available
from tal_infer.cli import main


def _model_inputs(model, paths):
    """What the training side feeds the model: BGR -> RGB, bilinear resize, mean/std."""
    import torch

    h, w = model.config.image_size
    imgs = [cv2.resize(cv2.imread(str(p)), (w, h), interpolation=cv2.INTER_LINEAR)[:, :, ::-1]
            for p in paths]
    x = np.stack(imgs).astype(np.float32) / 255.0
    x = (x - np.array(model.config.mean, np.float32)) / np.array(model.config.std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _cli_scores(bundle, folders, out, *extra):
    queries, gallery = folders
    res = CliRunner().invoke(main, ["--gallery", str(gallery), "--queries", str(queries),
                                    "--model", str(bundle), "--scores", str(out),
                                    *extra])
    assert res.exit_code == 0, res.stderr
    return np.load(out), res


def test_cli_scores_equal_model_match(exported, crop_folders, tmp_path):
    model, bundle = exported
    saved, _ = _cli_scores(bundle, crop_folders, tmp_path / "s.npz", "--backend", "onnxruntime",
                           "--device", "cpu")
    qf = model.extract(_model_inputs(model, saved["queries"]))
    gf = model.extract(_model_inputs(model, saved["gallery"]))
    want = model.match(qf, gf).numpy()
    np.testing.assert_allclose(saved["scores"], want, rtol=1e-4,
                               atol=1e-4 * float(np.abs(want).max()))


def test_runtime_scores_equal_matcher_onnx(exported):
    _, bundle = exported
    engine = ReIDEngine(bundle, backend="onnxruntime", device="cpu")
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (9, engine.bundle.height, engine.bundle.width, 3), np.uint8)
    raw = engine.extractor(images)  # extractor layout, what matcher.onnx takes
    session = ort.InferenceSession(str(bundle / "matcher.onnx"))
    feeds = {}
    for inp in session.get_inputs():
        side, key = inp.name.split("_", 1)
        feeds[inp.name] = raw[key][:4] if side == "query" else raw[key][4:]
    want = session.run(["scores"], feeds)[0]
    feats = engine.embed(list(images))
    got = engine.scores({k: v[:4] for k, v in feats.items()}, {k: v[4:] for k, v in feats.items()})
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


def _backends(bundle):
    found = ["onnxruntime"]
    try:
        import torch  # noqa: F401
        if (bundle / "extractor.pt2").is_file():
            found.append("torch")
    except ImportError:
        pass
    if (bundle / "extractor.plan").is_file() and cuda_available():
        found.append("tensorrt")
    return found


def test_every_installed_backend_gives_the_same_scores(exported, crop_folders, tmp_path):
    _, bundle = exported
    reference, _ = _cli_scores(bundle, crop_folders, tmp_path / "ref.npz", "--backend",
                               "onnxruntime", "--device", "cpu")
    for backend in _backends(bundle):
        saved, res = _cli_scores(bundle, crop_folders, tmp_path / f"{backend}.npz",
                                 "--backend", backend)
        assert backend in res.stderr  # the chosen backend is named
        scale = float(np.abs(reference["scores"]).max())
        # fp16 autocast / TensorRT fp16 on a GPU: features to about 1e-3
        tol = 1e-4 if "cuda" not in res.stderr else 2e-2
        np.testing.assert_allclose(saved["scores"], reference["scores"], rtol=tol,
                                   atol=tol * scale, err_msg=backend)
    _, res = _cli_scores(bundle, crop_folders, tmp_path / "auto.npz")
    assert "extractor: onnxruntime[CPUExecutionProvider] on cpu" in res.stderr \
        or cuda_available()
