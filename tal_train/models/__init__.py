"""The TAL model (paper Sec. 3): backbone with DomainNorm (DSBN + DABN), QAConv heads, two streams.

Modules: `resnet` (ResNet / IBN-Net with a norm factory), `norm` (DomainNorm, DABN, stream
selection), `qaconv` (QAConv, MS-QAConv), `msda` (MSDA-QAConv), `projection` (heads in the
projection form of docs/bundle.md), `tal` (TALModel), `config` (TALConfig, presets),
`pretrained` (ImageNet weights).
"""
from .config import TALConfig
from .msda import MSDAQAConvHead, msda_hidden_width
from .norm import DABN, DomainNorm, expert_affines, set_stream, use_stream
from .pretrained import PRETRAINED_URLS, LoadReport, load_pretrained, pretrained_url
from .projection import HeadProjection, ScaleProjection, projection_scores
from .qaconv import QAConv, MSQAConvHead, match_layout
from .resnet import ResNet, resnet
from .tal import PHASES, TALModel, build_model

__all__ = [
    "TALConfig", "TALModel", "build_model", "PHASES",
    "ResNet", "resnet", "DomainNorm", "DABN", "expert_affines", "use_stream", "set_stream",
    "QAConv", "MSQAConvHead", "MSDAQAConvHead", "msda_hidden_width", "match_layout",
    "HeadProjection", "ScaleProjection", "projection_scores",
    "load_pretrained", "pretrained_url", "PRETRAINED_URLS", "LoadReport",
]
