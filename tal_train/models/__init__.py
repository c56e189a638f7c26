"""The TAL model (paper Sec. 3): backbone with DomainNorm (DSBN + DABN), QAConv heads, two streams.

Modules: `backbones` (the backbone registry and the stem + stages contract), `resnet` (ResNet /
IBN-Net entries), `osnet` (OSNet / OSNet-AIN entries), `norm` (DomainNorm, DABN, stream
selection), `qaconv` (QAConv, MS-QAConv), `msda` (MSDA-QAConv), `projection` (heads in the
projection form of docs/bundle.md), `tal` (TALModel), `config` (TALConfig, presets),
`pretrained` (ImageNet weights).
"""
from .backbones import (Backbone, BackboneSpec, PretrainedWeights, ScaleSpec, backbone_names,
                        backbone_spec, build_backbone)
from .config import TALConfig
from .msda import MSDAQAConvHead, msda_hidden_width
from .norm import DABN, DomainNorm, expert_affines, set_stream, use_stream
from .osnet import OSNet
from .pretrained import LoadReport, load_pretrained
from .projection import HeadProjection, ScaleProjection, projection_scores
from .qaconv import QAConv, MSQAConvHead, match_layout
from .resnet import ResNet
from .tal import PHASES, TALModel, build_model

__all__ = [
    "TALConfig", "TALModel", "build_model", "PHASES",
    "Backbone", "BackboneSpec", "ScaleSpec", "PretrainedWeights", "backbone_names",
    "backbone_spec", "build_backbone", "ResNet", "OSNet",
    "DomainNorm", "DABN", "expert_affines", "use_stream", "set_stream",
    "QAConv", "MSQAConvHead", "MSDAQAConvHead", "msda_hidden_width", "match_layout",
    "HeadProjection", "ScaleProjection", "projection_scores",
    "load_pretrained", "LoadReport",
]
