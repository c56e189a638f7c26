"""``tal-train``: train a TAL model on the paper's protocols (a thin click layer over
`tal_train.engine.train`).

Every option is a `TrainOptions` field of the same name, its default read from `TrainOptions`
(one definition); click turns the text into typed values (comma lists, sizes, milestones), so
the command builds one `TrainOptions` and calls `train`.
"""
from __future__ import annotations

from typing import Any

import click
from click.core import ParameterSource

from tal_infer import console
from tal_infer.cli_common import SizeType, device_option, friendly_errors, verbosity_options

from .data.transforms import AUGMENTATIONS
from .engine import train
from .options import DEFAULT_BATCH_SIZE, TrainOptions, resume_options
from .losses import LOSSES
from .models.backbones import backbone_names
from .models.config import DS_HEADS, PRESETS, TALConfig
from .models.norm import DABN_STATS, DI_NORMS
from .recipes import RECIPES
from .schedule import default_milestones

DEFAULTS = TrainOptions()
TAL, GS = RECIPES["tal"], RECIPES["qaconv-gs"]

EPILOG = """\b
Examples:
  tal-train --protocol p2 --target market1501 --data-root data
  tal-train --protocol p1 --source msmt17 --targets market1501,cuhk03
  tal-train --protocol p2 --target domain-d --data-root data/synthetic --preset tiny \\
            --epochs 3 --iters 60 --out runs/demo
  tal-train --protocol p2 --target domain-c --data-root data/synthetic --preset tiny \\
            --streams di --di-norm bn                       (one-stream baseline, TAL recipe)
  tal-train --protocol p2 --target market1501 --recipe qaconv-gs
                                                    (the official QAConv-GS v2.0 baseline)
  tal-train --protocol p2 --target domain-d --data-root data/synthetic --preset tiny \\
            --backbone osnet_ain_x0_25                      (another backbone)
  tal-train --resume runs/p2-market1501/ckpt.pth --epochs 40
  torchrun --nproc_per_node 2 -m tal_train --protocol p2 --target market1501"""


def _names(ctx: click.Context, param: click.Parameter, value: str | None) -> list[str] | None:
    """A comma-separated option as a list of names."""
    if value is None:
        return None
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise click.BadParameter(f"expected a comma-separated list, got {value!r}")
    return names


def _milestones(ctx: click.Context, param: click.Parameter, value: str | None
                ) -> list[int] | None:
    names = _names(ctx, param, value)
    if names is None:
        return None
    if not all(n.isdigit() and int(n) >= 1 for n in names):
        raise click.BadParameter(f"{value!r}: expected epochs like 20 or 20,25")
    return [int(n) for n in names]


def _size(ctx: click.Context, param: click.Parameter, value: tuple[int, int] | None
          ) -> list[int] | None:
    return None if value is None else list(value)


@click.command(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--protocol", type=click.Choice(["p1", "p2"]), default=DEFAULTS.protocol,
              show_default=True,
              help="p1: single source, domains = its cameras; p2: leave-one-out over datasets.")
@click.option("--source", help="p1: the source dataset (name or folder under --data-root).")
@click.option("--targets", callback=_names,
              help="p1: comma-separated targets (default: every other dataset with a "
                   "query/gallery split).")
@click.option("--target", help="p2: the held-out target dataset.")
@click.option("--sources", callback=_names,
              help="p2: comma-separated source datasets (default: all others).")
@click.option("--data-root", default=DEFAULTS.data_root, show_default=True,
              help="Folder holding the datasets by their usual folder names.")
@click.option("--preset", type=click.Choice(list(PRESETS)), default=DEFAULTS.preset,
              show_default=True,
              help="Model preset (paper: resnet50_ibn_b, 384x128; tiny: resnet18_ibn_b_x0_25, "
                   "ResNet-18-IBN-b at a quarter of the width, base width 16, 128x64, for CPU).")
@click.option("--backbone", metavar="NAME",
              help="Backbone instead of the preset's, one of: " + ", ".join(backbone_names())
                   + " (docs/training.md).")
@click.option("--recipe", type=click.Choice(list(RECIPES)), default=DEFAULTS.recipe,
              show_default=True,
              help="Defaults for everything not given: tal (the paper's TAL) or qaconv-gs (the "
                   "official QAConv-GS v2.0 baseline: one stream, res4, neck 64, pairwise loss, "
                   "lr 0.001, 15 epochs; docs/training.md).")
@click.option("--streams", callback=_names, help="Ablation: ds, di or ds,di (default both).")
@click.option("--scales", callback=_names,
              help="Ablation: res4, res5 or res4,res5 (default both).")
@click.option("--di-norm", type=click.Choice(DI_NORMS),
              help=f"Ablation: DI-stream norm (default {TALConfig.di_norm}).")
@click.option("--ds-head", type=click.Choice(DS_HEADS),
              help=f"Ablation: DS matching head (default {TALConfig.ds_head}).")
@click.option("--dabn-stats", type=click.Choice(DABN_STATS),
              help="DABN reading: experts (mix the experts' running statistics) or own (the DI "
                   "stream's own statistics, mix the experts' affines) "
                   f"[default: {TALConfig.dabn_stats}].")
@click.option("--image-size", type=SizeType(example="256x128"), callback=_size,
              help="Input HxW instead of the preset's, e.g. 256x128.")
@click.option("--epochs", type=int,
              help=f"Epochs to train [default: {TAL.epochs}; qaconv-gs: {GS.epochs}].")
@click.option("--iters", type=int,
              help="Iterations per epoch [default: one pass over the identities].")
@click.option("--batch-size", type=int,
              help="Images per batch [default: " + ", ".join(
                  f"{n} {preset}" for preset, n in DEFAULT_BATCH_SIZE.items()) + "].")
@click.option("--instances", default=DEFAULTS.instances, show_default=True, type=int,
              help="Images per identity in a batch.")
@click.option("--sampler", type=click.Choice(["gs", "pk"]), default=DEFAULTS.sampler,
              show_default=True, help="gs: graph sampler (QAConv-GS); pk: random identities.")
@click.option("--lr", type=float,
              help=f"Learning rate [default: {TAL.lr}; qaconv-gs: {GS.lr}].")
@click.option("--milestones", callback=_milestones,
              help="Epochs after which the lr drops x0.1 [default: 2/3 of --epochs, i.e. "
                   f"{default_milestones(TAL.epochs)[0]} of {TAL.epochs}].")
@click.option("--loss", type=click.Choice(LOSSES),
              help="triplet (the paper's) or pairwise (QAConv-GS v2.0's pairwise matching "
                   "loss) [default: the recipe's].")
@click.option("--margin", default=DEFAULTS.margin, show_default=True, type=float,
              help="Triplet margin.")
@click.option("--mining", type=click.Choice(["hard", "all"]),
              help="Triplet mining: hard (paper) or all [default: hard with ImageNet weights, "
                   "all from random init, where batch-hard collapses; docs/training.md].")
@click.option("--clip", default=DEFAULTS.clip, show_default=True, type=float,
              help="Gradient-norm clip (0 = off).")
@click.option("--pretrained", help="ImageNet weights in the backbone's upstream layout (path or "
                                   "URL; 'none' = random init) [default: the backbone's "
                                   "published weights for paper (an error when they cannot be "
                                   "loaded), none for tiny].")
@click.option("--augment", type=click.Choice(list(AUGMENTATIONS)),
              help="Training augmentation: standard (flip, crop, mild colour jitter), qaconv "
                   "(the official QAConv-GS code's: + rotation, strong jitter, random "
                   "occlusion) or none [default: qaconv for the paper preset and the qaconv-gs "
                   "recipe, standard otherwise].")
@click.option("--seed", default=DEFAULTS.seed, show_default=True, type=int, help="Random seed.")
@device_option
@click.option("--amp", is_flag=True, help="Mixed precision (CUDA only).")
@click.option("--workers", default=DEFAULTS.workers, show_default=True, type=int,
              help="DataLoader workers.")
@click.option("--eval-every", type=int, help="Evaluate every N epochs [default: after the last].")
@click.option("--run-name", help="Run name [default: p1-<source> / p2-<target>].")
@click.option("--out", help="Output folder [default: runs/<run-name>].")
@click.option("--resume", type=click.Path(dir_okay=False),
              help="Continue the run of this checkpoint at its next epoch with its settings: "
                   "--epochs, --eval-every, --out, --device, --workers may change; other "
                   "options may be repeated, but only with the checkpoint's values.")
@verbosity_options
@friendly_errors
def main(**params: Any) -> None:
    """Train a TAL model (two-stream adaptive learning, DSBN experts + DABN) and evaluate it on
    the target datasets. Writes OUT/ckpt.pth, OUT/metrics.json (mAP and top-k in percent),
    OUT/train_log.json and OUT/curves.png."""
    options = TrainOptions(**params, progress=console.bars_enabled())
    if options.resume:
        options = resume_options(options.resume, progress=options.progress,
                                 **_typed_again(params))
    result = train(options)
    click.echo(f"{result.run_name}: {result.epoch} epochs in {result.seconds:.0f} s; "
               f"checkpoint {result.checkpoint}, metrics {result.out / 'metrics.json'}")


def _typed_again(params: dict[str, Any]) -> dict[str, Any]:
    """The options given on the command line beside --resume: `resume_options` checks that
    they equal the checkpoint's."""
    ctx = click.get_current_context()
    return {k: v for k, v in params.items() if k not in ("resume", "progress")
            and ctx.get_parameter_source(k) == ParameterSource.COMMANDLINE}
