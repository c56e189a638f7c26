"""Both DABN readings (``dabn_stats`` experts / own) through the whole export: the bundle's
parity check passes, and the exported extractor in ONNX Runtime gives the PyTorch model's DI
features on fresh random images (the ``own`` statistics are folded, not dropped)."""
from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import torch

from tal_export import export_bundle
from tal_export.parity import reference_input

from tiny_models import randomized_model, write_checkpoint


def _check_bundle_matches(model, out, stats: str) -> None:
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["parity"]["passed"] is True
    assert manifest["model_config"]["dabn_stats"] == stats == model.config.dabn_stats
    images = torch.randint(0, 256, (5, *model.config.image_size, 3), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(int(np.random.randint(1 << 30))))
    session = ort.InferenceSession(str(out / "extractor.onnx"))
    got = dict(zip([o.name for o in session.get_outputs()],
                   session.run(None, {"images": images.numpy()})))
    want = model.extract(reference_input(images.numpy(), model.config.mean, model.config.std))
    for name in ("di_res4", "di_res5"):
        np.testing.assert_allclose(got[name], want[name].numpy(), rtol=0, atol=2e-5)


def test_bundle_of_the_experts_reading_matches_the_model(tiny_model, fp32_bundle):
    """``experts`` is the default reading: the suite's shared tiny fp32 bundle (conftest.py)
    is that bundle, exported with its parity check; no second export of the same thing."""
    _check_bundle_matches(tiny_model, fp32_bundle[0], "experts")


def test_bundle_of_the_own_reading_matches_the_model(tmp_path):
    """The reading is the DI stream's; a DI-only model exports in 2/3 of the time (23 s
    instead of 33 s on 2 cores) and checks the same folding."""
    model = randomized_model(seed=11, dabn_stats="own", streams=("di",))
    ckpt = write_checkpoint(tmp_path / "ckpt.pth", model, run_name="dabn-own")
    _check_bundle_matches(model, export_bundle(ckpt, tmp_path / "bundle", progress=False), "own")


def test_the_two_readings_give_different_di_features():
    """Same weights, other reading: the folded DI stream must change (a check that can fail)."""
    experts = randomized_model(seed=12, dabn_stats="experts")
    own = randomized_model(seed=12, dabn_stats="own")
    own.load_state_dict(experts.state_dict(), strict=False)  # only the own statistics differ
    images = torch.randint(0, 256, (2, *own.config.image_size, 3), dtype=torch.uint8)
    x = reference_input(images.numpy(), own.config.mean, own.config.std)
    a, b = experts.extract(x)["di_res4"], own.extract(x)["di_res4"]
    assert (a - b).abs().max() > 1e-3
    torch.testing.assert_close(experts.extract(x)["ds_res4"], own.extract(x)["ds_res4"])
