"""`tal-train --help`, the README and docs/training.md state the tiny preset as the code
builds it."""
from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner
from torch import nn

from tal_train.cli import main as cli_main
from tal_train.models.backbones import backbone_spec
from tal_train.models.config import PRESETS

ROOT = Path(__file__).resolve().parents[2]


def test_help_readme_and_docs_agree_with_the_tiny_preset():
    tiny, paper = PRESETS["tiny"], PRESETS["paper"]
    net = backbone_spec(tiny["backbone"]).build(norm_layer=nn.BatchNorm2d)
    full = backbone_spec(paper["backbone"]).build(norm_layer=nn.BatchNorm2d)
    base_width = net.input_conv().out_channels
    assert full.input_conv().out_channels == 4 * base_width  # "a quarter of the width"
    stated = f"ResNet-18-IBN-b at a quarter of the width, base width {base_width}, " \
             f"{tiny['image_size'][0]}x{tiny['image_size'][1]}"
    help_text = " ".join(CliRunner().invoke(cli_main, ["--help"]).output.split())
    assert stated in help_text
    readme = (ROOT / "README.md").read_text()
    training = (ROOT / "docs" / "training.md").read_text()
    assert f"base width {base_width}" in readme
    assert f"quarter of the width, base width {base_width}), 128x64" in training
    assert "IBN-b/" not in readme + training  # "/4" and "/16" read as opposite things
