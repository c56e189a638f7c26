"""tal-demo: the whole pipeline on generated data, in minutes on a CPU (the README quick start).

1. a synthetic camera network of four domains (`tal_train.data.synthetic`), Market layout;
2. TAL, tiny preset, trained under protocol p2 on three domains (`tal_train.engine.train`,
   what ``tal-train`` runs), the fourth held out as the unseen target;
3. the checkpoint exported to a bundle (`tal_export.export_bundle`);
4. ``tal-infer`` on the target's query/gallery folders with a report: mAP / CMC of a domain
   the model never saw, rank lists and QAConv correspondences.

Everything lands in the work folder (default: the current one): ``data/synthetic``,
``runs/demo``, ``export/demo``, ``demo-report``, ``demo-ranks.json``. Existing data is reused
when it was generated with the same options (else regenerated, with a line saying which options
differ); ``--skip-train`` reuses the checkpoint too. Training and tal-infer run on ``--device``
(auto: the GPU when there is one).
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import click

from tal_infer import console
from tal_infer.cli_common import SizeType, friendly_errors, verbosity_options
from tal_infer.errors import TalError

DOMAINS = 4
TARGET = "domain-d"  # the last of the four generated domains: never seen in training

EPILOG = """\b
Examples:
  tal-demo                                   # in the current folder, about 5 minutes on 2 cores
  tal-demo --workdir /tmp/tal-demo --epochs 8
  tal-demo --skip-train                      # export + inference with the existing checkpoint
  tal-demo --identities 8 --epochs 1 --iters 2 --image-size 64x32   # a smoke run (< 1 minute)
"""


@click.command(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="Folder for the data, run, bundle and report.")
@click.option("--identities", default=40, show_default=True, type=click.IntRange(4),
              help="Identities per generated domain (half train, half test).")
@click.option("--epochs", default=3, show_default=True, type=click.IntRange(1),
              help="Training epochs.")
@click.option("--iters", default=60, show_default=True, type=click.IntRange(1),
              help="Iterations per epoch.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(4),
              help="Images per training batch.")
@click.option("--image-size", type=SizeType(), help="Model input HxW instead of the tiny preset's 128x64.")
@click.option("--skip-train", is_flag=True, help="Reuse WORKDIR/runs/demo/ckpt.pth.")
@click.option("--topk", default=10, show_default=True, type=click.IntRange(1),
              help="Matches per query in the ranks and the report.")
@click.option("--seed", default=0, show_default=True, type=int, help="Data and training seed.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True, help="Where training and tal-infer run (auto: CUDA if present).")
@verbosity_options
@friendly_errors
def main(workdir: Path, identities: int, epochs: int, iters: int, batch_size: int,
         image_size: tuple[int, int] | None, skip_train: bool, topk: int, seed: int,
         device: str) -> None:
    """Generate a camera network, train TAL on three domains, export it, and re-identify
    people in the fourth (unseen) domain; prints mAP/top-k and where everything is."""
    size = list(image_size) if image_size else None
    progress = console.bars_enabled()
    started = time.time()
    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / "data" / "synthetic"
    checkpoint = workdir / "runs" / "demo" / "ckpt.pth"

    click.echo(f"[1/4] synthetic camera network ({DOMAINS} domains) -> {data}")
    make_data(data, identities, seed, progress)
    if skip_train:
        if not checkpoint.is_file():
            raise TalError(f"{checkpoint}: no checkpoint to reuse (run without --skip-train)")
        click.echo(f"[2/4] training skipped; reusing {checkpoint}")
    else:
        click.echo(f"[2/4] training TAL (tiny) on {', '.join(_sources())} -> {checkpoint.parent}")
        checkpoint = train_model(data, checkpoint.parent, epochs, iters, batch_size, size, seed,
                                 progress, device)
    click.echo(f"[3/4] exporting -> {workdir / 'export' / 'demo'}")
    from tal_export import export_bundle

    bundle = export_bundle(checkpoint, workdir / "export" / "demo", image_size=None,
                           progress=progress)
    click.echo(f"[4/4] tal-infer on the unseen domain {TARGET}")
    report, ranks = workdir / "demo-report", workdir / "demo-ranks.json"
    run_inference(bundle, data / TARGET, report, ranks, topk, device)
    click.echo(f"\ndone in {time.time() - started:.0f} s. Artifacts:\n"
               f"  data        {data}\n  checkpoint  {checkpoint}\n"
               f"  training    {checkpoint.parent / 'metrics.json'}\n  bundle      {bundle}\n"
               f"  ranks       {ranks}\n  report      {report / 'index.html'}")


def make_data(folder: Path, identities: int, seed: int, progress: bool) -> None:
    """Generate the network, or reuse the one in ``folder`` when it was generated with exactly
    these options; one made with other options is regenerated, saying which options differ."""
    from tal_train.data.synthetic import SyntheticConfig, synthesize

    config = SyntheticConfig(identities=identities, domains=DOMAINS, seed=seed)
    wanted = json.loads(json.dumps(dataclasses.asdict(config)))  # tuples as JSON lists
    manifest = folder / "synthesis.json"
    if manifest.is_file():
        try:
            found = json.loads(manifest.read_text()).get("config", {})
        except (OSError, ValueError, AttributeError):
            found = {}
        if found == wanted:
            click.echo(f"      reusing {folder}")
            return
        changes = ", ".join(f"{k} {found.get(k)} -> {v}" for k, v in wanted.items()
                            if found.get(k) != v)
        click.echo(f"      {folder} was generated with other options ({changes}); "
                   "regenerating it")
    synthesize(folder, config, overwrite=True, progress=progress)


def train_model(data: Path, out: Path, epochs: int, iters: int, batch_size: int,
                image_size: list[int] | None, seed: int, progress: bool, device: str = "auto") -> Path:
    """p2 leave-one-out on the generated domains, as ``tal-train`` runs it; returns ckpt.pth."""
    from tal_train.engine import train
    from tal_train.options import TrainOptions

    result = train(TrainOptions(
        protocol="p2", data_root=str(data), target=TARGET, sources=_sources(), preset="tiny",
        image_size=image_size, epochs=epochs, iters=iters, batch_size=batch_size,
        pretrained="none", seed=seed, device=device, run_name="demo", out=str(out),
        progress=progress))
    last = result.metrics[-1] if result.metrics else {}
    scores = last.get(TARGET, {}).get("tal")
    if scores:
        click.echo(f"      training-side evaluation on {TARGET}: mAP {scores['mAP']:.1f}%  "
                   f"top-1 {scores['top1']:.1f}%")
    return result.checkpoint


def run_inference(bundle: Path, target: Path, report: Path, ranks: Path, topk: int,
                  device: str = "auto") -> None:
    """tal-infer on the target's query and gallery folders (prints mAP and CMC)."""
    from tal_infer.cli import main as infer

    args = ["--gallery", str(target / "bounding_box_test"), "--queries", str(target / "query"),
            "--model", str(bundle), "--topk", str(topk), "--out", str(ranks), "--report",
            str(report), "--device", device, *console.verbosity_flags()]
    infer.main(args, standalone_mode=False)


def _sources() -> list[str]:
    return [f"domain-{c}" for c in "abc"]
