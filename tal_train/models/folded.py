"""The folded extractor: a TALModel's eval forward as one batched pass (docs/export.md).

What folding does (all folding arithmetic in float64, rounded once to the compute dtype):

* **Streams as one batch.** The S = K (+1 for DI) streams run as one pass over the input tiled S
  times, chunk j normalized as stream j, exactly as ``TALModel.extract`` does, but every
  `DomainNorm` becomes a `FoldedNorm`: a per-stream channel affine ``x * scale[j] + shift[j]``
  from an [S, C] table (eval statistics folded into scale/shift). Convolutions are untouched and
  shared, so the graph holds one Conv per convolution of the network.
* **DABN** (eqs. 5-6) is ``x * (S a) + (T a)``: S, T in R^{C x K} are the folded affines of the
  K branches it mixes (`DABN.branch_affines`: the experts' eval-form BNs for ``dabn_stats``
  "experts"; the experts' affines over the DI stream's own running statistics for "own"),
  a = softmax(W2 relu(W1 GAP(x))) is computed in the graph for the DI chunk. The ``avg``
  ablation (a = 1/K) and the ``bn`` ablation are static rows of the table.
* **Preprocessing** (uint8 BGR NHWC -> RGB, /255, mean/std) is folded into the stem
  convolution: its input channels are reversed and scaled by 1 / (255 std), and the graph only
  subtracts 255 * mean (BGR order) from the pixels. Zero padding of the shifted pixels equals
  zero padding of the normalized image, so this is exact.
* **Shared stem.** Where the stem holds no `DomainNorm` (IBN-b's and OSNet-AIN's instance-norm
  stems), it does not depend on the stream, so the batch is tiled after the stem.

The backbone is used only through its contract (`tal_train.models.backbones.Backbone`: the
stem's input convolution, ``forward_stem``, ``forward_stages``), so every registered backbone
exports without code of its own here.

The compute dtype comes from the export's `Precision` (`tal_infer.precision`). fp16:
convolution weights, the folded tables and activations are fp16; these stay fp32
(`tal_infer.precision.FP32_PARTS`, which the manifest lists): instance-norm statistics, the
DABN attention (GAP, FCs, softmax) and its mixing of the expert statistics, the neck's L2
normalization, and the pixel shift.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tal_infer.features import DESCRIPTOR, feature_names, split_feature_name
from tal_infer.precision import FLOAT32, Precision

from .descriptor import DescriptorHead
from .norm import DomainNorm, Stream, expert_affines
from .tal import TALModel


def output_names(model: TALModel) -> list[str]:
    """Extractor outputs in graph order: ``<stream>_<scale>``, streams then scales."""
    return feature_names(model.config.streams, model.config.scales)


class FloatIsland(nn.Module):
    """Runs `module` in fp32 whatever the activation dtype (statistics-sensitive layers)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module.float()

    def forward(self, x: Tensor) -> Tensor:
        return self.module(x.float()).to(x.dtype)


class FoldedNorm(nn.Module):
    """A DomainNorm over the tiled batch [S * N, C, h, w]: chunk j gets stream j's affine.

    ``scale``/``shift`` [S_static, 1, C] hold the static rows (experts, DI ``bn``/``avg``);
    with DABN the last chunk's row is computed per sample from the attention.
    """

    def __init__(self, norm: DomainNorm, streams: tuple[Stream, ...], dtype: torch.dtype):
        super().__init__()
        self.num_streams = len(streams)
        norm = copy.deepcopy(norm).double().eval()
        expert_scale, expert_shift = expert_affines(norm.experts)  # [K, C]
        dabn = "di" in streams and norm.di_norm == "dabn"
        rows = []
        for stream in streams[:-1] if dabn else streams:
            if stream != "di":
                rows.append((expert_scale[stream], expert_shift[stream]))
            elif norm.di_norm == "bn":
                scale, shift = expert_affines(nn.ModuleList([norm.di]))
                rows.append((scale[0], shift[0]))
            else:  # avg: a_i = 1/K for every sample
                scale, shift = norm.di.branch_affines(norm.experts)
                rows.append((scale.mean(0), shift.mean(0)))
        channels = expert_scale.shape[1]
        table = (torch.stack([torch.stack(r) for r in rows], dim=1) if rows
                 else torch.zeros(2, 0, channels, dtype=torch.float64))
        self.register_buffer("scale", table[0, :, None, :].to(dtype))
        self.register_buffer("shift", table[1, :, None, :].to(dtype))
        self.attention = None
        if dabn:
            self.attention = norm.di.attention.float()
            branch_scale, branch_shift = norm.di.branch_affines(norm.experts)
            self.register_buffer("branch_scale", branch_scale.float())
            self.register_buffer("branch_shift", branch_shift.float())

    def forward(self, x: Tensor) -> Tensor:
        xs = x.unflatten(0, (self.num_streams, -1))  # [S, N, C, h, w]
        scale, shift = self.scale, self.shift
        if self.attention is not None:
            a = torch.softmax(self.attention(xs[-1].float().mean(dim=(2, 3))), dim=1)  # [N, K]
            s, t = (a @ self.branch_scale).to(x.dtype), (a @ self.branch_shift).to(x.dtype)
            n = s.shape[0]
            scale = torch.cat((scale.expand(-1, n, -1), s[None]))
            shift = torch.cat((shift.expand(-1, n, -1), t[None]))
        y = xs * scale[..., None, None] + shift[..., None, None]
        return y.flatten(0, 1)


class FoldedNeck(nn.Module):
    """Neck conv + folded norm, L2 normalization over channels in fp32."""

    def __init__(self, conv: nn.Conv2d, norm: nn.Module):
        super().__init__()
        self.conv, self.norm = conv, norm

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm(self.conv(x))
        return F.normalize(y.float(), dim=1).to(y.dtype)


def _fold_modules(root: nn.Module, streams: tuple[Stream, ...], dtype: torch.dtype) -> None:
    """Replace (in place) DomainNorms by FoldedNorms and instance norms by fp32 islands."""
    for name, child in list(root.named_children()):
        if isinstance(child, DomainNorm):
            setattr(root, name, FoldedNorm(child, streams, dtype))
        elif isinstance(child, nn.InstanceNorm2d):
            setattr(root, name, FloatIsland(child))
        elif isinstance(child, nn.Conv2d):
            child.to(dtype)
        else:
            _fold_modules(child, streams, dtype)


def _preprocessing_stem(conv: nn.Conv2d, mean: tuple, std: tuple, dtype: torch.dtype) -> Tensor:
    """Fold RGB order, /255 and /std into the stem conv (in place); returns 255 * mean in BGR."""
    std64 = torch.tensor(std, dtype=torch.float64)
    weight = conv.weight.detach().double() / (255.0 * std64)[None, :, None, None]
    conv.weight = nn.Parameter(weight.flip(1).to(dtype), requires_grad=False)
    return (255.0 * torch.tensor(mean, dtype=torch.float64)).flip(0).float()


class FoldedExtractor(nn.Module):
    """uint8 BGR images [N, H, W, 3] -> the extractor outputs of docs/bundle.md (a tuple in
    `output_names` order). Built from a TALModel, which it does not change."""

    def __init__(self, model: TALModel, dtype: torch.dtype = torch.float32):
        super().__init__()
        cfg = model.config
        self.dtype = dtype
        self.streams = cfg.tiled_streams()
        self.num_experts = cfg.num_domains if "ds" in cfg.streams else 0
        self.names = output_names(model)
        backbone = copy.deepcopy(model.backbone).eval().requires_grad_(False)
        necks = copy.deepcopy(model.necks).eval().requires_grad_(False)
        self.register_buffer("pixel_shift", _preprocessing_stem(
            backbone.input_conv(), cfg.mean, cfg.std, dtype)[None, :, None, None])
        self.shared_stem = not any(isinstance(m, DomainNorm) for stem in backbone.stem_modules()
                                   for m in stem.modules())
        _fold_modules(backbone, self.streams, dtype)
        _fold_modules(necks, self.streams, dtype)
        self.backbone = backbone
        self.necks = nn.ModuleDict({s: FoldedNeck(necks[s].conv, necks[s].bn) for s in necks})

    def _tile(self, x: Tensor) -> Tensor:
        return x.repeat(len(self.streams), 1, 1, 1)

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        x = (images.permute(0, 3, 1, 2).float() - self.pixel_shift).to(self.dtype)
        stem = self.backbone.forward_stem
        x = self._tile(stem(x)) if self.shared_stem else stem(self._tile(x))
        stages = self.backbone.forward_stages(x)
        maps = {s: neck(stages[s]).unflatten(0, (len(self.streams), -1))  # [S, N, C, h, w]
                for s, neck in self.necks.items()}
        out = []
        for name in self.names:
            stream, scale = split_feature_name(name)
            m = maps[scale]
            out.append(m[:self.num_experts].transpose(0, 1) if stream == "ds" else m[-1])
        return tuple(out)


def fold_model(model: TALModel, precision: Precision = FLOAT32) -> FoldedExtractor:
    """The folded extractor of `model` in eval form, computing in ``precision`` (module doc)."""
    return FoldedExtractor(model, precision.torch_dtype).eval()


class WithDescriptor(nn.Module):
    """A folded extractor plus the distilled global descriptor head (docs/scale.md) on its
    maps in the same pass: outputs ``(*maps, descriptor)``. The head computes in fp32 and its
    output takes the graph's dtype, like every other output."""

    def __init__(self, extractor: FoldedExtractor, head: DescriptorHead):
        super().__init__()
        self.extractor = extractor
        self.head = head.float().eval().requires_grad_(False)
        self.names = [*extractor.names, DESCRIPTOR]

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        maps = self.extractor(images)
        descriptor = self.head(dict(zip(self.extractor.names, maps)))
        return (*maps, descriptor.to(maps[0].dtype))


def folded_extractor(model: TALModel, head: DescriptorHead | None = None,
                     precision: Precision = FLOAT32) -> FoldedExtractor | WithDescriptor:
    """What a bundle's extractor computes: the folded model, with the descriptor output when
    there is a head. The export traces it to ONNX and saves its weights; the runtime's torch
    backend rebuilds it from the bundle's config and loads those weights."""
    folded = fold_model(model, precision)
    extractor = folded if head is None else WithDescriptor(folded, head)
    for module in extractor.modules():
        if getattr(module, "inplace", False):  # ReLU(inplace=True): the ONNX exporter of
            module.inplace = False             # torch 2.6 cannot decompose in-place ops
    return extractor
