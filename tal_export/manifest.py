"""manifest.json of an export bundle, built from the shared typed schema
(`tal_infer.bundle_schema`, docs/bundle.md), so the writer and the runtime's reader cannot
drift apart."""
from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

from tal_infer import __version__
from tal_infer.bundle_schema import (FORMAT_VERSION, MANIFEST, DescriptorSection, FeatureSection,
                                     FileEntry, InputSection, Manifest, MatchingSection)
from tal_infer.hashing import file_sha256
from tal_infer.precision import Precision
from tal_train.models import TALConfig, TALModel
from tal_train.models.descriptor import DescriptorHead


def feature_sections(model: TALModel) -> dict[str, FeatureSection]:
    """The ``features`` section: one entry per extractor output, shape without N."""
    cfg = model.config
    return {name: FeatureSection(name, (*([cfg.num_domains] if name.startswith("ds_") else []),
                                        cfg.neck_channels, h, w))
            for name, (h, w) in model.feature_shapes().items()}


def descriptor_section(head: DescriptorHead, distillation: dict[str, Any]) -> DescriptorSection:
    """The ``descriptor`` section: output width, how it is made, the distillation report."""
    return DescriptorSection(head.dim, {
        "method": "distilled", "inputs": list(head.inputs), "reduced": head.reduced,
        "hidden": head.hidden, "head": head.spec(), "distillation": distillation})


def build_manifest(*, config: TALConfig, run_name: str, checkpoint: Path, checkpoint_sha256: str,
                   epoch: int, model: TALModel, matching: dict, precision: Precision,
                   opset: int, parity: dict, descriptor: DescriptorSection | None = None
                   ) -> Manifest:
    """The manifest without ``files`` (added last, `file_entries`) and ``tensorrt``."""
    height, width = config.image_size
    return Manifest(
        format_version=FORMAT_VERSION, toolkit_version=__version__,
        created=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        run_name=run_name,
        checkpoint={"file": checkpoint.name, "sha256": checkpoint_sha256, "epoch": epoch},
        input=InputSection(height, width, tuple(config.mean), tuple(config.std)),
        domains=tuple(config.domains), streams=tuple(config.streams),
        scales=tuple(config.scales), features=feature_sections(model), precision=precision,
        opset=opset, matching=MatchingSection.from_json(matching),
        model_config=config.to_dict(), parity=parity, descriptor=descriptor)


def file_entries(folder: Path) -> dict[str, FileEntry]:
    """``files`` section: every file of the bundle folder but the manifest, with hash and size."""
    return {p.name: FileEntry(file_sha256(p), p.stat().st_size)
            for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST}


def write_manifest(folder: Path, manifest: Manifest) -> Path:
    path = folder / MANIFEST
    path.write_text(json.dumps(manifest.to_json(), indent=2) + "\n")
    return path
