"""ImageNet initialization of the backbone (paper Sec. 4.1: "IBN-Net50 pretrained on ImageNet").

`load_pretrained` reads torchvision ResNet or official IBN-Net weights from a local file or a URL
(``torch.hub.load_state_dict_from_url``, cached under the torch hub folder; URLs only when
online), always with ``weights_only=True``, and copies them into the backbone: convolutions and
instance norms one to one, every BatchNorm into *each* DSBN expert of its `DomainNorm` (and into
the DI BN of the ``bn`` ablation). The one key filter is `filter_imagenet_state_dict`. DABN
attention, necks and heads have no ImageNet counterpart and keep their random initialization.
Offline with ``allow_random=True`` the model continues from random init with a log line.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from tal_infer.errors import TalError

log = logging.getLogger(__name__)

_TORCHVISION = "https://download.pytorch.org/models/"
_IBN_NET = "https://github.com/XingangPan/IBN-Net/releases/download/v1.0/"
# Official ImageNet weights: torchvision IMAGENET1K_V1 and XingangPan/IBN-Net release v1.0
# (the files QAConv-GS loads through torch.hub).
PRETRAINED_URLS: dict[tuple[int, str | None], str] = {
    (18, None): _TORCHVISION + "resnet18-f37072fd.pth",
    (34, None): _TORCHVISION + "resnet34-b627a593.pth",
    (50, None): _TORCHVISION + "resnet50-0676ba61.pth",
    (101, None): _TORCHVISION + "resnet101-63fe2227.pth",
    (18, "a"): _IBN_NET + "resnet18_ibn_a-2f571257.pth",
    (34, "a"): _IBN_NET + "resnet34_ibn_a-94bc1577.pth",
    (50, "a"): _IBN_NET + "resnet50_ibn_a-d9d0bb7b.pth",
    (101, "a"): _IBN_NET + "resnet101_ibn_a-59ea0ac6.pth",
    (18, "b"): _IBN_NET + "resnet18_ibn_b-bc2f3c11.pth",
    (34, "b"): _IBN_NET + "resnet34_ibn_b-04134c37.pth",
    (50, "b"): _IBN_NET + "resnet50_ibn_b-9ca61e85.pth",
    (101, "b"): _IBN_NET + "resnet101_ibn_b-c55f6dba.pth",
}
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


def pretrained_url(depth: int, ibn: str | None) -> str:
    """The official ImageNet weights URL of ResNet-`depth` / IBN-Net-`ibn`."""
    try:
        return PRETRAINED_URLS[(depth, ibn)]
    except KeyError:
        raise TalError(f"no official ImageNet weights for ResNet-{depth}"
                       f"{'-IBN-' + ibn if ibn else ''}") from None


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


def filter_imagenet_state_dict(weights: Any, target: Mapping[str, Tensor]
                               ) -> tuple[dict[str, Tensor], list[str], list[str]]:
    """Map ImageNet classification weights onto the backbone state dict `target`.

    Unwraps containers, strips DataParallel's ``module.`` prefix, drops the classifier ``fc.*``,
    and fills each target key from `source_key(key)`, so one BN feeds every DSBN expert.
    Returns (state dict to load, target keys not found, file keys not used).
    """
    source = {k.removeprefix("module."): v for k, v in _unwrap(weights).items()}
    source = {k: v for k, v in source.items() if not k.startswith("fc.")}
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


def _read(path_or_url: str, cache_dir: str | None) -> Any:
    if "://" in path_or_url:
        try:
            return torch.hub.load_state_dict_from_url(path_or_url, model_dir=cache_dir,
                                                      map_location="cpu", check_hash=True,
                                                      weights_only=True)
        except OSError as err:  # URLError and socket errors are OSErrors
            reason = getattr(err, "reason", None) or err
            raise TalError(f"{path_or_url}: cannot download pretrained weights ({reason}); "
                           "offline? download the file and pass its path") from None
        except Exception as err:  # noqa: BLE001 - torch raises many types for bad files
            raise TalError(f"{path_or_url}: not a readable weights file ({_first_line(err)})") from None
    path = Path(path_or_url)
    if not path.is_file():
        raise TalError(f"{path}: pretrained weights file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001
        raise TalError(f"{path}: not a readable weights file ({_first_line(err)})") from None


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _preview(keys: list[str]) -> str:
    return ", ".join(keys[:_PREVIEW]) + (f", ... ({len(keys)} in all)" if len(keys) > _PREVIEW else "")


def load_pretrained(model: nn.Module, path_or_url: str, allow_random: bool = False,
                    cache_dir: str | None = None) -> LoadReport | None:
    """Initialize the backbone of `model` (a TALModel or a bare ResNet) from ImageNet weights.

    Returns what was loaded, or None when the weights could not be read and ``allow_random``
    let the model continue from random initialization. Raises `TalError` for an unreadable or
    unreachable source (unless ``allow_random``) and for weights of another architecture.
    """
    path_or_url = str(path_or_url)
    backbone = getattr(model, "backbone", model)
    try:
        weights = _read(path_or_url, cache_dir)
    except TalError as err:
        if not allow_random:
            raise
        log.warning("%s; continuing from random initialization", err)
        return None
    try:
        mapped, missing, unexpected = filter_imagenet_state_dict(weights, backbone.state_dict())
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
