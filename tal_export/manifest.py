"""manifest.json of an export bundle (schema: docs/bundle.md)."""
from __future__ import annotations

import datetime
import json
from pathlib import Path

from tal_infer import __version__
from tal_infer.hashing import file_sha256
from tal_infer.precision import Precision
from tal_train.models import TALConfig, TALModel

BUNDLE_FORMAT = "tal-reid-bundle"
BUNDLE_VERSION = 2  # 2: the global descriptor (section "descriptor", extractor output)
MANIFEST = "manifest.json"


def feature_specs(model: TALModel) -> dict[str, dict]:
    """The manifest ``features`` section: shape with -1 for the batch, and (h, w)."""
    cfg = model.config
    specs = {}
    for name, (h, w) in model.feature_shapes().items():
        lead = [cfg.num_domains] if name.startswith("ds_") else []
        specs[name] = {"shape": [-1, *lead, cfg.neck_channels, h, w], "hw": [h, w]}
    return specs


def build_manifest(*, config: TALConfig, run_name: str, checkpoint: Path, checkpoint_sha256: str,
                   epoch: int, features: dict, matching: dict, precision: Precision,
                   opset: int, parity: dict, descriptor: dict | None = None) -> dict:
    """The manifest dict without ``files`` (added last, `file_entries`) and ``tensorrt``;
    ``descriptor`` only when the extractor has that output."""
    height, width = config.image_size
    manifest = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_VERSION,
        "toolkit_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "run_name": run_name,
        "checkpoint": {"file": checkpoint.name, "sha256": checkpoint_sha256, "epoch": epoch},
        "input": {"name": "images", "dtype": "uint8", "layout": "NHWC", "color": "BGR",
                  "height": height, "width": width, "resize": "bilinear",
                  "mean": list(config.mean), "std": list(config.std)},
        "domains": {"names": list(config.domains), "count": config.num_domains},
        "streams": list(config.streams),
        "scales": list(config.scales),
        "features": features,
        "dtype": precision.dtype,
        "precision": precision.to_manifest(),
        "opset": opset,
        "matching": matching,
        "model_config": config.to_dict(),
        "parity": parity,
    }
    if descriptor is not None:
        manifest["descriptor"] = descriptor
    return manifest


def file_entries(folder: Path) -> dict[str, dict]:
    """``files`` section: every file of the bundle folder but the manifest, with hash and size."""
    return {p.name: {"sha256": file_sha256(p), "bytes": p.stat().st_size}
            for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST}


def write_manifest(folder: Path, manifest: dict) -> Path:
    path = folder / MANIFEST
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path
