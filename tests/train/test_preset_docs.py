"""`tal-train --help`, the README and docs/training.md state the tiny preset as the code
builds it."""
from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from tal_train.cli import main as cli_main
from tal_train.models.config import PRESETS

ROOT = Path(__file__).resolve().parents[2]


def test_help_readme_and_docs_agree_with_the_tiny_preset():
    tiny, paper = PRESETS["tiny"], PRESETS["paper"]
    assert paper["base_width"] == 4 * tiny["base_width"]  # "a quarter of the width"
    stated = f"ResNet-{tiny['depth']}-IBN-{tiny['ibn']} at a quarter of the width, base width " \
             f"{tiny['base_width']}, {tiny['image_size'][0]}x{tiny['image_size'][1]}"
    help_text = " ".join(CliRunner().invoke(cli_main, ["--help"]).output.split())
    assert stated in help_text
    readme = (ROOT / "README.md").read_text()
    training = (ROOT / "docs" / "training.md").read_text()
    assert f"base width {tiny['base_width']}" in readme
    assert f"quarter of the width (base width {tiny['base_width']})" in training
    assert "IBN-b/" not in readme + training  # "/4" and "/16" read as opposite things
