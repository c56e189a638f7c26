"""Shared fixtures of the export tests: a tiny randomized model, its checkpoint (with a global
descriptor head), generated crops, fp32 and fp16 bundles."""
from __future__ import annotations

from pathlib import Path

import pytest

from tal_train.data.synthetic import SyntheticConfig, synthesize
from tal_train.distill import add_descriptor
from tal_train.models import TALModel
from tal_train.models.descriptor import DescriptorHead

from tiny_models import random_descriptor_head, randomized_model, write_checkpoint


@pytest.fixture(scope="session")
def tiny_model() -> TALModel:
    return randomized_model()


@pytest.fixture(scope="session")
def tiny_descriptor(tiny_model) -> DescriptorHead:
    return random_descriptor_head(tiny_model)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_model, tiny_descriptor) -> Path:
    ckpt = write_checkpoint(tmp_path_factory.mktemp("ckpt") / "ckpt.pth", tiny_model)
    return add_descriptor(ckpt, tiny_descriptor, {"test": "random weights"})


@pytest.fixture(scope="session")
def crops(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("crops")
    synthesize(folder, SyntheticConfig(identities=10, domains=1, cameras=2, images_per_id=(3, 4),
                                       distractors=0, junk=0, seed=3), progress=False)
    return folder


@pytest.fixture(scope="session")
def fp16_bundle(tmp_path_factory, tiny_checkpoint, crops) -> Path:
    from tal_export import export_bundle

    return export_bundle(tiny_checkpoint, tmp_path_factory.mktemp("bundles") / "fp16", fp16=True,
                         verify_images=crops, progress=False)


@pytest.fixture(scope="session")
def fp32_bundle(tmp_path_factory, tiny_checkpoint) -> tuple[Path, str]:
    """A bundle written through the CLI (default options), and the CLI's output."""
    from click.testing import CliRunner

    from tal_export.cli import main

    out = tmp_path_factory.mktemp("bundles") / "fp32"
    result = CliRunner().invoke(main, [str(tiny_checkpoint), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    return out, result.output
