"""``tal-data``: generate synthetic camera networks and videos, and inspect dataset folders."""
from __future__ import annotations

import re
from pathlib import Path

import click

from tal_infer import console
from tal_infer.cli_common import SizeType, friendly_errors, verbosity_options
from tal_infer.errors import DataError, TalError

from .records import format_summaries
from .registry import build_dataset, detect_loader, discover_datasets
from .synthetic import SyntheticConfig, VideoConfig, synthesize, synthesize_video


def _images_per_id(value: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", value)
    if m is None:
        raise TalError(f"--images-per-id {value!r}: expected N or LO-HI, e.g. 6-10")
    lo = int(m.group(1))
    return lo, int(m.group(2) or lo)


seed_option = click.option("--seed", default=0, show_default=True, type=int,
                           help="Random seed; the same seed writes byte-identical files.")
overwrite_option = click.option("--overwrite", is_flag=True,
                                help="Replace the images of an existing output folder.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog="""\b
Examples:
  tal-data synthesize data/synthetic
  tal-data stats data/synthetic
  tal-data synthesize-video data/video
  tal-data stats ~/datasets/Market-1501-v15.09.15""")
def main() -> None:
    """Datasets for tal-reid: synthetic camera networks and videos, and folder statistics."""


@main.command("synthesize", epilog="""\b
Examples:
  tal-data synthesize data/synthetic
  tal-data synthesize data/synth --domains 4 --identities 100 --cameras 6 --seed 1
  tal-data synthesize data/big --size 256x128 --images-per-id 8-16
  tal-data synthesize data/dg --domains 4 --identities 280 --shift structural""")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--identities", default=SyntheticConfig.identities, show_default=True, type=int,
              help="Identities per domain (half train, half test).")
@click.option("--domains", default=SyntheticConfig.domains, show_default=True, type=int,
              help="Domains (one Market-1501-format folder each).")
@click.option("--cameras", default=SyntheticConfig.cameras, show_default=True, type=int,
              help="Cameras per domain.")
@click.option("--images-per-id", default="6-10", show_default=True,
              help="Images per identity: N or LO-HI (LO >= 3).")
@click.option("--size", default="128x64", show_default=True, type=SizeType(),
              help="Image size HxW.")
@click.option("--distractors", default=SyntheticConfig.distractors, show_default=True, type=int,
              help="Distractor images (pid 0000) per domain gallery.")
@click.option("--junk", default=SyntheticConfig.junk, show_default=True, type=int,
              help="Junk images (pid -1) per domain gallery.")
@click.option("--shift", type=click.Choice(["photometric", "structural"]),
              default=SyntheticConfig.shift, show_default=True,
              help="How domains differ: photometric (background, colour cast, contrast, blur, "
                   "noise, resolution) or structural (also viewpoint, camera pitch, person "
                   "scale and crop alignment, occlusion, clothing palette and texture).")
@seed_option
@overwrite_option
@verbosity_options
@friendly_errors
def synthesize_cmd(out: Path, identities: int, domains: int, cameras: int, images_per_id: str,
                   size: tuple[int, int], distractors: int, junk: int, shift: str, seed: int,
                   overwrite: bool) -> None:
    """Write a synthetic camera network to OUT: one Market-1501-format folder per domain
    (OUT/domain-a, OUT/domain-b, ...) with disjoint identities."""
    config = SyntheticConfig(identities=identities, domains=domains, cameras=cameras,
                             images_per_id=_images_per_id(images_per_id),
                             size=size, seed=seed,
                             distractors=distractors, junk=junk, shift=shift)
    folders = synthesize(out, config, overwrite=overwrite, progress=console.bars_enabled())
    click.echo(format_summaries([build_dataset("custom", f) for f in folders]))
    click.echo(f"wrote {len(folders)} domains to {out}")


@main.command("synthesize-video", epilog="""\b
Examples:
  tal-data synthesize-video data/video
  tal-data synthesize-video data/video --cameras 3 --identities 10 --frames 200
  tal-data synthesize-video data/mtmc --cameras 4 --identities 30 --frames 480 \\
           --visits 2 --visit-frames 48""")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--cameras", default=VideoConfig.cameras, show_default=True, type=int,
              help="Cameras (one MOTChallenge sequence each).")
@click.option("--identities", default=VideoConfig.identities, show_default=True, type=int,
              help="People walking through every camera.")
@click.option("--frames", default=VideoConfig.frames, show_default=True, type=int,
              help="Frames per camera.")
@click.option("--frame-size", default="320x240", show_default=True,
              type=SizeType("WIDTHxHEIGHT", "320x240"), help="Frame size WIDTHxHEIGHT.")
@click.option("--visits", default=VideoConfig.visits, show_default=True, type=int,
              help="Passes of each person through each camera (more than 1: people leave and "
                   "re-enter).")
@click.option("--visit-frames", default=VideoConfig.visit_frames, show_default=True, type=int,
              help="Frames per visit (0: FRAMES / (2 x VISITS), visits overlapping in time "
                   "across cameras; short visits pass the cameras one after the other).")
@seed_option
@overwrite_option
@verbosity_options
@friendly_errors
def synthesize_video_cmd(out: Path, cameras: int, identities: int, frames: int,
                         frame_size: tuple[int, int], visits: int, visit_frames: int,
                         seed: int, overwrite: bool) -> None:
    """Write synthetic multi-camera video to OUT: per camera a MOTChallenge-style sequence
    (OUT/cam1/img1/*.jpg, det/det.txt, gt/gt.txt) with the same people in every camera."""
    w, h = frame_size
    config = VideoConfig(cameras=cameras, identities=identities, frames=frames,
                         frame_size=(h, w), seed=seed, visits=visits, visit_frames=visit_frames)
    folders = synthesize_video(out, config, overwrite=overwrite, progress=console.bars_enabled())
    click.echo(f"wrote {len(folders)} camera sequences of {frames} frames to {out}")


@main.command(epilog="""\b
Examples:
  tal-data stats data/synthetic                  (every dataset under a root)
  tal-data stats data/Market-1501-v15.09.15      (one dataset folder)
  tal-data stats data/cuhk03-np/detected --dataset cuhk03""")
@click.argument("root", type=click.Path(path_type=Path))
@click.option("--dataset", default=None,
              help="Read ROOT with this loader (market1501, msmt17, cuhk03, randperson, custom) "
                   "instead of detecting it.")
@friendly_errors
def stats(root: Path, dataset: str | None) -> None:
    """Print identities, images and cameras per split of a dataset folder, or of every dataset
    found under ROOT."""
    if not root.is_dir():
        raise DataError(f"{root}: folder not found")
    loader = dataset or detect_loader(root)
    if loader is not None:
        datasets = [build_dataset(loader, root)]
    else:
        found = discover_datasets(root)
        if not found:
            raise DataError(f"{root}: no dataset found (see docs/data.md for the folder layouts)")
        datasets = [build_dataset(f.loader, f.path) for f in found]
    click.echo(format_summaries(datasets))
