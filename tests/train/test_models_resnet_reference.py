"""The backbone forward against an independent functional reference fed the same state dict.

The reference is written here with torch.nn.functional (conv2d, batch_norm, instance_norm,
relu, max_pool2d), following torchvision's ResNet (v1.5: stride on the 3x3 convolution of a
bottleneck) and the official IBN-Net models (XingangPan/IBN-Net ``resnet_ibn.py``): IBN-a puts
IN on the first half of ``bn1``'s channels in layers 1-3; IBN-b has an IN stem and an IN after
the residual sum of the last block of layers 1 and 2. torchvision itself cannot be installed
beside torch 2.13 here. The reference reads weights by their torchvision / IBN-Net keys and
must consume every key of the state dict, so the key layout is checked as well.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tal_train.models.backbones import backbone_spec
from tal_train.models.resnet import resnet_name
from test_models_support import randomize_norms

BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3)}  # torchvision's layer counts
EPS = 1e-5


class Weights:
    """The state dict, recording which keys the reference read."""

    def __init__(self, state: dict[str, Tensor]):
        self.state, self.read = state, set()

    def __getitem__(self, key: str) -> Tensor:
        self.read.add(key)
        return self.state[key]


def conv(x: Tensor, w: Weights, key: str, stride: int = 1) -> Tensor:
    weight = w[f"{key}.weight"]
    return F.conv2d(x, weight, stride=stride, padding=weight.shape[-1] // 2)


def bn(x: Tensor, w: Weights, key: str) -> Tensor:
    return F.batch_norm(x, w[f"{key}.running_mean"], w[f"{key}.running_var"],
                        w[f"{key}.weight"], w[f"{key}.bias"], training=False, eps=EPS)


def inorm(x: Tensor, w: Weights, key: str) -> Tensor:
    return F.instance_norm(x, weight=w[f"{key}.weight"], bias=w[f"{key}.bias"], eps=EPS)


def ibn_a(x: Tensor, w: Weights, key: str) -> Tensor:
    half = x.shape[1] // 2
    return torch.cat((inorm(x[:, :half], w, f"{key}.IN"), bn(x[:, half:], w, f"{key}.BN")), 1)


def block(x: Tensor, w: Weights, key: str, stride: int, bottleneck: bool, ibn: str | None,
          in_after: bool) -> Tensor:
    norm1 = ibn_a if ibn == "a" else bn
    if bottleneck:
        out = F.relu(norm1(conv(x, w, f"{key}.conv1"), w, f"{key}.bn1"))
        out = F.relu(bn(conv(out, w, f"{key}.conv2", stride), w, f"{key}.bn2"))
        out = bn(conv(out, w, f"{key}.conv3"), w, f"{key}.bn3")
    else:
        out = F.relu(norm1(conv(x, w, f"{key}.conv1", stride), w, f"{key}.bn1"))
        out = bn(conv(out, w, f"{key}.conv2"), w, f"{key}.bn2")
    if stride != 1 or x.shape[1] != out.shape[1]:  # torchvision's projection shortcut
        x = bn(conv(x, w, f"{key}.downsample.0", stride), w, f"{key}.downsample.1")
    out = out + x
    if in_after:
        out = inorm(out, w, f"{key}.IN")
    return F.relu(out)


def reference_stages(x: Tensor, w: Weights, depth: int, ibn: str | None,
                     last_stride: int) -> dict[str, Tensor]:
    stem_norm = inorm if ibn == "b" else bn
    x = F.max_pool2d(F.relu(stem_norm(conv(x, w, "conv1", 2), w, "bn1")), 3, 2, 1)
    out = {}
    for i, (blocks, stride) in enumerate(zip(BLOCKS[depth], (1, 2, 2, last_stride))):
        stage_ibn = ibn if i < (3 if ibn == "a" else 2) else None
        for j in range(blocks):
            x = block(x, w, f"layer{i + 1}.{j}", stride if j == 0 else 1, depth >= 50,
                      "a" if stage_ibn == "a" else None,
                      in_after=stage_ibn == "b" and j == blocks - 1)
        out[f"res{i + 2}"] = x
    return out


@pytest.mark.parametrize("depth, ibn, last_stride", [
    (18, None, 2), (50, None, 1), (34, "a", 2), (50, "a", 2), (18, "b", 1), (50, "b", 2)])
def test_backbone_forward_equals_functional_reference(depth, ibn, last_stride):
    spec = backbone_spec(resnet_name(depth, ibn, base_width=16))  # the registered x0.25 widths
    net = randomize_norms(spec.build(last_stride=last_stride)).eval()
    with torch.no_grad():  # instance norms too: non-trivial affines everywhere
        for m in net.modules():
            if isinstance(m, nn.InstanceNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.3)
    x = torch.randn(2, 3, 64, 32)
    weights = Weights(net.state_dict())
    with torch.no_grad():
        got = net.forward_features(x)
        want = reference_stages(x, weights, depth, ibn, last_stride)
    assert list(got) == ["res4", "res5"]
    for scale in got:
        value = want[scale]
        assert got[scale].shape == value.shape, scale
        torch.testing.assert_close(got[scale], value, rtol=1e-4,
                                   atol=1e-5 * float(value.abs().max()), msg=scale)
    unread = {k for k in weights.state if not k.endswith("num_batches_tracked")} - weights.read
    assert not unread
