"""The options of `tal-train` and their rules: `TrainOptions` (everything it accepts),
`resolve_options` (defaults from the recipe and the preset, checks), `resume_options` (a run's
options from its checkpoint, with the changes --resume allows), `model_config` (the model a run
trains).

**Resume**: the run's options come from the checkpoint; only the epoch count, evaluation
interval, output folder, device, workers and progress display may change. Other options may be
given again (the user's own command with ``--resume`` appended) as long as they equal the
checkpoint's (resolved) values; real changes are refused, each named with its old and new
value.

**Recipes** (`tal_train.recipes`, ``--recipe``): options left unset (None) take the recipe's
defaults in `resolve_options` and `model_config`; the resolved values are what the checkpoint
stores.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from tal_infer.errors import TalError

from .checkpoint import load_checkpoint
from .data.transforms import AUGMENTATIONS
from .losses import DEFAULT_MARGIN, LOSSES
from .models import TALConfig, backbone_spec
from .phases import DEFAULT_CLIP
from .recipes import default_augment, get_recipe
from .schedule import default_milestones

DEFAULT_BATCH_SIZE = {"paper": 64, "tiny": 32}
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


def resolve_options(options: TrainOptions) -> TrainOptions:
    """The options with every default resolved (the recipe's, the preset's, the run name and
    folder) and checked; `TalError` names the first bad one. What the checkpoint stores."""
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
