"""Fixtures of the runtime tests (helpers in runtime_fixtures.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

from fake_clock import FakeClock
from runtime_fixtures import GALLERY_NAMES, QUERY_NAMES, write_crops, write_fake_bundle
from tal_infer import batching


@pytest.fixture(scope="session")
def fake_bundle(tmp_path_factory) -> Path:
    return write_fake_bundle(tmp_path_factory.mktemp("bundles") / "fake-0")


@pytest.fixture(scope="session")
def fake_bundle_v2(tmp_path_factory) -> Path:
    """The fake bundle with a global descriptor output (format version 2)."""
    return write_fake_bundle(tmp_path_factory.mktemp("bundles") / "fake-desc", descriptor=True)


@pytest.fixture(scope="session")
def fake_bundle_fp16(tmp_path_factory) -> Path:
    """The fake bundle's graph with fp16 outputs, its manifest saying float16."""
    return write_fake_bundle(tmp_path_factory.mktemp("bundles") / "fake-fp16", dtype="float16")


@pytest.fixture()
def fake_clock(monkeypatch) -> FakeClock:
    """The clock of every MicroBatcher created in the test (see fake_clock.py)."""
    clock = FakeClock()
    monkeypatch.setattr(batching, "time", clock)
    return clock


@pytest.fixture()
def crop_folders(tmp_path) -> tuple[Path, Path]:
    """(queries, gallery) folders of Market-named crops: 4 queries, 12 gallery entries."""
    write_crops(tmp_path / "query", QUERY_NAMES, seed=1)
    write_crops(tmp_path / "gallery", GALLERY_NAMES, seed=2)
    return tmp_path / "query", tmp_path / "gallery"


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """A tiny random-weight TAL model, its checkpoint and its bundle from `export_bundle`:
    (model, bundle folder). Skipped only where torch is not installed (a runtime-only
    machine); any other ImportError, e.g. a broken tal_export, fails the tests using it."""
    torch = pytest.importorskip("torch")
    from tal_export import export_bundle
    from tal_train.checkpoint import save_checkpoint
    from tal_train.models import TALConfig, build_model

    torch.manual_seed(1234)
    config = TALConfig.preset("tiny", domains=("a", "b"), image_size=(64, 32))
    model = build_model(config).eval()
    with torch.no_grad():  # non-trivial norms and heads, as after training
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        for name, b in model.named_buffers():
            if name.endswith("running_var"):
                b.uniform_(0.5, 2.0)
            elif name.endswith("running_mean"):
                b.normal_(0, 0.1)
    folder = tmp_path_factory.mktemp("export")
    ckpt = save_checkpoint(folder / "ckpt.pth", model_state=model.state_dict(),
                           config=config.to_dict(), epoch=1, run_name="tiny-runtime-test")
    return model, export_bundle(ckpt, folder / "bundle", verify=False, progress=False)
