"""The training loop of `tal-train` as a library call: ``train(TrainOptions(...)) -> TrainResult``.

One loop (DESIGN.md section 2): per epoch the `BatchPlanner` draws the batches (graph sampler),
then every iteration runs the model's phases (`phases.train_iteration`), the lr schedule steps
once per epoch, targets are evaluated every ``eval_every`` epochs and after the last, and
``OUT/ckpt.pth`` is written after every epoch. Outputs in ``OUT``: ``ckpt.pth``
(`tal_train.checkpoint`), ``metrics.json`` (the checkpoint's metrics list: per evaluated epoch
its training images/s and each target's metrics), ``train_log.json`` (per-epoch mean losses, lr,
time, images/s), ``curves.png``. Training speed (images/s over the epoch, all ranks) is also in
the progress bar and the per-epoch log line.

**Reproducibility.** Model init uses ``seed``; every epoch reseeds its own generators from
(seed, epoch[, rank]): numpy for the plan (same on every rank), torch and ``random`` for
augmentation and DataLoader workers. So a run resumed from the checkpoint of epoch e draws the
same batches and augmentations as an uninterrupted one and, with the restored weights, optimizer
and scheduler, repeats its loss sequence (tested on CPU).

**Resume** (`resume_options`): the run's options come from the checkpoint; only the epoch count,
evaluation interval, output folder, device, workers and progress display may change. Other
options may be given again (the user's own command with ``--resume`` appended) as long as they
equal the checkpoint's (resolved) values; real changes are refused, each named with its old
and new value.

**Recipes** (`tal_train.recipes`, ``--recipe``): options left unset (None) take the recipe's
defaults in `_resolve` and `model_config`; the resolved values are what the checkpoint stores.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm import tqdm

from tal_infer.atomic import atomic_file
from tal_infer.errors import TalError

from . import distributed
from .checkpoint import load_checkpoint, save_checkpoint
from .curves import plot_curves
from .data import build_protocol
from .data.protocols import Protocol
from .data.transforms import AUGMENTATIONS, TrainImages
from .epoch_plan import BatchPlanner
from .evaluation import evaluate_epoch, format_metrics_table
from .losses import DEFAULT_MARGIN, LOSSES
from .models import TALConfig, TALModel, backbone_spec, build_model, load_pretrained
from .phases import DEFAULT_CLIP, PhaseBatch, StepSettings, train_iteration
from .recipes import default_augment, get_recipe
from .samplers import Iteration
from .schedule import (build_optimizer, build_scheduler, default_milestones,
                       load_scheduler_state, scheduler_state)

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = {"paper": 64, "tiny": 32}
PRETRAINED_LR_MULT = 0.1
RESUME_CHANGES = ("epochs", "eval_every", "out", "device", "workers", "progress")


@dataclass
class TrainOptions:
    """Everything `tal-train` accepts (None = the documented default, resolved by `train`)."""
    protocol: str = "p2"
    data_root: str = "data"
    source: str | None = None            # p1
    targets: list[str] | None = None     # p1 (None: every other dataset with a test split)
    target: str | None = None            # p2
    sources: list[str] | None = None     # p2 (None: every other dataset under data_root)
    preset: str = "paper"
    backbone: str | None = None          # a registered name; None: the preset's
    recipe: str = "tal"                  # tal_train.recipes: defaults of everything left None
    streams: list[str] | None = None
    scales: list[str] | None = None
    di_norm: str | None = None
    ds_head: str | None = None
    dabn_stats: str | None = None        # "experts" / "own"; None: the config default
    image_size: list[int] | None = None  # (H, W) override of the preset
    epochs: int | None = None            # None: the recipe's (30 tal, 15 qaconv-gs)
    iters: int | None = None             # per epoch; None: one pass over the identities
    batch_size: int | None = None        # images per batch; None: 64 (paper) / 32 (tiny)
    instances: int = 4                   # images per identity in a batch
    sampler: str = "gs"
    lr: float | None = None              # None: the recipe's (0.005 tal, 0.001 qaconv-gs)
    milestones: list[int] | None = None  # None: x0.1 after 2/3 of the epochs
    loss: str | None = None              # "triplet" / "pairwise"; None: the recipe's
    margin: float = DEFAULT_MARGIN
    mining: str | None = None            # "hard" / "all"; None: hard once pretrained, else all
    augment: str | None = None           # transforms.AUGMENTATIONS; None: recipes.default_augment
    clip: float = DEFAULT_CLIP
    pretrained: str | None = None        # path/URL, "none", or None (official for paper)
    seed: int = 0
    device: str = "auto"
    amp: bool = False
    workers: int = 0
    eval_every: int | None = None        # None: only after the last epoch
    run_name: str | None = None
    out: str | None = None               # None: runs/<run_name>
    resume: str | None = None
    progress: bool = True
    backbone_lr_mult: float | None = None  # set by train (0.1 once ImageNet weights loaded)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TrainResult:
    run_name: str
    out: Path
    checkpoint: Path
    epoch: int                           # last completed epoch
    metrics: list[dict]                  # as metrics.json
    losses: list[dict[str, float]] = field(default_factory=list)  # per iteration, this call
    seconds: float = 0.0


def resume_options(checkpoint: str | os.PathLike, **given: Any) -> TrainOptions:
    """The options of the run saved in `checkpoint`, set to resume it, with the `given` fields of
    RESUME_CHANGES applied; any other given field must equal the checkpoint's value."""
    known = {f.name for f in dataclasses.fields(TrainOptions)}
    if set(given) - known:
        raise ValueError(f"not TrainOptions fields: {sorted(set(given) - known)}")
    stored = load_checkpoint(checkpoint).get("train_args")
    if not stored:
        raise TalError(f"{checkpoint}: checkpoint holds no training options to resume from")
    stored = {"augment": "standard", **stored}  # runs from before --augment used the standard set
    options = TrainOptions(**{k: v for k, v in stored.items() if k in known})
    changed = [f"{_flag(k)} {_shown(k, getattr(options, k))} -> {_shown(k, v)}"
               for k, v in sorted(given.items())
               if k not in RESUME_CHANGES and not _same(k, getattr(options, k), v)]
    if changed:
        allowed = ", ".join(_flag(n) for n in RESUME_CHANGES if n != "progress")
        raise TalError(f"--resume continues a run with its own settings; cannot change "
                       f"{', '.join(changed)} (only {allowed} may change)")
    return dataclasses.replace(options, resume=str(checkpoint),
                               **{k: v for k, v in given.items() if k in RESUME_CHANGES})


def _flag(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def _same(key: str, stored: Any, given: Any) -> bool:
    """Equal as options: lists and tuples alike, the data root as a normalized path."""
    if isinstance(stored, (list, tuple)) and isinstance(given, (list, tuple)):
        return list(stored) == list(given)
    if key == "data_root" and stored is not None and given is not None:
        return os.path.normpath(stored) == os.path.normpath(given)
    return stored == given


def _shown(key: str, value: Any) -> str:
    """An option value as a user would type it."""
    if value is None:
        return "(default)"
    if isinstance(value, (list, tuple)):
        return ("x" if key == "image_size" else ",").join(map(str, value))
    return str(value)


def default_run_name(options: TrainOptions) -> str:
    return f"p1-{options.source}" if options.protocol == "p1" else f"p2-{options.target}"


def model_config(options: TrainOptions, domains: Sequence[str]) -> TALConfig:
    """The preset, with the recipe's model switches, with the options given on top."""
    overrides = {k: tuple(v) if isinstance(v, list) else v
                 for k in ("backbone", "streams", "scales", "di_norm", "ds_head", "dabn_stats",
                           "image_size")
                 if (v := getattr(options, k)) is not None}
    recipe = get_recipe(options.recipe).model
    return TALConfig.preset(options.preset, domains=tuple(domains), **{**recipe, **overrides})


def _resolve(options: TrainOptions) -> TrainOptions:
    recipe = get_recipe(options.recipe)
    defaults = {"epochs": recipe.epochs, "lr": recipe.lr, "loss": recipe.loss,
                "augment": default_augment(options.recipe, options.preset)}
    options = dataclasses.replace(options, **{k: v for k, v in defaults.items()
                                              if getattr(options, k) is None})
    run_name = options.run_name or default_run_name(options)
    batch_size = options.batch_size or DEFAULT_BATCH_SIZE.get(options.preset, 64)
    checks = [(options.epochs >= 1, "--epochs must be at least 1"),
              (options.iters is None or options.iters >= 1, "--iters must be at least 1"),
              (options.instances >= 2, "--instances must be at least 2 (triplets need pairs)"),
              (batch_size % options.instances == 0 and batch_size >= 2 * options.instances,
               f"--batch-size {batch_size} must be a multiple of --instances "
               f"{options.instances} holding at least two identities"),
              (options.lr > 0, "--lr must be positive"),
              (options.eval_every is None or options.eval_every >= 1,
               "--eval-every must be at least 1"),
              (options.workers >= 0, "--workers must be >= 0"),
              (options.sampler in ("gs", "pk"), "--sampler must be gs or pk"),
              (options.mining in (None, "hard", "all"), "--mining must be hard or all"),
              (options.loss in LOSSES, f"--loss must be one of {', '.join(LOSSES)}"),
              (options.augment in AUGMENTATIONS,
               f"--augment must be one of {', '.join(AUGMENTATIONS)}")]
    for ok, message in checks:
        if not ok:
            raise TalError(message)
    if options.backbone is not None:
        backbone_spec(options.backbone)  # an unknown name fails here, before any data is read
    milestones = (default_milestones(options.epochs) if options.milestones is None
                  else sorted(options.milestones))
    return dataclasses.replace(options, run_name=run_name, batch_size=batch_size,
                               milestones=milestones,
                               out=options.out or str(Path("runs") / run_name))


def _protocol(options: TrainOptions) -> Protocol:
    return build_protocol(options.protocol, options.data_root, source=options.source,
                          targets=options.targets, target=options.target,
                          sources=options.sources)


def _seed_epoch(seed: int, epoch: int, rank: int) -> np.random.Generator:
    """Seeds torch and `random` for this rank's augmentation; returns the (rank-independent)
    plan generator."""
    state = np.random.SeedSequence([seed, epoch, rank]).generate_state(2)
    torch.manual_seed(int(state[0]))
    random.seed(int(state[1]))
    return np.random.default_rng([seed, epoch])


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: dict[str, Any] | None) -> None:
    if not state:
        return
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_json(path: Path, data: Any) -> None:
    """Atomic JSON write (temp file + rename), so readers never see half a file."""
    with atomic_file(path, "w") as f:
        json.dump(data, f, indent=2)


def _read_train_log(folder: Path, before_epoch: int) -> list[dict]:
    path = folder / "train_log.json"
    if not path.is_file():
        return []
    return [e for e in json.loads(path.read_text()) if e["epoch"] < before_epoch]


def _init_model(options: TrainOptions, config: TALConfig) -> tuple[TALModel, float]:
    """A fresh model and its backbone lr multiplier (0.1 when ImageNet weights were loaded).

    The paper preset needs its ImageNet weights: when they cannot be loaded that is an error,
    unless ``--pretrained none`` asks for random initialization explicitly (`_prepare` warns).
    """
    torch.manual_seed(options.seed)
    model = build_model(config)
    source = options.pretrained
    if source is None and options.preset == "paper":  # the backbone's published weights
        source = backbone_spec(config.backbone).weights
        if source is None:
            raise TalError(f"backbone {config.backbone} has no published ImageNet weights, and the "
                           "paper preset trains from them: pass --pretrained PATH, or "
                           "--pretrained none to train from random initialization")
    if source is None or source == "none":
        log.info("backbone %s starts from random initialization (--pretrained %s)",
                 config.backbone, source or "not given")
        return model, 1.0
    try:
        load_pretrained(model, source)
    except TalError as err:
        if options.preset != "paper":
            raise
        raise TalError(f"{err}; the paper preset trains from ImageNet weights: pass a local "
                       "copy with --pretrained PATH, or --pretrained none to train from random "
                       "initialization (not the paper's setting)") from None
    return model, PRETRAINED_LR_MULT


def _split(images: torch.Tensor, labels: torch.Tensor, it: Iteration
           ) -> tuple[list[tuple[int, PhaseBatch]], PhaseBatch | None]:
    chunks = list(zip(images.split(it.sizes()), labels.split(it.sizes())))
    per_domain = [(d, PhaseBatch(*chunks[j])) for j, (d, _) in enumerate(it.per_domain)]
    hybrid = PhaseBatch(*chunks[-1]) if it.hybrid is not None else None
    return per_domain, hybrid


def train(options: TrainOptions) -> TrainResult:
    """Train (or resume) a TAL model as `options` say; rank 0 writes the outputs."""
    started = time.time()
    info, device = distributed.setup(options.device)
    try:
        return _train(options, info, device, started)
    finally:
        distributed.cleanup(info)


@dataclass
class _Run:
    """What the loop works on: the model, its optimizer and schedule, and the history so far."""
    options: TrainOptions
    config: TALConfig
    model: TALModel
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.MultiStepLR
    start_epoch: int
    metrics: list[dict]
    train_log: list[dict]


def _prepare(options: TrainOptions, protocol: Protocol, device: torch.device) -> _Run:
    """A fresh model (ImageNet or random init), or the checkpoint's state for --resume."""
    ckpt = load_checkpoint(options.resume) if options.resume else None
    if ckpt is not None:
        config = TALConfig.from_dict(ckpt["config"])
        if list(config.domains) != list(protocol.domains):
            raise TalError(f"{options.resume}: checkpoint domains {list(config.domains)} differ "
                           f"from the data's {protocol.domains}")
        model = build_model(config)
        model.load_state_dict(ckpt["model"])
        lr_mult = options.backbone_lr_mult or 1.0
    else:
        config = model_config(options, protocol.domains)
        model, lr_mult = _init_model(options, config)
    # batch-hard collapses from a random backbone (see tal_train.losses): batch-all there
    mining = options.mining or ("hard" if lr_mult == PRETRAINED_LR_MULT else "all")
    if ckpt is None and options.preset == "paper" and lr_mult != PRETRAINED_LR_MULT:
        log.warning("--pretrained none: the paper preset starts from random initialization, not "
                    "from ImageNet weights as in the paper; %s", _mining_note(options, mining))
    options = dataclasses.replace(options, backbone_lr_mult=lr_mult, mining=mining)
    model.to(device)
    optimizer = build_optimizer(model, options.lr, lr_mult,
                                nesterov=get_recipe(options.recipe).nesterov)
    scheduler = build_scheduler(optimizer, options.milestones)
    run = _Run(options, config, model, optimizer, scheduler, 1, [], [])
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        load_scheduler_state(scheduler, ckpt["scheduler"])
        _restore_rng(ckpt["rng"])
        run.metrics = list(ckpt["metrics"])
        run.start_epoch = ckpt["epoch"] + 1
        run.train_log = _read_train_log(Path(options.resume).parent, run.start_epoch)
        if run.start_epoch > options.epochs:
            log.warning("%s already completed epoch %d of %d; nothing to train (raise "
                        "--epochs)", options.resume, run.start_epoch - 1, options.epochs)
    return run


def _mining_note(options: TrainOptions, mining: str) -> str:
    """What random initialization means for the loss (the warning of `_prepare`)."""
    if options.loss != "triplet":
        return f"the {options.loss} loss needs no mining"
    if options.mining is None:
        return ("triplet mining falls back from batch-hard (the paper's) to batch-all, since "
                "batch-hard collapses from random init (docs/training.md)")
    return f"triplet mining {mining} as given"


def _train(options: TrainOptions, info: distributed.DistInfo, device: torch.device,
           started: float) -> TrainResult:
    options = _resolve(options)
    protocol = _protocol(options)
    run = _prepare(options, protocol, device)
    options, model = run.options, run.model
    out = Path(options.out)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
    phases = model.training_phases()
    planner = BatchPlanner(protocol.train, protocol.domains, phases, options.sampler,
                           options.batch_size // options.instances, options.instances)
    net: torch.nn.Module = model
    if info.active:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True)  # each phase reaches only part of the model
    amp = options.amp and device.type == "cuda"
    if options.amp and not amp:
        log.warning("--amp needs a CUDA device; training in fp32")
    settings = StepSettings(margin=options.margin, mining=options.mining, loss=options.loss,
                            clip=options.clip, amp=amp,
                            scaler=torch.amp.GradScaler("cuda") if amp else None)
    dataset = TrainImages(protocol.train, run.config.image_size, run.config.mean, run.config.std,
                          augment=AUGMENTATIONS[options.augment])
    pk_epochs = get_recipe(options.recipe).pk_epochs
    if info.is_main:
        log.info("%s: %d domains %s, %d identities, %d images; phases %s; %s loss%s; %s "
                 "augmentation; targets %s", options.run_name, protocol.num_domains,
                 protocol.domains, protocol.num_ids, len(protocol.train), list(phases),
                 options.loss, f" ({options.mining} mining)" if options.loss == "triplet" else "",
                 options.augment, list(protocol.targets))
    losses: list[dict[str, float]] = []
    epoch = run.start_epoch - 1
    for epoch in range(run.start_epoch, options.epochs + 1):
        rng = _seed_epoch(options.seed, epoch, info.rank)
        plan = planner.plan(model, rng, device, 2 * options.batch_size,
                            share=lambda t: distributed.broadcast_from_main(t, info),
                            sampler="pk" if epoch <= pk_epochs else None)
        iterations = plan.iterations(options.iters or plan.default_iterations(info.world_size),
                                     info.rank, info.world_size)
        epoch_losses, entry = _train_epoch(net, run, dataset, iterations, phases, settings,
                                           epoch, info)
        losses += epoch_losses
        run.train_log.append(entry)
        if info.is_main:
            log.info("epoch %d: loss %.3f, %.1f s, %.0f images/s", epoch,
                     entry["loss"]["total"], entry["seconds"], entry["images_per_s"])
            if epoch == options.epochs or (options.eval_every and epoch % options.eval_every == 0):
                evaluation, per_query = evaluate_epoch(model, protocol.targets, epoch, device,
                                                       2 * options.batch_size, options.workers,
                                                       options.progress)
                evaluation["images_per_s"] = entry["images_per_s"]
                run.metrics.append(evaluation)
                write_json(out / "per_query.json", per_query)
                print(f"\nepoch {epoch} target metrics (%):\n"
                      f"{format_metrics_table(run.metrics[-1])}", flush=True)
            _write_outputs(out, run, epoch)
        distributed.barrier(info)
    return TrainResult(options.run_name, out, out / "ckpt.pth", epoch, run.metrics, losses,
                       time.time() - started)


def _train_epoch(net: torch.nn.Module, run: _Run, dataset: TrainImages,
                 iterations: list[Iteration], phases: Sequence[str], settings: StepSettings,
                 epoch: int, info: distributed.DistInfo) -> tuple[list[dict], dict]:
    """Run the iterations and step the schedule; returns their losses and the log entry."""
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=[it.indices() for it in
                                                                 iterations],
                                         num_workers=run.options.workers)
    epoch_losses, images_seen, t0 = [], 0, time.time()
    net.train()
    bar = tqdm(zip(iterations, loader), total=len(iterations),
               desc=f"epoch {epoch}/{run.options.epochs}", unit="it",
               disable=not (run.options.progress and info.is_main))
    device = next(run.model.parameters()).device
    for it, (images, labels, _, _) in bar:
        per_domain, hybrid = _split(images.to(device), labels.to(device), it)
        step = train_iteration(net, run.optimizer, phases, per_domain, hybrid, settings)
        epoch_losses.append(step)
        images_seen += len(labels) * info.world_size
        bar.set_postfix(loss=f"{step['total']:.2f}",
                        img_s=f"{images_seen / (time.time() - t0):.0f}")
    bar.close()
    lr = run.optimizer.param_groups[-1]["lr"]
    run.scheduler.step()
    seconds = time.time() - t0
    entry = {"epoch": epoch, "iterations": len(iterations), "lr": lr,
             "seconds": round(seconds, 2),
             "images_per_s": round(images_seen / max(seconds, 1e-9), 1),
             "loss": {k: float(np.mean([s[k] for s in epoch_losses])) for k in epoch_losses[0]}}
    return epoch_losses, entry


def _write_outputs(out: Path, run: _Run, epoch: int) -> None:
    save_checkpoint(out / "ckpt.pth",
                    model_state={k: v.detach().cpu() for k, v in run.model.state_dict().items()},
                    config=run.config.to_dict(), epoch=epoch, run_name=run.options.run_name,
                    optimizer=run.optimizer.state_dict(), scheduler=scheduler_state(run.scheduler),
                    rng=_rng_state(), train_args={**run.options.to_dict(), "resume": None},
                    metrics=run.metrics)
    write_json(out / "metrics.json", run.metrics)
    write_json(out / "train_log.json", run.train_log)
    plot_curves(run.train_log, run.metrics, out / "curves.png")
