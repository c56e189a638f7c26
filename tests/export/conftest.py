"""Shared fixtures of the export tests: a tiny randomized model, its checkpoint, a bundle."""
from __future__ import annotations

from pathlib import Path

import pytest

from tal_train.models import TALModel

from tiny_models import randomized_model, write_checkpoint


@pytest.fixture(scope="session")
def tiny_model() -> TALModel:
    return randomized_model()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_model) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "ckpt.pth", tiny_model)


@pytest.fixture(scope="session")
def fp32_bundle(tmp_path_factory, tiny_checkpoint) -> tuple[Path, str]:
    """A bundle written through the CLI (default options), and the CLI's output."""
    from click.testing import CliRunner

    from tal_export.cli import main

    out = tmp_path_factory.mktemp("bundles") / "fp32"
    result = CliRunner().invoke(main, [str(tiny_checkpoint), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    return out, result.output
