"""What happens at the end of each training epoch, as a list of hooks (after fast-reid's
``HookBase``): the epoch's log line, the evaluation of the targets, the run's files. The loop
(`tal_train.engine`) knows none of them; it builds one `EpochEnd` and calls every hook with it,
on the main rank, in order (the evaluation before the files, so the checkpoint holds the
epoch's metrics).
"""
from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol as TypingProtocol

import torch

from tal_infer.atomic import atomic_file

from .checkpoint import save_checkpoint
from .curves import plot_curves
from .data.protocols import Protocol
from .evaluation import evaluate_epoch, format_metrics_table
from .models import TALConfig, TALModel
from .options import TrainOptions
from .schedule import scheduler_state

log = logging.getLogger("tal_train.engine")


@dataclass
class RunState:
    """What the loop works on: the model, its optimizer and schedule, and the history so far."""
    options: TrainOptions
    config: TALConfig
    model: TALModel
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.MultiStepLR
    start_epoch: int
    metrics: list[dict]
    train_log: list[dict]


@dataclass
class EpochEnd:
    """One finished epoch: the run, the epoch number, its train-log entry, the data protocol
    (for the targets) and the device."""
    run: RunState
    epoch: int
    entry: dict[str, Any]
    protocol: Protocol
    device: torch.device

    @property
    def out(self) -> Path:
        return Path(self.run.options.out)


class Hook(TypingProtocol):
    def after_epoch(self, end: EpochEnd) -> None: ...


class EpochLog:
    """The per-epoch log line: loss, seconds, images/s."""

    def after_epoch(self, end: EpochEnd) -> None:
        log.info("epoch %d: loss %.3f, %.1f s, %.0f images/s", end.epoch,
                 end.entry["loss"]["total"], end.entry["seconds"], end.entry["images_per_s"])


class TargetEvaluation:
    """Evaluates the targets every ``eval_every`` epochs and after the last: appends the
    metrics (with the epoch's images/s), writes per_query.json, prints the table."""

    def after_epoch(self, end: EpochEnd) -> None:
        options = end.run.options
        if end.epoch != options.epochs and not (options.eval_every
                                                and end.epoch % options.eval_every == 0):
            return
        evaluation, per_query = evaluate_epoch(end.run.model, end.protocol.targets, end.epoch,
                                               end.device, 2 * options.batch_size,
                                               options.workers, options.progress)
        evaluation["images_per_s"] = end.entry["images_per_s"]
        end.run.metrics.append(evaluation)
        write_json(end.out / "per_query.json", per_query)
        print(f"\nepoch {end.epoch} target metrics (%):\n"
              f"{format_metrics_table(end.run.metrics[-1])}", flush=True)


class RunFiles:
    """ckpt.pth (resumable: optimizer, schedule, random state, options), metrics.json,
    train_log.json and curves.png, each written atomically."""

    def after_epoch(self, end: EpochEnd) -> None:
        run = end.run
        save_checkpoint(end.out / "ckpt.pth",
                        model_state={k: v.detach().cpu() for k, v in
                                     run.model.state_dict().items()},
                        config=run.config.to_dict(), epoch=end.epoch,
                        run_name=run.options.run_name, optimizer=run.optimizer.state_dict(),
                        scheduler=scheduler_state(run.scheduler), rng=rng_state(),
                        train_args={**run.options.to_dict(), "resume": None},
                        metrics=run.metrics)
        write_json(end.out / "metrics.json", run.metrics)
        write_json(end.out / "train_log.json", run.train_log)
        plot_curves(run.train_log, run.metrics, end.out / "curves.png")


def default_hooks() -> list[Hook]:
    """The hooks of a `tal-train` run, in the order they run."""
    return [EpochLog(), TargetEvaluation(), RunFiles()]


def write_json(path: Path, data: Any) -> None:
    """Atomic JSON write (temp file + rename), so readers never see half a file."""
    with atomic_file(path, "w") as f:
        json.dump(data, f, indent=2)


def rng_state() -> dict[str, Any]:
    """The random state a resumed run restores (`tal_train.engine`)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state
