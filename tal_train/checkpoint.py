"""Training checkpoints: one file, plain containers only, written atomically.

Layout (format_version 1), a dict loadable with ``torch.load(path, weights_only=True)``:

=================  ============================================================================
key                value
=================  ============================================================================
format             ``"tal-reid-checkpoint"``
format_version     ``1``
toolkit_version    version of tal-reid that wrote it
run_name           name of the run (default export folder name)
config             ``TALConfig.to_dict()``: preset, backbone, domains (names, count), image size,
                   mean/std, scales, streams, ablation switches; plain Python types
model              the model ``state_dict``
epoch              last completed epoch (1-based; 0 = before training)
optimizer          ``optimizer.state_dict()`` or None
scheduler          ``scheduler.state_dict()`` or None
rng                RNG states as tensors/ints (python, numpy, torch, cuda) or None
train_args         the tal-train options of the run (for --resume) or None
metrics            list of per-epoch metric dicts (each with an ``epoch`` key)
=================  ============================================================================

Writes go to a temporary file in the same folder followed by ``os.replace``, so a kill at any
moment leaves either the old checkpoint or the new one, never a torn file; the file gets the
umask's mode, like any file written with ``open()``. Loading uses ``weights_only=True`` only: a
file holding anything else is refused, and the message never suggests loading it otherwise.
Only a regular file of at most `MAX_CHECKPOINT_BYTES` is opened (`tal_infer.user_files`): a
FIFO given as checkpoint would block the load for ever, /dev/zero would never end.
"""
from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from tal_infer import __version__
from tal_infer.atomic import atomic_file
from tal_infer.errors import TalError
from tal_infer.user_files import UserFileError, open_regular

CKPT_FORMAT = "tal-reid-checkpoint"
CKPT_VERSION = 1
REQUIRED_KEYS = ("format", "format_version", "config", "model", "epoch")
# The paper preset's weights take 112 MB (3 domains, torch.save), a few hundred MB with the
# optimizer's state: 4 GiB leaves room for larger backbones and refuses what no run writes.
MAX_CHECKPOINT_BYTES = 4 << 30


class CheckpointError(TalError):
    """A missing, corrupt or foreign checkpoint file."""


def save_checkpoint(path: str | os.PathLike, *, model_state: dict, config: dict, epoch: int,
                    run_name: str, optimizer: dict | None = None, scheduler: dict | None = None,
                    rng: dict | None = None, train_args: dict | None = None,
                    metrics: list[dict] | None = None) -> Path:
    """Write a checkpoint atomically (temp file + rename) and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CKPT_FORMAT,
        "format_version": CKPT_VERSION,
        "toolkit_version": __version__,
        "run_name": run_name,
        "config": config,
        "model": model_state,
        "epoch": int(epoch),
        "optimizer": optimizer,
        "scheduler": scheduler,
        "rng": rng,
        "train_args": train_args,
        "metrics": metrics or [],
    }
    with atomic_file(path) as f:
        torch.save(payload, f)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and validate a checkpoint; raise CheckpointError with one clear line otherwise."""
    path = Path(path)
    try:
        with open_regular(path, MAX_CHECKPOINT_BYTES) as f:
            ckpt = torch.load(f, map_location=map_location, weights_only=True)
    except UserFileError as err:
        problem = "checkpoint not found" if err.problem == "file not found" else err.problem
        raise CheckpointError(f"{path}: {problem}") from None
    except pickle.UnpicklingError as err:  # weights_only=True refused the file
        raise CheckpointError(f"{path}: {weights_only_refusal(err, 'tal-reid checkpoint')}"
                              ) from None
    except Exception as err:  # torch raises many types for truncated/foreign files
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: not a readable tal-reid checkpoint ({first})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CKPT_FORMAT:
        raise CheckpointError(f"{path}: not a tal-reid checkpoint (no '{CKPT_FORMAT}' marker)")
    if ckpt.get("format_version") != CKPT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {ckpt.get('format_version')} "
                              f"is not supported (this tal-reid reads version {CKPT_VERSION})")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}")
    return ckpt


def weights_only_refusal(err: pickle.UnpicklingError, what: str) -> str:
    """torch's ``weights_only=True`` refusal of a file (a ``what``: checkpoint, weights file)
    retold in one line, without torch's advice to retry with ``weights_only=False``, which would
    run whatever code the file carries. Every file tal-reid loads with torch.load says it so."""
    message = str(err)
    found = re.search(r"GLOBAL ([\w.]+)", message)
    if found:
        return (f"holds the Python object {found[1]}, not only tensors and plain containers; "
                "refused, because loading it could run code")
    details = [line.strip() for line in message.splitlines() if line.strip()
               and "weights_only" not in line and "Weights only load failed" not in line
               and not line.startswith("Check the documentation")]
    return f"not a readable {what} ({details[0] if details else 'damaged'})"
