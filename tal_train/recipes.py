"""Training recipes: named sets of defaults for `tal-train` (``--recipe``).

A recipe fills whatever the user left unset: model switches (on top of the ``--preset``, which
fixes the backbone size and input), loss, learning rate, epochs, augmentation, and two
optimizer/sampler details with no option of their own (Nesterov momentum, random PK batches in
the first epochs). Explicit options always win, so ``--recipe qaconv-gs --epochs 10`` is the
official recipe for 10 epochs. The schedule shape is the same in both recipes: x0.1 after two
thirds of the epochs (TAL 20 of 30; QAConv-GS v2.0 StepLR(10) over 15 epochs).

* ``tal`` (default): the paper's TAL setting (Sec. 4.1): both streams, res4 + res5, batch-hard
  triplet loss, lr 0.005, 30 epochs.
* ``qaconv-gs``: the paper's baseline, the official QAConv-GS v2.0 recipe (ShengcaiLiao/QAConv,
  ``main_gs.py`` of the v2.0 release, April 2021; its defaults: ``res50-layer3-f64_pre1_clip512_
  lr3_bs64-k4_ep15s10``): one stream with plain BN (``streams=("di",)``, ``di_norm="bn"``),
  layer3 only (res4), neck 64, pairwise matching loss, lr 0.001 (x0.1 on the ImageNet backbone),
  SGD with Nesterov momentum, 15 epochs, x0.1 after 10, graph sampler after one epoch of random
  PK batches, gradient clip 512, the official augmentation. Its deviations from the official code
  are listed in docs/training.md ("The official QAConv-GS baseline").

Augmentation default (``--augment``): ``qaconv`` (the official code's, which TAL's
implementation is built on) for the ``paper`` preset and for the ``qaconv-gs`` recipe,
``standard`` (flip, pad-and-crop, mild colour jitter) for the ``tiny`` preset of the demo and
tests.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tal_infer.errors import TalError


@dataclass(frozen=True)
class Recipe:
    """Defaults of one recipe; ``model`` holds TALConfig overrides."""
    model: dict[str, Any] = field(default_factory=dict)
    loss: str = "triplet"
    lr: float = 0.005
    epochs: int = 30
    augment: str | None = None   # None: by preset (module docstring)
    nesterov: bool = False
    pk_epochs: int = 0           # first epochs with random PK batches instead of the graph sampler


RECIPES: dict[str, Recipe] = {
    "tal": Recipe(),
    "qaconv-gs": Recipe(model=dict(streams=("di",), di_norm="bn", scales=("res4",),
                                   neck_channels=64),
                        loss="pairwise", lr=0.001, epochs=15, augment="qaconv", nesterov=True,
                        pk_epochs=1),
}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise TalError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return RECIPES[name]


def default_augment(recipe: str, preset: str) -> str:
    """The augmentation a run gets when ``--augment`` is not given."""
    return get_recipe(recipe).augment or ("qaconv" if preset == "paper" else "standard")
