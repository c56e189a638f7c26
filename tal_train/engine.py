"""The training loop of `tal-train` as a library call: ``train(TrainOptions(...)) -> TrainResult``.

One loop (docs/training.md): per epoch the `BatchPlanner` draws the batches (graph sampler),
then every iteration runs the model's phases (`phases.train_iteration`), the lr schedule steps
once per epoch, and the epoch's hooks run (`tal_train.hooks`: the log line, the target
evaluation every ``eval_every`` epochs and after the last, the run's files after every epoch).
The options and their rules (defaults, checks, resume) are in `tal_train.options`. Outputs in
``OUT``: ``ckpt.pth``
(`tal_train.checkpoint`), ``metrics.json`` (the checkpoint's metrics list: per evaluated epoch
its training images/s and each target's metrics), ``train_log.json`` (per-epoch mean losses, lr,
time, images/s), ``curves.png``. Training speed (images/s over the epoch, all ranks) is also in
the progress bar and the per-epoch log line.

**Reproducibility.** Model init uses ``seed``; every epoch reseeds its own generators from
(seed, epoch[, rank]): numpy for the plan (same on every rank), torch and ``random`` for
augmentation and DataLoader workers. So a run resumed from the checkpoint of epoch e draws the
same batches and augmentations as an uninterrupted one and, with the restored weights, optimizer
and scheduler, repeats its loss sequence (tested on CPU).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import random
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from tal_infer.console import progress
from tal_infer.errors import TalError

from . import distributed
from .checkpoint import load_checkpoint
from .data import build_protocol
from .data.protocols import Protocol
from .data.transforms import AUGMENTATIONS, TrainImages
from .epoch_plan import BatchPlanner
from .hooks import EpochEnd, Hook, RunState, default_hooks
from .models import TALConfig, TALModel, backbone_spec, build_model, load_pretrained
from .options import TrainOptions, TrainResult, model_config, resolve_options
from .phases import PhaseBatch, StepSettings, train_iteration
from .recipes import get_recipe
from .samplers import Iteration
from .schedule import build_optimizer, build_scheduler, load_scheduler_state

log = logging.getLogger(__name__)

PRETRAINED_LR_MULT = 0.1


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


def _restore_rng(state: dict[str, Any] | None) -> None:
    if not state:
        return
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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


def train(options: TrainOptions, hooks: list[Hook] | None = None) -> TrainResult:
    """Train (or resume) a TAL model as `options` say; rank 0 runs the epoch hooks
    (default: `tal_train.hooks.default_hooks`, which write the outputs)."""
    started = time.time()
    info, device = distributed.setup(options.device)
    try:
        return _train(options, info, device, started,
                      default_hooks() if hooks is None else hooks)
    finally:
        distributed.cleanup(info)


def _prepare(options: TrainOptions, protocol: Protocol, device: torch.device) -> RunState:
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
    run = RunState(options, config, model, optimizer, scheduler, 1, [], [])
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
           started: float, hooks: list[Hook]) -> TrainResult:
    options = resolve_options(options)
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
            end = EpochEnd(run, epoch, entry, protocol, device)
            for hook in hooks:
                hook.after_epoch(end)
        distributed.barrier(info)
    return TrainResult(options.run_name, out, out / "ckpt.pth", epoch, run.metrics, losses,
                       time.time() - started)


def _train_epoch(net: torch.nn.Module, run: RunState, dataset: TrainImages,
                 iterations: list[Iteration], phases: Sequence[str], settings: StepSettings,
                 epoch: int, info: distributed.DistInfo) -> tuple[list[dict], dict]:
    """Run the iterations and step the schedule; returns their losses and the log entry."""
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=[it.indices() for it in
                                                                 iterations],
                                         num_workers=run.options.workers)
    epoch_losses, images_seen, t0 = [], 0, time.time()
    net.train()
    bar = progress(zip(iterations, loader), total=len(iterations),
                   desc=f"epoch {epoch}/{run.options.epochs}", unit="it",
                   enabled=run.options.progress and info.is_main)
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
