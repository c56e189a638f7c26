"""ImageNet initialization of the backbone (paper Sec. 4.1: "IBN-Net50 pretrained on ImageNet").

`load_pretrained` reads weights in the upstream layout of the model's backbone (the registry
entry's ``key_filter``: torchvision / IBN-Net for ResNets, torchreid for OSNet) from a local file,
a URL, or the entry's published `PretrainedWeights`, always with ``weights_only=True``, and copies
them into the backbone: convolutions and instance norms one to one, every BatchNorm into *each*
DSBN expert of its `DomainNorm` (and into the DI BN of the ``bn`` ablation). DABN attention,
necks and heads have no ImageNet counterpart and keep their random initialization.

Downloads go to the torch hub cache (``<hub dir>/checkpoints``, or ``cache_dir``) and are checked
against the SHA-256 prefix the entry declares (for a URL given by hand: the prefix in its file
name, torch.hub's convention); a cached file is checked again on every use, so a damaged file is
named, never loaded. A source that cannot be read is an error (training from random init is an
explicit choice: ``--pretrained none``).
"""
from __future__ import annotations

import logging
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from tal_infer.errors import TalError
from tal_infer.hashing import file_sha256
from tal_infer.user_files import UserFileError, open_regular

from ..checkpoint import MAX_CHECKPOINT_BYTES, weights_only_refusal
from .backbones import KeyFilter, PretrainedWeights

log = logging.getLogger(__name__)

# DomainNorm levels that have no counterpart in a plain network: removed to find the source key.
_DOMAIN_LEVEL = re.compile(r"\.(experts\.\d+|di)(?=\.)")
_PREVIEW = 6


@dataclass(frozen=True)
class LoadReport:
    """What `load_pretrained` did: backbone keys filled, left as they were, and file keys unused."""
    source: str
    loaded: tuple[str, ...]
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]


def drop_prefixes(*prefixes: str) -> KeyFilter:
    """A key filter that drops the upstream heads (e.g. the ImageNet classifier ``fc.``)."""
    def key_filter(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {k: v for k, v in state.items() if not k.startswith(prefixes)}

    return key_filter


def source_key(key: str) -> str:
    """The plain-network key a backbone key is initialized from (``bn1.experts.2.weight`` ->
    ``bn1.weight``, ``bn1.di.running_var`` -> ``bn1.running_var``)."""
    return _DOMAIN_LEVEL.sub("", key)


def _unwrap(obj: Any) -> dict[str, Tensor]:
    """The tensor mapping inside a weights file (bare, or under "state_dict" / "model")."""
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise TalError("does not hold a state dict of tensors")
    return dict(obj)


def map_pretrained_state_dict(weights: Any, target: Mapping[str, Tensor], key_filter: KeyFilter
                              ) -> tuple[dict[str, Tensor], list[str], list[str]]:
    """Map upstream weights onto the backbone state dict `target`.

    Unwraps containers, strips DataParallel's ``module.`` prefix, applies the backbone's
    `key_filter` (upstream layout -> plain-network keys), and fills each target key from
    `source_key(key)`, so one BN feeds every DSBN expert.
    Returns (state dict to load, target keys not found, file keys not used).
    """
    source = key_filter({k.removeprefix("module."): v for k, v in _unwrap(weights).items()})
    mapped, missing = {}, []
    for key, value in target.items():
        src = source.get(source_key(key))
        if src is None:
            missing.append(key)
        elif src.shape != value.shape:
            raise TalError(f"{source_key(key)} has shape {list(src.shape)} but the backbone's "
                           f"{key} has {list(value.shape)} (weights of another architecture?)")
        else:
            mapped[key] = src
    used = {source_key(k) for k in mapped}
    return mapped, missing, sorted(set(source) - used)


def _download(url: str, file_name: str, sha256: str | None, cache_dir: str | None) -> Path:
    """The cached file of `url`, downloaded first if absent; checked against `sha256`."""
    folder = Path(cache_dir) if cache_dir else Path(torch.hub.get_dir()) / "checkpoints"
    path = folder / file_name
    if path.is_file():
        if sha256 and not file_sha256(path).startswith(sha256):
            raise TalError(f"{path}: cached weights do not match the SHA-256 prefix {sha256} of "
                           f"{url} (damaged file?); delete it to download it again")
        return path
    folder.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(path), hash_prefix=sha256)
    except OSError as err:  # URLError and socket errors are OSErrors
        reason = getattr(err, "reason", None) or err
        raise TalError(f"{url}: cannot download pretrained weights ({reason}); offline? "
                       "download the file and pass its path") from None
    except RuntimeError:  # torch.hub's hash check
        raise TalError(f"{url}: the downloaded file does not match its SHA-256 prefix "
                       f"{sha256}") from None
    if not sha256:
        log.warning("%s publishes no checksum; SHA-256 of the downloaded %s: %s", url, path,
                    file_sha256(path))
    return path


def _url_weights(url: str) -> PretrainedWeights:
    """A URL given by hand: its file name, and the SHA-256 prefix that name carries (if any)."""
    file_name = Path(urlparse(url).path).name or "pretrained.pth"
    match = torch.hub.HASH_REGEX.search(file_name)
    return PretrainedWeights(url, file_name, match.group(1) if match else None)


def _read(source: str | PretrainedWeights, cache_dir: str | None) -> Any:
    if isinstance(source, str) and "://" in source:
        source = _url_weights(source)
    if isinstance(source, PretrainedWeights):
        path = _download(source.url, source.file_name, source.sha256, cache_dir)
    else:
        path = Path(source)
    try:
        with open_regular(path, MAX_CHECKPOINT_BYTES) as f:  # regular files only, size-capped
            return torch.load(f, map_location="cpu", weights_only=True)
    except UserFileError as err:
        problem = ("pretrained weights file not found" if err.problem == "file not found"
                   else err.problem)
        raise TalError(f"{path}: {problem}") from None
    except pickle.UnpicklingError as err:  # weights_only=True refused the file
        raise TalError(f"{path}: {weights_only_refusal(err, 'weights file')}") from None
    except Exception as err:  # noqa: BLE001 - torch raises many types for bad files
        raise TalError(f"{path}: not a readable weights file ({_first_line(err)})") from None


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _preview(keys: list[str]) -> str:
    return ", ".join(keys[:_PREVIEW]) + (f", ... ({len(keys)} in all)" if len(keys) > _PREVIEW else "")


def load_pretrained(model: nn.Module, source: str | os.PathLike | PretrainedWeights,
                    cache_dir: str | None = None) -> LoadReport:
    """Initialize the backbone of `model` (a TALModel or a registry-built backbone) from
    ImageNet weights in the backbone's upstream layout: a file, a URL, or published weights.

    Returns what was loaded. Raises `TalError` for an unreadable or unreachable source and for
    weights of another architecture.
    """
    backbone = getattr(model, "backbone", model)
    if isinstance(source, PretrainedWeights):
        path_or_url = source.url
    else:
        source = path_or_url = str(source)
    weights = _read(source, cache_dir)
    try:
        mapped, missing, unexpected = map_pretrained_state_dict(weights, backbone.state_dict(),
                                                                backbone.spec.key_filter)
    except TalError as err:
        raise TalError(f"{path_or_url}: {err}") from None
    backbone.load_state_dict(mapped, strict=False)
    new = [k for k in missing if ".attention." in k or k.endswith("num_batches_tracked")]
    other = [k for k in missing if k not in new]
    log.info("loaded %d backbone tensors from %s", len(mapped), path_or_url)
    if new:
        log.info("%d backbone tensors have no ImageNet counterpart (kept as initialized): %s",
                 len(new), _preview(new))
    if other:
        log.warning("%d backbone tensors are missing from %s (kept random): %s",
                    len(other), path_or_url, _preview(other))
    if unexpected:
        log.warning("%d tensors of %s were not used: %s", len(unexpected), path_or_url,
                    _preview(unexpected))
    return LoadReport(path_or_url, tuple(mapped), tuple(missing), tuple(unexpected))
