"""TALModel: the two-stream adaptive learning network (paper Sec. 3, Fig. 2).

One registered backbone (``config.backbone``, `tal_train.models.backbones`; the paper's IBN-Net50)
whose convolutions are shared by every stream and whose BatchNorms are `DomainNorm`s (injected
as its norm factory): the DS stream is K experts (DSBN, one per source domain), the DI stream
normalizes with DABN (or the Table 4 ablations). Per scale (the stage the registry names for
res4 / res5: ResNet layer3 / layer4) a neck
maps the stage output to ``neck_channels`` with a 3x3 convolution and a norm, then L2-normalizes
every location over channels (as QAConv). **Neck norm reading:** the neck's BatchNorm is a
`DomainNorm` too, like every BN of the backbone; DSBN replaces all of them, and the experts'
feature statistics differ most right before matching.

Heads: ``ds_head`` (MS-QAConv shared by the K experts: phase 1, and the Table 5 voting baseline),
``msda_head`` (MSDA-QAConv on all experts: phase 2; None for ``ds_head="vote"``), ``di_head``
(MS-QAConv of the DI stream: phase 3). Inference score = score_DS + score_DI ("Model Inference").

Training phases (our reading of paper Sec. 3.1-3.3), one method each:

1. ``per_domain_scores(x_i, i)``: a batch of domain i through expert i -> ``ds_head``. Updates the
   shared convolutions, expert i's norms (and its running statistics), ``ds_head``.
2. ``hybrid_ds_scores(x)``: a hybrid batch through all K experts -> ``msda_head``. "The backbone
   parameters are no longer updated": our reading freezes the statistics too, so the experts run
   without gradients and with their running statistics, untouched (`ds_feature_maps`).
3. ``hybrid_di_scores(x)``: the hybrid batch through the DI stream -> ``di_head``. Updates shared
   convolutions, necks' convolutions, DABN attention (reading ``own``: also the DI stream's own
   running statistics) and ``di_head``; DABN reads the experts' tensors detached, so DSBN never
   changes here.

`parameter_groups` names the parameters of each kind, for optimizers and for checking this
routing. ``forward(images, phase, domain)`` dispatches to the three phase methods, so a
DistributedDataParallel wrapper sees every training call.

Images enter as float [N, 3, H, W], RGB, normalized with ``config.mean`` / ``config.std``.
"""
from __future__ import annotations

import functools
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tal_infer.features import feature_name, feature_names

from .backbones import NormFactory, backbone_spec
from .config import TALConfig
from .msda import MSDAQAConvHead
from .norm import DomainNorm, Stream, use_stream
from .projection import HeadProjection, projection_scores
from .qaconv import MSQAConvHead, match_layout

PHASES = ("per_domain", "hybrid_ds", "hybrid_di")


class Neck(nn.Module):
    """3x3 conv to the matching width + norm, then L2-normalization over channels."""

    def __init__(self, in_channels: int, out_channels: int, norm_layer: NormFactory):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn = norm_layer(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.bn(self.conv(x)), dim=1)


@contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Temporarily put `modules` in eval mode, restoring every submodule's own flag afterwards."""
    flags = [(m, m.training) for module in modules for m in module.modules()]
    for module in modules:
        module.eval()
    try:
        yield
    finally:
        for m, training in flags:
            m.training = training


class TALModel(nn.Module):
    """Backbone with DomainNorms, per-scale necks and the three matching heads (see module doc)."""

    def __init__(self, config: TALConfig):
        super().__init__()
        self.config = config
        k, scales = config.num_domains, config.scales
        norm = functools.partial(DomainNorm, num_domains=k, reduction=config.dabn_reduction,
                                 di_norm=config.di_norm if "di" in config.streams else None,
                                 dabn_stats=config.dabn_stats)
        spec = backbone_spec(config.backbone)
        self.backbone = spec.build(norm, config.last_stride, last_scale=scales[-1])
        self.necks = nn.ModuleDict({s: Neck(spec.scales[s].channels, config.neck_channels, norm)
                                    for s in scales})
        hw = [h * w for h, w in config.scale_sizes().values()]
        self.ds_head = MSQAConvHead(hw)
        self.msda_head = None
        if "ds" in config.streams and config.ds_head != "vote":
            self.msda_head = MSDAQAConvHead(k, hw, config.msda_reduction,
                                            attention=config.ds_head == "msda")
        self.di_head = MSQAConvHead(hw) if "di" in config.streams else None

    # ---- feature maps -------------------------------------------------------------------
    def _maps(self, images: Tensor, stream: Stream | tuple[Stream, ...]) -> dict[str, Tensor]:
        with use_stream(self, stream):
            stages = self.backbone.forward_features(images)
            return {s: self.necks[s](stages[s]) for s in self.config.scales}

    def _tiled_maps(self, images: Tensor, streams: tuple[Stream, ...]) -> dict[str, Tensor]:
        """All `streams` in one batched pass: {scale: [S, N, C, h, w]}."""
        n = images.shape[0]
        maps = self._maps(images.repeat(len(streams), 1, 1, 1), streams)
        return {s: m.view(len(streams), n, *m.shape[1:]) for s, m in maps.items()}

    def feature_maps(self, images: Tensor, stream: Stream) -> dict[str, Tensor]:
        """{scale: [N, C, h, w]} of one stream (expert index or "di"), usual autograd/mode."""
        if isinstance(stream, tuple):
            raise ValueError("feature_maps takes one stream; use ds_feature_maps for all experts")
        return self._maps(images, stream)

    def ds_feature_maps(self, images: Tensor, frozen: bool = True) -> dict[str, Tensor]:
        """{scale: [N, K, C, h, w]}: every expert on the same images (one tiled pass).

        ``frozen``: no gradients, running statistics, nothing updated (phase 2).
        """
        experts = tuple(range(self.config.num_domains))
        if frozen:
            with torch.no_grad(), eval_mode(self.backbone, self.necks):
                maps = self._tiled_maps(images, experts)
        else:
            maps = self._tiled_maps(images, experts)
        return {s: m.transpose(0, 1).contiguous() for s, m in maps.items()}

    def extract(self, images: Tensor) -> dict[str, Tensor]:
        """Eval features named as the extractor outputs of docs/bundle.md.

        ``ds_<scale>`` [N, K, C, h, w] and ``di_<scale>`` [N, C, h, w], for the configured
        streams; the unfolded reference the exported graph is checked against.
        """
        k = self.config.num_domains
        with torch.no_grad(), eval_mode(self):
            maps = self._tiled_maps(images, self.config.tiled_streams())
        out = {}
        for stream in self.config.streams:
            for s, m in maps.items():
                out[feature_name(stream, s)] = (m[:k].transpose(0, 1).contiguous()
                                                if stream == "ds" else m[-1])
        return out

    def feature_shapes(self) -> dict[str, tuple[int, int]]:
        """(h, w) of each extractor output; the full shapes are [N, K, C, h, w] / [N, C, h, w]
        with K = ``config.num_domains`` and C = ``config.neck_channels``."""
        sizes = self.config.scale_sizes()
        return {feature_name(stream, s): sizes[s] for stream in self.config.streams
                for s in sizes}

    # ---- training phases ----------------------------------------------------------------
    def _ordered(self, maps: dict[str, Tensor]) -> list[Tensor]:
        return [maps[s] for s in self.config.scales]

    def per_domain_scores(self, images: Tensor, domain: int) -> Tensor:
        """Phase 1: [B, B] scores of a domain-`domain` batch through its expert and ``ds_head``."""
        maps = self._ordered(self.feature_maps(images, domain))
        return self.ds_head(maps, maps)

    def hybrid_ds_scores(self, images: Tensor) -> Tensor:
        """Phase 2: [B, B] scores of a hybrid batch through the frozen experts and ``msda_head``."""
        if self.msda_head is None:
            raise ValueError("this model has no MSDA-QAConv head (no DS stream, or ds_head='vote')")
        maps = self._ordered(self.ds_feature_maps(images, frozen=True))
        return self.msda_head(maps, maps)

    def hybrid_di_scores(self, images: Tensor) -> Tensor:
        """Phase 3: [B, B] scores of a hybrid batch through the DI stream and ``di_head``."""
        if self.di_head is None:
            raise ValueError("this model has no DI stream")
        maps = self._ordered(self.feature_maps(images, "di"))
        return self.di_head(maps, maps)

    def training_phases(self) -> tuple[str, ...]:
        """The phases this configuration trains (a subset of PHASES, in order)."""
        c = self.config
        uses_experts = "ds" in c.streams or c.di_norm in ("dabn", "avg")
        active = (uses_experts, self.msda_head is not None, self.di_head is not None)
        return tuple(p for p, on in zip(PHASES, active) if on)

    def forward(self, images: Tensor, phase: str, domain: int | None = None) -> Tensor:
        """[B, B] scores of one training phase (the entry point for DDP wrappers)."""
        if phase == "per_domain":
            if domain is None:
                raise ValueError("phase 'per_domain' needs the domain index")
            return self.per_domain_scores(images, domain)
        if phase == "hybrid_ds":
            return self.hybrid_ds_scores(images)
        if phase == "hybrid_di":
            return self.hybrid_di_scores(images)
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by role: shared, expert_norms, di_norm, ds_head, msda_head, di_head.

        shared = every convolution plus the instance norms' affine (used by all streams);
        expert_norms = the DSBN experts' affine; di_norm = DABN attention or the DI BN affine.
        """
        roles: dict[int, str] = {}
        for m in self.modules():
            if isinstance(m, DomainNorm):
                roles.update((id(p), "expert_norms") for p in m.experts.parameters())
                if m.di_norm is not None:
                    roles.update((id(p), "di_norm") for p in m.di.parameters())
        for name in ("ds_head", "msda_head", "di_head"):
            head = getattr(self, name)
            if head is not None:
                roles.update((id(p), name) for p in head.parameters())
        groups: dict[str, list[nn.Parameter]] = {r: [] for r in ("shared", "expert_norms",
                                                                 "di_norm", "ds_head",
                                                                 "msda_head", "di_head")}
        for p in self.parameters():
            groups[roles.get(id(p), "shared")].append(p)
        return groups

    # ---- inference ----------------------------------------------------------------------
    def stream_projections(self) -> dict[str, HeadProjection]:
        """Each configured stream's head in eval projection form (DS: MSDA, avg or vote)."""
        out = {}
        if "ds" in self.config.streams:
            out["ds"] = (self.msda_head.projection() if self.msda_head is not None else
                         self.ds_head.projection().per_expert_mean(self.config.num_domains))
        if "di" in self.config.streams:
            out["di"] = self.di_head.projection()
        return out

    def match(self, query_feats: dict[str, Tensor], gallery_feats: dict[str, Tensor],
              parts: Sequence[str] | None = None) -> Tensor:
        """Inference scores [Nq, Ng] = sum of the stream scores in `parts` (default: all streams).

        Feature dicts as `extract` returns them. ``parts=("ds",)`` / ``("di",)`` give each stream
        alone (paper Table 3). Projection form over gallery chunks; eval statistics always.
        """
        parts = tuple(parts or self.config.streams)
        unknown = [p for p in parts if p not in self.config.streams]
        if unknown:
            raise ValueError(f"parts {unknown} are not streams of this model "
                             f"{list(self.config.streams)}")
        with torch.no_grad():
            projections = self.stream_projections()
            total = None
            for part in parts:
                names = feature_names([part], self.config.scales)
                score = projection_scores(projections[part],
                                          [match_layout(query_feats[n]) for n in names],
                                          [match_layout(gallery_feats[n]) for n in names])
                total = score if total is None else total + score
        return total

    def projection_form(self) -> dict[str, Any]:
        """The matching heads as docs/bundle.md stores them.

        ``{"matching": <manifest "matching" section>, "arrays": <heads.npz entries>}``.
        """
        projections = self.stream_projections()
        arrays: dict[str, Any] = {}
        for stream, proj in projections.items():
            arrays.update(proj.arrays(stream, self.config.scales))
        matching = {"score": list(self.config.streams),
                    "streams": {stream: {"mode": proj.mode} for stream, proj in projections.items()},
                    "scales": list(self.config.scales)}
        return {"matching": matching, "arrays": arrays}


def build_model(config: TALConfig) -> TALModel:
    """A randomly initialized TAL model (load ImageNet weights with `load_pretrained`)."""
    return TALModel(config)
