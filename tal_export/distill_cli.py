"""tal-distill: train the global descriptor of a TAL checkpoint (`tal_train.distill`).

Beside tal-export because it reads checkpoints as the exporter does (`load_model`) and
prepares them for it; the training loop itself is `tal_train.distill`."""
from __future__ import annotations

import json
from pathlib import Path

import click

from tal_infer import console
from tal_infer.cli_common import device_option, friendly_errors, verbosity_options
from tal_infer.errors import TalError
from tal_infer.images import list_images
from tal_train.distill import DistillOptions

EPILOG = """\b
Examples:
  tal-distill runs/p2-market1501/ckpt.pth --images data/Market-1501-v15.09.15/bounding_box_train
  tal-distill runs/demo/ckpt.pth --images data/synthetic/domain-a --images data/synthetic/domain-b
  tal-distill runs/demo/ckpt.pth --images crops/ --out runs/demo/ckpt-descriptor.pth --blocks 20
"""


@click.command(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--images", "image_dirs", multiple=True, required=True,
              type=click.Path(path_type=Path),
              help="Folder of person crops (searched recursively; labels are not needed): the "
                   "training images, or crops like the cameras'. Repeatable.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Write the checkpoint with the descriptor here [default: in place].")
@click.option("--dim", default=DistillOptions.dim, show_default=True,
              type=click.IntRange(8),
              help="Descriptor length (an index stores it in the bundle's precision: 2 bytes "
                   "per value with --fp16, else 4).")
@click.option("--blocks", default=DistillOptions.blocks, show_default=True,
              type=click.IntRange(1),
              help="Blocks of crops scored all-against-all by the TAL model (the teacher).")
@click.option("--block-size", default=DistillOptions.block_size, show_default=True,
              type=click.IntRange(16),
              help="Crops per block.")
@click.option("--steps-per-block", default=DistillOptions.steps_per_block, show_default=True,
              type=click.IntRange(1),
              help="Optimizer steps on each block.")
@click.option("--max-images", default=20000, show_default=True, type=click.IntRange(64),
              help="Use at most this many crops (a random sample).")
@device_option
@click.option("--seed", default=0, show_default=True, type=int)
@verbosity_options
@friendly_errors
def main(checkpoint: Path, image_dirs: tuple[Path, ...], out: Path | None, dim: int,
         blocks: int, block_size: int, steps_per_block: int, max_images: int, device: str,
         seed: int) -> None:
    """Distil a global descriptor from a trained TAL checkpoint, for two-stage retrieval
    (tal-infer --candidates M). The TAL model stays frozen: its scores are the teacher, so its
    accuracy is unchanged. Prints the held-out recall: the share of each crop's best 10 by TAL
    score found among its best 20 by descriptor."""
    import numpy as np
    import torch

    from tal_train.distill import add_descriptor, distill_descriptor

    from .bundle import load_model

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise TalError("--device cuda: torch sees no CUDA device here")
    paths = sorted({str(p) for d in image_dirs for p in list_images(d)})
    if len(paths) > max_images:
        keep = np.random.default_rng(seed).choice(len(paths), max_images, replace=False)
        paths = [paths[i] for i in sorted(keep)]
    options = DistillOptions(dim=dim, blocks=blocks, block_size=block_size,
                             steps_per_block=steps_per_block, seed=seed)
    options.check(len(paths))
    model, _ = load_model(checkpoint)
    head, report = distill_descriptor(model, paths, options, device, progress=console.bars_enabled())
    target = add_descriptor(checkpoint, head, report, out)
    recall = report["holdout_recall"]
    click.echo(f"descriptor ({dim} values) distilled from {len(paths)} crops; held-out "
               f"recall of the TAL top-10 in the descriptor top-{recall['shortlist']} of "
               f"{report['holdout_images']} crops: {recall['recall']:.3f}")
    click.echo(f"wrote {target}")
    if recall["recall"] < 0.5:
        raise TalError("the descriptor ranks poorly on held-out crops (recall "
                       f"{recall['recall']:.2f}); use more crops or more --blocks "
                       f"({json.dumps(report['options'])})")
